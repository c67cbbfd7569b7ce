//! A write-ahead journal in front of sled: what makes a sled log's append durable.
//!
//! Why: sled 0.34 makes writes durable only through its flush, which writes out its IO
//! buffers and waits for each with `sync_file_range`, after which the log `fdatasync`s sled's
//! file (see `disk_sync`): two waits on the disk per group commit, ~0.9 ms on the machine the
//! benchmarks ran on, which held 64 appenders to ~32k appends/s. The journal makes a group
//! durable with one sequential write and one `fdatasync` of a file that is rewritten in place
//! from its start after every checkpoint, so the sync commits no size or block change
//! (~0.15 ms there). sled gets the same writes at once, unflushed, and is flushed only at a
//! checkpoint, every [`CHECKPOINT_BYTES`] of journal.
//!
//! Layout (little-endian): a 16-byte header (`MAGIC`, then the version as u32), then records
//!
//! ```text
//! len u64 | serial u64 | check [u8; 16] | payload (len bytes)
//! ```
//!
//! where `check` is the first 16 bytes of blake3(len, serial, payload), and the payload is the
//! batch's writes: a u32 count, then per write `klen u32, key, 1 u8, vlen u32, value` for a
//! put or `klen u32, key, 0 u8` for a delete. Each record's serial is the previous one's + 1.
//! sled keeps the serial of the last record it applied (`keys::JOURNAL`), written in the same
//! atomic batch as the record's writes.
//!
//! A checkpoint flushes sled and syncs its files: every record so far is then in sled on
//! disk, and the journal starts again right after the header, over the old records, with no
//! write of its own. Records left from before carry smaller serials than any written after them,
//! and a scan stops at the first record that is torn or whose serial is not the previous + 1, so
//! it never runs from a newer record into an older one; an older record it reads first is at
//! or below sled's applied serial, and is not replayed.
//!
//! Writes reach sled later than the journal, many flushes' worth at a time (see `staged`):
//! a drain hands sled every write staged since the last one, all of them already in records
//! up to some serial, with that serial, in one atomic batch. sled on disk is therefore always
//! exactly the state after some record, and the serial it holds says which.
//!
//! Recovery ([`recover`]): scan the records, replay in order those above sled's applied
//! serial, then checkpoint.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::LogError;
use crate::keys;
use crate::kv::{Kv, WriteBatch};

/// The journal's file in the log directory (beside sled's `db`, `conf`, `blobs/` and
/// `snap.*`, none of which sled confuses it with).
pub(crate) const FILE: &str = "journal";
const MAGIC: [u8; 12] = *b"converge-jnl";
pub(crate) const VERSION: u32 = 1;
const HEADER: u64 = 16;
const RECORD_HEAD: usize = 8 + 8 + 16;
/// The flush that finds this many bytes of records since the last checkpoint checkpoints.
/// Small enough that recovery replays little and the file stays a few MiB; large enough that
/// sled's flush (a few ms) is paid once per thousands of appends.
pub(crate) const CHECKPOINT_BYTES: u64 = 8 << 20;
/// A file grown past this by a very large record is cut back to its header at a checkpoint
/// (above the 4x at which a flush checkpoints itself, so that one keeps the file).
const KEEP_BYTES: u64 = 8 * CHECKPOINT_BYTES;

/// One write of a batch: a put (`Some`) or a delete (`None`).
pub(crate) type Op = (Vec<u8>, Option<Vec<u8>>);

/// A batch read back from the journal.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) serial: u64,
    pub(crate) ops: Vec<Op>,
}

pub(crate) struct Journal {
    file: File,
    path: PathBuf,
    /// Where the next record goes.
    end: u64,
    /// The next record's serial.
    next_serial: u64,
}

/// Writes waiting for the journal, encoded as one record's payload as they arrive.
pub(crate) struct Pending {
    /// `RECORD_HEAD` bytes left for the record's head, the count, then the writes.
    buf: Vec<u8>,
    count: u32,
}

impl Default for Pending {
    fn default() -> Self {
        Self {
            buf: vec![0; RECORD_HEAD + 4],
            count: 0,
        }
    }
}

