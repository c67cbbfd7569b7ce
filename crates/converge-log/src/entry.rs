//! Log entries: what one document's stream holds, and the blake3 chain that links them.

use std::fmt;

use serde::{Deserialize, Serialize};

use converge_proto::limits::{
    MAX_ARGS_BYTES, MAX_CHANGE_BYTES, MAX_ENTRY_BYTES, MAX_MESSAGE_BYTES, MAX_NAME_BYTES,
};
use converge_proto::{ClientId, DocId, Epoch, FencingToken, MutationId, Seq, SessionId, UserId};

use crate::codec;
use crate::error::LogError;

/// A blake3 hash linking an entry to the one before it. The first entry's `prev` is all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    /// The `prev` of a stream's first entry.
    pub const GENESIS: EntryHash = EntryHash([0; 32]);

    /// Lowercase hexadecimal.
    pub fn to_hex(&self) -> String {
        blake3::Hash::from_bytes(self.0).to_hex().to_string()
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({})", &self.to_hex()[..16])
    }
}

/// Who wrote an entry: the user (JWT `sub`) and, when it came over a connection, its session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Author {
    pub user: UserId,
    pub session: Option<SessionId>,
}

impl Author {
    /// An author with no session (the server itself, a CLI import, a backend call).
    pub fn user(user: UserId) -> Self {
        Self {
            user,
            session: None,
        }
    }
}

/// The outcome recorded for a server-authoritative mutation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutationOutcome {
    /// The mutator ran; its change is in the same batch.
    Applied,
    /// The mutator refused; the id still counts, so the client is never blocked.
    Rejected { code: u16, message: String },
}

/// A mutation and its outcome, as the server decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutationRecord {
    pub client: ClientId,
    pub mutation_id: MutationId,
    pub name: String,
    pub args: Vec<u8>,
    pub outcome: MutationOutcome,
}

/// What happened to a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockEvent {
    Granted,
    Renewed,
    Released,
    Expired,
}

/// A lock event. For `Granted`, the log issues the fencing token at append time (the token given
/// is ignored and the issued one is returned), so tokens come from one durable counter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRecord {
    pub key: String,
    pub event: LockEvent,
    pub holder: Author,
    pub token: FencingToken,
    pub expires_at_ms: u64,
}

/// The kinds of entry a document stream holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum EntryKind {
    /// One automerge change, raw bytes as automerge encodes them.
    Change(Vec<u8>),
    /// A server-authoritative mutation outcome.
    Mutation(MutationRecord),
    /// A lock event.
    Lock(LockRecord),
    /// The document was deleted.
    Tombstone,
    /// One automerge change relayed by a peer that is not its author: during reconciliation a
    /// client hands back changes the server lost. It passes every causal check a pushed change
    /// does, but it does not bind its actor to the relaying user (see [`crate::ActorRecord`]).
    /// Last, so entries written before it existed keep their encoding.
    Relayed(Vec<u8>),
}

impl EntryKind {
    /// A short name for listings.
    pub fn name(&self) -> &'static str {
        match self {
            EntryKind::Change(_) => "change",
            EntryKind::Mutation(_) => "mutation",
            EntryKind::Lock(_) => "lock",
            EntryKind::Tombstone => "tombstone",
            EntryKind::Relayed(_) => "relayed change",
        }
    }

    /// The automerge change this entry carries, pushed or relayed.
    pub fn change_bytes(&self) -> Option<&[u8]> {
        match self {
            EntryKind::Change(bytes) | EntryKind::Relayed(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Takes the automerge change out of the entry, pushed or relayed.
    pub fn into_change_bytes(self) -> Option<Vec<u8>> {
        match self {
            EntryKind::Change(bytes) | EntryKind::Relayed(bytes) => Some(bytes),
            _ => None,
        }
    }

    /// Checks every size a peer controls.
    pub(crate) fn check_limits(&self) -> Result<(), LogError> {
        fn limit(what: &'static str, size: usize, limit: usize) -> Result<(), LogError> {
            if size > limit {
                return Err(LogError::TooLarge { what, size, limit });
            }
            Ok(())
        }
        match self {
            EntryKind::Change(bytes) | EntryKind::Relayed(bytes) => {
                limit("change", bytes.len(), MAX_CHANGE_BYTES)
            }
            EntryKind::Mutation(m) => {
                limit("mutation name", m.name.len(), MAX_NAME_BYTES)?;
                limit("mutation args", m.args.len(), MAX_ARGS_BYTES)?;
                if let MutationOutcome::Rejected { message, .. } = &m.outcome {
                    limit("rejection message", message.len(), MAX_MESSAGE_BYTES)?;
                }
                Ok(())
            }
            EntryKind::Lock(l) => limit("lock key", l.key.len(), MAX_NAME_BYTES),
            EntryKind::Tombstone => Ok(()),
        }
    }
}

/// An entry to append: the log assigns seq, epoch, prev and hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewEntry {
    /// Server time in milliseconds since the Unix epoch (passed in, never read from a clock here).
    pub at_ms: u64,
    pub author: Author,
    pub kind: EntryKind,
}

/// A stored entry of one document's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: Seq,
    pub epoch: Epoch,
    pub at_ms: u64,
    pub author: Author,
    pub kind: EntryKind,
    pub prev: EntryHash,
    pub hash: EntryHash,
}

