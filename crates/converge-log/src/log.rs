//! [`Log`]: the event log over a [`Kv`] store. `SledLog` and `MemLog` are this type on sled and
//! on memory, so both pass the same conformance suite by construction of one algorithm, and
//! differ only in where bytes live.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use converge_proto::limits::{MAX_BATCH_ENTRIES, MAX_SNAPSHOT_BYTES};
use converge_proto::{ChangeHash, ClientId, DocId, Epoch, FencingToken, MutationId, Seq, UserId};

use crate::change_info::{ChangeInfo, decode_logged, inspect_change};
use crate::codec::{self, FORMAT_VERSION};
use crate::commit::{Committer, Durability, Durable};
use crate::entry::{
    Author, Entry, EntryHash, EntryKind, LockEvent, LockRecord, MutationOutcome, NewEntry,
};
use crate::error::LogError;
use crate::event_log::{
    ActorRecord, AppendResult, Appended, DocHead, DocMeta, DocStats, EventLog, RecordedOutcome,
    Snapshot, SnapshotInfo, SnapshotRecord,
};
use crate::keys;
use crate::kv::{Kv, MemStorage, SledKv, WriteBatch};
use crate::page::{self, PageWriter};
use crate::staged::Staged;
use crate::sync::{lock, read, write};

/// Staged writes are drained into sled at the latest when they reach this many bytes.
const STAGE_BYTES: usize = 8 << 20;

/// How a log behaves. `LogConfig::default()` is what `converge serve` uses.
#[derive(Debug, Clone)]
pub struct LogConfig {
    pub durability: Durability,
    /// A snapshot is due after this many entries since the last one.
    pub snapshot_every_entries: u64,
    /// No snapshot is due by the size rule while fewer change bytes than this were logged since
    /// the last one (so a new small document is not snapshotted on every change).
    pub min_snapshot_bytes: u64,
    /// Whether writing a snapshot also drops the entries it covers (history is then gone).
    pub compact_on_snapshot: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            durability: Durability::Fsync,
            snapshot_every_entries: 10_000,
            min_snapshot_bytes: 64 * 1024,
            compact_on_snapshot: false,
        }
    }
}

/// An event log on disk (sled 0.34.7). The default.
pub type SledLog = Log;
/// An event log in memory, for fast tests; see [`MemStorage`] to reboot or crash it.
pub type MemLog = Log;

/// The event log. Open it on disk with [`Log::open`] or in memory with [`Log::open_in_memory`].
pub struct Log {
    kv: Arc<dyn Kv>,
    config: LogConfig,
    docs: RwLock<HashMap<DocId, Arc<Mutex<DocState>>>>,
    /// The last issued fencing token. Held while a batch that grants a lock is applied, so
    /// tokens are issued in the order they become visible.
    fence: Mutex<u64>,
    committer: Committer,
    backend: &'static str,
}

/// In-memory state of one document, guarded by its own mutex so appends to one document are
/// serialized while different documents append in parallel.
#[derive(Debug)]
struct DocState {
    meta: DocMeta,
    last_seq: Seq,
    last_hash: EntryHash,
    tombstoned: bool,
    /// Set when opening found the tail damaged; the document then refuses appends and reads.
    broken: Option<LogError>,
    /// Change bytes and entries since the last snapshot; computed on first need.
    since_snapshot: Option<(u64, u64)>,
    /// The actor index of this document, read from the store on first need and kept in step
    /// with every append (the store stays the source of truth; this saves a lookup per change).
    /// The change-hash and actor indexes, loaded on first need and kept in step after.
    index: Option<Index>,
}

/// A document's indexes in memory. The store holds a checkpoint of them (hash blocks, actor
/// records, and `through`, the last seq they cover), written in the same batch as the entry
/// that is `CHECKPOINT` entries past the previous one; entries after `through` are indexed from
/// the pages when the index is loaded. So most appends write one key (their page), not three.
#[derive(Debug, Default)]
struct Index {
    actors: HashMap<Vec<u8>, ActorRecord>,
    /// Each actor's highest op counter: its next change must start above it, or op ids would
    /// repeat. Absent for actors indexed by a log written before it was kept (no check then).
    max_ops: HashMap<Vec<u8>, u64>,
    hashes: HashMap<ChangeHash, Seq>,
    /// Full contents of the hash blocks that hold entries after `through`, or that may still
    /// grow (the block holding `through`).
    open_blocks: BTreeMap<u64, Vec<u8>>,
    /// Actors whose records changed after `through`.
    dirty: HashSet<Vec<u8>>,
    through: Seq,
}

/// The index is checkpointed at least every this many entries.
const CHECKPOINT: u64 = 16;

/// Entries per hash block (see `keys::hash_block`). Small, because sled rewrites a whole value
/// when a block grows: 16 hashes (512 bytes) bound what one single-entry append rewrites.
const BLOCK: u64 = 16;
const NO_CHANGE: [u8; 32] = [0; 32];

