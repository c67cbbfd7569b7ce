//! The [`EventLog`] trait and the values it returns.

use converge_proto::{ChangeHash, ClientId, DocId, Epoch, FencingToken, MutationId, Seq, UserId};
use serde::{Deserialize, Serialize};

use crate::commit::Durable;
use crate::entry::{Author, Entry, EntryHash, LockRecord, MutationOutcome, NewEntry};
use crate::error::LogError;

/// Where a document's stream stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocHead {
    pub epoch: Epoch,
    /// The newest entry (`Seq(0)` for an empty stream).
    pub last_seq: Seq,
    pub last_hash: EntryHash,
    /// Entries at or below this seq were compacted into the snapshot (`Seq(0)`: none).
    pub compacted_through: Seq,
    /// The seq the newest snapshot covers, if there is one.
    pub snapshot_seq: Option<Seq>,
    /// The stream ends with a tombstone.
    pub tombstoned: bool,
}

/// What the log knows about one automerge actor in one document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRecord {
    /// The user who first pushed a change as this actor; nobody else may push as it. `None`
    /// while the actor's only changes were relayed (reconciliation): the next user to push a
    /// change as it directly becomes its owner.
    pub owner: Option<UserId>,
    /// The highest per-actor change seq logged (automerge's `Change::seq`).
    pub max_change_seq: u64,
    /// The log seq of that change.
    pub entry_seq: Seq,
}

/// A saved document covering every entry up to `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub seq: Seq,
    /// The hash of the entry at `seq`, so the tail after it can be checked against the chain.
    pub entry_hash: EntryHash,
    /// `automerge::save()` output.
    pub bytes: Vec<u8>,
}

/// The newest snapshot of a stream and what follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// The snapshot's bytes (0 without one).
    pub snapshot_bytes: u64,
    /// Entries after the snapshot.
    pub entries: u64,
    /// Change bytes in those entries.
    pub change_bytes: u64,
}

/// What happened to one entry of an append.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendResult {
    /// Written at this seq.
    Appended(Seq),
    /// A change already in the log: nothing written; this is the seq it already has.
    Duplicate(Seq),
    /// A lock grant written at this seq, with the fencing token the log issued.
    Granted(Seq, FencingToken),
}

impl AppendResult {
    /// The seq the entry has in the stream.
    pub fn seq(&self) -> Seq {
        match self {
            AppendResult::Appended(s)
            | AppendResult::Duplicate(s)
            | AppendResult::Granted(s, _) => *s,
        }
    }
}

/// The outcome of [`EventLog::append`]: one result per entry, in order, and the durability ticket.
#[derive(Debug)]
pub struct Appended {
    pub results: Vec<AppendResult>,
    /// Resolves once the batch (and, for duplicates, the original) is durable.
    pub durable: Durable,
}

/// A processed mutation, as [`EventLog::mutation_outcome`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedOutcome {
    pub seq: Seq,
    pub outcome: MutationOutcome,
}

/// Sizes of one document's stream, for `converge inspect`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocStats {
    pub entries: u64,
    pub entry_bytes: u64,
    pub changes: u64,
    pub change_bytes: u64,
    pub snapshot_seq: Option<Seq>,
    pub snapshot_bytes: u64,
}

/// An append-only log of per-document event streams. See the crate docs for the guarantees.
///
/// Every method is synchronous and may block on storage; call it from a thread that may block
/// (e.g. `tokio::task::spawn_blocking`). Durability is awaited separately through [`Durable`].
pub trait EventLog: Send + Sync + std::fmt::Debug {
    /// Starts an empty stream for `doc`.
    fn create(&self, doc: DocId, epoch: Epoch) -> Result<Durable, LogError>;

    /// Moves the document's stream to a new epoch (the current one + 1), keeping its entries.
    /// Positions clients hold from the old epoch stop being trusted: a client that comes back
    /// with one gets a snapshot and reconciles, since it may hold changes the log lacks. Run it
    /// for every document after restoring a backup. New entries carry the new epoch.
    fn bump_epoch(&self, doc: &DocId) -> Result<(Epoch, Durable), LogError>;

    /// Appends entries to a document's stream, all or nothing. A `Change` whose automerge hash is
    /// already logged (earlier, or earlier in the same batch) is a duplicate: nothing is written
    /// for it and its existing seq is returned.
    fn append(&self, doc: &DocId, entries: Vec<NewEntry>) -> Result<Appended, LogError>;

    /// Appends automerge changes the caller already holds decoded (a local writer's own
    /// changes), as `Change` entries with the same rules as [`EventLog::append`], without
    /// decoding their bytes again.
    fn append_changes(
        &self,
        doc: &DocId,
        author: &Author,
        at_ms: u64,
        changes: &[automerge::Change],
    ) -> Result<Appended, LogError>;

    /// Up to `limit` entries with seq >= `from`, in order, each checked against the hash chain.
    fn read(&self, doc: &DocId, from: Seq, limit: usize) -> Result<Vec<Entry>, LogError>;

    /// Where the stream stands.
    fn head(&self, doc: &DocId) -> Result<DocHead, LogError>;

    /// Every document in the log, in id order.
    fn docs(&self) -> Result<Vec<DocId>, LogError>;

    /// The seq of a logged change, by its automerge hash.
    fn change_seq(&self, doc: &DocId, hash: &ChangeHash) -> Result<Option<Seq>, LogError>;

