//! The ordered key-value stores a log runs on: sled on disk, or a map in memory.
//!
//! Both give the same guarantees the log relies on: a [`WriteBatch`] is applied whole or not at
//! all, and only what was applied before a completed [`Kv::flush`] survives a crash. The memory
//! store can simulate that crash ([`MemStorage::crash`]), which is how tests reboot a `MemLog`.
//! No sled type leaves this module.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use crate::error::LogError;
use crate::sync::{lock, read, write};

/// Key-value pairs as owned bytes.
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// Writes applied atomically by [`Kv::apply`].
#[derive(Debug, Default)]
pub(crate) struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    pub(crate) fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }

    pub(crate) fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    pub(crate) fn into_ops(self) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
        self.ops
    }
}

/// An ordered byte store with atomic batches and an explicit flush.
pub(crate) trait Kv: Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError>;
    /// Pairs with `start <= key < end`, in key order (or reversed), at most `limit` of them.
    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, LogError>;
    fn apply(&self, batch: WriteBatch) -> Result<(), LogError>;
    /// Makes everything applied so far durable.
    fn flush(&self) -> Result<(), LogError>;
    /// Bytes applied but not yet handed to the underlying store (staging), if any.
    fn backlog(&self) -> usize {
        0
    }
    /// Hands staged writes to the underlying store without making them durable.
    fn drain(&self) -> Result<(), LogError> {
        Ok(())
    }
    /// Whether a journal in front of the store grew enough that the store should be flushed
    /// and the journal started again ([`Kv::checkpoint`]).
    fn checkpoint_due(&self) -> bool {
        false
    }
    /// Makes everything durable in the store itself (not only in a journal in front of it).
    fn checkpoint(&self) -> Result<(), LogError> {
        self.flush()
    }
    fn is_empty(&self) -> Result<bool, LogError>;
    fn size_on_disk(&self) -> Result<u64, LogError>;
}

/// How long `SledKv::open` waits for a lock still held by a log that is closing.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// sled 0.34.7 reports a held lock only as an I/O error with this message.
fn is_lock_error(e: &sled::Error) -> bool {
    matches!(e, sled::Error::Io(io) if io.to_string().contains("could not acquire lock"))
}

/// sled 0.34.7, one tree. sled makes a batch atomic within one tree, so every key lives in the
/// default tree under a one-byte prefix (see `keys`).
pub(crate) struct SledKv {
    db: sled::Db,
    /// Syncs what sled's flush leaves in the page cache (see `disk_sync`).
    disk: crate::disk_sync::DiskSync,
    /// Held (shared) by every call into sled. sled writes a large value's blob file in
    /// several steps inside such a call, so syncing blob files takes it exclusively for a
    /// moment first: every blob file listed is then whole when it is synced.
    gate: RwLock<()>,
}