impl fmt::Debug for Log {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Log")
            .field("backend", &self.backend)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Log {
    /// Opens (or creates) a log in `dir` on sled.
    pub fn open(dir: impl AsRef<Path>, config: LogConfig) -> Result<Self, LogError> {
        finish_vacuum(dir.as_ref())?;
        let dir = dir.as_ref();
        let (sled, journal) = open_sled(dir)?;
        let journal = match journal {
            Some(j) => j,
            None => crate::journal::recover(dir, &sled)?,
        };
        let kv = Staged::with_journal(sled, STAGE_BYTES, journal);
        Self::open_on(Arc::new(kv), config, "sled", STAGE_BYTES / 8)
    }

    /// Rewrites the closed log in `dir` into a fresh sled database holding only its live
    /// records, and returns the bytes on disk before and after.
    ///
    /// sled reuses the space of deleted records but never returns it to the file system, so
    /// after a compaction the files keep their size; this gives it back. The log must not be
    /// open (sled refuses a second opener). Crash-safe: the copy is built beside `dir` and marked
    /// complete before it replaces `dir`; an interrupted swap is finished by the next open.
    pub fn vacuum(dir: impl AsRef<Path>) -> Result<(u64, u64), LogError> {
        let dir = dir.as_ref();
        finish_vacuum(dir)?;
        if !dir.is_dir() {
            return Err(LogError::NotALog(format!("no log at {}", dir.display())));
        }
        let (copy, done, old_dir) = vacuum_paths(dir);
        let io = |what: &str, e: std::io::Error| LogError::Storage(format!("vacuum: {what}: {e}"));
        if copy.exists() {
            std::fs::remove_dir_all(&copy).map_err(|e| io("removing an old copy", e))?;
        }
        let (before, after) = {
            let old = open_whole(dir)?;
            let new = SledKv::open(&copy)?;
            old.copy_into(&new)?;
            (old.size_on_disk()?, new.size_on_disk()?)
        };
        // The marker is on disk, and named in its directory, before anything is moved: after
        // a power cut, a marker means the copy is whole (its flush synced it).
        std::fs::File::create(&done)
            .and_then(|mut f| {
                std::io::Write::write_all(&mut f, b"complete")?;
                f.sync_all()
            })
            .map_err(|e| io("marking the copy complete", e))?;
        crate::disk_sync::sync_parent(dir).map_err(|e| io("syncing the marker's directory", e))?;
        std::fs::rename(dir, &old_dir).map_err(|e| io("moving the old log aside", e))?;
        finish_vacuum(dir)?;
        Ok((before, after))
    }

    /// Restores a backup (the directory of a closed log) into `into`, which must be missing or
    /// empty: the records are copied as `vacuum` copies them, then every document moves to a
    /// new epoch ([`EventLog::bump_epoch`]), so clients holding positions from after the backup
    /// reconcile instead of trusting them. Returns the restored log, open.
    pub fn restore(
        backup: impl AsRef<Path>,
        into: impl AsRef<Path>,
        config: LogConfig,
    ) -> Result<Self, LogError> {
        let (backup, into) = (backup.as_ref(), into.as_ref());
        if !backup.is_dir() {
            return Err(LogError::NotALog(format!("no log at {}", backup.display())));
        }
        let io = |e: std::io::Error| LogError::Storage(format!("restore: {e}"));
        if into.exists() && std::fs::read_dir(into).map_err(io)?.next().is_some() {
            return Err(LogError::NotEmpty(into.display().to_string()));
        }
        {
            let old = open_whole(backup)?;
            old.copy_into(&SledKv::open(into)?)?;
        }
        let log = Self::open(into, config)?;
        for doc in log.docs()? {
            log.bump_epoch(&doc)?.1.wait()?;
        }
        Ok(log)
    }

    /// Opens a log on memory. Opening again on the same storage is a reboot.
    pub fn open_in_memory(storage: &MemStorage, config: LogConfig) -> Result<Self, LogError> {
        // Staged like sled, with a small table so drains also happen between flushes: the
        // memory log exercises the same read-through-staging paths the sled log runs.
        let kv = Staged::new(storage.clone(), 64 << 10);
        Self::open_on(Arc::new(kv), config, "memory", 8 << 10)
    }

    /// `drain_at`: staged bytes at which a buffered log drains them in the background.
    fn open_on(
        kv: Arc<dyn Kv>,
        config: LogConfig,
        backend: &'static str,
        drain_at: usize,
    ) -> Result<Self, LogError> {
        check_format(kv.as_ref())?;
        let fence = match kv.get(keys::FENCE)? {
            Some(v) => u64_from(&v).ok_or_else(|| LogError::CorruptRecord {
                record: "fencing counter".into(),
                reason: "not 8 bytes".into(),
            })?,
            None => 0,
        };
        let mut docs = HashMap::new();
        let metas = kv.range(&[keys::META], &[keys::META + 1], false, usize::MAX)?;
        for (key, value) in metas {
            let doc = keys::doc_of(&key).ok_or_else(|| LogError::CorruptRecord {
                record: "document metadata".into(),
                reason: "bad key".into(),
            })?;
            let meta: DocMeta =
                codec::decode(&value).map_err(|reason| LogError::CorruptRecord {
                    record: format!("metadata of {doc}"),
                    reason,
                })?;
            let state = recover_doc(kv.as_ref(), &doc, meta)?;
            docs.insert(doc, Arc::new(Mutex::new(state)));
        }
        let committer = Committer::start(kv.clone(), config.durability, drain_at)?;
        Ok(Self {
            kv,
            config,
            docs: RwLock::new(docs),
            fence: Mutex::new(fence),
            committer,
            backend,
        })
    }

    fn state(&self, doc: &DocId) -> Result<Arc<Mutex<DocState>>, LogError> {
        let docs = read(&self.docs);
        docs.get(doc).cloned().ok_or(LogError::UnknownDoc(*doc))
    }

    /// The hash of the entry before `seq` (the `prev` that entry `seq` must carry).
    fn hash_before(&self, doc: &DocId, st: &DocState, seq: Seq) -> Result<EntryHash, LogError> {
        let before = Seq(seq.get().saturating_sub(1));
        if before == Seq(0) {
            return Ok(EntryHash::GENESIS);
        }
        if before == st.last_seq {
            return Ok(st.last_hash);
        }
        if before == st.meta.compacted_through {
            return Ok(st.meta.compacted_hash);
        }
        if let Some(s) = st.meta.snapshot.as_ref().filter(|s| s.seq == before) {
            return Ok(s.entry_hash);
        }
        let stored = self.stored_entries(doc, before, before, 1)?;
        match stored.first() {
            Some((seq, bytes)) if *seq == before => Ok(Entry::open(doc, before, bytes)?.hash),
            _ => Err(LogError::Corrupt {
                doc: *doc,
                seq: before,
                reason: "entry is missing".into(),
            }),
        }
    }

    /// The stored bytes of the entries with seqs in `from..=to`, at most `limit`, in order, as
    /// found (callers check that the seqs are contiguous).
    fn stored_entries(
        &self,
        doc: &DocId,
        from: Seq,
        to: Seq,
        limit: usize,
    ) -> Result<Vec<(Seq, Vec<u8>)>, LogError> {
        let mut out = Vec::new();
        if from > to || limit == 0 {
            return Ok(out);
        }
        const PAGES: usize = 64;
        let prefix = keys::doc_key(keys::ENTRY, doc);
        // The page holding `from` is the last one that starts at or before it.
        let before = self
            .kv
            .range(&prefix, &keys::entry(doc, from.next()), true, 1)?;
        let mut start = match before.into_iter().next() {
            Some((key, _)) => key,
            None => keys::entry(doc, from),
        };
        let end = keys::entry(doc, to.next());
        loop {
            let pages = self.kv.range(&start, &end, false, PAGES)?;
            for (key, value) in &pages {
                let first = keys::seq_of(key).unwrap_or_default();
                for (seq, bytes) in page::split(doc, first, value)? {
                    if seq < from {
                        continue;
                    }
                    if seq > to || out.len() >= limit {
                        return Ok(out);
                    }
                    out.push((seq, bytes.to_vec()));
                }
            }
            match pages.last() {
                Some((key, _)) if pages.len() == PAGES => {
                    // The first key after `key`.
                    start = key.clone();
                    start.push(0);
                }
                _ => return Ok(out),
            }
        }
    }

    /// The document's indexes: the stored checkpoint, then every entry after it, indexed
    /// from the pages.
    fn index<'s>(&self, doc: &DocId, st: &'s mut DocState) -> Result<&'s mut Index, LogError> {
        if st.index.is_none() {
            st.index = Some(self.load_index(doc, st.last_seq)?);
        }
        Ok(st.index.get_or_insert_with(Index::default))
    }

    fn load_index(&self, doc: &DocId, last_seq: Seq) -> Result<Index, LogError> {
        let corrupt = |what: &str, reason: String| LogError::CorruptRecord {
            record: format!("{what} of {doc}"),
            reason,
        };
        let through =
            match self.kv.get(&keys::doc_key(keys::INDEX, doc))? {
                Some(v) => Seq(u64_from(&v)
                    .ok_or_else(|| corrupt("index checkpoint", "not 8 bytes".into()))?),
                None => Seq(0),
            };
        let mut index = Index {
            through,
            ..Index::default()
        };
        let prefix = keys::doc_key(keys::ACTOR, doc);
        for (key, value) in self
            .kv
            .range(&prefix, &keys::prefix_end(&prefix), false, usize::MAX)?
        {
            let record: ActorRecord =
                codec::decode(&value).map_err(|reason| corrupt("actor index", reason))?;
            index.actors.insert(key[prefix.len()..].to_vec(), record);
        }
        let prefix = keys::doc_key(keys::OPS, doc);
        for (key, value) in self
            .kv
            .range(&prefix, &keys::prefix_end(&prefix), false, usize::MAX)?
        {
            let max_op =
                u64_from(&value).ok_or_else(|| corrupt("op index", "not 8 bytes".into()))?;
            index.max_ops.insert(key[prefix.len()..].to_vec(), max_op);
        }
        let prefix = keys::doc_key(keys::HASH, doc);
        for (key, value) in self
            .kv
            .range(&prefix, &keys::prefix_end(&prefix), false, usize::MAX)?
        {
            let block = keys::seq_of(&key).unwrap_or_default().get();
            let mut kept = Vec::new();
            for (i, chunk) in value.chunks_exact(32).enumerate() {
                let seq = Seq(block * BLOCK + i as u64 + 1);
                if seq > through {
                    break;
                }
                kept.extend_from_slice(chunk);
                if chunk != NO_CHANGE {
                    let mut h = [0u8; 32];
                    h.copy_from_slice(chunk);
                    index.hashes.insert(ChangeHash(h), seq);
                }
            }
            if (kept.len() as u64) < BLOCK * 32 {
                index.open_blocks.insert(block, kept);
            }
        }
        // The block holding `through` must hold exactly the entries up to it.
        if through.get() % BLOCK != 0 {
            let block = (through.get() - 1) / BLOCK;
            let want = (through.get() - block * BLOCK) as usize * 32;
            let got = index.open_blocks.get(&block).map_or(0, Vec::len);
            if got != want {
                return Err(corrupt(
                    "hash index",
                    format!("block {block} holds {got} bytes where {want} were expected"),
                ));
            }
        }
        // Entries after the checkpoint: index them from the pages.
        for (seq, stored) in self.stored_entries(doc, through.next(), last_seq, usize::MAX)? {
            let entry = Entry::open(doc, seq, &stored)?;
            let hash = match entry.kind.change_bytes() {
                Some(bytes) => {
                    let info = decode_logged(bytes)?;
                    index.hashes.insert(info.hash, seq);
                    let max_op = index.max_ops.entry(info.actor.clone()).or_default();
                    *max_op = (*max_op).max(info.max_op);
                    let pushed = matches!(entry.kind, EntryKind::Change(_));
                    let record = index
                        .actors
                        .entry(info.actor.clone())
                        .or_insert(ActorRecord {
                            owner: None,
                            max_change_seq: 0,
                            entry_seq: seq,
                        });
                    // The first direct push binds an actor; relayed changes never do.
                    if pushed && record.owner.is_none() {
                        record.owner = Some(entry.author.user.clone());
                    }
                    if info.seq > record.max_change_seq {
                        record.max_change_seq = info.seq;
                        record.entry_seq = seq;
                    }
                    index.dirty.insert(info.actor);
                    info.hash.0
                }
                None => NO_CHANGE,
            };
            index
                .open_blocks
                .entry((seq.get() - 1) / BLOCK)
                .or_default()
                .extend_from_slice(&hash);
        }
        Ok(index)
    }

    /// Adds the writes that make the stored index cover every entry up to `last`.
    fn checkpoint(
        &self,
        doc: &DocId,
        index: &mut Index,
        last: Seq,
        batch: &mut WriteBatch,
    ) -> Result<(), LogError> {
        for (block, bytes) in &index.open_blocks {
            if !bytes.is_empty() {
                batch.put(keys::hash_block(doc, *block), bytes.clone());
            }
        }
        index
            .open_blocks
            .retain(|_, b| (b.len() as u64) < BLOCK * 32);
        let tail = (last.get().saturating_sub(1)) / BLOCK;
        index.open_blocks.retain(|b, _| *b >= tail);
        for actor in index.dirty.drain() {
            if let Some(record) = index.actors.get(&actor) {
                batch.put(
                    keys::with_suffix(keys::ACTOR, doc, &actor),
                    codec::encode(record).map_err(LogError::Invalid)?,
                );
            }
            if let Some(max_op) = index.max_ops.get(&actor) {
                batch.put(
                    keys::with_suffix(keys::OPS, doc, &actor),
                    max_op.to_be_bytes().to_vec(),
                );
            }
        }
        batch.put(
            keys::doc_key(keys::INDEX, doc),
            last.get().to_be_bytes().to_vec(),
        );
        index.through = last;
        Ok(())
    }

    fn since_snapshot(&self, doc: &DocId, st: &mut DocState) -> Result<(u64, u64), LogError> {
        if let Some(v) = st.since_snapshot {
            return Ok(v);
        }
        let from = st.meta.snapshot.as_ref().map_or(1, |s| s.seq.get() + 1);
        let mut bytes = 0;
        let mut entries = 0;
        for (seq, stored) in self.stored_entries(doc, Seq(from), st.last_seq, usize::MAX)? {
            if let Some(c) = Entry::open(doc, seq, &stored)?.kind.change_bytes() {
                bytes += c.len() as u64;
            }
            entries += 1;
        }
        st.since_snapshot = Some((bytes, entries));
        Ok((bytes, entries))
    }

    /// Appends entries whose changes were already checked and decoded (`infos` holds, for each
    /// entry, the decoded change when it is one).
    fn append_checked(
        &self,
        doc: &DocId,
        entries: Vec<NewEntry>,
        infos: Vec<Option<ChangeInfo>>,
    ) -> Result<Appended, LogError> {
        if entries.is_empty() {
            return Err(LogError::Invalid("empty batch".into()));
        }
        if entries.len() > MAX_BATCH_ENTRIES {
            return Err(LogError::TooLarge {
                what: "batch",
                size: entries.len(),
                limit: MAX_BATCH_ENTRIES,
            });
        }
        let grants = entries
            .iter()
            .any(|e| matches!(&e.kind, EntryKind::Lock(l) if l.event == LockEvent::Granted));

        let state = self.state(doc)?;
        let mut st = lock(&state);
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        if st.tombstoned {
            return Err(LogError::Tombstoned(*doc));
        }
        // The fence lock is taken only by batches that grant, after the doc lock (one order).
        let mut fence = if grants {
            Some(lock(&self.fence))
        } else {
            None
        };
        let mut next_token = fence.as_deref().copied().unwrap_or(0);

        let mut batch = WriteBatch::default();
        let mut results = Vec::with_capacity(entries.len());
        let mut seq = st.last_seq;
        let mut prev = st.last_hash;
        let mut tombstoned = false;
        let mut in_batch: HashMap<ChangeHash, Seq> = HashMap::new();
        let mut actors: HashMap<Vec<u8>, ActorRecord> = HashMap::new();
        let mut max_ops: HashMap<Vec<u8>, u64> = HashMap::new();
        let mut mutations: HashMap<ClientId, MutationId> = HashMap::new();
        // Outcomes of this batch's mutations; `applied_open`: the last one was Applied and
        // its change (the next entry, if any) gives it its seq.
        let mut outcomes: Vec<(ClientId, MutationId, RecordedOutcome)> = Vec::new();
        let mut applied_open: Option<usize> = None;
        // The last lock event of each key in this batch (None: released or expired).
        let mut lock_index: HashMap<String, Option<LockRecord>> = HashMap::new();
        let mut change_bytes = 0u64;
        let mut written = 0u64;
        let mut pages = PageWriter::default();
        // Taken out of the state while the batch is built: if the batch fails, it is dropped
        // and loaded again from the store on next use (nothing was written).
        self.index(doc, &mut st)?;
        let mut index = st.index.take().unwrap_or_default();

        for (mut new, info) in entries.into_iter().zip(infos) {
            if tombstoned {
                return Err(LogError::Tombstoned(*doc));
            }
            if let Some(info) = &info {
                let record = match actors.get(&info.actor) {
                    Some(r) => Some(r.clone()),
                    None => index.actors.get(&info.actor).cloned(),
                };
                // Every logged change of an actor has a seq at most its record's
                // max_change_seq, so only a change at or below it can be a duplicate: new
                // changes skip the hash lookup.
                let known = match in_batch.get(&info.hash) {
                    Some(s) => Some(*s),
                    None if record
                        .as_ref()
                        .is_some_and(|r| r.max_change_seq >= info.seq) =>
                    {
                        index.hashes.get(&info.hash).copied()
                    }
                    None => None,
                };
                if let Some(existing) = known {
                    results.push(AppendResult::Duplicate(existing));
                    continue;
                }
                // A pushed change must come from its actor's owner (or bind an unbound actor);
                // a relayed one is checked only for causality and keeps the owner as it is.
                let pushed = matches!(new.kind, EntryKind::Change(_));
                if pushed
                    && let Some(owner) = record
                        .as_ref()
                        .and_then(|r| r.owner.as_ref())
                        .filter(|o| **o != new.author.user)
                {
                    return Err(LogError::ActorOwnedByOther {
                        hash: info.hash,
                        owner: owner.clone(),
                    });
                }
                // The checks that keep the stream causal and every replica able to apply it,
                // made here, under the document's lock, so two racing pushes cannot both pass.
                let expected = record.as_ref().map_or(1, |r| r.max_change_seq + 1);
                if info.seq < expected {
                    return Err(LogError::SeqConflict {
                        hash: info.hash,
                        seq: info.seq,
                    });
                }
                if info.seq > expected {
                    return Err(LogError::SeqGap {
                        hash: info.hash,
                        expected,
                        got: info.seq,
                    });
                }
                // automerge 0.12 panics applying a change that names an actor the document
                // has never seen: such a change would poison every replica that took it.
                if info
                    .others
                    .iter()
                    .any(|a| !actors.contains_key(a) && !index.actors.contains_key(a))
                {
                    return Err(LogError::UnknownActor { hash: info.hash });
                }
                // Op ids are (counter, actor): a change that reuses its actor's counters
                // would give two ops one id.
                let logged_max = max_ops
                    .get(&info.actor)
                    .or_else(|| index.max_ops.get(&info.actor));
                if let Some(&max_op) = logged_max
                    && info.start_op <= max_op
                {
                    return Err(LogError::OpIdReused {
                        hash: info.hash,
                        start_op: info.start_op,
                        max_op,
                    });
                }
                if let Some(dep) = info
                    .deps
                    .iter()
                    .find(|d| !in_batch.contains_key(*d) && !index.hashes.contains_key(*d))
                {
                    return Err(LogError::MissingDependency {
                        hash: info.hash,
                        dep: *dep,
                    });
                }
                seq = seq.next();
                let (max_change_seq, entry_seq) = match &record {
                    Some(r) if r.max_change_seq >= info.seq => (r.max_change_seq, r.entry_seq),
                    _ => (info.seq, seq),
                };
                let owner = match record.as_ref().and_then(|r| r.owner.clone()) {
                    Some(owner) => Some(owner),
                    None if pushed => Some(new.author.user.clone()),
                    None => None,
                };
                actors.insert(
                    info.actor.clone(),
                    ActorRecord {
                        owner,
                        max_change_seq,
                        entry_seq,
                    },
                );
                max_ops.insert(info.actor.clone(), info.max_op);
                in_batch.insert(info.hash, seq);
                if let Some(c) = new.kind.change_bytes() {
                    change_bytes += c.len() as u64;
                }
            } else {
                seq = seq.next();
            }
            let mut result = AppendResult::Appended(seq);
            let open = applied_open.take();
            match &mut new.kind {
                EntryKind::Lock(l) => {
                    if l.event == LockEvent::Granted {
                        next_token += 1;
                        l.token = FencingToken(next_token);
                        result = AppendResult::Granted(seq, l.token);
                    }
                    let live = matches!(l.event, LockEvent::Granted | LockEvent::Renewed);
                    lock_index.insert(l.key.clone(), live.then(|| l.clone()));
                }
                EntryKind::Mutation(m) => {
                    let e = mutations.entry(m.client).or_insert(m.mutation_id);
                    *e = (*e).max(m.mutation_id);
                    if m.outcome == MutationOutcome::Applied {
                        applied_open = Some(outcomes.len());
                    }
                    outcomes.push((
                        m.client,
                        m.mutation_id,
                        RecordedOutcome {
                            seq,
                            outcome: m.outcome.clone(),
                        },
                    ));
                }
                EntryKind::Change(_) | EntryKind::Relayed(_) => {
                    if let Some(i) = open {
                        outcomes[i].2.seq = seq;
                    }
                }
                EntryKind::Tombstone => tombstoned = true,
            }
            let (bytes, hash) = Entry::seal(seq, st.meta.epoch, prev, &new)?;
            pages.push(seq, &bytes);
            index
                .open_blocks
                .entry((seq.get() - 1) / BLOCK)
                .or_default()
                .extend_from_slice(info.as_ref().map_or(&NO_CHANGE, |i| &i.hash.0));
            prev = hash;
            written += 1;
            results.push(result);
        }
        for (first, page) in pages.finish() {
            batch.put(keys::entry(doc, first), page);
        }
        index.hashes.extend(in_batch);
        index.dirty.extend(actors.keys().cloned());
        index.actors.extend(actors);
        index.max_ops.extend(max_ops);
        if seq.get() - index.through.get() >= CHECKPOINT {
            self.checkpoint(doc, &mut index, seq, &mut batch)?;
        }
        for (client, id) in mutations {
            let current = self.last_mutation(doc, &client)?;
            if current.is_none_or(|c| c < id) {
                batch.put(
                    keys::mutation(doc, &client),
                    id.get().to_be_bytes().to_vec(),
                );
            }
        }
        for (client, id, recorded) in &outcomes {
            batch.put(
                keys::outcome(doc, client, *id),
                codec::encode(recorded).map_err(LogError::Invalid)?,
            );
        }
        for (key, record) in lock_index {
            match record {
                Some(r) => batch.put(
                    keys::lock(doc, &key),
                    codec::encode(&r).map_err(LogError::Invalid)?,
                ),
                None => batch.delete(keys::lock(doc, &key)),
            }
        }
        if fence.as_deref().is_some_and(|f| next_token != *f) {
            batch.put(keys::FENCE.to_vec(), next_token.to_be_bytes().to_vec());
        }
        if !batch.is_empty() {
            self.kv.apply(batch)?;
        }
        if let Some(f) = fence.as_deref_mut() {
            *f = next_token;
        }
        drop(fence);
        st.last_seq = seq;
        st.last_hash = prev;
        st.tombstoned |= tombstoned;
        st.index = Some(index);
        if let Some((b, n)) = &mut st.since_snapshot {
            *b += change_bytes;
            *n += written;
        }
        drop(st);
        // Always take a ticket, even when every entry was a duplicate: the original may have
        // been applied by another task and not be flushed yet.
        Ok(Appended {
            results,
            durable: self.committer.ticket(),
        })
    }
}

