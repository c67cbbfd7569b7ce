//! Arbitrary bytes stored as an entry page below the log API: reading and verifying must report
//! corruption (naming a seq within the page), never panic. A page may frame several entries, so
//! the named seq can be past 1 (found by this target: a page whose second length is cut short).
#![no_main]

use converge_log::{EventLog, Log, LogConfig, LogError, MemStorage};
use converge_proto::{DocId, Epoch, Seq};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::new();
    let doc = DocId::from_bytes([2; 16]);
    {
        let Ok(log) = Log::open_in_memory(&storage, LogConfig::default()) else { return };
        let Ok(_) = log.create(doc, Epoch(1)) else { return };
    }
    let mut key = vec![b'E'];
    key.extend_from_slice(doc.as_bytes());
    key.extend_from_slice(&1u64.to_be_bytes());
    storage.overwrite_raw(&key, data.to_vec());
    let Ok(log) = Log::open_in_memory(&storage, LogConfig::default()) else { return };
    match log.verify(&doc) {
        Ok(_) | Err(LogError::Corrupt { .. }) => {}
        Err(other) => panic!("unexpected error {other:?}"),
    }
    let _ = log.read(&doc, Seq(1), 10);
});