impl SledKv {
    pub(crate) fn open(path: &Path) -> Result<Self, LogError> {
        // sled's own background flusher is off: the log decides when to flush (group commit, or
        // its own timer in buffered mode), so "acknowledged" always means "flushed by us".
        //
        // sled releases its directory lock only when its last internal handle drops, which can be
        // a moment after the `Db` itself (its I/O threads hold handles too). A reopen right after a
        // close (restart, tests) therefore waits a bounded while for the lock instead of failing.
        let deadline = std::time::Instant::now() + LOCK_WAIT;
        let mut pause = std::time::Duration::from_millis(5);
        loop {
            match sled::Config::new().path(path).flush_every_ms(None).open() {
                Ok(db) => {
                    let disk = crate::disk_sync::DiskSync::open(path)?;
                    return Ok(Self {
                        db,
                        disk,
                        gate: RwLock::new(()),
                    });
                }
                Err(e) if is_lock_error(&e) => {
                    if std::time::Instant::now() >= deadline {
                        return Err(LogError::Locked {
                            path: path.display().to_string(),
                        });
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(std::time::Duration::from_millis(100));
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

impl SledKv {
    /// Copies every record into `other` in large atomic batches, then flushes it.
    pub(crate) fn copy_into(&self, other: &SledKv) -> Result<u64, LogError> {
        let _open = read(&self.gate);
        let mut copied = 0u64;
        let mut batch = sled::Batch::default();
        let mut in_batch = 0usize;
        for item in self.db.iter() {
            let (k, v) = item?;
            batch.insert(k, v);
            in_batch += 1;
            copied += 1;
            if in_batch == 10_000 {
                let _open = read(&other.gate);
                other.db.apply_batch(std::mem::take(&mut batch))?;
                in_batch = 0;
            }
        }
        {
            let _open = read(&other.gate);
            other.db.apply_batch(batch)?;
        }
        other.flush()?;
        Ok(copied)
    }
}

impl Kv for SledKv {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        let _open = read(&self.gate);
        Ok(self.db.get(key)?.map(|v| v.to_vec()))
    }

    fn range(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> Result<Vec<Pair>, LogError> {
        let _open = read(&self.gate);
        let iter = self.db.range(start..end);
        let items: Box<dyn Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>> = if reverse {
            Box::new(iter.rev())
        } else {
            Box::new(iter)
        };
        items
            .take(limit)
            .map(|item| {
                let (k, v) = item?;
                Ok((k.to_vec(), v.to_vec()))
            })
            .collect()
    }

    fn apply(&self, mut batch: WriteBatch) -> Result<(), LogError> {
        {
            let _open = read(&self.gate);
            // One write needs no batch: sled applies a single insert or remove atomically on
            // its own, while `apply_batch` seals its IO buffer twice around the batch
            // (`pin_log`).
            if batch.ops.len() == 1
                && let Some((k, v)) = batch.ops.pop()
            {
                match v {
                    Some(v) => self.db.insert(k, v)?,
                    None => self.db.remove(k)?,
                };
            } else {
                let mut b = sled::Batch::default();
                for (k, v) in batch.ops {
                    match v {
                        Some(v) => b.insert(k, v),
                        None => b.remove(k),
                    }
                }
                self.db.apply_batch(b)?;
            }
        }
        // sled may already have written a pointer to a new blob file into its log, and may
        // write that part of its log out at any time, flushed or not: the blob is synced now,
        // so sled on disk never points at a blob a power cut lost. (A stat if nothing is new.)
        self.disk.sync_blobs(&|| drop(write(&self.gate)))
    }

    fn flush(&self) -> Result<(), LogError> {
        {
            let _open = read(&self.gate);
            self.db.flush()?;
        }
        // Not holding the gate: the sync waits, exclusively, for calls still in sled.
        self.disk.sync(&|| drop(write(&self.gate)))
    }

    fn is_empty(&self) -> Result<bool, LogError> {
        let _open = read(&self.gate);
        Ok(self.db.is_empty())
    }

    fn size_on_disk(&self) -> Result<u64, LogError> {
        let _open = read(&self.gate);
        Ok(self.db.size_on_disk()?)
    }
}

/// The contents of a memory log, shared between successive `MemLog`s so a test can "reboot":
/// drop the log, optionally [`crash`](MemStorage::crash), and open a new one on the same storage.
#[derive(Clone, Debug, Default)]
pub struct MemStorage {
    inner: Arc<MemInner>,
}

#[derive(Debug, Default)]
struct MemInner {
    /// What readers see: every applied batch.
    live: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// What survives a crash: the state as of the last flush.
    durable: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
    /// Batches applied since the last flush, replayed into `durable` by the next flush.
    unflushed: Mutex<Vec<WriteBatch>>,
}

impl MemStorage {
    /// Empty storage.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets every write that no flush covered, as a power loss would.
    pub fn crash(&self) {
        let durable = lock(&self.inner.durable).clone();
        lock(&self.inner.unflushed).clear();
        *write(&self.inner.live) = durable;
    }

    /// An independent copy of what is durable now, as a backup taken at this moment would
    /// hold. Open a log on it to "restore" that backup.
    pub fn backup(&self) -> MemStorage {
        let durable = lock(&self.inner.durable).clone();
        MemStorage {
            inner: Arc::new(MemInner {
                live: RwLock::new(durable.clone()),
                durable: Mutex::new(durable),
                unflushed: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Overwrites one raw record; tests use it to corrupt entries below the log API.
    #[doc(hidden)]
    pub fn overwrite_raw(&self, key: &[u8], value: Vec<u8>) {
        write(&self.inner.live).insert(key.to_vec(), value.clone());
        lock(&self.inner.durable).insert(key.to_vec(), value);
    }

    /// Every raw key, for tests that corrupt records below the log API.
    #[doc(hidden)]
    pub fn raw_keys(&self) -> Vec<Vec<u8>> {
        read(&self.inner.live).keys().cloned().collect()
    }

    /// The raw value of one key, for tests.
    #[doc(hidden)]
    pub fn raw_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        read(&self.inner.live).get(key).cloned()
    }
}

fn apply_ops(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, batch: &WriteBatch) {
    for (k, v) in &batch.ops {
        match v {
            Some(v) => {
                map.insert(k.clone(), v.clone());
            }
            None => {
                map.remove(k);
            }
        }
    }
}

impl Kv for MemStorage {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
        Ok(read(&self.inner.live).get(key).cloned())
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
        let map = read(&self.inner.live);
        let r = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let pairs = |it: &mut dyn Iterator<Item = (&Vec<u8>, &Vec<u8>)>| {
            it.take(limit)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Vec<_>>()
        };
        Ok(if reverse {
            pairs(&mut r.rev())
        } else {
            pairs(&mut r.into_iter())
        })
    }

    fn apply(&self, batch: WriteBatch) -> Result<(), LogError> {
        // Hold the journal lock across the live write so a concurrent flush sees batches in
        // the order readers saw them.
        let mut unflushed = lock(&self.inner.unflushed);
        apply_ops(&mut write(&self.inner.live), &batch);
        unflushed.push(batch);
        Ok(())
    }

    fn flush(&self) -> Result<(), LogError> {
        let batches = std::mem::take(&mut *lock(&self.inner.unflushed));
        let mut durable = lock(&self.inner.durable);
        for b in &batches {
            apply_ops(&mut durable, b);
        }
        Ok(())
    }

    fn is_empty(&self) -> Result<bool, LogError> {
        Ok(read(&self.inner.live).is_empty())
    }

    fn size_on_disk(&self) -> Result<u64, LogError> {
        let map = read(&self.inner.live);
        Ok(map.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// sled puts a value too large for its log buffers (over ~128 KiB) in a file of its own
    /// under `blobs/`, which it never syncs; the log must find and sync it before sled's log,
    /// which points at it, can reach the disk.
    #[test]
    fn the_blob_files_sled_writes_are_synced() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SledKv::open(dir.path()).unwrap();
        let mut batch = WriteBatch::default();
        batch.put(b"big".to_vec(), vec![7u8; 300 * 1024]);
        kv.apply(batch).unwrap();
        kv.flush().unwrap();
        let blobs: Vec<_> = std::fs::read_dir(dir.path().join("blobs"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert!(!blobs.is_empty(), "sled wrote no blob file");
        for name in blobs {
            assert!(kv.disk.has_synced(&name), "blob {name:?} was not synced");
        }
        assert_eq!(kv.get(b"big").unwrap().map(|v| v.len()), Some(300 * 1024));
    }
}
