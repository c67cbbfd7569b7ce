//! converge-log: the append-only event log that is converge's single source of truth, and the
//! document store that materializes automerge documents from it.
//!
//! One stream of [`Entry`]s per document, linked by a blake3 hash chain. [`Log`] runs the same
//! algorithm on sled ([`SledLog`], the default) or on memory ([`MemLog`], for fast tests); both
//! implement [`EventLog`].
//!
//! Guarantees, stated plainly (docs/log-format.md has the details):
//! - An append is all or nothing: after a crash a batch is either wholly present or absent.
//! - With [`Durability::Fsync`] (the default) an append's [`Durable`] resolves only after a flush
//!   that covers it; appends from all threads share flushes (group commit).
//! - Appending a change that is already logged writes nothing and returns its existing seq.
//! - Reads check every entry against the chain; a break is [`LogError::Corrupt`] naming the
//!   document and seq, never skipped.
//!
//! ```
//! use converge_log::{Author, EntryKind, EventLog, LogConfig, MemLog, MemStorage, NewEntry};
//! use converge_proto::{DocId, Epoch, Seq, UserId};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let storage = MemStorage::new();
//! let log = MemLog::open_in_memory(&storage, LogConfig::default())?;
//! let doc = DocId::from_bytes([1; 16]);
//! log.create(doc, Epoch(1))?.wait()?;
//!
//! let mut am = automerge::AutoCommit::new();
//! automerge::transaction::Transactable::put(&mut am, automerge::ROOT, "title", "Rota")?;
//! let change = am.get_last_local_change().unwrap().raw_bytes().to_vec();
//! let author = Author::user(UserId::new("alice")?);
//! let entry = NewEntry { at_ms: 1, author, kind: EntryKind::Change(change) };
//!
//! let appended = log.append(&doc, vec![entry.clone()])?;
//! appended.durable.wait()?;
//! assert_eq!(appended.results[0].seq(), Seq(1));
//! // The same change again is a no-op that returns the seq it already has.
//! let again = log.append(&doc, vec![entry])?;
//! assert!(matches!(again.results[0], converge_log::AppendResult::Duplicate(Seq(1))));
//! assert_eq!(log.read(&doc, Seq(1), 10)?.len(), 1);
//! # Ok(()) }
//! ```

mod change_info;
mod codec;
mod commit;
mod disk_sync;
mod docstore;
mod entry;
mod error;
mod event_log;
mod journal;
mod keys;
mod kv;
mod log;
mod page;
mod staged;
mod sync;

pub use codec::FORMAT_VERSION;
pub use commit::{Durability, Durable};
pub use docstore::{DocStore, StoreConfig, StoreError};
pub use entry::{
    Author, Entry, EntryHash, EntryKind, LockEvent, LockRecord, MutationOutcome, MutationRecord,
    NewEntry,
};
pub use error::LogError;
pub use event_log::{
    ActorRecord, AppendResult, Appended, DocHead, DocStats, EventLog, FlushStats, RecordedOutcome,
    Snapshot, Tail,
};
pub use kv::MemStorage;
pub use log::{Log, LogConfig, MemLog, SledLog};