    /// The actor index entry for an automerge actor id (its raw bytes).
    fn actor(&self, doc: &DocId, actor: &[u8]) -> Result<Option<ActorRecord>, LogError>;

    /// The last mutation id processed for a client in a document.
    fn last_mutation(&self, doc: &DocId, client: &ClientId)
    -> Result<Option<MutationId>, LogError>;

    /// The outcome recorded for a processed mutation, with the seq a client should know it
    /// by: its change's, or (no change) the mutation entry's.
    fn mutation_outcome(
        &self,
        doc: &DocId,
        client: &ClientId,
        id: MutationId,
    ) -> Result<Option<RecordedOutcome>, LogError>;

    /// The document's lock table: the last `Granted` or `Renewed` event of every key that
    /// was not released or expired since (some may have run out by now: compare
    /// `expires_at_ms` with the time).
    fn locks(&self, doc: &DocId) -> Result<Vec<LockRecord>, LogError>;

    /// Sets (or, with `None`, removes) an admin grant: `user`'s role in `doc`. Kept apart
    /// from the document's stream (it is configuration, not history); copied by restore.
    fn set_acl(&self, doc: &DocId, user: &UserId, role: Option<&str>) -> Result<Durable, LogError>;

    /// Every admin grant: (document, user, role).
    fn acls(&self) -> Result<Vec<(DocId, UserId, String)>, LogError>;

    /// Records that `user` was seen with these roles (the directory that resolves a
    /// notification to a role into its users, also those offline). Configuration, not
    /// history, like the ACL. It asks for no flush of its own (a Hello must not cost an
    /// fsync): it becomes durable with the next append's flush, or at close.
    fn set_user(&self, user: &UserId, roles: &[String]) -> Result<(), LogError>;

    /// Every user of the directory with their roles.
    fn users(&self) -> Result<Vec<(UserId, Vec<String>)>, LogError>;

    /// The last fencing token issued (monotonic across restarts).
    fn fencing_counter(&self) -> Result<FencingToken, LogError>;

    /// Stores a snapshot covering every entry up to `seq`, replacing the older one.
    fn put_snapshot(&self, doc: &DocId, seq: Seq, bytes: Vec<u8>) -> Result<Durable, LogError>;

    /// The newest snapshot, checked against its recorded hash.
    fn snapshot(&self, doc: &DocId) -> Result<Option<Snapshot>, LogError>;

    /// Whether a new snapshot is due: the change bytes logged since the last one exceed its size
    /// (the automerge-repo rule, with a floor), or `snapshot_every_entries` entries were logged.
    fn snapshot_due(&self, doc: &DocId) -> Result<bool, LogError>;

    /// What a fresh subscriber would load: the newest snapshot's size and what was logged
    /// after it (the whole stream when there is none).
    fn tail(&self, doc: &DocId) -> Result<Tail, LogError>;

    /// Drops the entries the newest snapshot covers, durably. Returns how many were dropped.
    /// Entries are deleted, never rewritten; the change-hash index is kept for dedup.
    fn compact(&self, doc: &DocId) -> Result<u64, LogError>;

    /// Sizes for listings.
    fn stats(&self, doc: &DocId) -> Result<DocStats, LogError>;

    /// Walks the whole retained chain of one document; the first break is an error that names
    /// the document and seq. Returns the number of entries checked.
    fn verify(&self, doc: &DocId) -> Result<u64, LogError>;

    /// Makes everything appended so far durable, now, in the store itself: the sled log
    /// also drains its staging into sled, flushes sled and starts its journal again (a
    /// checkpoint; tens of milliseconds with a full journal). For shutdowns and tools;
    /// appends become durable without it.
    fn flush(&self) -> Result<(), LogError>;

    /// A ticket that resolves once everything appended so far is durable. It shares the next
    /// group-commit flush rather than forcing one: a reader uses it to hand out only durable
    /// entries.
    fn durable(&self) -> Durable;

    /// Bytes the store occupies on disk (for memory logs: bytes held).
    fn size_on_disk(&self) -> Result<u64, LogError>;

    /// How long the group commit's flushes took so far.
    fn flush_stats(&self) -> FlushStats;
}

/// How long the group commit's flushes took, since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlushStats {
    pub flushes: u64,
    pub total_us: u64,
    pub max_us: u64,
    pub last_us: u64,
}

impl FlushStats {
    pub(crate) fn record(&mut self, us: u64) {
        self.flushes += 1;
        self.total_us = self.total_us.saturating_add(us);
        self.max_us = self.max_us.max(us);
        self.last_us = us;
    }

    /// The mean flush time, if there was a flush.
    pub fn mean_us(&self) -> Option<u64> {
        self.total_us.checked_div(self.flushes)
    }
}

/// Per-document metadata that changes only on create, snapshot and compaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct DocMeta {
    pub(crate) epoch: Epoch,
    pub(crate) snapshot: Option<SnapshotInfo>,
    pub(crate) compacted_through: Seq,
    /// The hash of the entry at `compacted_through`, so the first retained entry can still be
    /// checked against the chain after a newer snapshot replaces the one it was compacted into.
    pub(crate) compacted_hash: EntryHash,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SnapshotInfo {
    pub(crate) seq: Seq,
    pub(crate) entry_hash: EntryHash,
    pub(crate) size: u64,
}

/// How a snapshot is stored: its bytes and their blake3 hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub(crate) entry_hash: EntryHash,
    pub(crate) checksum: [u8; 32],
    pub(crate) bytes: Vec<u8>,
}