impl Pending {
    /// Refuses a batch the journal cannot encode (a key or value of 4 GiB or more), so
    /// that [`Pending::push`] never fails halfway through a batch.
    pub(crate) fn check(ops: &[Op]) -> Result<(), LogError> {
        for (k, v) in ops {
            fits_u32(k.len())?;
            if let Some(v) = v {
                fits_u32(v.len())?;
            }
        }
        Ok(())
    }

    /// Adds one write; its lengths passed [`Pending::check`].
    pub(crate) fn push(&mut self, key: &[u8], value: Option<&[u8]>) {
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        match value {
            Some(v) => {
                self.buf.push(1);
                self.buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
                self.buf.extend_from_slice(v);
            }
            None => self.buf.push(0),
        }
        self.count += 1;
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes held.
    pub(crate) fn bytes(&self) -> usize {
        self.buf.len()
    }

    #[cfg(test)]
    fn of(ops: &[Op]) -> Self {
        let mut p = Self::default();
        for (k, v) in ops {
            p.push(k, v.as_deref());
        }
        p
    }
}

/// Opens the journal in `dir` over `kv` (the sled store of the same directory), replays the
/// records `kv` does not hold, and checkpoints: `kv` then holds everything the journal did,
/// durably, and the returned journal is empty.
///
/// Emptied, not only started again: past a torn record there may be whole records that were
/// never acknowledged, and new records written over the file's start would take their
/// serials, so that a later scan could run on from a new record into one of them.
pub(crate) fn recover(dir: &Path, kv: &dyn Kv) -> Result<Journal, LogError> {
    let (mut journal, records) = Journal::open(dir)?;
    let applied = applied_serial(kv)?;
    journal.resume_after(applied);
    let mut replayed = 0usize;
    for r in records.into_iter().filter(|r| r.serial > applied) {
        if replayed == 0 && r.serial != applied + 1 {
            return Err(LogError::CorruptRecord {
                record: format!("journal {}", journal.path.display()),
                reason: format!(
                    "the store holds records through {applied}, the journal resumes at {}",
                    r.serial
                ),
            });
        }
        let mut batch = WriteBatch::default();
        for (k, v) in r.ops {
            match v {
                Some(v) => batch.put(k, v),
                None => batch.delete(k),
            }
        }
        batch.put(keys::JOURNAL.to_vec(), r.serial.to_be_bytes().to_vec());
        kv.apply(batch)?;
        replayed += 1;
    }
    if replayed > 0 {
        tracing::info!(replayed, "replayed journal records the store did not hold");
    }
    kv.flush()?;
    journal.clear()?;
    Ok(journal)
}

/// The serial of the last record `kv` applied (0: none).
fn applied_serial(kv: &dyn Kv) -> Result<u64, LogError> {
    match kv.get(keys::JOURNAL)? {
        None => Ok(0),
        Some(v) => <[u8; 8]>::try_from(v.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| LogError::CorruptRecord {
                record: "journal serial".into(),
                reason: "not 8 bytes".into(),
            }),
    }
}

fn io(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::Storage(format!("journal: {what} {}: {e}", path.display()))
}

impl Journal {
    /// Opens (or creates) the journal in `dir`, and returns it with the records it holds, in
    /// order. New records go after them until [`Journal::restart`].
    pub(crate) fn open(dir: &Path) -> Result<(Self, Vec<Record>), LogError> {
        let path = dir.join(FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| io("cannot open", &path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| io("cannot read", &path, e))?;
        let records = match bytes.get(..HEADER as usize) {
            // New, or its creation was cut short: no record was ever written to it.
            None => None,
            Some(h) if h.iter().all(|b| *b == 0) => None,
            Some(h) => {
                check_header(h, &path)?;
                Some(scan(&bytes[HEADER as usize..]))
            }
        };
        let records = match records {
            Some(found) => found,
            None => {
                let mut header = [0u8; HEADER as usize];
                header[..12].copy_from_slice(&MAGIC);
                header[12..].copy_from_slice(&VERSION.to_le_bytes());
                file.write_all_at(&header, 0)
                    .and_then(|()| file.set_len(HEADER))
                    .and_then(|()| file.sync_all())
                    .map_err(|e| io("cannot create", &path, e))?;
                crate::disk_sync::sync_parent(&path)
                    .map_err(|e| io("cannot sync the directory of", &path, e))?;
                (Vec::new(), 0)
            }
        };
        let (records, read) = records;
        let end = HEADER + read as u64;
        let next_serial = records.last().map_or(1, |r| r.serial + 1);
        let journal = Self {
            file,
            path,
            end,
            next_serial,
        };
        Ok((journal, records))
    }

    /// Makes the next record's serial at least `applied + 1` (sled may hold records the journal
    /// lost, never acknowledged, and their serials are not reused).
    pub(crate) fn resume_after(&mut self, applied: u64) {
        self.next_serial = self.next_serial.max(applied.saturating_add(1));
    }

    /// Writes `pending` as a record (not synced) and returns its serial.
    pub(crate) fn append(&mut self, mut pending: Pending) -> Result<u64, LogError> {
        let serial = self.next_serial;
        let buf = &mut pending.buf;
        buf[RECORD_HEAD..RECORD_HEAD + 4].copy_from_slice(&pending.count.to_le_bytes());
        let len = (buf.len() - RECORD_HEAD) as u64;
        let check = checksum(len, serial, &buf[RECORD_HEAD..]);
        buf[..8].copy_from_slice(&len.to_le_bytes());
        buf[8..16].copy_from_slice(&serial.to_le_bytes());
        buf[16..RECORD_HEAD].copy_from_slice(&check);
        self.file
            .write_all_at(buf, self.end)
            .map_err(|e| io("cannot write", &self.path, e))?;
        self.end += buf.len() as u64;
        self.next_serial += 1;
        Ok(serial)
    }

    /// The serial of the last record written (0: none yet).
    pub(crate) fn last_serial(&self) -> u64 {
        self.next_serial - 1
    }

    /// Makes every record written so far durable.
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| io("cannot sync", &self.path, e))
    }

