//! The document store: local and remote changes, lazy catch-up, reload, eviction, snapshots.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use common::{Backend, Writer, forge, user};
use converge_log::{Author, DocStore, EventLog, LogConfig, StoreConfig};
use converge_proto::Seq;

fn title(store: &DocStore, id: &converge_proto::DocId) -> Option<String> {
    store
        .read(id, |d| {
            d.get(ROOT, "title")
                .unwrap()
                .map(|(v, _)| v.as_str().unwrap_or("").to_string())
        })
        .unwrap()
}

/// A store on a fresh in-memory log holding one document alice created (title "start"),
/// durably.
fn store_with_doc() -> (DocStore, converge_proto::DocId, Author) {
    let store = DocStore::new(
        Backend::mem().open(LogConfig::default()),
        StoreConfig::default(),
    );
    let me = user("alice");
    let (id, d) = store
        .create(&me, 1, |doc| doc.put(ROOT, "title", "start"))
        .unwrap();
    d.wait().unwrap();
    (store, id, me)
}

/// Takes one remote change from `author` (client 2) and waits until it is durable.
fn take_remote(store: &DocStore, id: &converge_proto::DocId, author: &Author, change: Vec<u8>) {
    store
        .apply_remote(id, author, 2, vec![change])
        .unwrap()
        .durable
        .wait()
        .unwrap();
}

/// Another writer's replica of the document, starting from what the store holds.
fn replica(store: &DocStore, id: &converge_proto::DocId, actor: u8) -> Writer {
    let mut remote = Writer::new(actor);
    let base = store.read(id, |d| d.save()).unwrap();
    remote.doc.load_incremental(&base).unwrap();
    remote
}

#[test]
fn local_changes_survive_a_restart() {
    let backend = Backend::sled();
    let me = user("alice");
    let id = {
        let store = DocStore::new(backend.open(LogConfig::default()), StoreConfig::default());
        let (id, d) = store
            .create(&me, 1, |doc| doc.put(ROOT, "title", "one"))
            .unwrap();
        d.wait().unwrap();
        for t in ["two", "three"] {
            let (_, a) = store
                .change(&id, &me, 2, |doc| doc.put(ROOT, "title", t).unwrap())
                .unwrap();
            a.unwrap().durable.wait().unwrap();
        }
        // A closure that changes nothing appends nothing.
        let (_, none) = store.change(&id, &me, 3, |_| ()).unwrap();
        assert!(none.is_none());
        id
    };
    let log = backend.open(LogConfig::default());
    assert_eq!(log.head(&id).unwrap().last_seq, Seq(3));
    let store = DocStore::new(log, StoreConfig::default());
    assert_eq!(title(&store, &id).as_deref(), Some("three"));
    assert_eq!(
        store
            .load_at(&id, Seq(1))
            .unwrap()
            .get(ROOT, "title")
            .unwrap()
            .unwrap()
            .0
            .as_str(),
        Some("one")
    );
    assert!(store.load_at(&id, Seq(9)).is_err());
}

#[test]
fn remote_changes_are_logged_at_once_and_applied_lazily_in_one_go() {
    let (store, id, _) = store_with_doc();
    let bob = user("bob");
    // Bob's replica starts from the same document.
    let mut remote = replica(&store, &id, 7);
    for i in 0..3 {
        let c = remote.put("count", i);
        take_remote(&store, &id, &bob, c);
    }
    assert_eq!(
        store.log().head(&id).unwrap().last_seq,
        Seq(4),
        "logged at once"
    );
    assert_eq!(
        store.pending_entries(&id).unwrap(),
        Some(3),
        "not applied yet"
    );
    let count = store
        .read(&id, |d| d.get(ROOT, "count").unwrap().unwrap().0.as_i64())
        .unwrap();
    assert_eq!(count, Some(2));
    assert_eq!(store.pending_entries(&id).unwrap(), Some(0));
    // Re-sending the same changes is idempotent.
    let again = remote
        .doc
        .get_changes(&[])
        .iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect();
    store.apply_remote(&id, &bob, 3, again).unwrap();
    assert_eq!(store.log().head(&id).unwrap().last_seq, Seq(4));
}