/// `<dir>.vacuum` (the copy), its completion marker, and `<dir>.vacuum-old` (the old log).
fn vacuum_paths(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    // `components` drops a trailing separator: `data/log/` must give `data/log.vacuum`, a
    // sibling, not `data/log/.vacuum` inside the log.
    let mut base = dir.components().as_path().as_os_str().to_owned();
    base.push(".vacuum");
    let copy = std::path::PathBuf::from(base);
    let done = copy.with_extension("vacuum-complete");
    let old = copy.with_extension("vacuum-old");
    (copy, done, old)
}

/// Finishes a vacuum that was interrupted: once the copy is marked complete, it replaces the
/// log (the old log may already have been moved aside), and the leftovers are removed.
fn finish_vacuum(dir: &Path) -> Result<(), LogError> {
    let (copy, done, old) = vacuum_paths(dir);
    let io = |what: &str, e: std::io::Error| LogError::Storage(format!("vacuum: {what}: {e}"));
    if done.exists() {
        // The live log moves aside only for a copy to take its place.
        if dir.exists() && !old.exists() && copy.exists() {
            std::fs::rename(dir, &old).map_err(|e| io("moving the old log aside", e))?;
        }
        if copy.exists() {
            std::fs::rename(&copy, dir).map_err(|e| io("moving the copy in place", e))?;
        }
        // The swap is on disk before the marker goes: without the marker, a swap that a
        // power cut took back could not be finished.
        crate::disk_sync::sync_parent(dir).map_err(|e| io("syncing the swap", e))?;
        std::fs::remove_file(&done).map_err(|e| io("removing the marker", e))?;
    }
    if old.exists() && dir.exists() {
        std::fs::remove_dir_all(&old).map_err(|e| io("removing the old log", e))?;
    }
    Ok(())
}

