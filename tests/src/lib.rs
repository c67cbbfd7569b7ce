//! Helpers shared by the workspace-level integration tests.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ROOT};
use converge_log::{Author, EntryKind, NewEntry};
use converge_proto::UserId;

/// An author with no session.
pub fn user(name: &str) -> Author {
    Author::user(UserId::new(name).unwrap())
}

/// A `Change` entry.
pub fn change_entry(author: &Author, bytes: Vec<u8>) -> NewEntry {
    NewEntry {
        at_ms: 1_700_000_000_000,
        author: author.clone(),
        kind: EntryKind::Change(bytes),
    }
}

/// An automerge writer with a fixed actor that returns each change's raw bytes.
#[derive(Debug)]
pub struct Writer {
    pub doc: AutoCommit,
}

impl Writer {
    pub fn new(actor: &[u8]) -> Self {
        Self {
            doc: AutoCommit::new().with_actor(ActorId::from(actor.to_vec())),
        }
    }

    pub fn put(&mut self, key: &str, value: i64) -> Vec<u8> {
        self.doc.put(ROOT, key, value).unwrap();
        self.doc.commit();
        self.doc
            .get_last_local_change()
            .unwrap()
            .raw_bytes()
            .to_vec()
    }
}

/// Opens the sled database under a log, below the log API (tests that corrupt records), waiting
/// a bounded while for the lock a just-closed log's background threads may still hold: sled
/// releases it only when its last handle drops.
pub fn open_raw_sled(dir: impl AsRef<std::path::Path>) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::open(dir.as_ref()) {
            Ok(db) => return db,
            Err(e) if std::time::Instant::now() < deadline && e.to_string().contains("lock") => {
                std::thread::yield_now();
            }
            Err(e) => panic!("opening {}: {e}", dir.as_ref().display()),
        }
    }
}
