//! Model-based test of the event log: random appends, duplicate appends, snapshots,
//! compaction, reads and reboots, checked step by step against a Vec model.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use converge_log::{AppendResult, EventLog, Log, LogConfig, MemStorage, SledLog};
use converge_proto::{ChangeHash, DocId, Epoch, Seq};
use converge_tests::{Writer, change_entry, user};
use proptest::prelude::*;
use proptest::sample::Index;

const DOCS: usize = 2;
const WRITERS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    Append {
        doc: usize,
        writer: usize,
        n: usize,
    },
    Duplicate {
        doc: usize,
        pick: Index,
    },
    Snapshot {
        doc: usize,
        back: usize,
    },
    Compact {
        doc: usize,
    },
    Read {
        doc: usize,
        from: Index,
        limit: usize,
    },
    Reboot,
    /// Memory backend: lose everything not flushed (nothing, since every append waited).
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..DOCS, 0..WRITERS, 1usize..6).prop_map(|(doc, writer, n)| Op::Append { doc, writer, n }),
        2 => (0..DOCS, any::<Index>()).prop_map(|(doc, pick)| Op::Duplicate { doc, pick }),
        1 => (0..DOCS, 0usize..4).prop_map(|(doc, back)| Op::Snapshot { doc, back }),
        1 => (0..DOCS).prop_map(|doc| Op::Compact { doc }),
        2 => (0..DOCS, any::<Index>(), 1usize..20).prop_map(|(doc, from, limit)| Op::Read { doc, from, limit }),
        1 => Just(Op::Reboot),
        1 => Just(Op::Crash),
    ]
}

#[derive(Debug, Default, Clone)]
struct DocModel {
    /// Change bytes and hash, in log order (seq = index + 1).
    changes: Vec<(Vec<u8>, ChangeHash)>,
    compacted_through: u64,
    snapshot: Option<(u64, Vec<u8>)>,
}

enum Store {
    Sled(tempfile::TempDir),
    Mem(MemStorage),
}

impl Store {
    fn open(&self) -> Arc<Log> {
        Arc::new(match self {
            Store::Sled(d) => SledLog::open(d.path(), LogConfig::default()).unwrap(),
            Store::Mem(m) => Log::open_in_memory(m, LogConfig::default()).unwrap(),
        })
    }
}

fn doc_id(i: usize) -> DocId {
    DocId::from_bytes([i as u8 + 1; 16])
}

