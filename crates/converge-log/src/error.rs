//! The log's failure domain.

use converge_proto::{ChangeHash, DocId, Seq, UserId};

/// Everything that can go wrong in the event log. Appends that fail write nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LogError {
    /// The storage engine failed (I/O, or sled's own error). The message is sled's.
    #[error("storage: {0}")]
    Storage(String),
    /// The directory holds a log written by a newer (or unknown) format.
    #[error("log format version {found} is not supported (this build reads version {supported})")]
    UnsupportedFormat { found: u32, supported: u32 },
    /// Another open log (this process or another) holds the directory's lock.
    #[error("the log directory {path} is in use by another open log")]
    Locked { path: String },
    /// A restore's target directory already holds something.
    #[error("{0} is not empty; restore into a new directory")]
    NotEmpty(String),
    /// The directory holds a sled database that is not a converge log.
    #[error("not a converge log: {0}")]
    NotALog(String),
    /// A stored entry does not decode, or its hash chain does not hold. Names the document and seq.
    #[error("corrupt log: document {doc} seq {seq}: {reason}")]
    Corrupt {
        doc: DocId,
        seq: Seq,
        reason: String,
    },
    /// A stored record other than an entry (index, snapshot, metadata) is damaged.
    #[error("corrupt log record {record}: {reason}")]
    CorruptRecord { record: String, reason: String },
    /// The document has no stream in this log.
    #[error("unknown document {0}")]
    UnknownDoc(DocId),
    /// `create` was called for a document that already exists.
    #[error("document {0} already exists")]
    DocExists(DocId),
    /// The document was deleted; its stream takes no more entries.
    #[error("document {0} is deleted")]
    Tombstoned(DocId),
    /// The bytes are not an automerge change.
    #[error("malformed change: {0}")]
    MalformedChange(String),
    /// An entry, a change or a snapshot is larger than the log accepts.
    #[error("{what} of {size} bytes is over the limit of {limit}")]
    TooLarge {
        what: &'static str,
        size: usize,
        limit: usize,
    },
    /// A field of an entry is invalid (empty batch, over-long name, ...).
    #[error("invalid entry: {0}")]
    Invalid(String),
    /// The change's actor was first pushed by another user; nobody else may write as it.
    #[error("actor of change {hash} belongs to user {owner}")]
    ActorOwnedByOther { hash: ChangeHash, owner: UserId },
    /// Another change with the same actor and per-actor seq is already logged.
    #[error("change {hash}: its actor already has a different change at seq {seq}")]
    SeqConflict { hash: ChangeHash, seq: u64 },
    /// The change skips a per-actor seq: its predecessor is not logged.
    #[error("change {hash}: per-actor seq {got} where {expected} was expected")]
    SeqGap {
        hash: ChangeHash,
        expected: u64,
        got: u64,
    },
    /// The change's op ids start at or below ops its actor already has in the log: two ops
    /// would share an id. automerge never makes such a change.
    #[error(
        "change {hash}: its ops start at {start_op}, but its actor's ops up to {max_op} are already logged"
    )]
    OpIdReused {
        hash: ChangeHash,
        start_op: u64,
        max_op: u64,
    },
    /// The change depends on a change the log does not hold.
    #[error("change {hash} depends on {dep}, which is not logged")]
    MissingDependency { hash: ChangeHash, dep: ChangeHash },
    /// The change references an actor the document does not know.
    #[error("change {hash} references an actor the document does not know")]
    UnknownActor { hash: ChangeHash },
    /// A read asked for entries that compaction has dropped.
    #[error("document {doc}: entries up to seq {compacted_through} were compacted into a snapshot")]
    Compacted { doc: DocId, compacted_through: Seq },
    /// A snapshot was offered for a seq the log does not hold.
    #[error("document {doc}: no entry at seq {seq} to snapshot")]
    BadSnapshotSeq { doc: DocId, seq: Seq },
    /// The group-commit flush failed; the append may or may not be durable.
    #[error("flush failed: {0}")]
    Flush(String),
    /// The log was closed while the append waited for its flush.
    #[error("log closed")]
    Closed,
}

impl From<sled::Error> for LogError {
    fn from(e: sled::Error) -> Self {
        LogError::Storage(e.to_string())
    }
}
