//! The EventLog conformance suite: every test runs on SledLog and on MemLog.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use common::{Backend, Writer, change_entry, forge, user};
use converge_log::{
    AppendResult, Author, Durability, EntryHash, EntryKind, EventLog, LockEvent, LockRecord,
    LogConfig, LogError, MutationOutcome, MutationRecord, NewEntry,
};
use converge_proto::limits::MAX_CHANGE_BYTES;
use converge_proto::{ClientId, DocId, Epoch, FencingToken, MutationId, Seq};

const DOC: DocId = DocId::from_bytes([9; 16]);

/// Declares one test per backend for each suite function.
macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod sled_log { $( #[test] fn $name() { super::$name(super::Backend::sled()); } )* }
        mod mem_log { $( #[test] fn $name() { super::$name(super::Backend::mem()); } )* }
    };
}

conformance!(
    appends_get_dense_seqs_and_a_chain,
    duplicate_change_writes_nothing,
    reads_respect_range_and_limit,
    unknown_and_existing_documents,
    actor_index_tracks_owner_and_seq,
    actor_owned_by_another_user_is_refused,
    malformed_change_is_refused_and_nothing_written,
    unsealed_change_is_refused,
    compressed_changes_are_accepted,
    forged_op_ids_are_refused_and_nothing_written,
    oversize_change_is_refused,
    empty_and_oversize_batches_are_refused,
    mutation_ids_are_tracked_per_client,
    fencing_tokens_increase_across_reopen,
    snapshots_and_compaction,
    snapshot_due_follows_the_size_and_count_rules,
    tombstone_ends_the_stream,
    everything_survives_reopen,
    concurrent_appenders_share_flushes,
    buffered_mode_acknowledges_at_once,
    verify_counts_the_chain,
    compaction_keeps_a_page_that_straddles_the_snapshot,
    compaction_of_pages_still_staged_loses_nothing,
    indexes_survive_a_reopen_between_checkpoints,
    causality_checks_refuse_and_write_nothing,
    relayed_changes_pass_causal_checks_and_bind_no_actor,
    bump_epoch_moves_the_stream_and_survives_reopen,
);

fn new_log(b: &Backend) -> Arc<converge_log::Log> {
    let log = b.open(LogConfig::default());
    log.create(DOC, Epoch(1)).unwrap().wait().unwrap();
    log
}

/// Appends one entry to `DOC` and waits until it is durable.
fn append_durably(log: &converge_log::Log, entry: NewEntry) {
    log.append(&DOC, vec![entry])
        .unwrap()
        .durable
        .wait()
        .unwrap();
}

fn appends_get_dense_seqs_and_a_chain(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    let batch = vec![
        change_entry(&alice, w.put("a", 1)),
        change_entry(&alice, w.put("b", 2)),
    ];
    let appended = log.append(&DOC, batch).unwrap();
    appended.durable.wait().unwrap();
    assert_eq!(
        appended.results,
        vec![
            AppendResult::Appended(Seq(1)),
            AppendResult::Appended(Seq(2))
        ]
    );
    let one = log
        .append(&DOC, vec![change_entry(&alice, w.put("c", 3))])
        .unwrap();
    assert_eq!(one.results, vec![AppendResult::Appended(Seq(3))]);
    let entries = log.read(&DOC, Seq(1), 100).unwrap();
    assert_eq!(entries.len(), 3, "{}", b.name());
    assert_eq!(entries[0].prev, EntryHash::GENESIS);
    for pair in entries.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash);
        assert_eq!(pair[1].seq, pair[0].seq.next());
    }
    let head = log.head(&DOC).unwrap();
    assert_eq!(head.last_seq, Seq(3));
    assert_eq!(head.last_hash, entries[2].hash);
    assert_eq!(head.epoch, Epoch(1));
}

fn duplicate_change_writes_nothing(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    let c1 = w.put("a", 1);
    let c2 = w.put("b", 2);
    log.append(&DOC, vec![change_entry(&alice, c1.clone())])
        .unwrap();
    // A duplicate inside one batch and one already logged.
    let r = log
        .append(
            &DOC,
            vec![
                change_entry(&alice, c2.clone()),
                change_entry(&alice, c2.clone()),
                change_entry(&alice, c1.clone()),
            ],
        )
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            AppendResult::Appended(Seq(2)),
            AppendResult::Duplicate(Seq(2)),
            AppendResult::Duplicate(Seq(1)),
        ]
    );
    let r = log.append(&DOC, vec![change_entry(&alice, c1)]).unwrap();
    assert_eq!(r.results, vec![AppendResult::Duplicate(Seq(1))]);
    r.durable.wait().unwrap();
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(2));
    assert_eq!(log.read(&DOC, Seq(1), 10).unwrap().len(), 2);
    // Even another user re-sending a logged change is only a duplicate.
    let r = log
        .append(&DOC, vec![change_entry(&user("bob"), c2)])
        .unwrap();
    assert_eq!(r.results, vec![AppendResult::Duplicate(Seq(2))]);
}

