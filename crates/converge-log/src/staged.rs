//! Write staging in front of sled: batches land in an in-memory table and reach sled many at a
//! time, in one `apply_batch`, with consecutive pages of a document joined (`page::coalesce`)
//! and a key written many times (a document's metadata, its open hash block) written once.
//!
//! Why: sled 0.34's `apply_batch` rolls its IO buffer twice per call to make the batch atomic
//! (see `pin_log` in sled's pagecache), which costs ~80 us whatever the batch holds, and each
//! key it takes costs a few us more. Fewer, larger drains pay both less often.
//!
//! On disk (`Staged::with_journal`), what makes a batch durable is the journal, not sled:
//! every batch applied is also encoded into a pending journal record, and a flush writes that
//! record and syncs the journal. The table reaches sled only when it grows past `drain_at`
//! (a background drain by the log's drainer thread), past `max_bytes` (a drain by the
//! appender, as back-pressure), or at a checkpoint. A drain takes the table and the pending record at
//! the same moment, writes the record first, and hands sled the table with that record's
//! serial, so sled always holds exactly the state after some journal record (see `journal`).
//!
//! Without a journal (the memory store), a flush drains the table and flushes the store, so
//! each drain is all or nothing and what was staged but not drained is lost exactly like
//! writes that were not flushed (which, in `Fsync` mode, were never acknowledged).
//!
//! Reads see staged writes: a lookup checks the active table, then the table being drained,
//! then sled. Data only moves active -> draining -> sled, and leaves the draining table only
//! after sled holds it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::LogError;
use crate::journal::{self, Journal, Pending};
use crate::keys;
use crate::kv::{Kv, Pair, WriteBatch};
use crate::sync::{lock, read, write};

type Table = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// A table taken for a drain, and the journal serial it is the state after (`None` without a
/// journal).
struct Taken {
    table: Arc<Table>,
    serial: Option<u64>,
}

/// Staged writes over another store.
pub(crate) struct Staged<K: Kv> {
    inner: K,
    /// Whether writes go through a journal (fixed at construction).
    journaled: bool,
    tables: RwLock<Tables>,
    /// The journal: one record write or sync at a time, so records are written in the order
    /// their writes were applied.
    writer: Mutex<Writer>,
    /// One drain at a time, so the draining table is never replaced while sled applies it
    /// and sled gets tables in journal order. Taken before `writer` when both are.
    drain_lock: Mutex<()>,
    /// Drain synchronously, before staging more, once the active table and the pending record
    /// hold this many bytes, bounding memory. Below it, the log drains in the background (see
    /// [`Kv::backlog`]), so an appender does not pay for sled's indexing on its own thread.
    max_bytes: usize,
    /// `active_bytes`, readable without the lock.
    backlog: AtomicUsize,
    /// `Writer::failed` is set, readable without the lock.
    broken: AtomicBool,
    /// The journal passed `due_at` since the last checkpoint. Set and cleared with the
    /// journal held, so a checkpoint's clearing is never undone by a flush measured before it.
    due: AtomicBool,
    /// Journal bytes at which a checkpoint is due: `CHECKPOINT_BYTES`, or after a failed
    /// checkpoint that much more than the journal held then (a failing sled is not retried
    /// after every flush).
    due_at: AtomicU64,
}

#[derive(Default)]
struct Writer {
    journal: Option<Journal>,
    /// Set when a journal write or sync failed: a record may be missing from the journal, so
    /// nothing more may be acknowledged or drained (the log must be reopened).
    failed: Option<LogError>,
}

#[derive(Default)]
struct Tables {
    active: Table,
    active_bytes: usize,
    draining: Option<Arc<Table>>,
    /// The writes applied since the last journal record (always empty without a journal).
    pending: Pending,
}

impl<K: Kv> Staged<K> {
    /// Staging over a store that makes its own writes durable on flush (the memory store).
    pub(crate) fn new(inner: K, max_bytes: usize) -> Self {
        Self::over(inner, max_bytes, None)
    }

