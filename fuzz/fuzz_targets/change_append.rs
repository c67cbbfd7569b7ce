//! Arbitrary bytes appended as a change: refused with a typed error or logged, never a panic;
//! whatever is logged reads back and verifies.
#![no_main]

use converge_log::{Author, EntryKind, EventLog, Log, LogConfig, MemStorage, NewEntry};
use converge_proto::{DocId, Epoch, Seq, UserId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(log) = Log::open_in_memory(&MemStorage::new(), LogConfig::default()) else { return };
    let doc = DocId::from_bytes([1; 16]);
    let Ok(_) = log.create(doc, Epoch(1)) else { return };
    let Ok(user) = UserId::new("fuzz") else { return };
    let entry = NewEntry { at_ms: 0, author: Author::user(user), kind: EntryKind::Change(data.to_vec()) };
    if log.append(&doc, vec![entry]).is_ok() {
        assert_eq!(log.read(&doc, Seq(1), 10).map(|e| e.len()).ok(), Some(1));
        assert_eq!(log.verify(&doc).ok(), Some(1));
    } else {
        assert_eq!(log.head(&doc).map(|h| h.last_seq).ok(), Some(Seq(0)));
    }
});