/// The log in `dir` as sled with what its journal held replayed into it, and the journal
/// (`None` when the directory has none: it is new, from before the journal, or not a log,
/// and nothing of ours is created in it before its format is checked).
fn open_sled(dir: &Path) -> Result<(SledKv, Option<crate::journal::Journal>), LogError> {
    let sled = SledKv::open(dir)?;
    let journal = if dir.join(crate::journal::FILE).exists() {
        Some(crate::journal::recover(dir, &sled)?)
    } else {
        None
    };
    check_format(&sled)?;
    Ok((sled, journal))
}

/// The closed log in `dir` as sled alone (recovery empties the journal): a copy of sled is
/// then a copy of the log.
fn open_whole(dir: &Path) -> Result<SledKv, LogError> {
    open_sled(dir).map(|(sled, _)| sled)
}

/// Checks (or, for an empty store, writes) the on-disk format version.
fn check_format(kv: &dyn Kv) -> Result<(), LogError> {
    match kv.get(keys::FORMAT)? {
        Some(v) => {
            let found = <[u8; 4]>::try_from(v.as_slice())
                .map(u32::from_be_bytes)
                .map_err(|_| LogError::NotALog("format record is not 4 bytes".into()))?;
            if found != FORMAT_VERSION {
                return Err(LogError::UnsupportedFormat {
                    found,
                    supported: FORMAT_VERSION,
                });
            }
            Ok(())
        }
        None if kv.is_empty()? => {
            let mut b = WriteBatch::default();
            b.put(keys::FORMAT.to_vec(), FORMAT_VERSION.to_be_bytes().to_vec());
            kv.apply(b)?;
            kv.flush()
        }
        None => Err(LogError::NotALog(
            "the store has data but no converge format record".into(),
        )),
    }
}