    /// Staging over sled and its journal, recovered (`journal::recover`).
    pub(crate) fn with_journal(inner: K, max_bytes: usize, journal: Journal) -> Self {
        Self::over(inner, max_bytes, Some(journal))
    }

    fn over(inner: K, max_bytes: usize, journal: Option<Journal>) -> Self {
        Self {
            inner,
            journaled: journal.is_some(),
            tables: RwLock::new(Tables::default()),
            writer: Mutex::new(Writer {
                journal,
                failed: None,
            }),
            drain_lock: Mutex::new(()),
            max_bytes,
            backlog: AtomicUsize::new(0),
            broken: AtomicBool::new(false),
            due: AtomicBool::new(false),
            due_at: AtomicU64::new(journal::CHECKPOINT_BYTES),
        }
    }

    /// Moves every staged write into sled in one atomic batch. The journal is held only
    /// while the table is taken and its record written, not while sled applies it, so
    /// flushes go on meanwhile.
    fn drain(&self) -> Result<(), LogError> {
        let _one = lock(&self.drain_lock);
        let taken = self.take_for_drain(&mut lock(&self.writer))?;
        self.apply_taken(taken)
    }

    /// Takes the active table for a drain, with the pending record written: the table then
    /// holds exactly the writes of the records up to its serial that sled does not hold yet.
    fn take_for_drain(&self, w: &mut Writer) -> Result<Option<Taken>, LogError> {
        if let Some(e) = &w.failed {
            return Err(e.clone());
        }
        let (table, pending) = {
            let mut t = write(&self.tables);
            if t.active.is_empty() {
                return Ok(None);
            }
            let table = Arc::new(std::mem::take(&mut t.active));
            t.active_bytes = 0;
            self.backlog.store(0, Ordering::Relaxed);
            t.draining = Some(table.clone());
            (table, std::mem::take(&mut t.pending))
        };
        match self.write_record(w, pending) {
            Ok(serial) => Ok(Some(Taken { table, serial })),
            Err(e) => {
                self.put_back(&table);
                Err(e)
            }
        }
    }

    /// Hands a taken table to the store, with the journal serial it is the state after.
    fn apply_taken(&self, taken: Option<Taken>) -> Result<(), LogError> {
        let Some(Taken { table, serial }) = taken else {
            return Ok(());
        };
        let mut batch = WriteBatch::default();
        crate::page::coalesce(table.iter(), &mut batch);
        if let Some(serial) = serial {
            batch.put(keys::JOURNAL.to_vec(), serial.to_be_bytes().to_vec());
        }
        let result = self.inner.apply(batch);
        if result.is_err() {
            self.put_back(&table);
        } else {
            write(&self.tables).draining = None;
        }
        result
    }

    /// A failed drain's writes go back under the newer ones, so nothing is lost from view;
    /// the next drain tries again (with a journal: unless the journal failed).
    fn put_back(&self, table: &Arc<Table>) {
        let mut t = write(&self.tables);
        let newer = std::mem::take(&mut t.active);
        let mut merged = (**table).clone();
        merged.extend(newer);
        t.active_bytes = merged
            .iter()
            .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
            .sum();
        t.active = merged;
        t.draining = None;
        self.backlog.store(t.active_bytes, Ordering::Relaxed);
    }

    /// Writes `pending` to the journal, if there is one, and returns the serial that every
    /// write staged so far is covered by (`None` without a journal).
    fn write_record(&self, w: &mut Writer, pending: Pending) -> Result<Option<u64>, LogError> {
        let Some(j) = w.journal.as_mut() else {
            return Ok(None);
        };
        if pending.is_empty() {
            return Ok(Some(j.last_serial()));
        }
        j.append(pending).map(Some).map_err(|e| self.fail(w, e))
    }

    /// Records a failed journal write or sync: from now on nothing more is acknowledged,
    /// staged or drained.
    fn fail(&self, w: &mut Writer, e: LogError) -> LogError {
        w.failed = Some(e.clone());
        self.broken.store(true, Ordering::Release);
        e
    }