fn reads_respect_range_and_limit(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    let batch = (0..20)
        .map(|i| change_entry(&alice, w.put("k", i)))
        .collect();
    log.append(&DOC, batch).unwrap();
    let page = log.read(&DOC, Seq(5), 4).unwrap();
    assert_eq!(
        page.iter().map(|e| e.seq.get()).collect::<Vec<_>>(),
        vec![5, 6, 7, 8]
    );
    assert!(log.read(&DOC, Seq(21), 10).unwrap().is_empty());
    assert_eq!(log.read(&DOC, Seq(0), 100).unwrap().len(), 20);
    assert_eq!(log.read(&DOC, Seq(18), 100).unwrap().len(), 3);
}

fn unknown_and_existing_documents(b: Backend) {
    let log = new_log(&b);
    let other = DocId::from_bytes([1; 16]);
    let mut w = Writer::new(1);
    assert_eq!(
        log.append(&other, vec![change_entry(&user("a"), w.put("x", 1))])
            .unwrap_err(),
        LogError::UnknownDoc(other)
    );
    assert_eq!(
        log.read(&other, Seq(1), 1).unwrap_err(),
        LogError::UnknownDoc(other)
    );
    assert_eq!(
        log.create(DOC, Epoch(1)).unwrap_err(),
        LogError::DocExists(DOC)
    );
    log.create(other, Epoch(7)).unwrap().wait().unwrap();
    assert_eq!(log.docs().unwrap(), {
        let mut v = vec![DOC, other];
        v.sort();
        v
    });
    assert_eq!(log.head(&other).unwrap().epoch, Epoch(7));
}

fn actor_index_tracks_owner_and_seq(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(3);
    let c1 = w.put("a", 1);
    let c2 = w.put("a", 2);
    log.append(
        &DOC,
        vec![change_entry(&alice, c1.clone()), change_entry(&alice, c2)],
    )
    .unwrap();
    let rec = log.actor(&DOC, &[3; 16]).unwrap().unwrap();
    assert_eq!(rec.owner, Some(alice.user.clone()));
    assert_eq!(rec.max_change_seq, 2);
    assert_eq!(rec.entry_seq, Seq(2));
    assert_eq!(log.actor(&DOC, &[4; 16]).unwrap(), None);
    let hash = automerge::Change::from_bytes(c1).unwrap().hash();
    assert_eq!(
        log.change_seq(&DOC, &converge_proto::ChangeHash(hash.0))
            .unwrap(),
        Some(Seq(1))
    );
    assert_eq!(
        log.change_seq(&DOC, &converge_proto::ChangeHash([0; 32]))
            .unwrap(),
        None
    );
}

fn actor_owned_by_another_user_is_refused(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(3);
    log.append(&DOC, vec![change_entry(&user("alice"), w.put("a", 1))])
        .unwrap();
    let err = log
        .append(&DOC, vec![change_entry(&user("mallory"), w.put("a", 2))])
        .unwrap_err();
    assert!(matches!(err, LogError::ActorOwnedByOther { .. }), "{err:?}");
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(1));
    // A batch that fails part way writes none of it.
    let mut w2 = Writer::new(4);
    let err = log
        .append(
            &DOC,
            vec![
                change_entry(&user("mallory"), w2.put("b", 1)),
                change_entry(&user("mallory"), w.put("a", 3)),
            ],
        )
        .unwrap_err();
    assert!(matches!(err, LogError::ActorOwnedByOther { .. }));
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(1));
    assert_eq!(log.actor(&DOC, &[4; 16]).unwrap(), None);
}

fn malformed_change_is_refused_and_nothing_written(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(1);
    let good = w.put("a", 1);
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    for bad in [vec![], vec![0xde, 0xad, 0xbe, 0xef], truncated] {
        let err = log
            .append(
                &DOC,
                vec![
                    change_entry(&user("a"), good.clone()),
                    change_entry(&user("a"), bad),
                ],
            )
            .unwrap_err();
        assert!(matches!(err, LogError::MalformedChange(_)), "{err:?}");
    }
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(0));
    assert!(log.read(&DOC, Seq(1), 10).unwrap().is_empty());
}

fn unsealed_change_is_refused(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(1);
    let good = w.put("a", 1);
    // One flipped bit in the header's checksum: automerge still decodes the change.
    let mut flipped = good.clone();
    flipped[5] ^= 1;
    assert!(automerge::Change::from_bytes(flipped.clone()).is_ok());
    let err = log
        .append(&DOC, vec![change_entry(&user("a"), flipped)])
        .unwrap_err();
    assert!(
        matches!(&err, LogError::MalformedChange(m) if m.contains("checksum")),
        "{err:?}"
    );
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(0));
    log.append(&DOC, vec![change_entry(&user("a"), good)])
        .unwrap();
}

