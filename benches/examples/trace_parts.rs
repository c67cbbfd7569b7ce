//! Where the time of the trace goes: raw automerge, plus extracting each change, plus the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use converge_benches::{apply_edit, load_trace, text_doc};
use converge_log::{Author, Durability, EntryKind, EventLog, Log, LogConfig, NewEntry};
use converge_proto::{DocId, Epoch, UserId};

fn store_run(trace: &converge_benches::Trace, n: usize, batch: usize) {
    use automerge::transaction::Transactable;
    use automerge::{ObjType, ROOT, ReadDoc};
    use converge_log::{DocStore, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let log = std::sync::Arc::new(Log::open(dir.path(), LogConfig::default()).unwrap());
    let store = DocStore::new(
        log,
        StoreConfig {
            local_batch: batch,
            ..StoreConfig::default()
        },
    );
    let me = Author::user(UserId::new("w").unwrap());
    let t = Instant::now();
    let (id, _) = store
        .create(&me, 0, |d| {
            d.put_object(ROOT, "text", ObjType::Text).map(|_| ())
        })
        .unwrap();
    let text = store
        .read(&id, |d| d.get(ROOT, "text").unwrap().unwrap().1)
        .unwrap();
    let mut pending = Vec::new();
    for txn in &trace.txns[..n] {
        let (_, a) = store
            .change(&id, &me, 0, |d| {
                let (pos, del, ins) = &txn.patches[0];
                d.splice_text(&text, *pos, *del as isize, ins).unwrap();
            })
            .unwrap();
        pending.extend(a.map(|a| a.durable));
    }
    pending.extend(store.flush_local(&id).unwrap().map(|a| a.durable));
    let edits = t.elapsed();
    for d in pending {
        d.wait().unwrap();
    }
    println!(
        "store batch {batch}: edits done {edits:?}, all durable {:?}",
        t.elapsed()
    );
}

fn main() {
    let trace = load_trace();
    if let Ok(b) = std::env::var("STORE_BATCH") {
        let n: usize = std::env::args()
            .nth(1)
            .map_or(100_000, |s| s.parse().unwrap());
        store_run(&trace, n, b.parse().unwrap());
        return;
    }
    let n: usize = std::env::args()
        .nth(1)
        .map_or(100_000, |s| s.parse().unwrap());
    let edits = &trace.txns[..n];

    let t = Instant::now();
    let (mut doc, text) = text_doc(1);
    for txn in edits {
        apply_edit(&mut doc, &text, &txn.patches[0]);
        doc.commit();
    }
    println!("raw splice+commit: {:?}", t.elapsed());

    let t = Instant::now();
    let (mut doc, text) = text_doc(1);
    let mut changes = Vec::with_capacity(n);
    for txn in edits {
        apply_edit(&mut doc, &text, &txn.patches[0]);
        doc.commit();
        changes.push(doc.get_last_local_change().unwrap().raw_bytes().to_vec());
    }
    println!("+ get_last_local_change: {:?}", t.elapsed());

    for k in [10usize, 100, 1000] {
        let t = Instant::now();
        let (mut doc, text) = text_doc(1);
        let mut got = 0;
        let mut heads = doc.get_heads();
        for (i, txn) in edits.iter().enumerate() {
            apply_edit(&mut doc, &text, &txn.patches[0]);
            doc.commit();
            if (i + 1) % k == 0 {
                got += doc.get_changes(&heads).len();
                heads = doc.get_heads();
            }
        }
        println!("+ get_changes every {k}: {:?} ({got} changes)", t.elapsed());
    }

    let t = Instant::now();
    for c in &changes {
        let _ = automerge::Change::from_bytes(c.clone()).unwrap();
    }
    println!("from_bytes alone: {:?}", t.elapsed());

    for (name, durability) in [
        (
            "buffered",
            Durability::Buffered {
                every: Duration::from_millis(100),
            },
        ),
        ("fsync", Durability::Fsync),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(
            dir.path(),
            LogConfig {
                durability,
                ..LogConfig::default()
            },
        )
        .unwrap();
        let d = DocId::from_bytes([1; 16]);
        drop(log.create(d, Epoch(1)).unwrap());
        let author = Author::user(UserId::new("w").unwrap());
        let t = Instant::now();
        let mut tickets = Vec::with_capacity(n);
        for c in &changes {
            let e = NewEntry {
                at_ms: 0,
                author: author.clone(),
                kind: EntryKind::Change(c.clone()),
            };
            tickets.push(log.append(&d, vec![e]).unwrap().durable);
        }
        let appended = t.elapsed();
        for tk in tickets {
            tk.wait().unwrap();
        }
        println!(
            "log append only ({name}): {appended:?} appending, {:?} until all durable",
            t.elapsed()
        );
    }
}

#[allow(dead_code)]
fn unused() {}
