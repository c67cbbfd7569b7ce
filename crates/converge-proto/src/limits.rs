//! Size limits for everything a peer, a file or a user controls.
//!
//! Each limit is a default; the server may lower them in configuration, never raise them past
//! what the log accepts.

/// Largest automerge change the log accepts in one entry (1 MiB).
///
/// A single keystroke is ~100 bytes; a change that carries a whole imported document is the
/// largest legitimate case, so the limit leaves room for that while bounding memory per entry.
pub const MAX_CHANGE_BYTES: usize = 1 << 20;

/// Largest encoded log entry (change bytes plus header), checked before decoding stored bytes.
pub const MAX_ENTRY_BYTES: usize = MAX_CHANGE_BYTES + 64 * 1024;

/// Largest snapshot (`automerge::save`) the log stores or reads back (256 MiB).
pub const MAX_SNAPSHOT_BYTES: usize = 256 << 20;

/// Longest user id (the JWT `sub`) in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Longest mutation name, lock key or other short label, in bytes.
pub const MAX_NAME_BYTES: usize = 256;

/// Largest mutation argument payload in bytes.
pub const MAX_ARGS_BYTES: usize = 64 * 1024;

/// Longest rejection message recorded with a mutation outcome, in bytes.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// Most entries in one append batch.
pub const MAX_BATCH_ENTRIES: usize = 4096;
