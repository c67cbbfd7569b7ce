//! Tampering below the log API: overwrite stored bytes in the sled tree itself and check that
//! verify and loading name exactly the document and seq. Also: an unknown on-disk format.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Arc;

use converge_log::{DocStore, EventLog, LogConfig, LogError, SledLog, StoreConfig, StoreError};
use converge_proto::{DocId, Epoch, Seq};
use converge_tests::{Writer, change_entry, user};

const DOC: DocId = DocId::from_bytes([5; 16]);
const OTHER: DocId = DocId::from_bytes([6; 16]);

/// Two documents of ten changes each.
fn build(dir: &Path) {
    let mut log = SledLog::open(dir, LogConfig::default()).unwrap();
    for d in [DOC, OTHER] {
        log.create(d, Epoch(1)).unwrap().wait().unwrap();
        let mut w = Writer::new(&[d.as_bytes()[0]; 16]);
        // One append per change, each closed into sled before the next, so each entry is a
        // page of its own under its seq's key (appends that reach sled in one drain share
        // pages).
        for i in 0..10 {
            log.append(&d, vec![change_entry(&user("a"), w.put("k", i))])
                .unwrap()
                .durable
                .wait()
                .unwrap();
            drop(log);
            log = SledLog::open(dir, LogConfig::default()).unwrap();
        }
    }
}

/// The sled key of the page that starts at `seq`, as docs/log-format.md documents it.
fn entry_key(doc: &DocId, seq: u64) -> Vec<u8> {
    let mut k = vec![b'E'];
    k.extend_from_slice(doc.as_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn overwrite(dir: &Path, key: &[u8], f: impl FnOnce(&mut Vec<u8>)) {
    let db = converge_tests::open_raw_sled(dir);
    let mut value = db.get(key).unwrap().unwrap().to_vec();
    f(&mut value);
    db.insert(key, value).unwrap();
    db.flush().unwrap();
}

fn assert_names(err: &LogError, seq: u64) {
    match err {
        LogError::Corrupt { doc, seq: s, .. } => {
            assert_eq!((*doc, *s), (DOC, Seq(seq)), "{err}");
        }
        other => panic!("expected Corrupt for {DOC} seq {seq}, got {other:?}"),
    }
}

#[test]
fn a_flipped_byte_in_the_middle_is_named_by_verify_and_by_load() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    overwrite(dir.path(), &entry_key(&DOC, 5), |v| {
        let mid = v.len() / 2;
        v[mid] ^= 0x40;
    });
    let log = Arc::new(SledLog::open(dir.path(), LogConfig::default()).unwrap());
    assert_names(&log.verify(&DOC).unwrap_err(), 5);
    assert_eq!(
        log.verify(&OTHER).unwrap(),
        10,
        "the other document is untouched"
    );
    // Reading after the broken entry's successor is fine (6 links to 5, so reading from 6
    // must check 5); reading through it is not.
    assert_eq!(log.read(&DOC, Seq(7), 10).unwrap().len(), 4);
    assert_names(&log.read(&DOC, Seq(6), 10).unwrap_err(), 5);
    assert_names(&log.read(&DOC, Seq(1), 10).unwrap_err(), 5);
    let store = DocStore::new(log, StoreConfig::default());
    match store.read(&DOC, |_| ()).unwrap_err() {
        StoreError::Log(e) => assert_names(&e, 5),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_rehashed_forgery_breaks_the_link_to_the_next_entry() {
    // Replacing entry 4 by a well-formed entry with a valid hash of its own still breaks the
    // chain: entry 5's prev no longer matches, so the break is named at 5... unless the forger
    // also rewrote 5, and so on to the head, whose hash the log checks on open.
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let db = converge_tests::open_raw_sled(dir.path());
    let e3 = db.get(entry_key(&DOC, 3)).unwrap().unwrap().to_vec();
    // Entry 3's bytes under key 4: decodes fine but says seq 3.
    db.insert(entry_key(&DOC, 4), e3).unwrap();
    db.flush().unwrap();
    drop(db);
    let log = SledLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_names(&log.verify(&DOC).unwrap_err(), 4);
}

#[test]
fn a_damaged_tail_marks_the_document_broken_but_the_log_opens() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    overwrite(dir.path(), &entry_key(&DOC, 10), |v| {
        v.truncate(v.len() - 3)
    });
    let log = SledLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_names(&log.verify(&DOC).unwrap_err(), 10);
    let mut w = Writer::new(&[9; 16]);
    assert_names(
        &log.append(&DOC, vec![change_entry(&user("a"), w.put("x", 1))])
            .unwrap_err(),
        10,
    );
    assert_eq!(log.verify(&OTHER).unwrap(), 10);
}

#[test]
fn an_unknown_format_version_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    build(dir.path());
    let db = converge_tests::open_raw_sled(dir.path());
    let newer = converge_log::FORMAT_VERSION + 1;
    db.insert(b"Fformat", &newer.to_be_bytes()).unwrap();
    db.flush().unwrap();
    drop(db);
    let err = SledLog::open(dir.path(), LogConfig::default()).unwrap_err();
    assert_eq!(
        err,
        LogError::UnsupportedFormat {
            found: newer,
            supported: converge_log::FORMAT_VERSION
        }
    );
}

#[test]
fn a_sled_database_that_is_not_a_log_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let db = converge_tests::open_raw_sled(dir.path());
    db.insert(b"hello", b"world").unwrap();
    db.flush().unwrap();
    drop(db);
    assert!(matches!(
        SledLog::open(dir.path(), LogConfig::default()).unwrap_err(),
        LogError::NotALog(_)
    ));
    assert!(
        !dir.path().join("journal").exists(),
        "nothing of ours is written into a database that is not a log"
    );
}

/// Found by the stored_entry fuzz target: a page framing an empty entry and then a cut-short
/// length. The earliest damaged entry (seq 1) is named, not the framing break after it.
#[test]
fn a_page_with_an_empty_entry_then_a_cut_length_names_the_first_seq() {
    let dir = tempfile::tempdir().unwrap();
    {
        let log = SledLog::open(dir.path(), LogConfig::default()).unwrap();
        log.create(DOC, Epoch(1)).unwrap().wait().unwrap();
    }
    let db = converge_tests::open_raw_sled(dir.path());
    db.insert(entry_key(&DOC, 1), &[0u8, 0, 0, 0, 0x81][..])
        .unwrap();
    db.flush().unwrap();
    drop(db);
    let log = SledLog::open(dir.path(), LogConfig::default()).unwrap();
    assert_names(&log.verify(&DOC).unwrap_err(), 1);
}