/// Other automerge clients send `Change::bytes()`, deflated above 256 bytes (chunk type 2):
/// the log takes them (checksum, op ids and index as for raw ones), and they materialize.
fn compressed_changes_are_accepted(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    let compressed = |w: &mut Writer, text: &str| {
        use automerge::transaction::Transactable;
        w.doc
            .put(automerge::ROOT, "note", text.repeat(100))
            .unwrap();
        w.doc.commit();
        let mut change = w.doc.get_last_local_change().unwrap().clone();
        let bytes = change.bytes().to_vec();
        assert_eq!(bytes.get(8), Some(&2), "not a compressed chunk");
        assert!(bytes.len() < change.raw_bytes().len());
        bytes
    };
    let first = compressed(&mut w, "first ");
    let second = compressed(&mut w, "second ");
    append_durably(&log, change_entry(&alice, first.clone()));
    append_durably(&log, change_entry(&alice, second));
    // The same change again, compressed: already logged.
    let again = log.append(&DOC, vec![change_entry(&alice, first)]).unwrap();
    again.durable.wait().unwrap();
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(2));
    let mut replica = automerge::AutoCommit::new();
    for e in log.read(&DOC, Seq(1), 10).unwrap() {
        let EntryKind::Change(bytes) = e.kind else {
            panic!("not a change: {e:?}")
        };
        replica
            .apply_changes([automerge::Change::from_bytes(bytes).unwrap()])
            .unwrap();
    }
    assert_eq!(replica.get_heads(), w.doc.get_heads());
}

fn forged_op_ids_are_refused_and_nothing_written(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    let first = w.put("a", 1);
    append_durably(&log, change_entry(&alice, first.clone()));
    // The actor's next seq, but its op ids start where the first change's did: two ops
    // would share the id 1@actor.
    let reused = forge(&first, |c| c.seq = 2);
    let refuse = |log: &converge_log::Log| {
        let err = log
            .append(&DOC, vec![change_entry(&alice, reused.clone())])
            .unwrap_err();
        assert!(
            matches!(
                err,
                LogError::OpIdReused {
                    start_op: 1,
                    max_op: 1,
                    ..
                }
            ),
            "{err:?}"
        );
        assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(1));
    };
    refuse(&log);
    // The actor's op counter is kept across a reopen, from the index checkpoint or the pages.
    drop(log);
    let log = b.open(LogConfig::default());
    refuse(&log);
    for i in 0..20 {
        append_durably(&log, change_entry(&alice, w.put("a", i + 2)));
    }
    drop(log);
    let log = b.open(LogConfig::default());
    let next = w.put("a", 99);
    let stale = forge(&next, |c| {
        c.start_op = std::num::NonZeroU64::new(21).unwrap();
        c.operations[0].pred = Vec::new().into();
    });
    let err = log
        .append(&DOC, vec![change_entry(&alice, stale)])
        .unwrap_err();
    assert!(
        matches!(err, LogError::OpIdReused { max_op: 21, .. }),
        "{err:?}"
    );

    // An op that overwrites an op with a later id, or writes into a later object: refused
    // before anything is checked against the document.
    let later_pred = forge(&next, |c| {
        c.operations[0].pred = vec![automerge::legacy::OpId(500, c.actor_id.clone())].into();
    });
    let err = log
        .append(&DOC, vec![change_entry(&alice, later_pred)])
        .unwrap_err();
    assert!(
        matches!(&err, LogError::MalformedChange(m) if m.contains("not earlier")),
        "{err:?}"
    );
    let list_key_on_root = forge(&next, |c| {
        c.operations[0].key = automerge::legacy::Key::Seq(automerge::legacy::ElementId::Head);
        c.operations[0].insert = true;
    });
    let err = log
        .append(&DOC, vec![change_entry(&alice, list_key_on_root)])
        .unwrap_err();
    assert!(
        matches!(&err, LogError::MalformedChange(m) if m.contains("wrong kind")),
        "{err:?}"
    );
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(21));
    // The genuine change still goes in.
    log.append(&DOC, vec![change_entry(&alice, next)]).unwrap();
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(22));
}

fn oversize_change_is_refused(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(1);
    let big = w.blob(MAX_CHANGE_BYTES + 10);
    let err = log
        .append(&DOC, vec![change_entry(&user("a"), big)])
        .unwrap_err();
    assert!(
        matches!(err, LogError::TooLarge { what: "change", .. }),
        "{err:?}"
    );
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(0));
}

fn empty_and_oversize_batches_are_refused(b: Backend) {
    let log = new_log(&b);
    assert!(matches!(
        log.append(&DOC, vec![]).unwrap_err(),
        LogError::Invalid(_)
    ));
    let entry = NewEntry {
        at_ms: 0,
        author: user("a"),
        kind: EntryKind::Tombstone,
    };
    let err = log.append(&DOC, vec![entry; 5000]).unwrap_err();
    assert!(matches!(err, LogError::TooLarge { what: "batch", .. }));
    let long_name = NewEntry {
        at_ms: 0,
        author: user("a"),
        kind: EntryKind::Mutation(MutationRecord {
            client: ClientId::from_bytes([1; 16]),
            mutation_id: MutationId(1),
            name: "n".repeat(10_000),
            args: vec![],
            outcome: MutationOutcome::Applied,
        }),
    };
    assert!(matches!(
        log.append(&DOC, vec![long_name]).unwrap_err(),
        LogError::TooLarge { .. }
    ));
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(0));
}

