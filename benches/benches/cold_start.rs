//! Cold start: reopen a log of 1M events over 1,000 documents until it is ready to serve
//! (indexes open, nothing materialized); then materialize all 1,000 documents, beside
//! automerge's own load of the same snapshots plus tails.
//!
//! Each document holds the first 999 edits of the editing trace plus the change that creates
//! its text (1,000 changes), with a snapshot at seq 900 and a 100-change tail.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::AutoCommit;
use converge_benches::{load_trace, trace_changes};
use converge_log::{
    Author, DocStore, Durability, EntryKind, EventLog, Log, LogConfig, NewEntry, StoreConfig,
};
use converge_proto::{DocId, Epoch, Seq, UserId};
use criterion::{Criterion, criterion_group, criterion_main};

const DOCS: usize = 1_000;
const PER_DOC: usize = 1_000;
const SNAPSHOT_AT: usize = 900;

fn doc_id(i: usize) -> DocId {
    let mut b = [0u8; 16];
    b[8..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    DocId::from_bytes(b)
}

fn build(dir: &std::path::Path, changes: &[Vec<u8>], snapshot: &[u8]) {
    let config = LogConfig {
        durability: Durability::Buffered {
            every: Duration::from_secs(1),
        },
        ..LogConfig::default()
    };
    let log = Log::open(dir, config).unwrap();
    let author = Author::user(UserId::new("bench").unwrap());
    let t = Instant::now();
    for i in 0..DOCS {
        let doc = doc_id(i);
        drop(log.create(doc, Epoch(1)).unwrap());
        let entries = changes
            .iter()
            .map(|c| NewEntry {
                at_ms: 1,
                author: author.clone(),
                kind: EntryKind::Change(c.clone()),
            })
            .collect();
        drop(log.append(&doc, entries).unwrap());
        drop(
            log.put_snapshot(&doc, Seq(SNAPSHOT_AT as u64), snapshot.to_vec())
                .unwrap(),
        );
    }
    log.flush().unwrap();
    eprintln!(
        "built {} events over {DOCS} documents in {:.1?}; {} MB on disk",
        DOCS * PER_DOC,
        t.elapsed(),
        log.size_on_disk().unwrap() >> 20
    );
}

fn cold_start(c: &mut Criterion) {
    let trace = load_trace();
    let changes = trace_changes(&trace, PER_DOC - 1);
    assert_eq!(changes.len(), PER_DOC);
    let mut at_snapshot = AutoCommit::new();
    let first: Vec<automerge::Change> = changes[..SNAPSHOT_AT]
        .iter()
        .map(|c| automerge::Change::from_bytes(c.clone()).unwrap())
        .collect();
    at_snapshot.apply_changes(first).unwrap();
    let snapshot = at_snapshot.save();
    let tail: Vec<u8> = changes[SNAPSHOT_AT..].concat();

    let dir = tempfile::tempdir().unwrap();
    build(dir.path(), &changes, &snapshot);

    let mut g = c.benchmark_group("cold_start_1M_events_1k_docs");
    g.sample_size(10);
    g.bench_function("open_until_ready", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let log = Log::open(dir.path(), LogConfig::default()).unwrap();
                assert_eq!(log.docs().unwrap().len(), DOCS);
                total += start.elapsed();
                drop(log);
            }
            total
        })
    });

    let log: Arc<Log> = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
    g.bench_function("converge_materialize_all", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let store = DocStore::new(log.clone(), StoreConfig::default());
                let start = Instant::now();
                for i in 0..DOCS {
                    let heads = store.read(&doc_id(i), |d| d.get_heads()).unwrap();
                    assert_eq!(heads.len(), 1);
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.bench_function("automerge_load_snapshot_plus_tail", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let docs: Vec<AutoCommit> = (0..DOCS)
                    .map(|_| {
                        let mut d = AutoCommit::load(&snapshot).unwrap();
                        d.load_incremental(&tail).unwrap();
                        d
                    })
                    .collect();
                total += start.elapsed();
                drop(docs);
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, cold_start);
criterion_main!(benches);
