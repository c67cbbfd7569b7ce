//! The client's on-disk store: documents, positions and unacknowledged local changes, so
//! offline edits survive a restart. Plain files, no database:
//!
//! ```text
//! <store_dir>/
//!   lock                  held (flock) while a client has the store open
//!   client_id             16 bytes, chosen once (atomic write)
//!   docs/<DocId>/
//!     doc.am              automerge save() of the document (atomic rewrite)
//!     changes             record file: changes the document holds beyond doc.am
//!     pending             record file: local changes the server has not acknowledged, in order
//!     position            epoch u64 LE | seq u64 LE | first 8 bytes of blake3 of both (atomic rewrite)
//!     mutations           record file: queued mutations and answers (see `queue.rs`)
//! ```
//!
//! A document is loaded as `doc.am`, then every change in `changes`, then every change in
//! `pending`. All three only ever gain changes the document really holds, and applying a change
//! twice is a no-op in automerge, so the files need not agree with each other: a crash between
//! two writes leaves a duplicate, never a gap. The orderings that make this true:
//! - a local change is appended to `pending` (fsynced) before `change()` returns and before it
//!   is pushed, so nothing the server acknowledges is missing locally;
//! - acknowledged changes are appended to `changes` before they leave `pending`;
//! - `doc.am` is replaced before `changes` is cleared;
//! - a position is written only after the changes it covers are durable (the session's rule),
//!   so a crash can make the client ask for entries again, never skip them.
//!
//! Record files drop a torn tail on open (see `record.rs`); `doc.am`, `position` and
//! `client_id` are only ever replaced by rename, so they are whole or absent.

use std::fs::{self, File};
use std::io;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

use automerge::{AutoCommit, Change};
use converge_core::QueuedMutation;
use converge_proto::{ChangeHash, ClientId, DocId, Epoch, MutationId, Position, Seq};

use crate::error::StoreError;
use crate::queue::MutationQueue;
use crate::record::{RecordLog, sync_parent, write_atomic};

const DOCS_DIR: &str = "docs";
const DOC_FILE: &str = "doc.am";
const CHANGES_FILE: &str = "changes";
const PENDING_FILE: &str = "pending";
const POSITION_FILE: &str = "position";
const MUTATIONS_FILE: &str = "mutations";
const CLIENT_ID_FILE: &str = "client_id";
const LOCK_FILE: &str = "lock";

/// `changes` is folded into `doc.am` once it holds more than this and more than `doc.am`
/// itself, so the rewrite cost stays proportional to what was appended.
const COMPACT_MIN_BYTES: u64 = 1 << 20;

/// A client store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// Exclusive use of a store directory; released when dropped.
#[derive(Debug)]
pub struct StoreLock {
    _file: File,
}

/// A document as read back from the store.
#[derive(Debug)]
pub struct LoadedDoc {
    pub doc: AutoCommit,
    /// The last position persisted: the stream is held through it.
    pub position: Option<Position>,
    /// Unacknowledged local changes, in the order they were made.
    pub pending: Vec<Vec<u8>>,
    /// Mutations the server has not answered, in id order.
    pub mutations: Vec<QueuedMutation>,
    /// The last mutation id given out for this document.
    pub last_mutation: MutationId,
}

/// One document's files, open for writing.
#[derive(Debug)]
pub struct StoredDoc {
    dir: PathBuf,
    changes: RecordLog,
    pending_log: RecordLog,
    /// The records of `pending`, with their hashes, to match acknowledgements.
    pending: Vec<(ChangeHash, Vec<u8>)>,
    position: Option<Position>,
    /// Size of `doc.am`, to decide when to compact.
    snapshot_bytes: u64,
    mutations: MutationQueue,
}

impl Store {
    /// Opens (creating if needed) a store directory.
    pub fn open(root: impl AsRef<Path>) -> Result<Store, StoreError> {
        let root = root.as_ref().to_path_buf();
        let docs = root.join(DOCS_DIR);
        if !docs.exists() {
            fs::create_dir_all(&docs).map_err(StoreError::io("create", &docs))?;
            sync_parent(&docs)?;
        }
        Ok(Store { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Takes the store for this client, or `Ok(None)` if another client holds it.
    pub fn try_lock(&self) -> Result<Option<StoreLock>, StoreError> {
        let path = self.root.join(LOCK_FILE);
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io("open", &path))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(StoreLock { _file: file })),
            Err(fs::TryLockError::WouldBlock) => Ok(None),
            Err(fs::TryLockError::Error(e)) => Err(StoreError::io("lock", &path)(e)),
        }
    }