fn mutation(client: u8, id: u64, outcome: MutationOutcome) -> NewEntry {
    NewEntry {
        at_ms: 5,
        author: user("alice"),
        kind: EntryKind::Mutation(MutationRecord {
            client: ClientId::from_bytes([client; 16]),
            mutation_id: MutationId(id),
            name: "book".into(),
            args: vec![1, 2, 3],
            outcome,
        }),
    }
}

fn mutation_ids_are_tracked_per_client(b: Backend) {
    let log = new_log(&b);
    let c1 = ClientId::from_bytes([1; 16]);
    let c2 = ClientId::from_bytes([2; 16]);
    assert_eq!(log.last_mutation(&DOC, &c1).unwrap(), None);
    log.append(
        &DOC,
        vec![
            mutation(1, 1, MutationOutcome::Applied),
            mutation(1, 2, MutationOutcome::Applied),
        ],
    )
    .unwrap();
    let rejected = MutationOutcome::Rejected {
        code: 409,
        message: "slot taken".into(),
    };
    log.append(&DOC, vec![mutation(2, 1, rejected.clone())])
        .unwrap();
    assert_eq!(log.last_mutation(&DOC, &c1).unwrap(), Some(MutationId(2)));
    assert_eq!(log.last_mutation(&DOC, &c2).unwrap(), Some(MutationId(1)));
    let e = log.read(&DOC, Seq(3), 1).unwrap();
    assert!(matches!(&e[0].kind, EntryKind::Mutation(m) if m.outcome == rejected));
}

fn lock_grant(key: &str) -> NewEntry {
    NewEntry {
        at_ms: 10,
        author: user("alice"),
        kind: EntryKind::Lock(LockRecord {
            key: key.into(),
            event: LockEvent::Granted,
            holder: user("alice"),
            token: FencingToken(0),
            expires_at_ms: 30_000,
        }),
    }
}

fn fencing_tokens_increase_across_reopen(b: Backend) {
    let log = new_log(&b);
    let other = DocId::from_bytes([2; 16]);
    drop(log.create(other, Epoch(1)).unwrap());
    let r = log
        .append(&DOC, vec![lock_grant("event:1"), lock_grant("event:2")])
        .unwrap();
    assert_eq!(
        r.results,
        vec![
            AppendResult::Granted(Seq(1), FencingToken(1)),
            AppendResult::Granted(Seq(2), FencingToken(2))
        ]
    );
    let r = log.append(&other, vec![lock_grant("event:1")]).unwrap();
    assert_eq!(
        r.results,
        vec![AppendResult::Granted(Seq(1), FencingToken(3))]
    );
    r.durable.wait().unwrap();
    let stored = log.read(&other, Seq(1), 1).unwrap();
    assert!(matches!(&stored[0].kind, EntryKind::Lock(l) if l.token == FencingToken(3)));
    drop(log);
    let log = b.open(LogConfig::default());
    assert_eq!(log.fencing_counter().unwrap(), FencingToken(3));
    let r = log.append(&DOC, vec![lock_grant("event:1")]).unwrap();
    assert_eq!(
        r.results,
        vec![AppendResult::Granted(Seq(3), FencingToken(4))]
    );
}

