//! The document store: automerge documents materialized from the log.
//!
//! Local changes are made on the in-memory document and appended to the log. Remote changes are
//! appended to the log at once and *not* applied: the in-memory document catches up lazily, all
//! pending entries in one automerge call, the next time something reads it. That matters because
//! automerge (0.7 and later) charges about 0.4 us x document size per apply call, whatever the
//! batch size (see the design notes), so one call per read beats one call per change.
//!
//! Every method may do CPU-bound automerge work or block on storage: call it from a thread that
//! may block, e.g. through [`DocStore::blocking`] from async code.
//!
//! ```
//! use std::sync::Arc;
//! use automerge::{ReadDoc, ROOT, transaction::Transactable};
//! use converge_log::{Author, DocStore, LogConfig, MemLog, MemStorage, StoreConfig};
//! use converge_proto::UserId;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let log = Arc::new(MemLog::open_in_memory(&MemStorage::new(), LogConfig::default())?);
//! let store = DocStore::new(log, StoreConfig::default());
//! let me = Author::user(UserId::new("alice")?);
//! let (doc, created) = store.create(&me, 0, |d| d.put(ROOT, "title", "Rota").map(|_| ()))?;
//! created.wait()?;
//! let (_, appended) = store.change(&doc, &me, 1, |d| d.put(ROOT, "title", "Rota v2"))?;
//! appended.expect("a change was made").durable.wait()?;
//! let title = store.read(&doc, |d| d.get(ROOT, "title").map(|v| v.map(|(v, _)| v.to_string())))??;
//! assert_eq!(title.as_deref(), Some("\"Rota v2\""));
//! # Ok(()) }
//! ```

use std::collections::{HashMap, HashSet};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use automerge::{AutoCommit, Automerge, Change};
use converge_proto::{DocId, Epoch, Seq};

use crate::commit::Durable;
use crate::entry::{Author, EntryKind, NewEntry};
use crate::error::LogError;
use crate::event_log::{Appended, EventLog};
use crate::sync::lock;

/// How much the store keeps in memory.
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Documents are evicted, least recently used first, while the estimated memory of the
    /// loaded ones is above this. The estimate is [`StoreConfig::memory_factor`] x the bytes a
    /// document was loaded from (snapshot plus changes).
    pub memory_budget_bytes: u64,
    /// How many bytes of memory a loaded document takes per byte of its encoded form.
    pub memory_factor: u64,
    /// Entries read from the log per page while catching up.
    pub page: usize,
    /// Local changes are appended to the log every this many changes (1: each change at
    /// once, the default). An editor streaming keystrokes can raise it: each edit stays its
    /// own change and its own log entry, but extracting and appending them in groups costs
    /// far less. Held-back changes are not in the log (so not durable, not acknowledged)
    /// until the group fills or [`DocStore::flush_local`] runs (snapshots and eviction run it
    /// first; reads see them, since they are in the document).
    pub local_batch: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            memory_budget_bytes: 512 << 20,
            memory_factor: 8,
            page: 16_384,
            local_batch: 1,
        }
    }
}

/// Failures of the document store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error(transparent)]
    Log(#[from] LogError),
    /// automerge refused an operation (a local edit, or a snapshot that does not load).
    #[error("automerge: {0}")]
    Automerge(#[from] automerge::AutomergeError),
    /// A log entry could not be applied; it is quarantined and the document loads without it.
    #[error(
        "document {doc}: the change at seq {seq} cannot be applied ({reason}); it is quarantined"
    )]
    Quarantined {
        doc: DocId,
        seq: Seq,
        reason: String,
    },
    /// The function that writes a new document's first state failed; nothing was written.
    #[error("cannot build the document: {0}")]
    Init(String),
    /// `load_at` asked for a seq past the end of the stream.
    #[error("document {doc} has no seq {seq} (last is {last})")]
    NoSuchSeq { doc: DocId, seq: Seq, last: Seq },
    /// The blocking task running the work panicked or was cancelled.
    #[error("background task failed: {0}")]
    Join(String),
}

/// Automerge documents over an [`EventLog`], with lazy catch-up and LRU eviction.
#[derive(Debug)]
pub struct DocStore {
    log: Arc<dyn EventLog>,
    config: StoreConfig,
    slots: Mutex<HashMap<DocId, Arc<Mutex<Slot>>>>,
    clock: AtomicU64,
    /// Set when a document is loaded, so the next operation checks the memory budget.
    loads: AtomicBool,
    /// Changes that could not be applied, per document (seq, reason); kept for operators.
    quarantine: Mutex<HashMap<DocId, Quarantine>>,
}