/// The hashed part of an entry, in the order it is encoded.
#[derive(Serialize, Deserialize)]
struct Body<A, K> {
    seq: Seq,
    epoch: Epoch,
    at_ms: u64,
    author: A,
    kind: K,
    prev: EntryHash,
}

impl Entry {
    /// Builds the entry that follows `prev` and encodes it for storage: the encoded body followed
    /// by its 32-byte hash, where `hash = blake3(prev || body)`.
    pub(crate) fn seal(
        seq: Seq,
        epoch: Epoch,
        prev: EntryHash,
        new: &NewEntry,
    ) -> Result<(Vec<u8>, EntryHash), LogError> {
        let body = Body {
            seq,
            epoch,
            at_ms: new.at_ms,
            author: &new.author,
            kind: &new.kind,
            prev,
        };
        let mut bytes = codec::encode(&body).map_err(LogError::Invalid)?;
        if bytes.len() > MAX_ENTRY_BYTES {
            return Err(LogError::TooLarge {
                what: "entry",
                size: bytes.len(),
                limit: MAX_ENTRY_BYTES,
            });
        }
        let hash = chain_hash(&prev, &bytes);
        bytes.extend_from_slice(&hash.0);
        Ok((bytes, hash))
    }

    /// Decodes stored bytes and checks that the stored hash is the hash of the body.
    /// The caller checks that `prev` links to the entry before.
    pub(crate) fn open(doc: &DocId, seq: Seq, stored: &[u8]) -> Result<Entry, LogError> {
        let corrupt = |reason: String| LogError::Corrupt {
            doc: *doc,
            seq,
            reason,
        };
        if stored.len() > MAX_ENTRY_BYTES + 32 {
            return Err(corrupt(format!(
                "{} bytes is over the entry limit",
                stored.len()
            )));
        }
        let Some(split) = stored.len().checked_sub(32) else {
            return Err(corrupt("shorter than a hash".into()));
        };
        let (body_bytes, hash_bytes) = stored.split_at(split);
        let mut stored_hash = [0u8; 32];
        stored_hash.copy_from_slice(hash_bytes);
        let body: Body<Author, EntryKind> =
            codec::decode(body_bytes).map_err(|e| corrupt(format!("does not decode: {e}")))?;
        if body.seq != seq {
            return Err(corrupt(format!(
                "stored under seq {seq} but says {}",
                body.seq
            )));
        }
        let hash = chain_hash(&body.prev, body_bytes);
        if hash.0 != stored_hash {
            return Err(corrupt("hash does not match its bytes".into()));
        }
        Ok(Entry {
            seq: body.seq,
            epoch: body.epoch,
            at_ms: body.at_ms,
            author: body.author,
            kind: body.kind,
            prev: body.prev,
            hash,
        })
    }
}

fn chain_hash(prev: &EntryHash, body: &[u8]) -> EntryHash {
    let mut h = blake3::Hasher::new();
    h.update(&prev.0);
    h.update(body);
    EntryHash(*h.finalize().as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn new_entry(bytes: Vec<u8>) -> NewEntry {
        NewEntry {
            at_ms: 7,
            author: Author::user(UserId::new("u").unwrap()),
            kind: EntryKind::Change(bytes),
        }
    }

    proptest! {
        #[test]
        fn seal_then_open_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..512), seq in 1u64..1_000_000) {
            let doc = DocId::from_bytes([1; 16]);
            let new = new_entry(bytes);
            let (stored, hash) = Entry::seal(Seq(seq), Epoch(1), EntryHash::GENESIS, &new).unwrap();
            let e = Entry::open(&doc, Seq(seq), &stored).unwrap();
            prop_assert_eq!(e.hash, hash);
            prop_assert_eq!(e.kind, new.kind);
        }

        #[test]
        fn any_flipped_bit_is_detected(bytes in proptest::collection::vec(any::<u8>(), 1..256), pos in any::<prop::sample::Index>(), bit in 0u8..8) {
            let doc = DocId::from_bytes([1; 16]);
            let (mut stored, _) = Entry::seal(Seq(3), Epoch(1), EntryHash::GENESIS, &new_entry(bytes)).unwrap();
            let i = pos.index(stored.len());
            stored[i] ^= 1 << bit;
            let err = Entry::open(&doc, Seq(3), &stored).unwrap_err();
            let is_corrupt = matches!(err, LogError::Corrupt { seq: Seq(3), .. });
            prop_assert!(is_corrupt);
        }

        #[test]
        fn open_never_panics_on_garbage(stored in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Entry::open(&DocId::from_bytes([0; 16]), Seq(1), &stored);
        }
    }
}
