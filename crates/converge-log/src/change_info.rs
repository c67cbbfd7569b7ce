//! A change decoded far enough to index and check it, without a document.
//!
//! automerge 0.12 trusts the changes it applies: `Change::from_bytes` does not check the
//! chunk's checksum, and applying a change whose op ids collide with ops already in the
//! document breaks the document's op order (a debug assertion, and undefined ordering in a
//! release build). The log is what every replica applies, so it refuses such changes here.

use converge_proto::ChangeHash;

use crate::error::LogError;

/// What the log indexes about one change.
pub(crate) struct ChangeInfo {
    pub(crate) hash: ChangeHash,
    pub(crate) actor: Vec<u8>,
    pub(crate) seq: u64,
    pub(crate) deps: Vec<ChangeHash>,
    /// Actors the change references besides its own.
    pub(crate) others: Vec<Vec<u8>>,
    /// The counter of the change's first op (its ops are `start_op..=max_op`).
    pub(crate) start_op: u64,
    /// The counter of the change's last op (`start_op - 1` for a change without ops).
    pub(crate) max_op: u64,
}

impl ChangeInfo {
    /// Indexes a change the caller made or already checked.
    pub(crate) fn of(change: &automerge::Change) -> Self {
        ChangeInfo {
            hash: ChangeHash(change.hash().0),
            actor: change.actor_id().to_bytes().to_vec(),
            seq: change.seq(),
            deps: change.deps().iter().map(|d| ChangeHash(d.0)).collect(),
            others: change
                .other_actor_ids()
                .iter()
                .map(|a| a.to_bytes().to_vec())
                .collect(),
            start_op: change.start_op().get(),
            max_op: change.max_op(),
        }
    }
}

/// Decodes and checks a change that came from outside (a peer, a file): its checksum and the
/// op ids it claims must be what an automerge writer produces. Checks that need the document's
/// history (seq, dependencies, actors, op ids already used) are made when it is appended.
pub(crate) fn inspect_change(bytes: &[u8]) -> Result<ChangeInfo, LogError> {
    let change = decode(bytes)?;
    check_sealed(bytes, &change)?;
    check_op_ids(&change)?;
    Ok(ChangeInfo::of(&change))
}

/// Decodes a change the log already holds, for its index: it was checked when appended.
pub(crate) fn decode_logged(bytes: &[u8]) -> Result<ChangeInfo, LogError> {
    Ok(ChangeInfo::of(&decode(bytes)?))
}

fn decode(bytes: &[u8]) -> Result<automerge::Change, LogError> {
    automerge::Change::from_bytes(bytes.to_vec())
        .map_err(|e| LogError::MalformedChange(e.to_string()))
}

/// A chunk's header holds the first four bytes of its hash (magic, checksum, type, length,
/// body); automerge checks it only when loading a document, so a change with flipped bits
/// decodes as a different, unsealed change. A compressed chunk carries the checksum of the
/// change it compresses, so the same comparison holds for both.
fn check_sealed(bytes: &[u8], change: &automerge::Change) -> Result<(), LogError> {
    let stored = bytes.get(4..8);
    if stored != Some(&change.hash().0[..4]) {
        return Err(LogError::MalformedChange(format!(
            "change {}: the checksum in its header does not match its contents",
            ChangeHash(change.hash().0)
        )));
    }
    Ok(())
}

/// Op ids are Lamport timestamps: every op's counter exceeds the counters of the object it
/// writes to, the element it follows or writes and the ops it overwrites. A change that breaks
/// this was not made by automerge and would corrupt the op order of every replica.
fn check_op_ids(change: &automerge::Change) -> Result<(), LogError> {
    use automerge::legacy::{ElementId, Key, ObjectId};
    let hash = ChangeHash(change.hash().0);
    let expanded = change.decode();
    for (i, op) in expanded.operations.iter().enumerate() {
        let id = change.start_op().get().saturating_add(i as u64);
        let obj = match &op.obj {
            ObjectId::Root => None,
            ObjectId::Id(o) => Some(o.0),
        };
        let elem = match &op.key {
            Key::Seq(ElementId::Id(e)) => Some(e.0),
            Key::Seq(ElementId::Head) | Key::Map(_) => None,
        };
        let later = obj
            .into_iter()
            .chain(elem)
            .chain(op.pred.iter().map(|p| p.0))
            .find(|c| *c >= id);
        if let Some(c) = later {
            return Err(LogError::MalformedChange(format!(
                "change {hash}: op {id} refers to op {c}, which is not earlier"
            )));
        }
        // Only sequences take inserts, and the root is a map.
        if op.insert && !matches!(op.key, Key::Seq(_)) || obj.is_none() && !op.key.is_map_key() {
            return Err(LogError::MalformedChange(format!(
                "change {hash}: op {id} uses a key of the wrong kind for its object"
            )));
        }
    }
    Ok(())
}