    /// Bytes of records written since the last restart.
    pub(crate) fn written(&self) -> u64 {
        self.end - HEADER
    }

    /// Starts again after the header. Call only once every record written is durable in
    /// sled (a checkpoint).
    pub(crate) fn restart(&mut self) -> Result<(), LogError> {
        if self.end > KEEP_BYTES {
            return self.clear();
        }
        self.end = HEADER;
        Ok(())
    }

    /// Cuts the file back to its header (a clean close, a recovery, or a file grown too
    /// large: the next open reads nothing).
    pub(crate) fn clear(&mut self) -> Result<(), LogError> {
        self.file
            .set_len(HEADER)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| io("cannot clear", &self.path, e))?;
        self.end = HEADER;
        Ok(())
    }

    /// The file's length, for `size_on_disk`.
    pub(crate) fn file_len(&self) -> Result<u64, LogError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|e| io("cannot read", &self.path, e))
    }
}

fn check_header(h: &[u8], path: &Path) -> Result<(), LogError> {
    if h[..12] != MAGIC {
        return Err(LogError::CorruptRecord {
            record: format!("journal {}", path.display()),
            reason: "not a converge journal (bad magic)".into(),
        });
    }
    let mut v = [0u8; 4];
    v.copy_from_slice(&h[12..16]);
    let version = u32::from_le_bytes(v);
    if version != VERSION {
        return Err(LogError::UnsupportedFormat {
            found: version,
            supported: VERSION,
        });
    }
    Ok(())
}

fn checksum(len: u64, serial: u64, payload: &[u8]) -> [u8; 16] {
    let mut h = blake3::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&serial.to_le_bytes());
    h.update(payload);
    let mut out = [0u8; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// A length the journal can encode (as a u32).
fn fits_u32(n: usize) -> Result<(), LogError> {
    u32::try_from(n)
        .map(|_| ())
        .map_err(|_| LogError::TooLarge {
            what: "journal write",
            size: n,
            limit: u32::MAX as usize,
        })
}

/// Reads from the front of `bytes`, returning the part read and the rest.
fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if bytes.len() < n {
        return None;
    }
    let (head, rest) = bytes.split_at(n);
    *bytes = rest;
    Some(head)
}

fn take_u32(bytes: &mut &[u8]) -> Option<usize> {
    let b = take(bytes, 4)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
}

