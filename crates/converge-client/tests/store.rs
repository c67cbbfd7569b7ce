//! The on-disk client store: what is written comes back after a reopen, and a torn write
//! never makes it unloadable.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use converge_client::store::Store;
use converge_proto::{ChangeHash, DocId, Epoch, Position, Seq};
use proptest::prelude::*;

const ID: DocId = DocId::from_bytes([7; 16]);

fn doc_dir(root: &Path) -> PathBuf {
    root.join("docs").join(ID.to_string())
}

/// Makes one edit and returns its change bytes.
fn edit(doc: &mut AutoCommit, key: &str, value: &str) -> Vec<u8> {
    let before = doc.get_heads();
    doc.put(ROOT, key, value).unwrap();
    doc.commit();
    let changes = converge_core::changes_since(doc, &before);
    assert_eq!(changes.len(), 1);
    changes.into_iter().next().unwrap()
}

fn get(doc: &AutoCommit, key: &str) -> Option<String> {
    doc.get(ROOT, key)
        .unwrap()
        .and_then(|(v, _)| v.into_string().ok())
}

fn hash(change: &[u8]) -> ChangeHash {
    ChangeHash(
        automerge::Change::from_bytes(change.to_vec())
            .unwrap()
            .hash()
            .0,
    )
}

#[test]
fn pending_changes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut stored, mut loaded) = store.open_doc(ID).unwrap();
    assert!(loaded.pending.is_empty());
    let a = edit(&mut loaded.doc, "a", "1");
    let b = edit(&mut loaded.doc, "b", "2");
    stored.append_pending(std::slice::from_ref(&a)).unwrap();
    stored.append_pending(std::slice::from_ref(&b)).unwrap();
    drop(stored);

    let (stored, loaded) = Store::open(dir.path()).unwrap().open_doc(ID).unwrap();
    assert_eq!(loaded.pending, vec![a, b]);
    assert_eq!(stored.pending_len(), 2);
    assert_eq!(get(&loaded.doc, "a").as_deref(), Some("1"));
    assert_eq!(get(&loaded.doc, "b").as_deref(), Some("2"));
    assert_eq!(store.doc_ids().unwrap(), vec![ID]);
}

#[test]
fn a_torn_tail_in_pending_is_dropped_and_the_rest_loads() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut stored, mut loaded) = store.open_doc(ID).unwrap();
    let changes: Vec<Vec<u8>> = (0..3)
        .map(|i| edit(&mut loaded.doc, &format!("k{i}"), "v"))
        .collect();
    for c in &changes {
        stored.append_pending(std::slice::from_ref(c)).unwrap();
    }
    drop(stored);

    // A crash in the middle of the third append: half of its record reached the disk.
    let pending = doc_dir(dir.path()).join("pending");
    let len = fs::metadata(&pending).unwrap().len();
    let file = OpenOptions::new().write(true).open(&pending).unwrap();
    file.set_len(len - changes[2].len() as u64 / 2).unwrap();
    drop(file);

    let (mut stored, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.pending, changes[..2].to_vec());
    assert_eq!(get(&loaded.doc, "k1").as_deref(), Some("v"));
    assert_eq!(get(&loaded.doc, "k2"), None);

    // Appending after the repair works, and the torn bytes stay gone.
    stored
        .append_pending(std::slice::from_ref(&changes[2]))
        .unwrap();
    drop(stored);
    let (_, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.pending, changes);
}

#[test]
fn garbage_after_the_last_record_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut stored, mut loaded) = store.open_doc(ID).unwrap();
    let a = edit(&mut loaded.doc, "a", "1");
    stored.append_pending(std::slice::from_ref(&a)).unwrap();
    drop(stored);
    let pending = doc_dir(dir.path()).join("pending");
    let mut file = OpenOptions::new().append(true).open(&pending).unwrap();
    file.write_all(&[0xff; 40]).unwrap();
    drop(file);
    let (_, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.pending, vec![a]);
}

#[test]
fn position_round_trips_and_a_damaged_one_reads_as_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut stored, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.position, None);
    let p = Position {
        epoch: Epoch(3),
        seq: Seq(41),
    };
    stored.write_position(p).unwrap();
    assert_eq!(stored.position(), Some(p));
    drop(stored);
    let (stored, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.position, Some(p));
    assert_eq!(stored.position(), Some(p));
    drop(stored);

    // Outside damage: asking the server from scratch is safe, trusting the bytes is not.
    let file = doc_dir(dir.path()).join("position");
    let mut bytes = fs::read(&file).unwrap();
    bytes[8] ^= 1;
    fs::write(&file, bytes).unwrap();
    let (_, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.position, None);
}