fn snapshots_and_compaction(b: Backend) {
    let mut log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    // One append per change, each closed into the store before the next: each is its own
    // page, so compaction can drop exactly up to 6 (writes that reach the store in one drain
    // may share a page, and on sled durable appends wait in the journal for a later drain).
    for i in 0..10 {
        log.append(&DOC, vec![change_entry(&alice, w.put("k", i))])
            .unwrap()
            .durable
            .wait()
            .unwrap();
        drop(log);
        log = b.open(LogConfig::default());
    }
    assert_eq!(log.snapshot(&DOC).unwrap(), None);
    assert!(matches!(
        log.put_snapshot(&DOC, Seq(11), vec![1]).unwrap_err(),
        LogError::BadSnapshotSeq { .. }
    ));
    let saved = w.doc.save();
    log.put_snapshot(&DOC, Seq(6), saved.clone())
        .unwrap()
        .wait()
        .unwrap();
    let snap = log.snapshot(&DOC).unwrap().unwrap();
    assert_eq!(snap.seq, Seq(6));
    assert_eq!(snap.bytes, saved);
    assert_eq!(snap.entry_hash, log.read(&DOC, Seq(6), 1).unwrap()[0].hash);
    assert_eq!(log.head(&DOC).unwrap().snapshot_seq, Some(Seq(6)));

    assert_eq!(log.compact(&DOC).unwrap(), 6);
    assert_eq!(
        log.read(&DOC, Seq(3), 10).unwrap_err(),
        LogError::Compacted {
            doc: DOC,
            compacted_through: Seq(6)
        }
    );
    // The tail still links to the snapshot's entry hash.
    let tail = log.read(&DOC, Seq(7), 10).unwrap();
    assert_eq!(tail.len(), 4);
    assert_eq!(tail[0].prev, snap.entry_hash);
    // Dedup still knows compacted changes.
    let mut again = Writer::new(1);
    let first = again.put("k", 0);
    let r = log.append(&DOC, vec![change_entry(&alice, first)]).unwrap();
    assert_eq!(r.results, vec![AppendResult::Duplicate(Seq(1))]);
    r.durable.wait().unwrap();
    assert_eq!(log.verify(&DOC).unwrap(), 4);
    drop(log);
    let log = b.open(LogConfig::default());
    let head = log.head(&DOC).unwrap();
    assert_eq!((head.compacted_through, head.last_seq), (Seq(6), Seq(10)));
    assert_eq!(log.snapshot(&DOC).unwrap().unwrap().bytes, saved);
    assert_eq!(log.verify(&DOC).unwrap(), 4);
    // Compacting everything leaves the head on the snapshot, and appends continue the chain.
    log.put_snapshot(&DOC, Seq(10), w.doc.save())
        .unwrap()
        .wait()
        .unwrap();
    log.compact(&DOC).unwrap();
    drop(log);
    let log = b.open(LogConfig::default());
    let head = log.head(&DOC).unwrap();
    assert_eq!((head.compacted_through, head.last_seq), (Seq(10), Seq(10)));
    log.append(&DOC, vec![change_entry(&alice, w.put("z", 1))])
        .unwrap();
    let e = log.read(&DOC, Seq(11), 1).unwrap();
    assert_eq!(e[0].prev, log.snapshot(&DOC).unwrap().unwrap().entry_hash);
}

fn snapshot_due_follows_the_size_and_count_rules(b: Backend) {
    let config = LogConfig {
        snapshot_every_entries: 5,
        min_snapshot_bytes: 1000,
        ..LogConfig::default()
    };
    let log = b.open(config.clone());
    drop(log.create(DOC, Epoch(1)).unwrap());
    let alice = user("alice");
    let mut w = Writer::new(1);
    assert!(!log.snapshot_due(&DOC).unwrap());
    for i in 0..4 {
        log.append(&DOC, vec![change_entry(&alice, w.put("k", i))])
            .unwrap();
    }
    assert!(!log.snapshot_due(&DOC).unwrap());
    log.append(&DOC, vec![change_entry(&alice, w.put("k", 9))])
        .unwrap();
    assert!(
        log.snapshot_due(&DOC).unwrap(),
        "5 entries since the last snapshot"
    );
    log.put_snapshot(&DOC, Seq(5), w.doc.save())
        .unwrap()
        .wait()
        .unwrap();
    assert!(!log.snapshot_due(&DOC).unwrap());
    // Size rule: more change bytes than the snapshot (and the floor) since it.
    log.append(&DOC, vec![change_entry(&alice, w.blob(2000))])
        .unwrap()
        .durable
        .wait()
        .unwrap();
    assert!(log.snapshot_due(&DOC).unwrap());
    // The counters are rebuilt after a reopen.
    drop(log);
    let log = b.open(config);
    assert!(log.snapshot_due(&DOC).unwrap());
}

fn tombstone_ends_the_stream(b: Backend) {
    let log = new_log(&b);
    let tomb = NewEntry {
        at_ms: 1,
        author: user("a"),
        kind: EntryKind::Tombstone,
    };
    log.append(&DOC, vec![tomb.clone()])
        .unwrap()
        .durable
        .wait()
        .unwrap();
    assert!(log.head(&DOC).unwrap().tombstoned);
    assert_eq!(
        log.append(&DOC, vec![tomb.clone()]).unwrap_err(),
        LogError::Tombstoned(DOC)
    );
    drop(log);
    let log = b.open(LogConfig::default());
    assert!(log.head(&DOC).unwrap().tombstoned);
    assert_eq!(
        log.append(&DOC, vec![tomb]).unwrap_err(),
        LogError::Tombstoned(DOC)
    );
}

fn everything_survives_reopen(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut w = Writer::new(1);
    let batch: Vec<_> = (0..50)
        .map(|i| change_entry(&alice, w.put("k", i)))
        .collect();
    log.append(&DOC, batch).unwrap().durable.wait().unwrap();
    let before = log.read(&DOC, Seq(1), 100).unwrap();
    drop(log);
    let log = b.open(LogConfig::default());
    assert_eq!(log.read(&DOC, Seq(1), 100).unwrap(), before);
    assert_eq!(log.head(&DOC).unwrap().last_hash, before[49].hash);
    assert_eq!(
        log.actor(&DOC, &[1; 16]).unwrap().unwrap().max_change_seq,
        50
    );
    let r = log
        .append(&DOC, vec![change_entry(&alice, w.put("k", 99))])
        .unwrap();
    assert_eq!(r.results, vec![AppendResult::Appended(Seq(51))]);
}