#[test]
fn idle_documents_are_evicted_and_reloaded() {
    let backend = Backend::sled();
    let config = StoreConfig {
        memory_budget_bytes: 1,
        ..StoreConfig::default()
    };
    let store = DocStore::new(backend.open(LogConfig::default()), config);
    let me = user("alice");
    let (a, _) = store.create(&me, 1, |d| d.put(ROOT, "title", "A")).unwrap();
    let (b, _) = store.create(&me, 1, |d| d.put(ROOT, "title", "B")).unwrap();
    assert_eq!(
        store.loaded(),
        vec![b],
        "the budget holds one document at most"
    );
    assert_eq!(title(&store, &a).as_deref(), Some("A"));
    assert_eq!(store.loaded(), vec![a]);
    assert_eq!(title(&store, &b).as_deref(), Some("B"));
    store.evict(&b);
    assert!(store.loaded().is_empty());
    let generous = DocStore::new(store.log().clone(), StoreConfig::default());
    title(&generous, &a);
    title(&generous, &b);
    assert_eq!(generous.loaded().len(), 2);
    assert!(generous.memory_estimate() > 0);
}

#[test]
fn snapshots_and_compaction_keep_the_document_whole() {
    let backend = Backend::sled();
    let config = LogConfig {
        snapshot_every_entries: 10,
        compact_on_snapshot: true,
        ..LogConfig::default()
    };
    let store = DocStore::new(backend.open(config.clone()), StoreConfig::default());
    let me = user("alice");
    let (id, _) = store.create(&me, 1, |d| d.put(ROOT, "n", 0)).unwrap();
    let mut snapshots = 0;
    for i in 1..=25 {
        store
            .change(&id, &me, 2, |d| d.put(ROOT, "n", i).unwrap())
            .unwrap();
        if store.snapshot_if_due(&id).unwrap() {
            snapshots += 1;
        }
    }
    assert_eq!(snapshots, 2);
    let head = store.log().head(&id).unwrap();
    assert_eq!(head.snapshot_seq, Some(Seq(20)));
    assert_eq!(head.compacted_through, Seq(20));
    drop(store);
    let store = DocStore::new(backend.open(config), StoreConfig::default());
    let n = store
        .read(&id, |d| d.get(ROOT, "n").unwrap().unwrap().0.as_i64())
        .unwrap();
    assert_eq!(n, Some(25));
    assert!(
        store.load_at(&id, Seq(3)).is_err(),
        "compacted history is gone"
    );
    assert!(store.load_at(&id, Seq(22)).is_ok());
}

#[test]
fn remote_changes_must_arrive_in_causal_order() {
    let backend = Backend::mem();
    let store = DocStore::new(backend.open(LogConfig::default()), StoreConfig::default());
    let me = user("alice");
    let (id, _) = store.create(&me, 1, |d| d.put(ROOT, "title", "x")).unwrap();
    let mut w = Writer::new(9);
    let first = w.put("a", 1);
    let second = w.put("a", 2);
    // The log keeps every stream applicable by every replica: a change whose predecessor is
    // missing is refused, and nothing is logged.
    let before = store.log().head(&id).unwrap();
    assert!(
        store
            .apply_remote(&id, &user("bob"), 1, vec![second.clone()])
            .is_err()
    );
    assert_eq!(store.log().head(&id).unwrap(), before);
    store
        .apply_remote(&id, &user("bob"), 1, vec![first, second])
        .unwrap();
    assert!(store.snapshot(&id).unwrap());
    let a = store
        .read(&id, |d| d.get(ROOT, "a").unwrap().unwrap().0.as_i64())
        .unwrap();
    assert_eq!(a, Some(2));
}

#[tokio::test]
async fn async_callers_run_store_work_on_blocking_threads() {
    let backend = Backend::mem();
    let store = Arc::new(DocStore::new(
        backend.open(LogConfig::default()),
        StoreConfig::default(),
    ));
    let me = user("alice");
    let (id, durable) = store
        .blocking(move |s| s.create(&me, 1, |d| d.put(ROOT, "title", "async")).unwrap())
        .await
        .unwrap();
    durable.await.unwrap();
    let t = store.blocking(move |s| title(s, &id)).await.unwrap();
    assert_eq!(t.as_deref(), Some("async"));
}

