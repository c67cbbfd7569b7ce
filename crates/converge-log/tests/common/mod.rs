//! Shared helpers for converge-log's integration tests.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use converge_log::{Author, EntryKind, Log, LogConfig, MemStorage, NewEntry};
use converge_proto::UserId;

/// Where a log under test lives, so it can be closed and opened again.
#[derive(Debug)]
pub enum Backend {
    Sled(tempfile::TempDir),
    Mem(MemStorage),
}

impl Backend {
    pub fn sled() -> Self {
        Backend::Sled(tempfile::tempdir().unwrap())
    }

    pub fn mem() -> Self {
        Backend::Mem(MemStorage::new())
    }

    pub fn open(&self, config: LogConfig) -> Arc<Log> {
        Arc::new(match self {
            Backend::Sled(dir) => Log::open(dir.path(), config).unwrap(),
            Backend::Mem(storage) => Log::open_in_memory(storage, config).unwrap(),
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Sled(_) => "sled",
            Backend::Mem(_) => "memory",
        }
    }
}

pub fn user(name: &str) -> Author {
    Author::user(UserId::new(name).unwrap())
}

pub fn change_entry(author: &Author, bytes: Vec<u8>) -> NewEntry {
    NewEntry {
        at_ms: 1_700_000_000_000,
        author: author.clone(),
        kind: EntryKind::Change(bytes),
    }
}

/// A writer with a fixed actor that produces one change per call.
#[derive(Debug)]
pub struct Writer {
    pub doc: AutoCommit,
}

impl Writer {
    pub fn new(actor: u8) -> Self {
        Self {
            doc: AutoCommit::new().with_actor(ActorId::from(vec![actor; 16])),
        }
    }

    /// Sets `key` and returns the change's raw bytes.
    pub fn put(&mut self, key: &str, value: i64) -> Vec<u8> {
        self.doc.put(ROOT, key, value).unwrap();
        self.doc.commit();
        self.doc
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec()
    }

    /// A change carrying `n` bytes of text.
    pub fn blob(&mut self, n: usize) -> Vec<u8> {
        self.doc.put(ROOT, "blob", "x".repeat(n)).unwrap();
        self.doc.commit();
        self.doc
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec()
    }
}

/// Re-encodes a change after `edit` changed its decoded form: a forged change that still
/// decodes and carries a valid checksum.
pub fn forge(bytes: &[u8], edit: impl FnOnce(&mut automerge::ExpandedChange)) -> Vec<u8> {
    let mut expanded = automerge::Change::from_bytes(bytes.to_vec())
        .unwrap()
        .decode();
    edit(&mut expanded);
    expanded.hash = None;
    automerge::Change::from(expanded).raw_bytes().to_vec()
}
