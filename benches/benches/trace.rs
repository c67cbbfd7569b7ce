//! The editing trace, one change per edit, through the document store with durable (fsync)
//! appends, pipelined as an editor would (no wait per edit; every ack awaited at the end),
//! beside raw automerge making the same changes in memory. Also prints bytes on disk per
//! logical byte (bytes of the changes logged) before and after snapshot + compaction.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use automerge::transaction::Transactable;
use automerge::{ObjType, ROOT, ReadDoc};
use converge_benches::{Trace, apply_edit, load_trace, text_doc};
use converge_log::{Author, DocStore, EventLog, Log, LogConfig, StoreConfig};
use converge_proto::{Seq, UserId};
use criterion::{Criterion, criterion_group, criterion_main};

fn raw(trace: &Trace) -> Duration {
    let start = Instant::now();
    let (mut doc, text) = text_doc(1);
    for txn in &trace.txns {
        for p in &txn.patches {
            apply_edit(&mut doc, &text, p);
        }
        doc.commit();
    }
    let elapsed = start.elapsed();
    assert_eq!(doc.text(&text).unwrap(), trace.end_content);
    elapsed
}

/// Runs the trace through a store; returns the time and the log for size measurements.
fn through_store(
    trace: &Trace,
    dir: &std::path::Path,
    local_batch: usize,
) -> (Duration, Arc<Log>, converge_proto::DocId, u64) {
    let log = Arc::new(Log::open(dir, LogConfig::default()).unwrap());
    // An editor streaming keystrokes: each edit is its own change and its own log entry,
    // handed to the log in groups of `local_batch` (StoreConfig::local_batch).
    let store = DocStore::new(
        log.clone(),
        StoreConfig {
            local_batch,
            ..StoreConfig::default()
        },
    );
    let me = Author::user(UserId::new("writer").unwrap());
    let start = Instant::now();
    let (id, created) = store
        .create(&me, 0, |d| {
            d.put_object(ROOT, "text", ObjType::Text).map(|_| ())
        })
        .unwrap();
    let text = store
        .read(&id, |d| d.get(ROOT, "text").unwrap().unwrap().1)
        .unwrap();
    let mut pending = Vec::with_capacity(trace.txns.len() + 1);
    pending.push(created);
    for txn in &trace.txns {
        let (_, appended) = store
            .change(&id, &me, 0, |d| {
                for (pos, del, ins) in &txn.patches {
                    d.splice_text(&text, *pos, *del as isize, ins).unwrap();
                }
            })
            .unwrap();
        pending.extend(appended.map(|a| a.durable));
    }
    pending.extend(store.flush_local(&id).unwrap().map(|a| a.durable));
    for d in pending {
        d.wait().unwrap();
    }
    let elapsed = start.elapsed();
    let got = store.read(&id, |d| d.text(&text).unwrap()).unwrap();
    assert_eq!(got, trace.end_content);
    let stats = log.stats(&id).unwrap();
    assert_eq!(
        stats.changes,
        trace.txns.len() as u64 + 1,
        "one change per edit"
    );
    let logical = stats.change_bytes;
    (elapsed, log, id, logical)
}

fn trace_bench(c: &mut Criterion) {
    let trace = load_trace();
    eprintln!("trace: {} edits", trace.txns.len());

    // One run of each first (the figures quoted in docs/benchmarks.md come from criterion
    // below; this line is a quick look), then bytes on disk: after the trace, then after a
    // snapshot and compaction.
    {
        let raw_once = raw(&trace);
        eprintln!("automerge in memory, one run: {raw_once:.2?}");
        let dir = tempfile::tempdir().unwrap();
        let (elapsed, log, id, logical) = through_store(&trace, dir.path(), 64);
        log.flush().unwrap();
        let before = log.size_on_disk().unwrap();
        let store = DocStore::new(log.clone(), StoreConfig::default());
        assert!(store.snapshot(&id).unwrap());
        log.compact(&id).unwrap();
        log.flush().unwrap();
        drop(store);
        let after_live = log.size_on_disk().unwrap();
        drop(log);
        // sled reuses freed space but never shrinks its files; vacuum rewrites the live
        // records into a fresh store (what `converge compact` does).
        let (_, after) = Log::vacuum(dir.path()).unwrap();
        let log = Log::open(dir.path(), LogConfig::default()).unwrap();
        let head = log.head(&id).unwrap();
        assert_eq!(head.compacted_through, head.last_seq);
        eprintln!(
            "trace through the store: {elapsed:.2?}; logical bytes (changes) {logical}; on disk before compaction {before} ({:.2}x), after compaction {after_live} ({:.2}x), after vacuum {after} ({:.2}x); snapshot at seq {}",
            before as f64 / logical as f64,
            after_live as f64 / logical as f64,
            after as f64 / logical as f64,
            head.snapshot_seq.unwrap_or(Seq(0)),
        );
    }

    let mut g = c.benchmark_group("editing_trace_260k");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(60));
    for batch in [64, 256] {
        g.bench_function(
            format!("converge_store_durable_pipelined_batch{batch}"),
            |b| {
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| {
                            let dir = tempfile::tempdir().unwrap();
                            through_store(&trace, dir.path(), batch).0
                        })
                        .sum()
                })
            },
        );
    }
    g.bench_function("automerge_in_memory", |b| {
        b.iter_custom(|iters| (0..iters).map(|_| raw(&trace)).sum())
    });
    g.finish();
}

criterion_group!(benches, trace_bench);
criterion_main!(benches);
