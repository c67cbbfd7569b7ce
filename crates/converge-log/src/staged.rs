//! Write staging in front of sled: batches land in an in-memory table and reach sled many at a
//! time, in one `apply_batch` (or one plain insert when a drain holds a single write, which
//! sled applies atomically on its own), with consecutive pages of a document joined
//! (`page::coalesce`).
//!
//! Why: sled 0.34's `apply_batch` rolls its IO buffer twice per call to make the batch atomic
//! (see `pin_log` in sled's pagecache), which costs ~80 us whatever the batch holds. One call
//! per append would cap a log at ~12k appends/s; one call per drain amortizes it over every
//! append staged since the last one. A superset of whole batches applied atomically keeps each
//! batch all-or-nothing, so the crash guarantee is unchanged: a drain is all or nothing, and
//! whatever was staged but not drained is lost exactly like writes that were not flushed
//! (which, in `Fsync` mode, were never acknowledged).
//!
//! Reads see staged writes: a lookup checks the active table, then the table being drained,
//! then sled. Data only moves active -> draining -> sled, and leaves the draining table only
//! after sled holds it.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use crate::error::LogError;
use crate::kv::{Kv, Pair, WriteBatch};
use crate::sync::{lock, read, write};

type Table = BTreeMap<Vec<u8>, Option<Vec<u8>>>;

/// Staged writes over another store.
pub(crate) struct Staged<K> {
    inner: K,
    tables: RwLock<Tables>,
    /// One drain at a time, so the draining table is never replaced while sled applies it.
    drain_lock: Mutex<()>,
    /// Drain synchronously once the active table holds this many bytes, bounding memory.
    /// Below it, the log's flush thread drains in the background (see [`Kv::backlog`]), so
    /// an appender does not pay for sled's indexing on its own thread.
    max_bytes: usize,
    /// `active_bytes`, readable without the lock.
    backlog: AtomicUsize,
}

#[derive(Default)]
struct Tables {
    active: Table,
    active_bytes: usize,
    draining: Option<Arc<Table>>,
}

impl<K: Kv> Staged<K> {
    pub(crate) fn new(inner: K, max_bytes: usize) -> Self {
        Self {
            inner,
            tables: RwLock::new(Tables::default()),
            drain_lock: Mutex::new(()),
            max_bytes,
            backlog: AtomicUsize::new(0),
        }
    }

    /// Moves every staged write into sled in one atomic batch.
    fn drain(&self) -> Result<(), LogError> {
        let _one = lock(&self.drain_lock);
        let table = {
            let mut t = write(&self.tables);
            if t.active.is_empty() {
                return Ok(());
            }
            let table = Arc::new(std::mem::take(&mut t.active));
            t.active_bytes = 0;
            self.backlog.store(0, Ordering::Relaxed);
            t.draining = Some(table.clone());
            table
        };
        let mut batch = WriteBatch::default();
        crate::page::coalesce(table.iter(), &mut batch);
        let result = self.inner.apply(batch);
        let mut t = write(&self.tables);
        if result.is_err() {
            // Put the writes back under the newer ones so nothing is lost from view; the next
            // drain tries again.
            let newer = std::mem::take(&mut t.active);
            let mut merged = (*table).clone();
            merged.extend(newer);
            t.active_bytes = merged
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum();
            t.active = merged;
            self.backlog.store(t.active_bytes, Ordering::Relaxed);
        }
        t.draining = None;
        result
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
        let over = {
            let mut t = write(&self.tables);
            for (k, v) in batch.into_ops() {
                let size = k.len() + v.as_ref().map_or(0, Vec::len);
                // A rewritten key (a growing hash block) replaces its old bytes.
                let key_len = k.len();
                let old = t.active.insert(k, v);
                let freed = old.map_or(0, |v| key_len + v.as_ref().map_or(0, Vec::len));
                t.active_bytes = (t.active_bytes + size).saturating_sub(freed);
            }
            self.backlog.store(t.active_bytes, Ordering::Relaxed);
            t.active_bytes > self.max_bytes
        };
        if over {
            self.drain()?;
        }
        Ok(())
    }

    fn backlog(&self) -> usize {
        self.backlog.load(Ordering::Relaxed)
    }

    fn drain(&self) -> Result<(), LogError> {
        Staged::drain(self)
    }

    fn flush(&self) -> Result<(), LogError> {
        self.drain()?;
        self.inner.flush()
    }

    fn is_empty(&self) -> Result<bool, LogError> {
        let staged_empty = {
            let t = read(&self.tables);
            t.active.is_empty() && t.draining.is_none()
        };
        Ok(staged_empty && self.inner.is_empty()?)
    }

    fn size_on_disk(&self) -> Result<u64, LogError> {
        self.inner.size_on_disk()
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