/// A document's changes that could not be applied.
#[derive(Debug, Default)]
struct Quarantine {
    /// (log seq, why), in the order they were found.
    entries: Vec<(Seq, String)>,
    /// The automerge hashes of those that decoded: a change waiting for one of them can never
    /// be applied, anywhere.
    hashes: HashSet<automerge::ChangeHash>,
}

#[derive(Debug, Default)]
struct Slot {
    loaded: Option<Loaded>,
    last_used: u64,
}

#[derive(Debug)]
struct Loaded {
    doc: AutoCommit,
    /// Every entry up to here is in `doc`.
    applied_through: Seq,
    /// Encoded bytes the document was built from, for the memory estimate.
    encoded_bytes: u64,
    /// Local changes committed in `doc` but not yet appended (see `StoreConfig::local_batch`).
    unlogged: usize,
    /// Who made them, and when: they are logged under the latest change's author and time.
    unlogged_by: Option<(Author, u64)>,
    /// `doc`'s heads when its local changes were last logged.
    logged_heads: Vec<automerge::ChangeHash>,
}

impl DocStore {
    pub fn new(log: Arc<dyn EventLog>, config: StoreConfig) -> Self {
        Self {
            log,
            config,
            slots: Mutex::new(HashMap::new()),
            clock: AtomicU64::new(0),
            loads: AtomicBool::new(false),
            quarantine: Mutex::new(HashMap::new()),
        }
    }