#[test]
fn document_round_trips_through_snapshot_and_changes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut stored, mut loaded) = store.open_doc(ID).unwrap();
    edit(&mut loaded.doc, "title", "Ward 3");
    stored.write_snapshot(&mut loaded.doc).unwrap();

    // Changes received from another replica are appended, not rewritten.
    let mut remote = loaded.doc.fork();
    let r = edit(&mut remote, "remote", "yes");
    converge_core::apply_changes(&mut loaded.doc, std::slice::from_ref(&r)).unwrap();
    stored.append_changes(&[r, Vec::new()]).unwrap();
    let heads = loaded.doc.get_heads();
    drop(stored);

    let (_, mut again) = store.open_doc(ID).unwrap();
    assert_eq!(again.doc.get_heads(), heads);
    assert_eq!(get(&again.doc, "title").as_deref(), Some("Ward 3"));
    assert_eq!(get(&again.doc, "remote").as_deref(), Some("yes"));
}

#[test]
fn settled_changes_leave_pending_but_stay_in_the_document() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (mut stored, mut loaded) = store.open_doc(ID).unwrap();
    let a = edit(&mut loaded.doc, "a", "1");
    let b = edit(&mut loaded.doc, "b", "2");
    stored.append_pending(&[a.clone(), b.clone()]).unwrap();
    assert_eq!(stored.settle(&[hash(&a)]).unwrap(), 1);
    assert_eq!(stored.pending_len(), 1);
    drop(stored);

    let (mut stored, loaded) = store.open_doc(ID).unwrap();
    assert_eq!(loaded.pending, vec![b.clone()]);
    assert_eq!(get(&loaded.doc, "a").as_deref(), Some("1"));
    assert_eq!(stored.settle(&[hash(&b), hash(&a)]).unwrap(), 1);
    drop(stored);

    let (_, loaded) = store.open_doc(ID).unwrap();
    assert!(loaded.pending.is_empty());
    assert_eq!(get(&loaded.doc, "a").as_deref(), Some("1"));
    assert_eq!(get(&loaded.doc, "b").as_deref(), Some("2"));
}

#[test]
fn the_store_has_one_client_at_a_time_and_keeps_its_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = store.client_id().unwrap();
    assert_eq!(store.client_id().unwrap(), id);
    let held = store.try_lock().unwrap().expect("free");
    assert!(store.try_lock().unwrap().is_none());
    drop(held);
    assert!(store.try_lock().unwrap().is_some());
    assert_eq!(Store::open(dir.path()).unwrap().client_id().unwrap(), id);
}

/// Eight one-edit changes, made once for all proptest cases.
fn eight_changes() -> &'static [Vec<u8>] {
    static CHANGES: OnceLock<Vec<Vec<u8>>> = OnceLock::new();
    CHANGES.get_or_init(|| {
        let mut doc = AutoCommit::new();
        (0..8)
            .map(|i| edit(&mut doc, &format!("k{i}"), &"x".repeat(i * 40)))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Whatever prefix of the pending file a crash leaves, the store opens and holds exactly
    /// the records that were whole, in order.
    #[test]
    fn any_truncation_of_pending_opens_and_keeps_a_prefix(n in 0usize..=8, cut in 0.0f64..=1.0) {
        let changes = &eight_changes()[..n];
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let (mut stored, _) = store.open_doc(ID).unwrap();
        let pending = doc_dir(dir.path()).join("pending");
        let mut ends = vec![fs::metadata(&pending).unwrap().len()];
        for c in changes {
            stored.append_pending(std::slice::from_ref(c)).unwrap();
            ends.push(fs::metadata(&pending).unwrap().len());
        }
        drop(stored);
        let full = *ends.last().unwrap();
        let keep = (full as f64 * cut) as u64;
        OpenOptions::new().write(true).open(&pending).unwrap().set_len(keep).unwrap();

        let (_, loaded) = store.open_doc(ID).unwrap();
        let whole = ends[1..].iter().filter(|&&end| end <= keep).count();
        prop_assert_eq!(&loaded.pending[..], &changes[..whole]);
        for (i, _) in changes.iter().enumerate() {
            prop_assert_eq!(get(&loaded.doc, &format!("k{i}")).is_some(), i < whole);
        }
    }
}