    /// Journal mode's flush: the pending record written and synced. Returns the bytes of
    /// records written since the last checkpoint.
    fn flush_journal(&self, w: &mut Writer) -> Result<u64, LogError> {
        if let Some(e) = &w.failed {
            return Err(e.clone());
        }
        let pending = std::mem::take(&mut write(&self.tables).pending);
        self.write_record(w, pending)?;
        let Some(j) = w.journal.as_mut() else {
            return Ok(0);
        };
        let synced = j.sync();
        let written = j.written();
        synced.map_err(|e| self.fail(w, e))?;
        if written >= self.due_at.load(Ordering::Relaxed) {
            self.due.store(true, Ordering::Relaxed);
        }
        Ok(written)
    }

    /// Drains, flushes the store, and starts the journal again, in two rounds. The first
    /// lets flushes go on while sled flushes most of what the journal holds; the second holds
    /// the journal (a record written after its drain and before the restart would be lost)
    /// while sled flushes what was written meanwhile, a short stall instead of a long one.
    ///
    /// Skipped when the journal holds less than `min_written` bytes by the time the drains
    /// are free (another checkpoint just ran).
    fn checkpoint_now(&self, min_written: u64) -> Result<(), LogError> {
        let _one = lock(&self.drain_lock);
        let done = self.checkpoint_rounds(min_written);
        // With the journal held, as flushes set `due`.
        let w = lock(&self.writer);
        let held = w.journal.as_ref().map_or(0, Journal::written);
        let next = match &done {
            Ok(()) => journal::CHECKPOINT_BYTES,
            Err(_) => held + journal::CHECKPOINT_BYTES,
        };
        self.due_at.store(next, Ordering::Relaxed);
        self.due.store(held >= next, Ordering::Relaxed);
        drop(w);
        done
    }

    /// The two rounds of [`Staged::checkpoint_now`]; the caller holds `drain_lock`.
    fn checkpoint_rounds(&self, min_written: u64) -> Result<(), LogError> {
        let taken = {
            let mut w = lock(&self.writer);
            if w.journal.as_ref().map_or(0, Journal::written) < min_written {
                return Ok(());
            }
            self.take_for_drain(&mut w)?
        };
        self.apply_taken(taken)?;
        self.inner.flush()?;
        let mut w = lock(&self.writer);
        self.apply_taken(self.take_for_drain(&mut w)?)?;
        self.inner.flush()?;
        match w.journal.as_mut() {
            Some(j) => j.restart(),
            None => Ok(()),
        }
    }