fn concurrent_appenders_share_flushes(b: Backend) {
    let log = b.open(LogConfig::default());
    let docs: Vec<DocId> = (0..8u8).map(|i| DocId::from_bytes([i + 100; 16])).collect();
    for d in &docs {
        drop(log.create(*d, Epoch(1)).unwrap());
    }
    std::thread::scope(|s| {
        for (t, doc) in docs.iter().enumerate() {
            for half in 0..2u8 {
                let log = log.clone();
                s.spawn(move || {
                    let author =
                        Author::user(converge_proto::UserId::new(format!("u{t}")).unwrap());
                    let mut w = Writer::new(t as u8 * 2 + half + 1);
                    for i in 0..50 {
                        let r = log
                            .append(doc, vec![change_entry(&author, w.put("k", i))])
                            .unwrap();
                        r.durable.wait().unwrap();
                    }
                });
            }
        }
    });
    for d in &docs {
        let entries = log.read(d, Seq(1), 1000).unwrap();
        assert_eq!(entries.len(), 100);
        assert_eq!(log.verify(d).unwrap(), 100);
    }
}

fn buffered_mode_acknowledges_at_once(b: Backend) {
    let config = LogConfig {
        durability: Durability::Buffered {
            every: std::time::Duration::from_millis(5),
        },
        ..LogConfig::default()
    };
    let log = b.open(config.clone());
    drop(log.create(DOC, Epoch(1)).unwrap());
    let mut w = Writer::new(1);
    for i in 0..20 {
        log.append(&DOC, vec![change_entry(&user("a"), w.put("k", i))])
            .unwrap()
            .durable
            .wait()
            .unwrap();
    }
    drop(log); // a clean close flushes
    let log = b.open(config);
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(20));
}

fn verify_counts_the_chain(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(1);
    let batch = (0..30)
        .map(|i| change_entry(&user("a"), w.put("k", i)))
        .collect();
    log.append(&DOC, batch).unwrap();
    assert_eq!(log.verify(&DOC).unwrap(), 30);
}

/// Appends not waited for reach the store together, where consecutive pages may be joined:
/// compacting meanwhile must still drop only what the snapshot covers.
fn compaction_of_pages_still_staged_loses_nothing(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(1);
    for i in 0..10 {
        drop(
            log.append(&DOC, vec![change_entry(&user("a"), w.put("k", i))])
                .unwrap(),
        );
    }
    log.put_snapshot(&DOC, Seq(6), w.doc.save())
        .unwrap()
        .wait()
        .unwrap();
    let dropped = log.compact(&DOC).unwrap();
    assert!(dropped <= 6, "dropped {dropped}");
    let through = log.head(&DOC).unwrap().compacted_through;
    assert_eq!(through, Seq(dropped));
    let rest = log.read(&DOC, through.next(), 100).unwrap();
    assert_eq!(rest.len() as u64, 10 - dropped);
    assert_eq!(rest.last().unwrap().seq, Seq(10));
    assert_eq!(log.verify(&DOC).unwrap(), 10 - dropped);
}

fn compaction_keeps_a_page_that_straddles_the_snapshot(b: Backend) {
    let log = new_log(&b);
    let mut w = Writer::new(1);
    let first: Vec<_> = (0..4)
        .map(|i| change_entry(&user("a"), w.put("k", i)))
        .collect();
    let second: Vec<_> = (0..4)
        .map(|i| change_entry(&user("a"), w.put("k", i)))
        .collect();
    // The log closed after each append, so each reaches the store as its own page (appends
    // drained together may share one).
    log.append(&DOC, first).unwrap().durable.wait().unwrap();
    drop(log);
    let log = b.open(LogConfig::default());
    log.append(&DOC, second).unwrap().durable.wait().unwrap();
    drop(log);
    let log = b.open(LogConfig::default());
    log.put_snapshot(&DOC, Seq(6), vec![1, 2, 3])
        .unwrap()
        .wait()
        .unwrap();
    // Entries 1-4 were appended together and go together; 5-8 straddle the snapshot and stay.
    assert_eq!(log.compact(&DOC).unwrap(), 4);
    let head = log.head(&DOC).unwrap();
    assert_eq!(head.compacted_through, Seq(4));
    assert_eq!(log.read(&DOC, Seq(5), 10).unwrap().len(), 4);
    assert_eq!(log.verify(&DOC).unwrap(), 4);
}