#[test]
fn held_back_local_changes_are_logged_in_groups_and_on_demand() {
    let backend = Backend::sled();
    let config = StoreConfig {
        local_batch: 4,
        ..StoreConfig::default()
    };
    let store = DocStore::new(backend.open(LogConfig::default()), config);
    let me = user("alice");
    let (id, _) = store.create(&me, 1, |d| d.put(ROOT, "n", 0)).unwrap();
    let mut appended = Vec::new();
    for i in 1..=10 {
        let (_, a) = store
            .change(&id, &me, 2, |d| d.put(ROOT, "n", i).unwrap())
            .unwrap();
        appended.extend(a);
    }
    assert_eq!(appended.len(), 2, "two full groups of four");
    assert_eq!(appended[0].results.len(), 4);
    assert_eq!(store.log().head(&id).unwrap().last_seq, Seq(9));
    // Reads see held-back changes; the log gets them on demand, one entry per change.
    let n = store
        .read(&id, |d| d.get(ROOT, "n").unwrap().unwrap().0.as_i64())
        .unwrap();
    assert_eq!(n, Some(10));
    let rest = store.flush_local(&id).unwrap().unwrap();
    assert_eq!(rest.results.len(), 2);
    rest.durable.wait().unwrap();
    assert_eq!(store.log().head(&id).unwrap().last_seq, Seq(11));
    assert!(store.flush_local(&id).unwrap().is_none());
    // Remote changes arriving in between do not get logged twice.
    let mut remote = Writer::new(8);
    remote
        .doc
        .load_incremental(&store.read(&id, |d| d.save()).unwrap())
        .unwrap();
    store
        .apply_remote(&id, &user("bob"), 3, vec![remote.put("r", 1)])
        .unwrap();
    store
        .change(&id, &me, 4, |d| d.put(ROOT, "n", 11).unwrap())
        .unwrap();
    drop(store); // logs the held-back change
    let log = backend.open(LogConfig::default());
    assert_eq!(log.head(&id).unwrap().last_seq, Seq(13));
    let store = DocStore::new(log, StoreConfig::default());
    let n = store
        .read(&id, |d| d.get(ROOT, "n").unwrap().unwrap().0.as_i64())
        .unwrap();
    assert_eq!(n, Some(11));
}

#[test]
fn vacuum_gives_back_the_space_of_compacted_entries() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let config = LogConfig {
        compact_on_snapshot: true,
        ..LogConfig::default()
    };
    let id = {
        let log: Arc<converge_log::Log> =
            Arc::new(converge_log::SledLog::open(&path, config.clone()).unwrap());
        let store = DocStore::new(log.clone(), StoreConfig::default());
        let me = user("alice");
        let (id, _) = store.create(&me, 1, |d| d.put(ROOT, "n", 0)).unwrap();
        for i in 0..2000 {
            store
                .change(&id, &me, 2, |d| {
                    d.put(ROOT, "blob", "x".repeat(200 + i % 7)).unwrap()
                })
                .unwrap();
        }
        assert!(store.snapshot(&id).unwrap());
        assert_eq!(log.head(&id).unwrap().compacted_through, Seq(2001));
        id
    };
    let (before, after) = converge_log::Log::vacuum(&path).unwrap();
    assert!(after < before, "{after} < {before}");
    assert!(!dir.path().join("log.vacuum").exists());
    assert!(!dir.path().join("log.vacuum-old").exists());
    let log = Arc::new(converge_log::SledLog::open(&path, config).unwrap());
    assert_eq!(log.head(&id).unwrap().last_seq, Seq(2001));
    assert_eq!(log.verify(&id).unwrap(), 0);
    let store = DocStore::new(log, StoreConfig::default());
    let blob = store
        .read(&id, |d| d.get(ROOT, "blob").unwrap().unwrap().0.to_string())
        .unwrap();
    assert!(blob.contains("xxx"));
    assert!(converge_log::Log::vacuum(dir.path().join("nope")).is_err());
}

#[test]
fn vacuum_takes_a_path_with_a_trailing_slash() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log");
    let id = {
        let log: Arc<converge_log::Log> =
            Arc::new(converge_log::SledLog::open(&path, LogConfig::default()).unwrap());
        let store = DocStore::new(log, StoreConfig::default());
        let (id, _) = store
            .create(&user("alice"), 1, |d| d.put(ROOT, "n", 7))
            .unwrap();
        id
    };
    let slashed = format!("{}/", path.display());
    converge_log::Log::vacuum(&slashed).unwrap();
    // The copy was built beside the log, not inside it, and nothing is left over.
    assert!(!path.join(".vacuum").exists());
    assert!(!dir.path().join("log.vacuum").exists());
    assert!(!dir.path().join("log.vacuum-old").exists());
    let log = Arc::new(converge_log::SledLog::open(&slashed, LogConfig::default()).unwrap());
    assert_eq!(log.head(&id).unwrap().last_seq, Seq(1));
}

