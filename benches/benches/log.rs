//! Buffered append of ~128-byte changes, beside raw sled inserts of the same bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use converge_benches::sized_changes;
use converge_log::{Author, Durability, EntryKind, EventLog, Log, LogConfig, NewEntry};
use converge_proto::{DocId, Epoch, UserId};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const N: usize = 10_000;

fn buffered() -> LogConfig {
    LogConfig {
        durability: Durability::Buffered {
            every: Duration::from_millis(500),
        },
        ..LogConfig::default()
    }
}

fn append_buffered(c: &mut Criterion) {
    let changes = sized_changes(N, 128);
    let mean = changes.iter().map(Vec::len).sum::<usize>() / N;
    eprintln!("change size: {mean} bytes on average");
    let author = Author::user(UserId::new("bench").unwrap());
    let mut g = c.benchmark_group("append_buffered_128B");
    g.throughput(Throughput::Elements(N as u64));
    g.sample_size(10);

    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), buffered()).unwrap();
    let mut doc_n = 0u64;
    g.bench_function("converge_change_append", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                doc_n += 1;
                let mut id = [0u8; 16];
                id[..8].copy_from_slice(&doc_n.to_be_bytes());
                let doc = DocId::from_bytes(id);
                drop(log.create(doc, Epoch(1)).unwrap());
                let start = Instant::now();
                for c in &changes {
                    let e = NewEntry {
                        at_ms: 1,
                        author: author.clone(),
                        kind: EntryKind::Change(c.clone()),
                    };
                    drop(log.append(&doc, vec![e]).unwrap());
                }
                total += start.elapsed();
            }
            total
        })
    });

    let raw_dir = tempfile::tempdir().unwrap();
    let db = sled::Config::new()
        .path(raw_dir.path())
        .flush_every_ms(Some(500))
        .open()
        .unwrap();
    let mut round = 0u64;
    g.bench_function("raw_sled_insert", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                round += 1;
                let start = Instant::now();
                for (i, c) in changes.iter().enumerate() {
                    let mut key = [0u8; 25];
                    key[0] = b'E';
                    key[1..9].copy_from_slice(&round.to_be_bytes());
                    key[17..25].copy_from_slice(&(i as u64).to_be_bytes());
                    db.insert(key, c.as_slice()).unwrap();
                }
                total += start.elapsed();
            }
            total
        })
    });
    g.finish();
}

criterion_group!(benches, append_buffered);
criterion_main!(benches);
