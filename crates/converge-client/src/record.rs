//! Append-only record files and atomic file replacement: the two write patterns of the store.
//!
//! A record file is an 8-byte header ([`MAGIC`]) followed by records:
//!
//! ```text
//! len: u32 LE | check: first 8 bytes of blake3(len LE ++ payload) | payload (len bytes)
//! ```
//!
//! An append writes all its records with one `write` and one `fdatasync`, so once it returns
//! they survive a crash. A crash during an append can leave a partial or garbled last record:
//! [`RecordLog::open`] keeps the longest prefix of whole, checksummed records and truncates
//! the file there. The checksum covers the length too, so a length torn into a plausible
//! number is caught as well.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// First bytes of every record file: a name and the format version (1).
pub(crate) const MAGIC: [u8; 8] = *b"cvgrec\x00\x01";

const LEN_BYTES: usize = 4;
const CHECK_BYTES: usize = 8;
const RECORD_HEADER: usize = LEN_BYTES + CHECK_BYTES;

/// An open append-only record file.
#[derive(Debug)]
pub(crate) struct RecordLog {
    path: PathBuf,
    file: File,
    /// Bytes of whole records (and the header) on disk; a failed append is cut back to this.
    len: u64,
    /// Set when a failed append could not be cut back: appending after garbage would hide
    /// every later record on the next open, so the log refuses appends until reopened.
    broken: bool,
}

impl RecordLog {
    /// Opens (creating if missing) a record file and returns its records. A torn or corrupt
    /// tail is dropped and cut off the file; a file shorter than its header (a crash while
    /// creating it) starts empty.
    pub(crate) fn open(path: &Path) -> Result<(RecordLog, Vec<Vec<u8>>), StoreError> {
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => Vec::new(),
            Err(e) => return Err(StoreError::io("read", path)(e)),
        };
        if bytes.len() < MAGIC.len() {
            write_atomic(path, &MAGIC)?;
            let log = Self::reopen(path, MAGIC.len() as u64)?;
            return Ok((log, Vec::new()));
        }
        if bytes[..MAGIC.len()] != MAGIC {
            return Err(StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: "not a converge record file (bad header)".into(),
            });
        }
        let (records, valid) = parse(&bytes);
        let log = Self::reopen(path, valid as u64)?;
        if valid < bytes.len() {
            tracing::warn!(
                path = %path.display(),
                dropped_bytes = bytes.len() - valid,
                kept_records = records.len(),
                "dropping a torn tail from a record file"
            );
            log.file
                .set_len(valid as u64)
                .and_then(|()| log.file.sync_all())
                .map_err(StoreError::io("truncate", path))?;
        }
        Ok((log, records))
    }

    fn reopen(path: &Path, len: u64) -> Result<RecordLog, StoreError> {
        let file = OpenOptions::new()
            .append(true)
            .open(path)
            .map_err(StoreError::io("open", path))?;
        Ok(RecordLog {
            path: path.to_path_buf(),
            file,
            len,
            broken: false,
        })
    }

    /// Appends records durably: one write, one fdatasync.
    pub(crate) fn append<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        if self.broken {
            return Err(StoreError::Corrupt {
                path: self.path.clone(),
                reason: "an earlier append failed and could not be undone; reopen the store".into(),
            });
        }
        let buf = encode(records).map_err(|reason| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        })?;
        let written = self
            .file
            .write_all(&buf)
            .and_then(|()| self.file.sync_data());
        if let Err(e) = written {
            // Cut a partial write back off, so later appends do not land behind garbage.
            if self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all())
                .is_err()
            {
                self.broken = true;
            }
            return Err(StoreError::io("append to", &self.path)(e));
        }
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the whole file with these records, atomically.
    pub(crate) fn rewrite<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<(), StoreError> {
        let mut buf = MAGIC.to_vec();
        buf.extend(encode(records).map_err(|reason| StoreError::Corrupt {
            path: self.path.clone(),
            reason,
        })?);
        write_atomic(&self.path, &buf)?;
        *self = Self::reopen(&self.path, buf.len() as u64)?;
        Ok(())
    }

    /// Drops every record. Truncating to the header is one metadata update: a crash leaves
    /// either all old records or none, and every caller can live with either.
    pub(crate) fn clear(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(MAGIC.len() as u64)
            .and_then(|()| self.file.sync_all())
            .map_err(StoreError::io("truncate", &self.path))?;
        self.len = MAGIC.len() as u64;
        self.broken = false;
        Ok(())
    }

    /// Bytes of records held (without the header).
    pub(crate) fn record_bytes(&self) -> u64 {
        self.len.saturating_sub(MAGIC.len() as u64)
    }
}

fn check(len: &[u8; LEN_BYTES], payload: &[u8]) -> [u8; CHECK_BYTES] {
    let mut h = blake3::Hasher::new();
    h.update(len);
    h.update(payload);
    let mut out = [0; CHECK_BYTES];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECK_BYTES]);
    out
}

fn encode<R: AsRef<[u8]>>(records: &[R]) -> Result<Vec<u8>, String> {
    let total: usize = records
        .iter()
        .map(|r| r.as_ref().len() + RECORD_HEADER)
        .sum();
    let mut buf = Vec::with_capacity(total);
    for r in records {
        let payload = r.as_ref();
        let len = u32::try_from(payload.len())
            .map_err(|_| format!("a record of {} bytes is too large", payload.len()))?
            .to_le_bytes();
        buf.extend_from_slice(&len);
        buf.extend_from_slice(&check(&len, payload));
        buf.extend_from_slice(payload);
    }
    Ok(buf)
}

/// The whole records after the header, and the offset where they end.
fn parse(bytes: &[u8]) -> (Vec<Vec<u8>>, usize) {
    let mut records = Vec::new();
    let mut at = MAGIC.len();
    while let Some(header) = bytes.get(at..at + RECORD_HEADER) {
        let mut len = [0; LEN_BYTES];
        len.copy_from_slice(&header[..LEN_BYTES]);
        let start = at + RECORD_HEADER;
        let Some(payload) = start
            .checked_add(u32::from_le_bytes(len) as usize)
            .and_then(|end| bytes.get(start..end))
        else {
            break; // torn: the record runs past the end of the file
        };
        if header[LEN_BYTES..] != check(&len, payload) {
            break; // garbled
        }
        records.push(payload.to_vec());
        at = start + payload.len();
    }
    (records, at)
}

/// Replaces `path` with `bytes` so that a crash leaves either the old or the new file, whole:
/// write a temporary file, fsync it, rename it over `path`, fsync the directory.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut f = File::create(&tmp).map_err(StoreError::io("create", &tmp))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io("write", &tmp))?;
    drop(f);
    fs::rename(&tmp, path).map_err(StoreError::io("rename", path))?;
    sync_parent(path)
}

/// Makes a directory entry change (a create or rename inside it) durable.
pub(crate) fn sync_parent(path: &Path) -> Result<(), StoreError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_garbled_length_is_caught_by_the_checksum() {
        let mut bytes = MAGIC.to_vec();
        bytes.extend(encode(&[b"hello".as_slice(), b"world".as_slice()]).unwrap());
        let whole = bytes.len();
        // Make the second record's length 3: it then fits in the file, but its check fails.
        bytes[MAGIC.len() + RECORD_HEADER + 5] = 3;
        let (records, valid) = parse(&bytes);
        assert_eq!(records, vec![b"hello".to_vec()]);
        assert_eq!(valid, MAGIC.len() + RECORD_HEADER + 5);
        assert!(valid < whole);
    }
}