#[test]
fn a_long_tail_is_snapshotted_for_a_joiner() {
    let (store, id, me) = store_with_doc();
    for i in 0..30 {
        let (_, a) = store
            .change(&id, &me, 1, |doc| doc.put(ROOT, "count", i).unwrap())
            .unwrap();
        a.unwrap().durable.wait().unwrap();
    }
    let tail = store.log().tail(&id).unwrap();
    assert_eq!((tail.entries, tail.snapshot_bytes), (31, 0));
    assert!(tail.change_bytes > 0);
    // Not over the bound: nothing written.
    assert!(!store.snapshot_if_tail_over(&id, 31).unwrap());
    assert!(store.log().snapshot(&id).unwrap().is_none());
    // Over it: a snapshot of everything, and the tail is empty.
    assert!(store.snapshot_if_tail_over(&id, 10).unwrap());
    let snap = store.log().snapshot(&id).unwrap().unwrap();
    assert_eq!(snap.seq, Seq(31));
    let tail = store.log().tail(&id).unwrap();
    assert_eq!(tail.entries, 0);
    assert_eq!(tail.snapshot_bytes, snap.bytes.len() as u64);
    // Over the entry bound, a snapshot is written only for a tail of over a quarter of the
    // snapshot's bytes.
    let (_, a) = store
        .change(&id, &me, 1, |doc| doc.put(ROOT, "count", 99).unwrap())
        .unwrap();
    a.unwrap().durable.wait().unwrap();
    let tail = store.log().tail(&id).unwrap();
    assert_eq!(tail.entries, 1);
    assert_eq!(
        store.snapshot_if_tail_over(&id, 0).unwrap(),
        tail.change_bytes > tail.snapshot_bytes / 4
    );
    let loaded = automerge::AutoCommit::load(&snap.bytes).unwrap();
    assert_eq!(
        loaded.get(ROOT, "count").unwrap().unwrap().0.as_i64(),
        Some(29)
    );
}

#[test]
fn a_quarantined_change_does_not_stop_snapshots() {
    let (store, id, _) = store_with_doc();
    let bob = user("bob");
    let mut remote = replica(&store, &id, 7);
    let c1 = remote.put("a", 1);
    // Bob's second change writes into an "object" that is his first change's put (no object
    // was ever made there): it passes the log's checks, and no replica can apply it.
    let actor = automerge::ActorId::from(vec![7u8; 16]);
    let c1_op = automerge::Change::from_bytes(c1.clone())
        .unwrap()
        .start_op()
        .get();
    let x = forge(&remote.put("b", 2), |c| {
        c.operations[0].obj =
            automerge::legacy::ObjectId::Id(automerge::legacy::OpId(c1_op, actor.clone()));
    });
    // And a third that builds on it (valid on its own, so it waits for the second forever).
    let y = forge(&remote.put("c", 3), |c| {
        c.deps = vec![automerge::Change::from_bytes(x.clone()).unwrap().hash()];
    });
    for c in [c1, x, y] {
        take_remote(&store, &id, &bob, c);
    }
    assert_eq!(store.log().head(&id).unwrap().last_seq, Seq(4));
    // The document loads without the forged change, and says so.
    let a = store
        .read(&id, |d| d.get(ROOT, "a").unwrap().map(|(v, _)| v.as_i64()))
        .unwrap();
    assert_eq!(a, Some(Some(1)));
    assert_eq!(
        store.quarantined(&id).len(),
        1,
        "{:?}",
        store.quarantined(&id)
    );
    // Snapshots go on: the change waiting for the quarantined one can never apply anywhere.
    assert!(
        store.snapshot(&id).unwrap(),
        "no snapshot while a change waits for a quarantined one"
    );
    let snap = store.log().snapshot(&id).unwrap().unwrap();
    assert_eq!(snap.seq, Seq(4));
    let loaded = automerge::AutoCommit::load(&snap.bytes).unwrap();
    assert_eq!(
        loaded.get(ROOT, "a").unwrap().map(|(v, _)| v.as_i64()),
        Some(Some(1))
    );
}