fn decode_ops(mut payload: &[u8]) -> Option<Vec<Op>> {
    let count = take_u32(&mut payload)?;
    // Each write takes at least 5 bytes: a count beyond that is not ours.
    let mut ops = Vec::with_capacity(count.min(payload.len() / 5));
    for _ in 0..count {
        let klen = take_u32(&mut payload)?;
        let key = take(&mut payload, klen)?.to_vec();
        let value = match take(&mut payload, 1)?[0] {
            0 => None,
            1 => {
                let vlen = take_u32(&mut payload)?;
                Some(take(&mut payload, vlen)?.to_vec())
            }
            _ => return None,
        };
        ops.push((key, value));
    }
    payload.is_empty().then_some(ops)
}

/// The records at the front of `bytes`: each whole, its check right, and its serial the
/// previous one's + 1 (anything after the first that is not is a torn tail or older
/// records), and the bytes they take.
fn scan(all: &[u8]) -> (Vec<Record>, usize) {
    let mut out: Vec<Record> = Vec::new();
    let mut bytes = all;
    let mut read = 0;
    while let Some(head) = take(&mut bytes, RECORD_HEAD) {
        let mut word = [0u8; 8];
        word.copy_from_slice(&head[..8]);
        let len = u64::from_le_bytes(word);
        word.copy_from_slice(&head[8..16]);
        let serial = u64::from_le_bytes(word);
        let Some(payload) = usize::try_from(len).ok().and_then(|n| take(&mut bytes, n)) else {
            break;
        };
        if checksum(len, serial, payload) != head[16..RECORD_HEAD] {
            break;
        }
        if out
            .last()
            .is_some_and(|prev| prev.serial.checked_add(1) != Some(serial))
        {
            break;
        }
        let Some(ops) = decode_ops(payload) else {
            break;
        };
        out.push(Record { serial, ops });
        read = all.len() - bytes.len();
    }
    (out, read)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn op() -> impl Strategy<Value = Op> {
        (
            proptest::collection::vec(any::<u8>(), 0..12),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)),
        )
    }

    fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
        proptest::collection::vec(proptest::collection::vec(op(), 0..6), 1..8)
    }

    fn reopen(dir: &Path) -> (Journal, Vec<Record>) {
        Journal::open(dir).unwrap()
    }

    proptest! {
        /// What is appended reads back whole, in order, with consecutive serials.
        #[test]
        fn records_read_back(batches in batches()) {
            let dir = tempfile::tempdir().unwrap();
            let (mut j, none) = reopen(dir.path());
            prop_assert!(none.is_empty());
            for b in &batches {
                j.append(Pending::of(b)).unwrap();
            }
            drop(j);
            let (j, got) = reopen(dir.path());
            prop_assert_eq!(got.len(), batches.len());
            for (i, (r, b)) in got.iter().zip(&batches).enumerate() {
                prop_assert_eq!(r.serial, i as u64 + 1);
                prop_assert_eq!(&r.ops, b);
            }
            prop_assert_eq!(j.next_serial, batches.len() as u64 + 1);
        }

        /// A file cut anywhere reads back as the records wholly before the cut.
        #[test]
        fn a_torn_tail_is_dropped(batches in batches(), cut in any::<proptest::sample::Index>()) {
            let dir = tempfile::tempdir().unwrap();
            let (mut j, _) = reopen(dir.path());
            let mut ends = Vec::new();
            for b in &batches {
                j.append(Pending::of(b)).unwrap();
                ends.push(j.end);
            }
            drop(j);
            let path = dir.path().join(FILE);
            let full = std::fs::metadata(&path).unwrap().len();
            let at = HEADER + cut.index((full - HEADER) as usize) as u64;
            let f = OpenOptions::new().write(true).open(&path).unwrap();
            f.set_len(at).unwrap();
            drop(f);
            let (_, got) = reopen(dir.path());
            let whole = ends.iter().filter(|e| **e <= at).count();
            prop_assert_eq!(got.len(), whole);
        }
    }

    /// After a restart, new records overwrite the old ones from the front, and a scan stops
    /// where the new ones end, even when old records follow them in the file.
    #[test]
    fn a_restart_writes_over_older_records() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = reopen(dir.path());
        let long = vec![(b"k".to_vec(), Some(vec![1u8; 100]))];
        for _ in 0..5 {
            j.append(Pending::of(&long)).unwrap();
        }
        j.restart().unwrap();
        let short = vec![(b"s".to_vec(), None)];
        j.append(Pending::of(&short)).unwrap();
        j.append(Pending::of(&short)).unwrap();
        drop(j);
        let (j, got) = reopen(dir.path());
        assert_eq!(got.iter().map(|r| r.serial).collect::<Vec<_>>(), vec![6, 7]);
        assert!(got.iter().all(|r| r.ops == short));
        assert_eq!(j.next_serial, 8);

        // A restart with nothing written since: the old records are read, and their serials
        // (at or below what sled applied) tell the caller they are not to be replayed.
        let (mut j, _) = reopen(dir.path());
        j.restart().unwrap();
        drop(j);
        let (_, got) = reopen(dir.path());
        assert_eq!(got.first().map(|r| r.serial), Some(6));
    }

    fn one_write(v: u8) -> Pending {
        Pending::of(&[(b"k".to_vec(), Some(vec![v; 8]))])
    }

    /// Whole records past a torn one were never acknowledged. Recovery empties the file, so
    /// a new record written over its start is never followed by one of them, whose serial
    /// could continue the new one's.
    #[test]
    fn no_record_from_before_a_recovery_is_read_after_a_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let kv = crate::kv::MemStorage::new();
        let (mut j, _) = reopen(dir.path());
        j.append(one_write(1)).unwrap();
        j.append(one_write(2)).unwrap();
        drop(j);
        // Tear record 1 (one payload byte changed); record 2 stays whole behind it.
        let path = dir.path().join(FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[HEADER as usize + RECORD_HEAD + 6] ^= 1;
        std::fs::write(&path, bytes).unwrap();
        let mut j = recover(dir.path(), &kv).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), None, "nothing whole to replay");
        assert_eq!(j.file_len().unwrap(), HEADER);
        // A new record of the same size, then a crash.
        assert_eq!(j.append(one_write(9)).unwrap(), 1);
        j.sync().unwrap();
        drop(j);
        recover(dir.path(), &kv).unwrap();
        assert_eq!(kv.get(b"k").unwrap(), Some(vec![9; 8]));
    }

    /// Records that do not start right after the store's serial cannot be replayed onto it.
    #[test]
    fn a_gap_between_the_store_and_the_journal_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let kv = crate::kv::MemStorage::new();
        let mut b = WriteBatch::default();
        b.put(keys::JOURNAL.to_vec(), 5u64.to_be_bytes().to_vec());
        kv.apply(b).unwrap();
        let (mut j, _) = reopen(dir.path());
        j.resume_after(6);
        assert_eq!(j.append(one_write(1)).unwrap(), 7);
        j.sync().unwrap();
        drop(j);
        assert!(matches!(
            recover(dir.path(), &kv),
            Err(LogError::CorruptRecord { .. })
        ));
    }

    #[test]
    fn a_foreign_or_newer_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(FILE);
        std::fs::write(&path, b"not a journal, something else").unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(LogError::CorruptRecord { .. })
        ));
        let mut header = MAGIC.to_vec();
        header.extend_from_slice(&2u32.to_le_bytes());
        std::fs::write(&path, header).unwrap();
        assert!(matches!(
            Journal::open(dir.path()),
            Err(LogError::UnsupportedFormat {
                found: 2,
                supported: VERSION
            })
        ));
    }

    #[test]
    fn a_clear_leaves_only_the_header() {
        let dir = tempfile::tempdir().unwrap();
        let (mut j, _) = reopen(dir.path());
        j.append(Pending::of(&[(b"k".to_vec(), Some(b"v".to_vec()))]))
            .unwrap();
        j.clear().unwrap();
        assert_eq!(j.file_len().unwrap(), HEADER);
        drop(j);
        let (j, got) = reopen(dir.path());
        assert!(got.is_empty());
        // The serial is not reused only if sled says so: the caller resumes after its applied serial.
        assert_eq!(j.next_serial, 1);
    }
}