fn run(store: Store, ops: Vec<Op>) -> Result<(), TestCaseError> {
    let mut log = store.open();
    let mut model = vec![DocModel::default(); DOCS];
    let mut writers: Vec<Vec<Writer>> = (0..DOCS)
        .map(|d| {
            (0..WRITERS)
                .map(|w| Writer::new(&[(d * 16 + w + 1) as u8; 16]))
                .collect()
        })
        .collect();
    for d in 0..DOCS {
        log.create(doc_id(d), Epoch(1)).unwrap().wait().unwrap();
    }
    let mut counter = 0i64;
    for op in ops {
        match op {
            Op::Append { doc, writer, n } => {
                let author = user(&format!("user{writer}"));
                let batch: Vec<_> = (0..n)
                    .map(|_| {
                        counter += 1;
                        change_entry(&author, writers[doc][writer].put("k", counter))
                    })
                    .collect();
                let appended = log.append(&doc_id(doc), batch.clone()).unwrap();
                appended.durable.wait().unwrap();
                for (entry, result) in batch.into_iter().zip(appended.results) {
                    let m = &mut model[doc];
                    let converge_log::EntryKind::Change(bytes) = entry.kind else {
                        unreachable!()
                    };
                    let hash = ChangeHash(
                        automerge::Change::from_bytes(bytes.clone())
                            .unwrap()
                            .hash()
                            .0,
                    );
                    m.changes.push((bytes, hash));
                    prop_assert_eq!(result, AppendResult::Appended(Seq(m.changes.len() as u64)));
                }
            }
            Op::Duplicate { doc, pick } => {
                let m = &model[doc];
                if m.changes.is_empty() {
                    continue;
                }
                let i = pick.index(m.changes.len());
                let author = user("someone-else");
                let r = log
                    .append(
                        &doc_id(doc),
                        vec![change_entry(&author, m.changes[i].0.clone())],
                    )
                    .unwrap();
                r.durable.wait().unwrap();
                prop_assert_eq!(r.results, vec![AppendResult::Duplicate(Seq(i as u64 + 1))]);
            }
            Op::Snapshot { doc, back } => {
                let m = &mut model[doc];
                let last = m.changes.len() as u64;
                let Some(seq) = last.checked_sub(back as u64) else {
                    continue;
                };
                if seq == 0 || seq < m.compacted_through {
                    prop_assert!(log.put_snapshot(&doc_id(doc), Seq(seq), vec![1]).is_err());
                    continue;
                }
                let bytes = vec![seq as u8; 8];
                log.put_snapshot(&doc_id(doc), Seq(seq), bytes.clone())
                    .unwrap()
                    .wait()
                    .unwrap();
                if m.snapshot.as_ref().is_none_or(|(s, _)| *s < seq) {
                    m.snapshot = Some((seq, bytes));
                }
            }
            Op::Compact { doc } => {
                let m = &mut model[doc];
                let dropped = log.compact(&doc_id(doc)).unwrap();
                // Whole pages (one per append) go; a page straddling the snapshot stays.
                let now = log.head(&doc_id(doc)).unwrap().compacted_through.get();
                let target = m.snapshot.as_ref().map_or(m.compacted_through, |(s, _)| *s);
                prop_assert!(now <= target && now >= m.compacted_through);
                prop_assert_eq!(dropped, now - m.compacted_through);
                m.compacted_through = now;
            }
            Op::Read { doc, from, limit } => {
                let m = &model[doc];
                let last = m.changes.len() as u64;
                if last == 0 {
                    continue;
                }
                let from = from.index(last as usize) as u64 + 1;
                let got = log.read(&doc_id(doc), Seq(from), limit);
                if from <= m.compacted_through {
                    prop_assert!(got.is_err());
                    continue;
                }
                let got = got.unwrap();
                let want: Vec<&Vec<u8>> = m.changes[(from - 1) as usize..]
                    .iter()
                    .take(limit)
                    .map(|(b, _)| b)
                    .collect();
                let got_bytes: Vec<&Vec<u8>> = got
                    .iter()
                    .map(|e| match &e.kind {
                        converge_log::EntryKind::Change(b) => b,
                        _ => unreachable!(),
                    })
                    .collect();
                prop_assert_eq!(got_bytes, want);
            }
            Op::Reboot => {
                drop(log);
                log = store.open();
            }
            Op::Crash => {
                if let Store::Mem(m) = &store {
                    m.crash();
                    drop(log);
                    log = store.open();
                }
            }
        }
        // After every step the log agrees with the model.
        for (d, m) in model.iter().enumerate() {
            let head = log.head(&doc_id(d)).unwrap();
            prop_assert_eq!(head.last_seq, Seq(m.changes.len() as u64));
            prop_assert_eq!(head.compacted_through, Seq(m.compacted_through));
            prop_assert_eq!(head.snapshot_seq, m.snapshot.as_ref().map(|(s, _)| Seq(*s)));
            let snap = log.snapshot(&doc_id(d)).unwrap().map(|s| s.bytes);
            prop_assert_eq!(snap, m.snapshot.as_ref().map(|(_, b)| b.clone()));
            prop_assert_eq!(
                log.verify(&doc_id(d)).unwrap(),
                m.changes.len() as u64 - m.compacted_through
            );
        }
    }
    // Every change, compacted or not, is still known to the dedup index.
    for (d, m) in model.iter().enumerate() {
        for (i, (_, hash)) in m.changes.iter().enumerate() {
            prop_assert_eq!(
                log.change_seq(&doc_id(d), hash).unwrap(),
                Some(Seq(i as u64 + 1))
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn sled_log_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        run(Store::Sled(tempfile::tempdir().unwrap()), ops)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    #[test]
    fn mem_log_matches_the_model(ops in proptest::collection::vec(op(), 1..60)) {
        run(Store::Mem(MemStorage::new()), ops)?;
    }
}