#[test]
fn memory_crash_loses_only_unflushed_appends() {
    let storage = converge_log::MemStorage::new();
    let config = LogConfig {
        durability: Durability::Buffered {
            every: std::time::Duration::from_secs(3600),
        },
        ..LogConfig::default()
    };
    let log = converge_log::Log::open_in_memory(&storage, config.clone()).unwrap();
    drop(log.create(DOC, Epoch(1)).unwrap());
    let mut w = Writer::new(1);
    log.append(&DOC, vec![change_entry(&user("a"), w.put("k", 1))])
        .unwrap();
    log.flush().unwrap();
    log.append(&DOC, vec![change_entry(&user("a"), w.put("k", 2))])
        .unwrap();
    storage.crash();
    std::mem::forget(log); // the process "died": no clean close
    let log = converge_log::Log::open_in_memory(&storage, config).unwrap();
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(1));
    assert_eq!(log.verify(&DOC).unwrap(), 1);
}

#[test]
fn unknown_format_version_is_refused() {
    let storage = converge_log::MemStorage::new();
    drop(converge_log::Log::open_in_memory(&storage, LogConfig::default()).unwrap());
    storage.overwrite_raw(b"Fformat", 99u32.to_be_bytes().to_vec());
    let err = converge_log::Log::open_in_memory(&storage, LogConfig::default()).unwrap_err();
    assert_eq!(
        err,
        LogError::UnsupportedFormat {
            found: 99,
            supported: converge_log::FORMAT_VERSION
        }
    );
}

fn indexes_survive_a_reopen_between_checkpoints(b: Backend) {
    // 21 entries: one index checkpoint at 16, then 5 entries indexed only from their pages.
    let log = new_log(&b);
    let mut w = Writer::new(5);
    let mut changes = Vec::new();
    for i in 0..21 {
        let c = w.put("k", i);
        changes.push(c.clone());
        log.append(&DOC, vec![change_entry(&user("alice"), c)])
            .unwrap()
            .durable
            .wait()
            .unwrap();
    }
    drop(log);
    let log = b.open(LogConfig::default());
    let rec = log.actor(&DOC, &[5; 16]).unwrap().unwrap();
    assert_eq!((rec.max_change_seq, rec.entry_seq), (21, Seq(21)));
    for (i, c) in changes.iter().enumerate() {
        let r = log
            .append(&DOC, vec![change_entry(&user("bob"), c.clone())])
            .unwrap();
        assert_eq!(r.results, vec![AppendResult::Duplicate(Seq(i as u64 + 1))]);
    }
    let next = w.put("k", 99);
    let err = log
        .append(&DOC, vec![change_entry(&user("bob"), next.clone())])
        .unwrap_err();
    assert!(matches!(err, LogError::ActorOwnedByOther { .. }));
    let r = log
        .append(&DOC, vec![change_entry(&user("alice"), next)])
        .unwrap();
    assert_eq!(r.results, vec![AppendResult::Appended(Seq(22))]);
}

fn causality_checks_refuse_and_write_nothing(b: Backend) {
    let log = new_log(&b);
    let alice = user("alice");
    let mut a = Writer::new(1);
    let c1 = a.put("k", 1);
    append_durably(&log, change_entry(&alice, c1.clone()));
    let before = log.head(&DOC).unwrap();

    // A skipped per-actor seq.
    let _c2 = a.put("k", 2);
    let c3 = a.put("k", 3);
    let err = log
        .append(&DOC, vec![change_entry(&alice, c3)])
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::SeqGap {
                expected: 2,
                got: 3,
                ..
            }
        ),
        "{err:?}"
    );

    // Another change at a seq the actor already used.
    let mut fork = Writer::new(1);
    fork.doc = automerge::AutoCommit::new().with_actor(automerge::ActorId::from(vec![1u8; 16]));
    let other_c1 = fork.put("other", 1);
    let err = log
        .append(&DOC, vec![change_entry(&alice, other_c1)])
        .unwrap_err();
    assert!(
        matches!(err, LogError::SeqConflict { seq: 1, .. }),
        "{err:?}"
    );

    // A dependency the log does not hold: b merges a's unlogged changes, then writes a new key.
    let mut b2 = Writer::new(2);
    b2.doc.merge(&mut a.doc).unwrap();
    let b_change = b2.put("fresh", 1);
    let err = log
        .append(&DOC, vec![change_entry(&user("bob"), b_change)])
        .unwrap_err();
    assert!(matches!(err, LogError::MissingDependency { .. }), "{err:?}");

    // An actor the document has never seen (automerge would panic applying it).
    let mut c = Writer::new(3);
    let _unlogged = c.put("z", 1);
    let mut d = Writer::new(4);
    d.doc.merge(&mut c.doc).unwrap();
    let d_change = d.put("z", 2);
    let err = log
        .append(&DOC, vec![change_entry(&user("dave"), d_change)])
        .unwrap_err();
    assert!(matches!(err, LogError::UnknownActor { .. }), "{err:?}");

    assert_eq!(log.head(&DOC).unwrap(), before);
    assert_eq!(log.read(&DOC, Seq(1), 100).unwrap().len(), 1);
}