    /// The staged view of `start..end`: draining writes overridden by active ones.
    fn overlay(&self, start: &[u8], end: &[u8]) -> Table {
        let t = read(&self.tables);
        let range = (Bound::Included(start), Bound::Excluded(end));
        let mut out = Table::new();
        if let Some(d) = &t.draining {
            for (k, v) in d.range::<[u8], _>(range) {
                out.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in t.active.range::<[u8], _>(range) {
            out.insert(k.clone(), v.clone());
        }
        out
    }
}

impl<K: Kv> Kv for Staged<K> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        {
            let t = read(&self.tables);
            if let Some(v) = t.active.get(key) {
                return Ok(v.clone());
            }
            if let Some(v) = t.draining.as_ref().and_then(|d| d.get(key)) {
                return Ok(v.clone());
            }
        }
        self.inner.get(key)
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, LogError> {
        if start >= end {
            return Ok(Vec::new());
        }
        let overlay = self.overlay(start, end);
        // Fetch enough from sled that, after staged deletes and overrides, `limit` remain.
        let fetched = self
            .inner
            .range(start, end, reverse, limit.saturating_add(overlay.len()))?;
        let mut merged: BTreeMap<Vec<u8>, Vec<u8>> = fetched
            .into_iter()
            .filter(|(k, _)| !overlay.contains_key(k))
            .collect();
        for (k, v) in overlay {
            if let Some(v) = v {
                merged.insert(k, v);
            }
        }
        Ok(if reverse {
            merged.into_iter().rev().take(limit).collect()
        } else {
            merged.into_iter().take(limit).collect()
        })
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), LogError> {
        let ops = batch.into_ops();
        let journaled = self.journaled;
        if journaled {
            Pending::check(&ops)?;
        }
        if self.broken.load(Ordering::Acquire) {
            let failed = lock(&self.writer).failed.clone();
            return Err(failed.unwrap_or_else(|| LogError::Flush("the journal failed".into())));
        }
        // Back-pressure before staging: a drain that fails then fails this batch with nothing
        // staged, so the caller's failed append leaves no trace (staged writes always become
        // durable at the next flush).
        let over = {
            let t = read(&self.tables);
            t.active_bytes + t.pending.bytes() > self.max_bytes
        };
        if over {
            self.drain()?;
        }
        {
            let mut t = write(&self.tables);
            for (k, v) in ops {
                if journaled {
                    t.pending.push(&k, v.as_deref());
                }
                let size = k.len() + v.as_ref().map_or(0, Vec::len);
                // A rewritten key (a growing hash block) replaces its old bytes.
                let key_len = k.len();
                let old = t.active.insert(k, v);
                let freed = old.map_or(0, |v| key_len + v.as_ref().map_or(0, Vec::len));
                t.active_bytes = (t.active_bytes + size).saturating_sub(freed);
            }
            self.backlog.store(t.active_bytes, Ordering::Relaxed);
        }
        Ok(())
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    fn drain(&self) -> Result<(), LogError> {
        Staged::drain(self)
    }

    fn checkpoint_due(&self) -> bool {
        self.due.load(Ordering::Relaxed)
    }

    fn checkpoint(&self) -> Result<(), LogError> {
        if self.journaled {
            self.checkpoint_now(0)
        } else {
            self.flush()
        }
    }

    fn flush(&self) -> Result<(), LogError> {
        if !self.journaled {
            self.drain()?;
            return self.inner.flush();
        }
        let written = self.flush_journal(&mut lock(&self.writer))?;
        // The log's drainer checkpoints when it is due; a journal that still grows far past
        // that (no drainer, or one that cannot keep up) is checkpointed here, unless a
        // checkpoint that was running meanwhile took care of it.
        let limit = 4 * journal::CHECKPOINT_BYTES;
        if written >= limit {
            self.checkpoint_now(limit)?;
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, LogError> {
        let staged_empty = {
            let t = read(&self.tables);
            t.active.is_empty() && t.draining.is_none()
        };
        Ok(staged_empty && self.inner.is_empty()?)
    }

    fn size_on_disk(&self) -> Result<u64, LogError> {
        let journal = match lock(&self.writer).journal.as_ref() {
            Some(j) => j.file_len()?,
            None => 0,
        };
        Ok(self.inner.size_on_disk()? + journal)
    }
}

impl<K: Kv> Drop for Staged<K> {
    /// A clean close leaves everything in sled and the journal empty, so the directory is a
    /// plain sled database again (backups, tools that read sled directly).
    fn drop(&mut self) {
        if !self.journaled {
            return;
        }
        let closed =
            self.checkpoint_now(0)
                .and_then(|()| match lock(&self.writer).journal.as_mut() {
                    Some(j) => j.clear(),
                    None => Ok(()),
                });
        if let Err(e) = closed {
            tracing::error!(error = %e, "checkpoint on close failed; the next open replays the journal");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::MemStorage;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        Put(u8, u8),
        Delete(u8),
        Flush,
        Range(u8, u8, bool, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0u8..32, any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
            2 => (0u8..32).prop_map(Op::Delete),
            1 => Just(Op::Flush),
            2 => (0u8..32, 0u8..33, any::<bool>(), 0usize..10).prop_map(|(a, b, r, l)| Op::Range(a, b, r, l)),
        ]
    }

    use crate::kv::SledKv;

    fn put(kv: &dyn Kv, k: &[u8], v: &[u8]) {
        let mut b = WriteBatch::default();
        b.put(k.to_vec(), v.to_vec());
        kv.apply(b).unwrap();
    }

    fn journaled(dir: &std::path::Path) -> Staged<SledKv> {
        let sled = SledKv::open(dir).unwrap();
        let journal = journal::recover(dir, &sled).unwrap();
        Staged::with_journal(sled, 1 << 20, journal)
    }

    /// A flush makes writes durable in the journal alone; sled gets them at a drain. A log
    /// that stops before the drain (a crash) finds them in the journal on the next open.
    #[test]
    fn a_flushed_write_sled_never_got_is_replayed_on_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = journaled(dir.path());
        put(&kv, b"k1", b"v1");
        kv.flush().unwrap();
        assert_eq!(
            kv.inner.get(b"k1").unwrap(),
            None,
            "sled has it only at a drain"
        );
        assert_eq!(kv.get(b"k1").unwrap(), Some(b"v1".to_vec()), "reads see it");
        put(&kv, b"k2", b"v2");
        kv.drain().unwrap();
        assert_eq!(kv.inner.get(b"k2").unwrap(), Some(b"v2".to_vec()));
        assert_eq!(
            kv.inner.get(keys::JOURNAL).unwrap(),
            Some(2u64.to_be_bytes().to_vec()),
            "sled holds the serial of the record its drain covered"
        );
        put(&kv, b"k3", b"v3");
        kv.flush().unwrap();
        put(&kv, b"lost", b"never flushed");
        // Stop without the clean close's checkpoint, as a crash would: sled's own close
        // keeps what it has (k1, k2), not k3, which only the journal holds.
        kv.journaled = false;
        drop(kv);
        let kv = journaled(dir.path());
        assert_eq!(
            kv.inner.get(b"k3").unwrap(),
            Some(b"v3".to_vec()),
            "replayed"
        );
        assert_eq!(kv.get(b"k1").unwrap(), Some(b"v1".to_vec()));
        assert_eq!(kv.get(b"lost").unwrap(), None);
        drop(kv);
        let len = std::fs::metadata(dir.path().join(journal::FILE))
            .unwrap()
            .len();
        assert_eq!(len, 16, "a clean close leaves only the journal's header");
    }

    /// sled can be ahead of the journal's durable end (sled writes its buffers out on its
    /// own): records at or below sled's serial are not replayed over newer values.
    #[test]
    fn records_sled_already_holds_are_not_replayed() {
        let dir = tempfile::tempdir().unwrap();
        drop(journaled(dir.path()));
        {
            let sled = SledKv::open(dir.path()).unwrap();
            let mut b = WriteBatch::default();
            b.put(b"k".to_vec(), b"new".to_vec());
            b.put(keys::JOURNAL.to_vec(), 5u64.to_be_bytes().to_vec());
            sled.apply(b).unwrap();
            sled.flush().unwrap();
        }
        {
            let (mut j, _) = Journal::open(dir.path()).unwrap();
            j.resume_after(4);
            let mut p = Pending::default();
            p.push(b"k", Some(b"old"));
            assert_eq!(j.append(p).unwrap(), 5);
            let mut p = Pending::default();
            p.push(b"k2", Some(b"v2"));
            assert_eq!(j.append(p).unwrap(), 6);
            j.sync().unwrap();
        }
        let kv = journaled(dir.path());
        assert_eq!(kv.get(b"k").unwrap(), Some(b"new".to_vec()));
        assert_eq!(kv.get(b"k2").unwrap(), Some(b"v2".to_vec()));
        put(&kv, b"k3", b"v3");
        kv.drain().unwrap();
        assert_eq!(
            kv.inner.get(keys::JOURNAL).unwrap(),
            Some(7u64.to_be_bytes().to_vec()),
            "serials go on after the replayed ones"
        );
    }

    /// Past `CHECKPOINT_BYTES` a checkpoint is due; after it the journal starts again over
    /// its old records, and what is written then is still replayed after a crash.
    #[test]
    fn records_written_after_a_checkpoint_replay_over_the_old_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = journaled(dir.path());
        let key = |i: u32| format!("key{i:06}").into_bytes();
        let mut n = 0;
        while !kv.checkpoint_due() {
            put(&kv, &key(n), &[7u8; 4096]);
            kv.flush().unwrap();
            n += 1;
        }
        kv.checkpoint().unwrap();
        assert!(!kv.checkpoint_due());
        for i in n..n + 10 {
            put(&kv, &key(i), &i.to_be_bytes());
            kv.flush().unwrap();
        }
        assert_eq!(kv.inner.get(&key(n)).unwrap(), None, "only in the journal");
        kv.journaled = false; // a crash: no checkpoint on the way out
        drop(kv);
        let kv = journaled(dir.path());
        for i in 0..n {
            assert_eq!(kv.get(&key(i)).unwrap().map(|v| v.len()), Some(4096));
        }
        for i in n..n + 10 {
            assert_eq!(
                kv.inner.get(&key(i)).unwrap(),
                Some(i.to_be_bytes().to_vec())
            );
        }
    }

    /// Checkpoints running back to back beside flushes (the drainer's and the flusher's
    /// threads): every flushed write is found after a crash.
    #[test]
    fn flushes_beside_checkpoints_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut kv = journaled(dir.path());
        let key = |i: u32| format!("key{i:06}").into_bytes();
        let stop = std::sync::atomic::AtomicBool::new(false);
        let checkpoints = std::sync::atomic::AtomicUsize::new(0);
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    kv.checkpoint().unwrap();
                    checkpoints.fetch_add(1, Ordering::Relaxed);
                }
            });
            for i in 0..1500 {
                put(&kv, &key(i), &i.to_be_bytes());
                kv.flush().unwrap();
            }
            stop.store(true, Ordering::Relaxed);
        });
        assert!(checkpoints.load(Ordering::Relaxed) > 1);
        kv.journaled = false; // a crash
        drop(kv);
        let kv = journaled(dir.path());
        for i in 0..1500 {
            assert_eq!(
                kv.get(&key(i)).unwrap(),
                Some(i.to_be_bytes().to_vec()),
                "{i}"
            );
        }
    }

    /// After the journal failed, a batch is refused before anything of it is staged: a
    /// staged write would become durable at a later flush although its append failed.
    #[test]
    fn a_failed_journal_refuses_batches_before_staging_them() {
        let dir = tempfile::tempdir().unwrap();
        let kv = journaled(dir.path());
        {
            let mut w = lock(&kv.writer);
            w.failed = Some(LogError::Storage("disk gone".into()));
            kv.broken.store(true, Ordering::Release);
        }
        let mut b = WriteBatch::default();
        b.put(b"k".to_vec(), b"v".to_vec());
        assert_eq!(
            kv.apply(b).unwrap_err(),
            LogError::Storage("disk gone".into())
        );
        assert_eq!(kv.get(b"k").unwrap(), None);
        assert!(
            kv.flush().is_err(),
            "nothing is acknowledged after the failure"
        );
    }

    proptest! {
        /// Staged reads always equal a plain map's, across drains (a tiny table drains often).
        #[test]
        fn staged_reads_match_a_map(ops in proptest::collection::vec(op(), 1..120)) {
            let staged = Staged::new(MemStorage::new(), 8);
            let mut model: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for op in ops {
                match op {
                    Op::Put(k, v) => {
                        let mut b = WriteBatch::default();
                        b.put(vec![k], vec![v]);
                        staged.apply(b).unwrap();
                        model.insert(vec![k], vec![v]);
                    }
                    Op::Delete(k) => {
                        let mut b = WriteBatch::default();
                        b.delete(vec![k]);
                        staged.apply(b).unwrap();
                        model.remove(&vec![k]);
                    }
                    Op::Flush => staged.flush().unwrap(),
                    Op::Range(a, b, reverse, limit) => {
                        let got = staged.range(&[a], &[b], reverse, limit).unwrap();
                        let iter = model.range(vec![a]..vec![b.max(a)]).map(|(k, v)| (k.clone(), v.clone()));
                        let want: Vec<Pair> = if reverse { iter.rev().take(limit).collect() } else { iter.take(limit).collect() };
                        prop_assert_eq!(got, want);
                    }
                }
                for k in 0u8..32 {
                    prop_assert_eq!(staged.get(&[k]).unwrap(), model.get(&vec![k]).cloned());
                }
            }
        }
    }
}
