//! Where the time of the trace goes: raw automerge, plus extracting each change, plus the log.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use converge_benches::{apply_edit, load_trace, text_doc};
use converge_log::{Author, Durability, EntryKind, EventLog, Log, LogConfig, NewEntry};
use converge_proto::{DocId, Epoch, UserId};

fn main() {
    let trace = load_trace();
    let n: usize = std::env::args().nth(1).map_or(100_000, |s| s.parse().unwrap());
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
        ("buffered", Durability::Buffered { every: Duration::from_millis(100) }),
        ("fsync", Durability::Fsync),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let log = Log::open(dir.path(), LogConfig { durability, ..LogConfig::default() }).unwrap();
        let d = DocId::from_bytes([1; 16]);
        let _ = log.create(d, Epoch(1)).unwrap();
        let author = Author::user(UserId::new("w").unwrap());
        let t = Instant::now();
        let mut tickets = Vec::with_capacity(n);
        for c in &changes {
            let e = NewEntry { at_ms: 0, author: author.clone(), kind: EntryKind::Change(c.clone()) };
            tickets.push(log.append(&d, vec![e]).unwrap().durable);
        }
        let appended = t.elapsed();
        for tk in tickets {
            tk.wait().unwrap();
        }
        println!("log append only ({name}): {appended:?} appending, {:?} until all durable", t.elapsed());
    }
}