#[test]
fn a_directory_opens_once_and_reopens_right_after_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = converge_log::Log::open(dir.path(), LogConfig::default()).unwrap();
    // A second open while the first is live is refused with a typed error, not a panic.
    match converge_log::Log::open(dir.path(), LogConfig::default()) {
        Err(LogError::Locked { .. }) => {}
        other => panic!("expected Locked, got {:?}", other.map(|_| ())),
    }
    drop(log);
    // Closing and reopening in a tight loop never trips over sled's lingering lock.
    for _ in 0..20 {
        let log = converge_log::Log::open(dir.path(), LogConfig::default()).unwrap();
        drop(log);
    }
}

fn relayed(author: &converge_log::Author, bytes: Vec<u8>) -> NewEntry {
    NewEntry {
        at_ms: 1_700_000_000_000,
        author: author.clone(),
        kind: EntryKind::Relayed(bytes),
    }
}

fn relayed_changes_pass_causal_checks_and_bind_no_actor(b: Backend) {
    let log = new_log(&b);
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut a = Writer::new(1);
    log.append(&DOC, vec![change_entry(&alice, a.put("a", 1))])
        .unwrap();
    // Carol relays alice's next change: accepted, and alice keeps her actor.
    log.append(&DOC, vec![relayed(&carol, a.put("a", 2))])
        .unwrap();
    let rec = log.actor(&DOC, &[1; 16]).unwrap().unwrap();
    assert_eq!(rec.owner, Some(alice.user.clone()));
    assert_eq!(rec.max_change_seq, 2);
    // Relaying is still checked for causality: a skipped seq is refused, nothing written.
    let _skipped = a.put("a", 3);
    let err = log
        .append(&DOC, vec![relayed(&carol, a.put("a", 4))])
        .unwrap_err();
    assert!(matches!(err, LogError::SeqGap { .. }), "{err:?}");
    assert_eq!(log.head(&DOC).unwrap().last_seq, Seq(2));

    // An actor first seen through a relay stays unbound...
    let mut fresh = Writer::new(2);
    let b1 = fresh.put("b", 1);
    log.append(&DOC, vec![relayed(&carol, b1.clone())]).unwrap();
    assert_eq!(log.actor(&DOC, &[2; 16]).unwrap().unwrap().owner, None);
    // ... a relayed duplicate is acknowledged like any duplicate ...
    let again = log.append(&DOC, vec![relayed(&alice, b1)]).unwrap();
    assert!(matches!(again.results[0], AppendResult::Duplicate(Seq(3))));
    // ... and the first user to push as it directly becomes its owner; then nobody else may.
    log.append(&DOC, vec![change_entry(&bob, fresh.put("b", 2))])
        .unwrap()
        .durable
        .wait()
        .unwrap();
    assert_eq!(
        log.actor(&DOC, &[2; 16]).unwrap().unwrap().owner,
        Some(bob.user.clone())
    );
    let err = log
        .append(&DOC, vec![change_entry(&carol, fresh.put("b", 3))])
        .unwrap_err();
    assert!(matches!(err, LogError::ActorOwnedByOther { .. }), "{err:?}");

    // The ownership rebuilt from the entries after a reopen is the same.
    drop(log);
    let log = b.open(LogConfig::default());
    assert_eq!(
        log.actor(&DOC, &[2; 16]).unwrap().unwrap().owner,
        Some(bob.user.clone())
    );
    assert_eq!(
        log.actor(&DOC, &[1; 16]).unwrap().unwrap().owner,
        Some(alice.user.clone())
    );
    let kinds: Vec<&str> = log
        .read(&DOC, Seq(1), 10)
        .unwrap()
        .iter()
        .map(|e| e.kind.name())
        .collect();
    assert_eq!(
        kinds,
        ["change", "relayed change", "relayed change", "change"]
    );
}

fn bump_epoch_moves_the_stream_and_survives_reopen(b: Backend) {
    let log = new_log(&b);
    let mut a = Writer::new(1);
    log.append(&DOC, vec![change_entry(&user("alice"), a.put("a", 1))])
        .unwrap();
    let before = log.head(&DOC).unwrap().epoch;
    let (epoch, durable) = log.bump_epoch(&DOC).unwrap();
    durable.wait().unwrap();
    assert_eq!(epoch.get(), before.get() + 1);
    log.append(&DOC, vec![change_entry(&user("alice"), a.put("a", 2))])
        .unwrap()
        .durable
        .wait()
        .unwrap();
    drop(log);
    let log = b.open(LogConfig::default());
    let head = log.head(&DOC).unwrap();
    assert_eq!(head.epoch, epoch);
    assert_eq!(head.last_seq, Seq(2));
    let entries = log.read(&DOC, Seq(1), 10).unwrap();
    assert_eq!(entries[0].epoch, before);
    assert_eq!(entries[1].epoch, epoch);
    assert_eq!(log.verify(&DOC).unwrap(), 2);
    assert!(matches!(
        log.bump_epoch(&DocId::from_bytes([8; 16])),
        Err(LogError::UnknownDoc(_))
    ));
}