    /// The log underneath.
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Runs `f` on a blocking thread, for async callers.
    pub async fn blocking<R, F>(self: &Arc<Self>, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&DocStore) -> R + Send + 'static,
        R: Send + 'static,
    {
        let this = self.clone();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Join(e.to_string()))
    }

    /// Creates a document: `init` writes its first state, which becomes the stream's first
    /// change. Returns the new id and the durability ticket of that first append.
    pub fn create<F, E>(
        &self,
        author: &Author,
        at_ms: u64,
        init: F,
    ) -> Result<(DocId, Durable), StoreError>
    where
        F: FnOnce(&mut AutoCommit) -> Result<(), E>,
        E: std::fmt::Display,
    {
        let mut doc = AutoCommit::new();
        init(&mut doc).map_err(|e| StoreError::Init(e.to_string()))?;
        let changes: Vec<Vec<u8>> = doc
            .get_changes(&[])
            .iter()
            .map(|c| c.raw_bytes().to_vec())
            .collect();
        let id = DocId::random();
        // A later ticket covers every earlier write, so the first append's ticket also covers
        // the creation; with no changes, the creation's own ticket is returned.
        let mut durable = self.log.create(id, Epoch(1))?;
        let mut last = Seq(0);
        // The memory estimate counts the bytes a document was built from: here, its changes.
        let encoded_bytes = changes.iter().map(|c| c.len() as u64).sum();
        if !changes.is_empty() {
            let appended = self.append_changes(&id, author, at_ms, changes)?;
            last = appended.results.last().map_or(Seq(0), |r| r.seq());
            durable = appended.durable;
        }
        self.install(
            id,
            Loaded {
                logged_heads: doc.get_heads(),
                doc,
                applied_through: last,
                encoded_bytes,
                unlogged: 0,
                unlogged_by: None,
            },
        );
        Ok((id, durable))
    }

    /// Makes a local change: `f` edits the (caught-up) document; if it changed anything, the
    /// change is appended to the log. Returns `f`'s result and the append: None if nothing
    /// changed, or if the change is held back by [`StoreConfig::local_batch`].
    pub fn change<R, F>(
        &self,
        id: &DocId,
        author: &Author,
        at_ms: u64,
        f: F,
    ) -> Result<(R, Option<Appended>), StoreError>
    where
        F: FnOnce(&mut AutoCommit) -> R,
    {
        let slot = self.slot(id);
        let mut slot = lock(&slot);
        self.catch_up(id, &mut slot)?;
        let Some(loaded) = slot.loaded.as_mut() else {
            return Err(StoreError::Log(LogError::UnknownDoc(*id)));
        };
        let before = loaded.doc.get_heads();
        let r = f(&mut loaded.doc);
        // Commit explicitly so the change is closed before its bytes are taken.
        loaded.doc.commit();
        if loaded.doc.get_heads() == before {
            return Ok((r, None));
        }
        loaded.unlogged += 1;
        match &mut loaded.unlogged_by {
            Some((a, t)) if a == author => *t = at_ms,
            other => *other = Some((author.clone(), at_ms)),
        }
        let appended = if loaded.unlogged >= self.config.local_batch {
            self.log_local(id, &mut slot)?
        } else {
            None
        };
        drop(slot);
        self.maybe_evict(id);
        Ok((r, appended))
    }

    /// Runs `f` on the caught-up document as one all-or-nothing edit, then appends in one
    /// atomic batch the entries `head` returns (it sees `f`'s result) followed by the change
    /// `f` made, if it succeeded and changed anything. A failed `f` leaves the document as it
    /// was (its open edits are rolled back; one that committed edits itself gets the document
    /// rebuilt from the log). This is how a mutation's outcome and its change land together.
    /// Returns `f`'s result, the append, and the bytes of the changes it logged (in order,
    /// after the `head` entries).
    #[allow(clippy::type_complexity)]
    pub fn transact<R, E, F, H>(
        &self,
        id: &DocId,
        change_author: &Author,
        at_ms: u64,
        f: F,
        head: H,
    ) -> Result<(Result<R, E>, Appended, Vec<Vec<u8>>), StoreError>
    where
        F: FnOnce(&mut AutoCommit) -> Result<R, E>,
        H: FnOnce(&Result<R, E>) -> Vec<NewEntry>,
    {
        let slot = self.slot(id);
        let mut slot = lock(&slot);
        // Held-back local changes go first, so the batch below depends only on logged ones.
        self.log_local(id, &mut slot)?;
        self.catch_up(id, &mut slot)?;
        let Some(loaded) = slot.loaded.as_mut() else {
            return Err(StoreError::Log(LogError::UnknownDoc(*id)));
        };
        let before = loaded.doc.get_heads();
        let r = f(&mut loaded.doc);
        let change = match &r {
            Ok(_) => {
                loaded.doc.commit();
                let heads = loaded.doc.get_heads();
                if heads == before {
                    Vec::new()
                } else {
                    // One change on top of `before` (the common case): take it directly;
                    // asking automerge for everything since `before` walks the history.
                    match loaded.doc.get_last_local_change() {
                        Some(c)
                            if heads == vec![c.hash()] && sorted(c.deps()) == sorted(&before) =>
                        {
                            vec![c]
                        }
                        _ => {
                            let own = loaded.doc.get_actor().clone();
                            loaded
                                .doc
                                .get_changes(&before)
                                .into_iter()
                                .filter(|c| *c.actor_id() == own)
                                .collect::<Vec<Change>>()
                        }
                    }
                }
            }
            Err(_) => {
                loaded.doc.rollback();
                if loaded.doc.get_heads() != before {
                    slot.loaded = None;
                }
                Vec::new()
            }
        };
        let mut entries = head(&r);
        entries.extend(change.iter().map(|c| NewEntry {
            at_ms,
            author: change_author.clone(),
            kind: EntryKind::Change(c.raw_bytes().to_vec()),
        }));
        if entries.is_empty() {
            return Err(StoreError::Log(LogError::Invalid(
                "a transaction must log at least one entry".into(),
            )));
        }
        let appended = match self.log.append(id, entries) {
            Ok(a) => a,
            Err(e) => {
                // The document may hold a change the log refused: rebuild it from the log.
                slot.loaded = None;
                return Err(e.into());
            }
        };
        if let Some(loaded) = slot.loaded.as_mut() {
            let first = appended.results.first().map(|r| r.seq());
            if first == Some(loaded.applied_through.next()) {
                loaded.applied_through = appended
                    .results
                    .iter()
                    .map(|r| r.seq())
                    .max()
                    .unwrap_or(loaded.applied_through);
                loaded.logged_heads = loaded.doc.get_heads();
                loaded.encoded_bytes += change
                    .iter()
                    .map(|c| c.raw_bytes().len() as u64)
                    .sum::<u64>();
            } else {
                // Something else was appended in between: catch up from the log next time.
                slot.loaded = None;
            }
        }
        drop(slot);
        self.maybe_evict(id);
        let logged = change.iter().map(|c| c.raw_bytes().to_vec()).collect();
        Ok((r, appended, logged))
    }

    /// Appends the local changes that [`StoreConfig::local_batch`] held back (see there).
    /// Returns the append, or None if there was nothing to log.
    pub fn flush_local(&self, id: &DocId) -> Result<Option<Appended>, StoreError> {
        let slot = self.slot(id);
        let mut slot = lock(&slot);
        self.log_local(id, &mut slot)
    }

    /// Logs every local change the loaded document holds that the log does not, in one append.
    fn log_local(&self, id: &DocId, slot: &mut Slot) -> Result<Option<Appended>, StoreError> {
        let Some(loaded) = slot.loaded.as_mut() else {
            return Ok(None);
        };
        let Some((author, at_ms)) = loaded.unlogged_by.take() else {
            return Ok(None);
        };
        let own = loaded.doc.get_actor().clone();
        // One change on top of what was logged (the common case): take it directly instead of
        // asking automerge for everything since the logged heads.
        let last = if loaded.unlogged == 1 {
            loaded.doc.get_last_local_change()
        } else {
            None
        };
        let changes: Vec<Change> = match last {
            Some(c) if sorted(c.deps()) == sorted(&loaded.logged_heads) => vec![c],
            _ => loaded
                .doc
                .get_changes(&loaded.logged_heads)
                .into_iter()
                .filter(|c| *c.actor_id() == own)
                .collect(),
        };
        loaded.unlogged = 0;
        loaded.logged_heads = loaded.doc.get_heads();
        if changes.is_empty() {
            return Ok(None);
        }
        let appended = match self.log.append_changes(id, &author, at_ms, &changes) {
            Ok(a) => a,
            Err(e) => {
                // The in-memory document now holds changes the log refused: drop it, so the
                // next read rebuilds the document from the log alone.
                slot.loaded = None;
                return Err(e.into());
            }
        };
        loaded.encoded_bytes += changes
            .iter()
            .map(|c| c.raw_bytes().len() as u64)
            .sum::<u64>();
        let first = appended.results.first().map(|r| r.seq());
        if first == Some(loaded.applied_through.next()) {
            loaded.applied_through = appended
                .results
                .iter()
                .map(|r| r.seq())
                .max()
                .unwrap_or(loaded.applied_through);
        }
        Ok(Some(appended))
    }

    /// Takes changes from elsewhere: they are appended to the log (duplicates are no-ops) and
    /// the in-memory document, if loaded, catches up on its next read. No automerge apply here.
    pub fn apply_remote(
        &self,
        id: &DocId,
        author: &Author,
        at_ms: u64,
        changes: Vec<Vec<u8>>,
    ) -> Result<Appended, StoreError> {
        self.append_changes(id, author, at_ms, changes)
    }

    /// Reads the caught-up document.
    pub fn read<R, F>(&self, id: &DocId, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&Automerge) -> R,
    {
        let slot = self.slot(id);
        let mut slot = lock(&slot);
        self.catch_up(id, &mut slot)?;
        let r = match slot.loaded.as_mut() {
            Some(l) => f(l.doc.document()),
            None => return Err(StoreError::Log(LogError::UnknownDoc(*id))),
        };
        drop(slot);
        self.maybe_evict(id);
        Ok(r)
    }

    /// The document as it was at `seq`, built from the log (the snapshot if it is not newer,
    /// then entries). Does not touch the cache.
    pub fn load_at(&self, id: &DocId, seq: Seq) -> Result<Automerge, StoreError> {
        let head = self.log.head(id)?;
        if seq > head.last_seq {
            return Err(StoreError::NoSuchSeq {
                doc: *id,
                seq,
                last: head.last_seq,
            });
        }
        let mut loaded = self.build(id, seq)?;
        Ok(loaded.doc.document().clone())
    }

    /// Writes a snapshot if the log says one is due and the document holds every logged change.
    /// Returns whether one was written.
    pub fn snapshot_if_due(&self, id: &DocId) -> Result<bool, StoreError> {
        if !self.log.snapshot_due(id)? {
            return Ok(false);
        }
        self.snapshot(id)
    }

    /// Writes a snapshot now when a fresh subscriber would otherwise load a long tail: more
    /// than `max_entries` entries after the newest snapshot, and change bytes over a quarter
    /// of its size (so a large document with a short tail is not saved again for every join).
    /// The background rule ([`EventLog::snapshot_due`]) lets a tail grow to the snapshot's
    /// size or 64 KiB, thousands of small changes, which a joiner applies one by one.
    pub fn snapshot_if_tail_over(&self, id: &DocId, max_entries: u64) -> Result<bool, StoreError> {
        let tail = self.log.tail(id)?;
        if tail.entries <= max_entries || tail.change_bytes <= tail.snapshot_bytes / 4 {
            return Ok(false);
        }
        self.snapshot(id)
    }

    /// Writes a snapshot of the caught-up document now (if it holds every logged change).
    pub fn snapshot(&self, id: &DocId) -> Result<bool, StoreError> {
        let slot = self.slot(id);
        let mut slot = lock(&slot);
        // The snapshot must cover exactly the log up to its seq: log held-back changes first.
        if let Some(appended) = self.log_local(id, &mut slot)? {
            appended.durable.wait()?;
        }
        self.catch_up(id, &mut slot)?;
        let Some(loaded) = slot.loaded.as_mut() else {
            return Ok(false);
        };
        // Changes whose dependencies have not arrived sit in automerge's queue and are not in
        // `save()`; a snapshot then would not cover its seq, so wait for them. Unless what they
        // wait for was quarantined: then no replica will ever apply them (every one loads
        // without them), and waiting would stop this document's snapshots for good.
        let missing = loaded.doc.get_missing_deps(&[]);
        if !missing.is_empty() {
            let hopeless = lock(&self.quarantine)
                .get(id)
                .is_some_and(|q| missing.iter().all(|h| q.hashes.contains(h)));
            if !hopeless {
                return Ok(false);
            }
        }
        let seq = loaded.applied_through;
        if seq == Seq(0) {
            return Ok(false);
        }
        let bytes = loaded.doc.save();
        loaded.encoded_bytes = bytes.len() as u64;
        drop(slot);
        self.log.put_snapshot(id, seq, bytes)?.wait()?;
        Ok(true)
    }

    /// Drops a document from memory; the next access reloads it from the log.
    /// Held-back local changes are logged first; if that fails the document stays loaded.
    pub fn evict(&self, id: &DocId) {
        let slot = lock(&self.slots).get(id).cloned();
        if let Some(slot) = slot {
            let mut slot = lock(&slot);
            match self.log_local(id, &mut slot) {
                Ok(_) => slot.loaded = None,
                Err(e) => {
                    tracing::error!(doc = %id, error = %e, "not evicted: local changes could not be logged")
                }
            }
        }
    }

    /// Documents currently in memory.
    pub fn loaded(&self) -> Vec<DocId> {
        let slots: Vec<(DocId, Arc<Mutex<Slot>>)> = lock(&self.slots)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        slots
            .into_iter()
            .filter(|(_, s)| lock(s).loaded.is_some())
            .map(|(k, _)| k)
            .collect()
    }

    /// Estimated bytes of memory the loaded documents take.
    pub fn memory_estimate(&self) -> u64 {
        let slots: Vec<Arc<Mutex<Slot>>> = lock(&self.slots).values().cloned().collect();
        slots
            .iter()
            .filter_map(|s| lock(s).loaded.as_ref().map(|l| l.encoded_bytes))
            .sum::<u64>()
            * self.config.memory_factor
    }

    /// How many logged entries the in-memory document has not taken in yet (None: not loaded).
    /// They are applied, all in one call, by the next read or change.
    pub fn pending_entries(&self, id: &DocId) -> Result<Option<u64>, StoreError> {
        let head = self.log.head(id)?;
        let slot = lock(&self.slots).get(id).cloned();
        Ok(slot.and_then(|s| {
            lock(&s)
                .loaded
                .as_ref()
                .map(|l| head.last_seq.get().saturating_sub(l.applied_through.get()))
        }))
    }

    /// Log seqs of changes that could not be applied to a document.
    pub fn quarantined(&self, id: &DocId) -> Vec<(Seq, String)> {
        lock(&self.quarantine)
            .get(id)
            .map(|q| q.entries.clone())
            .unwrap_or_default()
    }

    fn append_changes(
        &self,
        id: &DocId,
        author: &Author,
        at_ms: u64,
        changes: Vec<Vec<u8>>,
    ) -> Result<Appended, StoreError> {
        let entries = changes
            .into_iter()
            .map(|c| NewEntry {
                at_ms,
                author: author.clone(),
                kind: EntryKind::Change(c),
            })
            .collect();
        Ok(self.log.append(id, entries)?)
    }

    fn slot(&self, id: &DocId) -> Arc<Mutex<Slot>> {
        let tick = self.clock.fetch_add(1, Ordering::Relaxed);
        let slot = lock(&self.slots).entry(*id).or_default().clone();
        lock(&slot).last_used = tick;
        slot
    }

    fn install(&self, id: DocId, loaded: Loaded) {
        let slot = self.slot(&id);
        lock(&slot).loaded = Some(loaded);
        self.evict_over_budget(Some(&id));
    }

    /// Brings the slot's document up to the log's head: loads it if absent (snapshot + tail),
    /// else applies every pending change in one call.
    fn catch_up(&self, id: &DocId, slot: &mut Slot) -> Result<(), StoreError> {
        let mut head = self.log.head(id)?;
        let last = head.last_seq;
        if slot
            .loaded
            .as_ref()
            .is_some_and(|l| l.unlogged > 0 && l.applied_through < last)
        {
            // A failed apply below rebuilds the document from the log: log local changes
            // first so a rebuild cannot lose them.
            self.log_local(id, slot)?;
            head = self.log.head(id)?;
        }
        let Some(loaded) = slot.loaded.as_mut() else {
            slot.loaded = Some(self.build(id, head.last_seq)?);
            return Ok(());
        };
        if loaded.applied_through >= head.last_seq {
            return Ok(());
        }
        let pending = self.changes_between(id, loaded.applied_through.next(), head.last_seq)?;
        let bytes: u64 = pending.iter().map(|(_, c)| c.len() as u64).sum();
        match self.apply_all(id, &mut loaded.doc, &pending) {
            Ok(()) => {
                loaded.applied_through = head.last_seq;
                loaded.encoded_bytes += bytes;
            }
            // The document may be half-applied: throw it away and rebuild it from the log.
            Err(()) => slot.loaded = Some(self.build(id, head.last_seq)?),
        }
        Ok(())
    }

    /// The changes logged in `from..=to`, with their seqs.
    fn changes_between(
        &self,
        id: &DocId,
        from: Seq,
        to: Seq,
    ) -> Result<Vec<(Seq, Vec<u8>)>, StoreError> {
        let mut out = Vec::new();
        let mut from = from;
        while from <= to {
            let limit = (to.get() - from.get() + 1).min(self.config.page as u64) as usize;
            let entries = self.log.read(id, from, limit)?;
            let Some(last) = entries.last() else { break };
            from = last.seq.next();
            out.extend(
                entries
                    .into_iter()
                    .filter_map(|e| e.kind.into_change_bytes().map(|c| (e.seq, c))),
            );
        }
        Ok(out)
    }

    /// Builds a document from the log up to `upto`: the snapshot (if it does not pass `upto`)
    /// plus every change after it, in one apply call. If that call fails, falls back to one
    /// change at a time, quarantining each change that fails, so one bad entry cannot make a
    /// document unloadable or take the process down.
    fn build(&self, id: &DocId, upto: Seq) -> Result<Loaded, StoreError> {
        let snapshot = self.log.snapshot(id)?.filter(|s| s.seq <= upto);
        let base = || -> Result<AutoCommit, StoreError> {
            Ok(match &snapshot {
                Some(s) => AutoCommit::load(&s.bytes)?,
                None => AutoCommit::new(),
            })
        };
        let base_seq = snapshot.as_ref().map_or(Seq(0), |s| s.seq);
        let base_bytes = snapshot.as_ref().map_or(0, |s| s.bytes.len() as u64);
        let changes = self.changes_between(id, base_seq.next(), upto)?;
        let encoded_bytes = base_bytes + changes.iter().map(|(_, c)| c.len() as u64).sum::<u64>();
        let mut doc = base()?;
        if self.apply_all(id, &mut doc, &changes).is_err() {
            doc = self.apply_one_by_one(id, base()?, changes);
        }
        self.loads.store(true, Ordering::Relaxed);
        Ok(Loaded {
            logged_heads: doc.get_heads(),
            doc,
            applied_through: upto,
            encoded_bytes,
            unlogged: 0,
            unlogged_by: None,
        })
    }

    /// Applies changes in one automerge call, under `catch_unwind`: automerge can panic on a
    /// change that decodes but is not valid for this document (see the design notes).
    /// Quarantined changes are skipped. `Err` means `doc` must be discarded.
    fn apply_all(
        &self,
        id: &DocId,
        doc: &mut AutoCommit,
        changes: &[(Seq, Vec<u8>)],
    ) -> Result<(), ()> {
        let skip: Vec<Seq> = self.quarantined(id).into_iter().map(|(s, _)| s).collect();
        let mut decoded = Vec::with_capacity(changes.len());
        for (seq, bytes) in changes {
            if skip.contains(seq) {
                continue;
            }
            decoded.push(Change::from_bytes(bytes.clone()).map_err(|_| ())?);
        }
        if decoded.is_empty() {
            return Ok(());
        }
        match catch_unwind(AssertUnwindSafe(|| doc.apply_changes(decoded))) {
            Ok(Ok(())) => Ok(()),
            _ => Err(()),
        }
    }

    /// The slow path: apply one change at a time, on a copy, so a failing change leaves the
    /// document as it was; each failure is quarantined (recorded and skipped).
    fn apply_one_by_one(
        &self,
        id: &DocId,
        mut doc: AutoCommit,
        changes: Vec<(Seq, Vec<u8>)>,
    ) -> AutoCommit {
        for (seq, bytes) in changes {
            if self.quarantined(id).iter().any(|(s, _)| *s == seq) {
                continue;
            }
            let (reason, hash) = match Change::from_bytes(bytes) {
                Err(e) => (e.to_string(), None),
                Ok(change) => {
                    let hash = change.hash();
                    let mut trial = doc.clone();
                    let reason =
                        match catch_unwind(AssertUnwindSafe(|| trial.apply_changes([change]))) {
                            Ok(Ok(())) => {
                                doc = trial;
                                continue;
                            }
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => "automerge panicked applying it".to_string(),
                        };
                    (reason, Some(hash))
                }
            };
            tracing::error!(doc = %id, %seq, %reason, "change quarantined");
            let mut quarantine = lock(&self.quarantine);
            let q = quarantine.entry(*id).or_default();
            q.entries.push((seq, reason));
            q.hashes.extend(hash);
        }
        doc
    }

    /// Checks the memory budget now and then rather than on every operation: the check walks
    /// every slot, and a document only grows by small steps between loads.
    fn maybe_evict(&self, id: &DocId) {
        if self.clock.load(Ordering::Relaxed).is_multiple_of(64) || self.loaded_count_changed() {
            self.evict_over_budget(Some(id));
        }
    }

    /// Whether a document was loaded or dropped since the last budget check.
    fn loaded_count_changed(&self) -> bool {
        self.loads.swap(false, Ordering::Relaxed)
    }

    fn evict_over_budget(&self, keep: Option<&DocId>) {
        loop {
            if self.memory_estimate() <= self.config.memory_budget_bytes {
                return;
            }
            let slots: Vec<(DocId, Arc<Mutex<Slot>>)> = lock(&self.slots)
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect();
            let victim = slots
                .iter()
                .filter(|(k, _)| Some(k) != keep)
                .filter_map(|(k, s)| {
                    let s = s.try_lock().ok()?;
                    s.loaded.as_ref().map(|_| (s.last_used, *k))
                })
                .min();
            match victim {
                Some((_, k)) => self.evict(&k),
                None => return,
            }
        }
    }
}

fn sorted(hashes: &[automerge::ChangeHash]) -> Vec<automerge::ChangeHash> {
    let mut v = hashes.to_vec();
    v.sort_unstable();
    v
}

impl Drop for DocStore {
    /// Logs held-back local changes (best effort: a failure is reported, not raised).
    fn drop(&mut self) {
        let slots: Vec<(DocId, Arc<Mutex<Slot>>)> = lock(&self.slots)
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (id, slot) in slots {
            let mut slot = lock(&slot);
            match self.log_local(&id, &mut slot) {
                Ok(Some(appended)) => {
                    if let Err(e) = appended.durable.wait() {
                        tracing::error!(doc = %id, error = %e, "local changes not flushed on close");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(doc = %id, error = %e, "local changes not logged on close")
                }
            }
        }
    }
}