fn u64_from(v: &[u8]) -> Option<u64> {
    <[u8; 8]>::try_from(v).ok().map(u64::from_be_bytes)
}

/// Rebuilds a document's in-memory state from its metadata and its newest entry.
///
/// sled applies a batch whole or not at all, so after a crash the stream ends at the last batch
/// that reached the disk: entries that were never flushed (and so never acknowledged) are simply
/// absent. What is checked here is that the newest entry decodes and its hash holds; if not, the
/// document is marked broken (reads and appends fail naming the seq) rather than guessed at.
fn recover_doc(kv: &dyn Kv, doc: &DocId, meta: DocMeta) -> Result<DocState, LogError> {
    let prefix = keys::doc_key(keys::ENTRY, doc);
    let last = kv.range(&prefix, &keys::prefix_end(&prefix), true, 1)?;
    let mut st = DocState {
        last_seq: meta.compacted_through,
        last_hash: meta.compacted_hash,
        meta,
        tombstoned: false,
        broken: None,
        since_snapshot: None,
        index: None,
    };
    if let Some((key, value)) = last.into_iter().next() {
        let first = keys::seq_of(&key).unwrap_or_default();
        let newest = page::split(doc, first, &value).and_then(|entries| {
            let (seq, bytes) = entries.last().copied().ok_or(LogError::Corrupt {
                doc: *doc,
                seq: first,
                reason: "empty page".into(),
            })?;
            st.last_seq = seq;
            Entry::open(doc, seq, bytes)
        });
        if st.last_seq < first {
            st.last_seq = first;
        }
        match newest {
            Ok(e) => {
                st.last_hash = e.hash;
                st.tombstoned = matches!(e.kind, EntryKind::Tombstone);
            }
            Err(e) => {
                tracing::error!(%doc, seq = %st.last_seq, error = %e, "document tail is damaged");
                st.broken = Some(e);
            }
        }
    }
    Ok(st)
}