    /// This installation's client id, created and persisted on first use.
    pub fn client_id(&self) -> Result<ClientId, StoreError> {
        let path = self.root.join(CLIENT_ID_FILE);
        match fs::read(&path) {
            Ok(bytes) => {
                let arr: [u8; 16] =
                    bytes
                        .as_slice()
                        .try_into()
                        .map_err(|_| StoreError::Corrupt {
                            path: path.clone(),
                            reason: format!("expected 16 bytes, found {}", bytes.len()),
                        })?;
                Ok(ClientId::from_bytes(arr))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let id = ClientId::random();
                write_atomic(&path, id.as_bytes())?;
                Ok(id)
            }
            Err(e) => Err(StoreError::io("read", &path)(e)),
        }
    }

    /// Documents that have files in the store.
    pub fn doc_ids(&self) -> Result<Vec<DocId>, StoreError> {
        let docs = self.root.join(DOCS_DIR);
        let mut ids = Vec::new();
        for entry in fs::read_dir(&docs).map_err(StoreError::io("list", &docs))? {
            let entry = entry.map_err(StoreError::io("list", &docs))?;
            if let Some(id) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                ids.push(id);
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Opens a document's files (creating them for a new document) and loads it.
    pub fn open_doc(&self, id: DocId) -> Result<(StoredDoc, LoadedDoc), StoreError> {
        let dir = self.root.join(DOCS_DIR).join(id.to_string());
        if !dir.exists() {
            fs::create_dir_all(&dir).map_err(StoreError::io("create", &dir))?;
            sync_parent(&dir)?;
        }
        let doc_path = dir.join(DOC_FILE);
        let (mut doc, snapshot_bytes) = match fs::read(&doc_path) {
            Ok(bytes) => (load_snapshot(&doc_path, &bytes)?, bytes.len() as u64),
            Err(e) if e.kind() == io::ErrorKind::NotFound => (AutoCommit::new(), 0),
            Err(e) => return Err(StoreError::io("read", &doc_path)(e)),
        };
        let (changes, held) = RecordLog::open(&dir.join(CHANGES_FILE))?;
        let (pending_log, pending) = RecordLog::open(&dir.join(PENDING_FILE))?;
        apply_stored(&mut doc, &held, &dir);
        apply_stored(&mut doc, &pending, &dir);
        let position = read_position(&dir.join(POSITION_FILE))?;
        let mutations = MutationQueue::open(&dir.join(MUTATIONS_FILE))?;
        let queued = mutations.queued().to_vec();
        let last_mutation = mutations.last_id();
        let mut stored = StoredDoc {
            dir,
            changes,
            pending_log,
            pending: pending.iter().map(|c| (hash_of(c), c.clone())).collect(),
            position,
            snapshot_bytes,
            mutations,
        };
        if stored.wants_compaction() {
            stored.write_snapshot(&mut doc)?;
        }
        Ok((
            stored,
            LoadedDoc {
                doc,
                position,
                pending,
                mutations: queued,
                last_mutation,
            },
        ))
    }
}

impl StoredDoc {
    /// Appends local changes to the pending queue, durably.
    pub fn append_pending(&mut self, changes: &[Vec<u8>]) -> Result<(), StoreError> {
        self.pending_log.append(changes)?;
        self.pending
            .extend(changes.iter().map(|c| (hash_of(c), c.clone())));
        Ok(())
    }

    /// Takes the pending changes with these hashes off the queue (the server acknowledged or
    /// refused them), keeping them in the document. Returns how many there were.
    pub fn settle(&mut self, hashes: &[ChangeHash]) -> Result<usize, StoreError> {
        let (settled, rest): (Vec<_>, Vec<_>) = self
            .pending
            .iter()
            .cloned()
            .partition(|(h, _)| hashes.contains(h));
        if settled.is_empty() {
            return Ok(0);
        }
        let settled: Vec<Vec<u8>> = settled.into_iter().map(|(_, c)| c).collect();
        // Into the document's own changes first: a crash between the two writes leaves the
        // change in both files, never in neither.
        self.changes.append(&settled)?;
        if rest.is_empty() {
            self.pending_log.clear()?;
        } else {
            let bytes: Vec<&[u8]> = rest.iter().map(|(_, c)| c.as_slice()).collect();
            self.pending_log.rewrite(&bytes)?;
        }
        self.pending = rest;
        Ok(settled.len())
    }

    /// Records received changes the document now holds.
    pub fn append_changes(&mut self, changes: &[Vec<u8>]) -> Result<(), StoreError> {
        let real: Vec<&[u8]> = changes
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| c.as_slice())
            .collect();
        self.changes.append(&real)
    }

    /// Replaces `doc.am` with the whole document and empties `changes`.
    pub fn write_snapshot(&mut self, doc: &mut AutoCommit) -> Result<(), StoreError> {
        let bytes = doc.save();
        write_atomic(&self.dir.join(DOC_FILE), &bytes)?;
        self.snapshot_bytes = bytes.len() as u64;
        self.changes.clear()
    }

    /// Whether `changes` has grown enough to fold into `doc.am`.
    pub fn wants_compaction(&self) -> bool {
        let held = self.changes.record_bytes();
        held > COMPACT_MIN_BYTES && held > self.snapshot_bytes
    }

    /// Persists the position the document holds the stream through.
    pub fn write_position(&mut self, position: Position) -> Result<(), StoreError> {
        write_atomic(&self.dir.join(POSITION_FILE), &encode_position(position))?;
        self.position = Some(position);
        Ok(())
    }

    pub fn position(&self) -> Option<Position> {
        self.position
    }

    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Stores a new mutation durably (before it is sent).
    pub fn queue_mutation(&mut self, m: &QueuedMutation) -> Result<(), StoreError> {
        self.mutations.push(m)
    }

    /// Takes an answered mutation off the stored queue.
    pub fn settle_mutation(&mut self, id: MutationId) -> Result<(), StoreError> {
        self.mutations.settle(id)
    }

    /// Mutations the server has not answered.
    pub fn queued_mutations(&self) -> usize {
        self.mutations.queued().len()
    }
}

/// Loads `doc.am`. It is only ever replaced whole, so a failure means outside damage: an
/// error naming the file, rather than a silently emptier document.
fn load_snapshot(path: &Path, bytes: &[u8]) -> Result<AutoCommit, StoreError> {
    let corrupt = |reason: String| StoreError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    catch_unwind(AssertUnwindSafe(|| AutoCommit::load(bytes)))
        .map_err(|_| corrupt("automerge panicked loading it".into()))?
        .map_err(|e| corrupt(e.to_string()))
}

/// Applies stored changes, all in one call (the per-call cost grows with the document). If
/// that fails, one at a time, skipping (and logging) the ones that fail: the store stays
/// loadable, and every change that can be applied is.
fn apply_stored(doc: &mut AutoCommit, changes: &[Vec<u8>], dir: &Path) {
    if converge_core::apply_changes(doc, changes).is_ok() {
        return;
    }
    for (index, change) in changes.iter().enumerate() {
        if let Err(e) = converge_core::apply_changes(doc, std::slice::from_ref(change)) {
            tracing::error!(dir = %dir.display(), index, error = %e, "skipping a stored change that does not apply");
        }
    }
}

fn hash_of(bytes: &[u8]) -> ChangeHash {
    Change::from_bytes(bytes.to_vec())
        .map(|c| ChangeHash(c.hash().0))
        .unwrap_or(ChangeHash([0; 32]))
}

fn position_check(body: &[u8]) -> [u8; 8] {
    let mut out = [0; 8];
    out.copy_from_slice(&blake3::hash(body).as_bytes()[..8]);
    out
}

fn encode_position(p: Position) -> [u8; 24] {
    let mut out = [0; 24];
    out[..8].copy_from_slice(&p.epoch.get().to_le_bytes());
    out[8..16].copy_from_slice(&p.seq.get().to_le_bytes());
    let check = position_check(&out[..16]);
    out[16..].copy_from_slice(&check);
    out
}

/// Reads a persisted position. A damaged file (only outside damage can make one: it is
/// replaced by rename) counts as no position: the server then sends a snapshot, which is
/// always safe, where guessing a position could skip entries.
fn read_position(path: &Path) -> Result<Option<Position>, StoreError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StoreError::io("read", path)(e)),
    };
    let decoded = <[u8; 24]>::try_from(bytes.as_slice())
        .ok()
        .filter(|b| b[16..] == position_check(&b[..16]))
        .map(|b| {
            let mut epoch = [0; 8];
            let mut seq = [0; 8];
            epoch.copy_from_slice(&b[..8]);
            seq.copy_from_slice(&b[8..16]);
            Position {
                epoch: Epoch(u64::from_le_bytes(epoch)),
                seq: Seq(u64::from_le_bytes(seq)),
            }
        });
    if decoded.is_none() {
        tracing::warn!(path = %path.display(), "ignoring a damaged position file; the server will send a snapshot");
    }
    Ok(decoded)
}
