//! Durable (fsync) appends: 64 concurrent appenders sharing flushes (group commit), one
//! appender alone, and the reference: a raw sled loop of apply_batch(256) + flush (the
//! issue's), and the same loop with the fdatasync the log adds after each flush.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use converge_benches::sized_changes;
use converge_log::{Author, EntryKind, EventLog, Log, LogConfig, NewEntry};
use converge_proto::{DocId, Epoch, UserId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const APPENDERS: usize = 64;
const PER_APPENDER: usize = 200;
const SINGLE: usize = 2_000;

/// `appenders` new documents for this round, created and flushed before the clock starts.
fn fresh_docs(log: &Arc<Log>, appenders: usize, round: u64) -> Vec<DocId> {
    let docs = (0..appenders)
        .map(|a| {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&round.to_be_bytes());
            id[8..16].copy_from_slice(&(a as u64).to_be_bytes());
            let d = DocId::from_bytes(id);
            drop(log.create(d, Epoch(1)).unwrap());
            d
        })
        .collect();
    log.flush().unwrap();
    docs
}

fn run_appenders(
    log: &Arc<Log>,
    changes: &Arc<Vec<Vec<u8>>>,
    appenders: usize,
    per: usize,
    round: u64,
) -> Duration {
    let docs = fresh_docs(log, appenders, round);
    let before = log.flush_stats();
    let start = Instant::now();
    std::thread::scope(|s| {
        for doc in &docs {
            let log = log.clone();
            let changes = changes.clone();
            s.spawn(move || {
                let author = Author::user(UserId::new("bench").unwrap());
                for c in changes.iter().take(per) {
                    let e = NewEntry {
                        at_ms: 1,
                        author: author.clone(),
                        kind: EntryKind::Change(c.clone()),
                    };
                    log.append(doc, vec![e]).unwrap().durable.wait().unwrap();
                }
            });
        }
    });
    let took = start.elapsed();
    report_flushes(log, before, appenders * per, took);
    took
}

/// Prints how many appends shared each flush and how long the flushes took, once per shape.
fn report_flushes(log: &Log, before: converge_log::FlushStats, appends: usize, took: Duration) {
    use std::sync::Mutex;
    static SEEN: Mutex<Vec<usize>> = Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap();
    if seen.contains(&appends) {
        return;
    }
    seen.push(appends);
    let after = log.flush_stats();
    let flushes = after.flushes - before.flushes;
    let busy_us = after.total_us - before.total_us;
    eprintln!(
        "{appends} appends in {took:?}: {flushes} flushes, {:.1} appends each, mean flush {} us, flushing {:.0}% of the time; slowest flush since the log opened {} us",
        appends as f64 / flushes.max(1) as f64,
        busy_us / flushes.max(1),
        busy_us as f64 / took.as_micros() as f64 * 100.0,
        after.max_us
    );
}

/// The same load as tasks on a 2-thread tokio runtime (how the server will append): each task
/// appends, then awaits its Durable, so no OS thread blocks per append.
fn run_tasks(
    rt: &tokio::runtime::Runtime,
    log: &Arc<Log>,
    changes: &Arc<Vec<Vec<u8>>>,
    appenders: usize,
    per: usize,
    round: u64,
) -> Duration {
    let docs = fresh_docs(log, appenders, round);
    let start = Instant::now();
    rt.block_on(async {
        let tasks: Vec<_> = docs
            .into_iter()
            .map(|doc| {
                let log = log.clone();
                let changes = changes.clone();
                tokio::spawn(async move {
                    let author = Author::user(UserId::new("bench").unwrap());
                    for c in changes.iter().take(per) {
                        let e = NewEntry {
                            at_ms: 1,
                            author: author.clone(),
                            kind: EntryKind::Change(c.clone()),
                        };
                        log.append(&doc, vec![e]).unwrap().durable.await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
    });
    start.elapsed()
}

fn durable(c: &mut Criterion) {
    let changes = Arc::new(sized_changes(SINGLE, 128));
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
    let mut round = 0;

    let mut g = c.benchmark_group("append_durable");
    g.sample_size(10);
    g.throughput(Throughput::Elements((APPENDERS * PER_APPENDER) as u64));
    g.bench_function("converge_64_appenders", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    round += 1;
                    run_appenders(&log, &changes, APPENDERS, PER_APPENDER, round)
                })
                .sum()
        })
    });
    // Checkpoints (sled's flush, every 8 MiB of journal) are the slow flushes.
    let stats = log.flush_stats();
    eprintln!(
        "after every round so far: {} flushes, mean {} us, slowest {} us",
        stats.flushes,
        stats.total_us / stats.flushes.max(1),
        stats.max_us
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    g.bench_function("converge_64_async_appenders", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    round += 1;
                    run_tasks(&rt, &log, &changes, APPENDERS, PER_APPENDER, round)
                })
                .sum()
        })
    });
    g.throughput(Throughput::Elements(SINGLE as u64));
    g.bench_function("converge_1_appender", |b| {
        b.iter_custom(|iters| {
            (0..iters)
                .map(|_| {
                    round += 1;
                    run_appenders(&log, &changes, 1, SINGLE, round)
                })
                .sum()
        })
    });

    let raw_dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(raw_dir.path())
        .flush_every_ms(None)
        .open()
        .unwrap();
    let total = APPENDERS * PER_APPENDER;
    g.throughput(Throughput::Elements(total as u64));
    // sled's log file, for the second reference: sled's flush ends with sync_file_range,
    // which the log follows with an fdatasync (see converge-log's disk_sync.rs).
    let log_file = std::fs::File::open(raw_dir.path().join("db")).unwrap();
    let mut raw_round = 0u64;
    for (name, sync) in [
        ("raw_sled_batch256_flush", false),
        ("raw_sled_batch256_flush_fdatasync", true),
    ] {
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    raw_round += 1;
                    let start = Instant::now();
                    for chunk in 0..total / 256 {
                        let mut batch = sled::Batch::default();
                        for i in 0..256 {
                            let n = chunk * 256 + i;
                            let mut key = [0u8; 25];
                            key[0] = b'E';
                            key[1..9].copy_from_slice(&raw_round.to_be_bytes());
                            key[17..25].copy_from_slice(&(n as u64).to_be_bytes());
                            batch.insert(&key[..], changes[n % changes.len()].as_slice());
                        }
                        db.apply_batch(batch).unwrap();
                        db.flush().unwrap();
                        if sync {
                            log_file.sync_data().unwrap();
                        }
                    }
                    elapsed += start.elapsed();
                }
                elapsed
            })
        });
    }
    g.finish();
}

criterion_group!(benches, durable);
criterion_main!(benches);