impl EventLog for Log {
    fn create(&self, doc: DocId, epoch: Epoch) -> Result<Durable, LogError> {
        let mut docs = write(&self.docs);
        if docs.contains_key(&doc) {
            return Err(LogError::DocExists(doc));
        }
        let meta = DocMeta {
            epoch,
            snapshot: None,
            compacted_through: Seq(0),
            compacted_hash: EntryHash::GENESIS,
        };
        let mut b = WriteBatch::default();
        b.put(
            keys::doc_key(keys::META, &doc),
            codec::encode(&meta).map_err(LogError::Invalid)?,
        );
        self.kv.apply(b)?;
        docs.insert(
            doc,
            Arc::new(Mutex::new(DocState {
                meta,
                last_seq: Seq(0),
                last_hash: EntryHash::GENESIS,
                tombstoned: false,
                broken: None,
                since_snapshot: Some((0, 0)),
                index: Some(Index::default()),
            })),
        );
        Ok(self.committer.ticket())
    }

    fn append(&self, doc: &DocId, entries: Vec<NewEntry>) -> Result<Appended, LogError> {
        // Check everything a peer controls before touching any state.
        let mut infos = Vec::with_capacity(entries.len());
        for e in &entries {
            e.kind.check_limits()?;
            infos.push(match e.kind.change_bytes() {
                Some(bytes) => Some(inspect_change(bytes)?),
                None => None,
            });
        }
        self.append_checked(doc, entries, infos)
    }

    fn append_changes(
        &self,
        doc: &DocId,
        author: &Author,
        at_ms: u64,
        changes: &[automerge::Change],
    ) -> Result<Appended, LogError> {
        let mut entries = Vec::with_capacity(changes.len());
        let mut infos = Vec::with_capacity(changes.len());
        for c in changes {
            let kind = EntryKind::Change(c.raw_bytes().to_vec());
            kind.check_limits()?;
            entries.push(NewEntry {
                at_ms,
                author: author.clone(),
                kind,
            });
            infos.push(Some(ChangeInfo::of(c)));
        }
        self.append_checked(doc, entries, infos)
    }
    fn read(&self, doc: &DocId, from: Seq, limit: usize) -> Result<Vec<Entry>, LogError> {
        let state = self.state(doc)?;
        let from = from.max(Seq(1));
        let (prev, last) = {
            let st = lock(&state);
            if let Some(e) = &st.broken {
                return Err(e.clone());
            }
            if from <= st.meta.compacted_through {
                return Err(LogError::Compacted {
                    doc: *doc,
                    compacted_through: st.meta.compacted_through,
                });
            }
            if from > st.last_seq || limit == 0 {
                return Ok(Vec::new());
            }
            (self.hash_before(doc, &st, from)?, st.last_seq)
        };
        let mut prev = prev;
        let mut expected = from;
        let mut out = Vec::new();
        let missing = |seq: Seq| -> LogError {
            // A compaction may have run since the bounds were taken: say so rather than
            // reporting the entries it dropped as missing.
            let compacted = lock(&state).meta.compacted_through;
            if seq <= compacted {
                LogError::Compacted {
                    doc: *doc,
                    compacted_through: compacted,
                }
            } else {
                LogError::Corrupt {
                    doc: *doc,
                    seq,
                    reason: "entry is missing".into(),
                }
            }
        };
        for (seq, stored) in self.stored_entries(doc, from, last, limit)? {
            if seq != expected {
                return Err(missing(expected));
            }
            let entry = Entry::open(doc, seq, &stored)?;
            if entry.prev != prev {
                return Err(LogError::Corrupt {
                    doc: *doc,
                    seq,
                    reason: "does not link to the entry before it".into(),
                });
            }
            prev = entry.hash;
            expected = seq.next();
            out.push(entry);
        }
        if out.len() < limit && expected <= last {
            return Err(missing(expected));
        }
        Ok(out)
    }

    fn head(&self, doc: &DocId) -> Result<DocHead, LogError> {
        let state = self.state(doc)?;
        let st = lock(&state);
        Ok(DocHead {
            epoch: st.meta.epoch,
            last_seq: st.last_seq,
            last_hash: st.last_hash,
            compacted_through: st.meta.compacted_through,
            snapshot_seq: st.meta.snapshot.as_ref().map(|s| s.seq),
            tombstoned: st.tombstoned,
        })
    }

    fn docs(&self) -> Result<Vec<DocId>, LogError> {
        let docs = read(&self.docs);
        let mut ids: Vec<DocId> = docs.keys().copied().collect();
        ids.sort();
        Ok(ids)
    }

    fn change_seq(&self, doc: &DocId, hash: &ChangeHash) -> Result<Option<Seq>, LogError> {
        let state = self.state(doc)?;
        let mut st = lock(&state);
        Ok(self.index(doc, &mut st)?.hashes.get(hash).copied())
    }

    fn actor(&self, doc: &DocId, actor: &[u8]) -> Result<Option<ActorRecord>, LogError> {
        let state = self.state(doc)?;
        let mut st = lock(&state);
        Ok(self.index(doc, &mut st)?.actors.get(actor).cloned())
    }

    fn last_mutation(
        &self,
        doc: &DocId,
        client: &ClientId,
    ) -> Result<Option<MutationId>, LogError> {
        match self.kv.get(&keys::mutation(doc, client))? {
            None => Ok(None),
            Some(v) => {
                u64_from(&v)
                    .map(|s| Some(MutationId(s)))
                    .ok_or_else(|| LogError::CorruptRecord {
                        record: format!("mutation index of {doc}"),
                        reason: "not 8 bytes".into(),
                    })
            }
        }
    }

