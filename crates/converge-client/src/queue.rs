//! The durable mutation queue of one document: `docs/<DocId>/mutations`, a record file.
//!
//! Records (little endian):
//!
//! ```text
//! 1 | id u64 | fence u64 (0: none) | name_len u16 | name | args     a queued mutation
//! 2 | id u64                                                        the server answered it
//! 3 | id u64                                                        the last id given out
//! ```
//!
//! A mutation is appended (fsynced) before it is sent, and a `2` record is appended once its
//! result arrives; on open, the queue is every `1` without a `2`. The last id given out is the
//! highest id in the file, so ids stay dense across restarts. When the queue empties, the
//! file is rewritten to a single `3` record, so it does not grow without bound.

use std::path::Path;

use converge_core::QueuedMutation;
use converge_proto::{FencingToken, MutationId};

use crate::error::StoreError;
use crate::record::RecordLog;

const QUEUED: u8 = 1;
const SETTLED: u8 = 2;
const LAST_ID: u8 = 3;

/// Answered records kept before the file is compacted while the queue is not empty.
const COMPACT_AFTER: usize = 4096;

#[derive(Debug)]
pub(crate) struct MutationQueue {
    log: RecordLog,
    queued: Vec<QueuedMutation>,
    last_id: u64,
    settled_records: usize,
}

impl MutationQueue {
    pub(crate) fn open(path: &Path) -> Result<MutationQueue, StoreError> {
        let (log, records) = RecordLog::open(path)?;
        let mut queued: Vec<QueuedMutation> = Vec::new();
        let mut last_id = 0u64;
        let mut settled_records = 0;
        for r in &records {
            let corrupt = || StoreError::Corrupt {
                path: path.to_path_buf(),
                reason: "a mutation record does not decode".into(),
            };
            match decode(r).ok_or_else(corrupt)? {
                Record::Queued(m) => {
                    last_id = last_id.max(m.id.get());
                    queued.push(m);
                }
                Record::Settled(id) => {
                    last_id = last_id.max(id);
                    queued.retain(|m| m.id.get() != id);
                    settled_records += 1;
                }
                Record::LastId(id) => last_id = last_id.max(id),
            }
        }
        queued.sort_by_key(|m| m.id);
        Ok(MutationQueue {
            log,
            queued,
            last_id,
            settled_records,
        })
    }

    pub(crate) fn queued(&self) -> &[QueuedMutation] {
        &self.queued
    }

    pub(crate) fn last_id(&self) -> MutationId {
        MutationId(self.last_id)
    }

    /// Stores a new mutation durably.
    pub(crate) fn push(&mut self, m: &QueuedMutation) -> Result<(), StoreError> {
        self.log.append(&[encode_queued(m)])?;
        self.last_id = self.last_id.max(m.id.get());
        self.queued.push(m.clone());
        Ok(())
    }

    /// Records that the server answered `id`.
    pub(crate) fn settle(&mut self, id: MutationId) -> Result<(), StoreError> {
        if !self.queued.iter().any(|m| m.id == id) {
            return Ok(());
        }
        if self.queued.len() == 1 {
            // The last one: the file becomes just the last id given out.
            self.log.rewrite(&[encode_id(LAST_ID, self.last_id)])?;
            self.settled_records = 0;
        } else if self.settled_records >= COMPACT_AFTER {
            let mut records = vec![encode_id(LAST_ID, self.last_id)];
            records.extend(self.queued.iter().filter(|m| m.id != id).map(encode_queued));
            self.log.rewrite(&records)?;
            self.settled_records = 0;
        } else {
            self.log.append(&[encode_id(SETTLED, id.get())])?;
            self.settled_records += 1;
        }
        self.queued.retain(|m| m.id != id);
        Ok(())
    }
}

enum Record {
    Queued(QueuedMutation),
    Settled(u64),
    LastId(u64),
}

fn encode_id(tag: u8, id: u64) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&id.to_le_bytes());
    out
}

fn encode_queued(m: &QueuedMutation) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + 8 + 8 + 2 + m.name.len() + m.args.len());
    out.push(QUEUED);
    out.extend_from_slice(&m.id.get().to_le_bytes());
    out.extend_from_slice(&m.fence.map_or(0, |f| f.get()).to_le_bytes());
    // Names are at most MAX_NAME_BYTES (checked before queuing), well under u16.
    out.extend_from_slice(&(m.name.len().min(u16::MAX as usize) as u16).to_le_bytes());
    out.extend_from_slice(m.name.as_bytes());
    out.extend_from_slice(&m.args);
    out
}

fn decode(r: &[u8]) -> Option<Record> {
    let (&tag, rest) = r.split_first()?;
    let u64_at = |b: &[u8], at: usize| -> Option<u64> {
        Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
    };
    match tag {
        QUEUED => {
            let id = u64_at(rest, 0)?;
            let fence = u64_at(rest, 8)?;
            let len = u16::from_le_bytes(rest.get(16..18)?.try_into().ok()?) as usize;
            let name = std::str::from_utf8(rest.get(18..18 + len)?)
                .ok()?
                .to_string();
            let args = rest.get(18 + len..)?.to_vec();
            Some(Record::Queued(QueuedMutation {
                id: MutationId(id),
                name,
                args,
                fence: (fence != 0).then_some(FencingToken(fence)),
            }))
        }
        SETTLED if rest.len() == 8 => Some(Record::Settled(u64_at(rest, 0)?)),
        LAST_ID if rest.len() == 8 => Some(Record::LastId(u64_at(rest, 0)?)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn m(id: u64) -> QueuedMutation {
        QueuedMutation {
            id: MutationId(id),
            name: "schedule.book".into(),
            args: vec![id as u8; 3],
            fence: id.is_multiple_of(2).then_some(FencingToken(id * 10)),
        }
    }

    #[test]
    fn the_queue_and_the_last_id_survive_reopening() {
        let dir = std::env::temp_dir().join(format!("cvg-queue-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mutations");
        let _ = std::fs::remove_file(&path);
        let mut q = MutationQueue::open(&path).unwrap();
        for id in 1..=4 {
            q.push(&m(id)).unwrap();
        }
        q.settle(MutationId(1)).unwrap();
        q.settle(MutationId(3)).unwrap();
        let q2 = MutationQueue::open(&path).unwrap();
        assert_eq!(q2.queued(), &[m(2), m(4)]);
        assert_eq!(q2.last_id(), MutationId(4));
        let mut q = q2;
        q.settle(MutationId(2)).unwrap();
        q.settle(MutationId(4)).unwrap();
        let q3 = MutationQueue::open(&path).unwrap();
        assert!(q3.queued().is_empty());
        assert_eq!(
            q3.last_id(),
            MutationId(4),
            "ids stay dense after the queue empties"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