    fn bump_epoch(&self, doc: &DocId) -> Result<(Epoch, Durable), LogError> {
        let state = self.state(doc)?;
        let mut st = lock(&state);
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        let mut meta = st.meta.clone();
        meta.epoch = Epoch(meta.epoch.get().checked_add(1).ok_or_else(|| {
            LogError::Invalid(format!("document {doc}: no epoch after {}", meta.epoch))
        })?);
        let mut batch = WriteBatch::default();
        batch.put(
            keys::doc_key(keys::META, doc),
            codec::encode(&meta).map_err(LogError::Invalid)?,
        );
        self.kv.apply(batch)?;
        let epoch = meta.epoch;
        st.meta = meta;
        Ok((epoch, self.committer.ticket()))
    }

    fn mutation_outcome(
        &self,
        doc: &DocId,
        client: &ClientId,
        id: MutationId,
    ) -> Result<Option<RecordedOutcome>, LogError> {
        match self.kv.get(&keys::outcome(doc, client, id))? {
            None => Ok(None),
            Some(v) => codec::decode(&v)
                .map(Some)
                .map_err(|reason| LogError::CorruptRecord {
                    record: format!("mutation outcome of {doc}"),
                    reason,
                }),
        }
    }

    fn locks(&self, doc: &DocId) -> Result<Vec<LockRecord>, LogError> {
        let prefix = keys::doc_key(keys::LOCK, doc);
        self.kv
            .range(&prefix, &keys::prefix_end(&prefix), false, usize::MAX)?
            .into_iter()
            .map(|(_, v)| {
                codec::decode(&v).map_err(|reason| LogError::CorruptRecord {
                    record: format!("lock table of {doc}"),
                    reason,
                })
            })
            .collect()
    }

    fn set_acl(&self, doc: &DocId, user: &UserId, role: Option<&str>) -> Result<Durable, LogError> {
        if role.is_some_and(|r| r.len() > converge_proto::limits::MAX_NAME_BYTES) {
            return Err(LogError::TooLarge {
                what: "role",
                size: role.map_or(0, str::len),
                limit: converge_proto::limits::MAX_NAME_BYTES,
            });
        }
        let mut batch = WriteBatch::default();
        let key = keys::acl(doc, user.as_str());
        match role {
            Some(r) => batch.put(key, r.as_bytes().to_vec()),
            None => batch.delete(key),
        }
        self.kv.apply(batch)?;
        Ok(self.committer.ticket())
    }

    fn acls(&self) -> Result<Vec<(DocId, UserId, String)>, LogError> {
        let corrupt = |reason: &str| LogError::CorruptRecord {
            record: "admin grants".into(),
            reason: reason.into(),
        };
        self.kv
            .range(&[keys::ACL], &[keys::ACL + 1], false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let doc = keys::doc_of(&k).ok_or_else(|| corrupt("a key without a document"))?;
                let user = k
                    .get(17..)
                    .and_then(|u| std::str::from_utf8(u).ok())
                    .and_then(|u| UserId::new(u).ok())
                    .ok_or_else(|| corrupt("a key without a user"))?;
                let role = String::from_utf8(v).map_err(|_| corrupt("a role that is not text"))?;
                Ok((doc, user, role))
            })
            .collect()
    }

    fn set_user(&self, user: &UserId, roles: &[String]) -> Result<(), LogError> {
        let limit = converge_proto::limits::MAX_NAME_BYTES;
        if roles.len() > 64 || roles.iter().any(|r| r.len() > limit) {
            return Err(LogError::TooLarge {
                what: "roles",
                size: roles.iter().map(String::len).sum(),
                limit,
            });
        }
        let value = codec::encode(&roles).map_err(LogError::Storage)?;
        let mut batch = WriteBatch::default();
        batch.put(keys::user(user.as_str()), value);
        self.kv.apply(batch)
    }

    fn users(&self) -> Result<Vec<(UserId, Vec<String>)>, LogError> {
        let corrupt = |reason: String| LogError::CorruptRecord {
            record: "user directory".into(),
            reason,
        };
        self.kv
            .range(&[keys::USER], &[keys::USER + 1], false, usize::MAX)?
            .into_iter()
            .map(|(k, v)| {
                let user = k
                    .get(1..)
                    .and_then(|u| std::str::from_utf8(u).ok())
                    .and_then(|u| UserId::new(u).ok())
                    .ok_or_else(|| corrupt("a key without a user".into()))?;
                let roles: Vec<String> = codec::decode(&v).map_err(corrupt)?;
                Ok((user, roles))
            })
            .collect()
    }

    fn fencing_counter(&self) -> Result<FencingToken, LogError> {
        Ok(FencingToken(*lock(&self.fence)))
    }

    fn put_snapshot(&self, doc: &DocId, seq: Seq, bytes: Vec<u8>) -> Result<Durable, LogError> {
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            return Err(LogError::TooLarge {
                what: "snapshot",
                size: bytes.len(),
                limit: MAX_SNAPSHOT_BYTES,
            });
        }
        let state = self.state(doc)?;
        let mut st = lock(&state);
        if let Some(e) = &st.broken {
            return Err(e.clone());
        }
        if seq == Seq(0) || seq > st.last_seq || seq < st.meta.compacted_through {
            return Err(LogError::BadSnapshotSeq { doc: *doc, seq });
        }
        if st.meta.snapshot.as_ref().is_some_and(|s| s.seq >= seq) {
            // An equal or newer snapshot is already stored.
            return Ok(self.committer.ticket());
        }
        let entry_hash = self.hash_before(doc, &st, seq.next())?;
        let size = bytes.len() as u64;
        let record = SnapshotRecord {
            entry_hash,
            checksum: *blake3::hash(&bytes).as_bytes(),
            bytes,
        };
        let mut meta = st.meta.clone();
        let mut batch = WriteBatch::default();
        if let Some(old) = &meta.snapshot {
            batch.delete(keys::snapshot(doc, old.seq));
        }
        batch.put(
            keys::snapshot(doc, seq),
            codec::encode(&record).map_err(LogError::Invalid)?,
        );
        meta.snapshot = Some(SnapshotInfo {
            seq,
            entry_hash,
            size,
        });
        batch.put(
            keys::doc_key(keys::META, doc),
            codec::encode(&meta).map_err(LogError::Invalid)?,
        );
        self.kv.apply(batch)?;
        st.meta = meta;
        st.since_snapshot = None;
        drop(st);
        if self.config.compact_on_snapshot {
            self.compact(doc)?;
        }
        Ok(self.committer.ticket())
    }

    fn snapshot(&self, doc: &DocId) -> Result<Option<Snapshot>, LogError> {
        let state = self.state(doc)?;
        let info = lock(&state).meta.snapshot.clone();
        let Some(info) = info else { return Ok(None) };
        let corrupt = |reason: String| LogError::CorruptRecord {
            record: format!("snapshot of {doc} at seq {}", info.seq),
            reason,
        };
        let stored = self
            .kv
            .get(&keys::snapshot(doc, info.seq))?
            .ok_or_else(|| corrupt("missing".into()))?;
        let record: SnapshotRecord = codec::decode(&stored).map_err(corrupt)?;
        if *blake3::hash(&record.bytes).as_bytes() != record.checksum
            || record.entry_hash != info.entry_hash
        {
            return Err(corrupt("checksum does not match".into()));
        }
        Ok(Some(Snapshot {
            seq: info.seq,
            entry_hash: record.entry_hash,
            bytes: record.bytes,
        }))
    }

    fn tail(&self, doc: &DocId) -> Result<crate::Tail, LogError> {
        let state = self.state(doc)?;
        let mut st = lock(&state);
        let (change_bytes, entries) = self.since_snapshot(doc, &mut st)?;
        Ok(crate::Tail {
            snapshot_bytes: st.meta.snapshot.as_ref().map_or(0, |s| s.size),
            entries,
            change_bytes,
        })
    }

    fn snapshot_due(&self, doc: &DocId) -> Result<bool, LogError> {
        let state = self.state(doc)?;
        let mut st = lock(&state);
        let (bytes, entries) = self.since_snapshot(doc, &mut st)?;
        let size = st.meta.snapshot.as_ref().map_or(0, |s| s.size);
        Ok(entries > 0
            && (entries >= self.config.snapshot_every_entries
                || bytes > size.max(self.config.min_snapshot_bytes)))
    }

    fn compact(&self, doc: &DocId) -> Result<u64, LogError> {
        let state = self.state(doc)?;
        let mut st = lock(&state);
        let Some(snap) = st.meta.snapshot.clone() else {
            return Ok(0);
        };
        // Pages still staged may be joined with their neighbours when they reach sled, which
        // would change the keys read below before the deletes land. Moving them all into sled
        // first (no new ones can come: appends to this document wait for its lock) makes the
        // keys read here the keys that exist.
        self.kv.drain()?;
        // The index must not need pages that are about to go: checkpoint it first.
        let last = st.last_seq;
        let index = self.index(doc, &mut st)?;
        if index.through < last {
            let mut batch = WriteBatch::default();
            self.checkpoint(doc, index, last, &mut batch)?;
            self.kv.apply(batch)?;
        }
        let mut dropped = 0;
        // Whole pages that end at or below the snapshot go; a page that straddles it stays.
        // Chunked so a long history is not one huge batch; each chunk moves
        // `compacted_through` forward in the same batch that deletes its pages.
        const PAGES: usize = 256;
        loop {
            let start = keys::entry(doc, st.meta.compacted_through.next());
            let pages = self
                .kv
                .range(&start, &keys::entry(doc, snap.seq.next()), false, PAGES)?;
            let mut meta = st.meta.clone();
            let mut batch = WriteBatch::default();
            let mut done = pages.len() < PAGES;
            for (key, value) in &pages {
                let first = keys::seq_of(key).unwrap_or_default();
                let entries = page::split(doc, first, value)?;
                let Some((last, bytes)) = entries.last().copied() else {
                    continue;
                };
                if last > snap.seq {
                    done = true;
                    break;
                }
                meta.compacted_through = last;
                meta.compacted_hash = Entry::open(doc, last, bytes)?.hash;
                batch.delete(key.clone());
                dropped += entries.len() as u64;
            }
            if meta != st.meta {
                batch.put(
                    keys::doc_key(keys::META, doc),
                    codec::encode(&meta).map_err(LogError::Invalid)?,
                );
                self.kv.apply(batch)?;
                st.meta = meta;
            }
            if done || pages.is_empty() {
                break;
            }
        }
        // Compaction is rare and its caller expects it done: make it durable before returning.
        if dropped > 0 {
            self.committer.flush_now()?;
        }
        Ok(dropped)
    }

    fn stats(&self, doc: &DocId) -> Result<DocStats, LogError> {
        let head = self.head(doc)?;
        let prefix = keys::doc_key(keys::ENTRY, doc);
        let mut stats = DocStats {
            snapshot_seq: head.snapshot_seq,
            ..DocStats::default()
        };
        for (key, value) in self
            .kv
            .range(&prefix, &keys::prefix_end(&prefix), false, usize::MAX)?
        {
            stats.entry_bytes += (key.len() + value.len()) as u64;
            let first = keys::seq_of(&key).unwrap_or_default();
            // Damaged pages count as bytes only; `verify` is what reports them.
            for (seq, stored) in page::split(doc, first, &value).unwrap_or_default() {
                stats.entries += 1;
                if let Some(c) = Entry::open(doc, seq, stored)
                    .ok()
                    .and_then(|e| e.kind.into_change_bytes())
                {
                    stats.changes += 1;
                    stats.change_bytes += c.len() as u64;
                }
            }
        }
        if let Some(seq) = head.snapshot_seq {
            stats.snapshot_bytes = self
                .kv
                .get(&keys::snapshot(doc, seq))?
                .map_or(0, |v| v.len() as u64);
        }
        Ok(stats)
    }

    fn verify(&self, doc: &DocId) -> Result<u64, LogError> {
        let head = self.head(doc)?;
        let mut from = head.compacted_through.next();
        let mut checked = 0;
        const PAGE: usize = 4096;
        while from <= head.last_seq {
            let page = self.read(doc, from, PAGE)?;
            let Some(last) = page.last() else { break };
            from = last.seq.next();
            checked += page.len() as u64;
        }
        // Keys past the head would be entries the stream does not account for.
        let stray = self.kv.range(
            &keys::entry(doc, head.last_seq.next()),
            &keys::prefix_end(&keys::doc_key(keys::ENTRY, doc)),
            false,
            1,
        )?;
        if let Some((key, _)) = stray.first() {
            return Err(LogError::Corrupt {
                doc: *doc,
                seq: keys::seq_of(key).unwrap_or_default(),
                reason: "entry past the end of the stream".into(),
            });
        }
        // Reading the snapshot checks its checksum and that it names the chain's hash at its seq.
        self.snapshot(doc)?;
        Ok(checked)
    }

    fn flush(&self) -> Result<(), LogError> {
        self.committer.flush_now()
    }

    fn durable(&self) -> Durable {
        self.committer.ticket()
    }

    fn flush_stats(&self) -> crate::FlushStats {
        self.committer.stats()
    }

    fn size_on_disk(&self) -> Result<u64, LogError> {
        self.kv.size_on_disk()
    }
}
