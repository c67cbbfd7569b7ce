//! The key layout of the store: one byte of record type, then the document id, then the rest.
//! All integers are big-endian so that key order is numeric order. See docs/log-format.md.

use converge_proto::{ClientId, DocId, MutationId, Seq};

pub(crate) const FORMAT: &[u8] = b"Fformat";
pub(crate) const FENCE: &[u8] = b"Gfence";
/// The serial of the last journal record sled applied (8 bytes; see `journal`).
pub(crate) const JOURNAL: &[u8] = b"Jjournal";
pub(crate) const META: u8 = b'D';
pub(crate) const ENTRY: u8 = b'E';
pub(crate) const HASH: u8 = b'H';
pub(crate) const ACTOR: u8 = b'A';
/// An actor's highest op counter (8 bytes), beside its `ACTOR` record; see `Index::max_ops`.
pub(crate) const OPS: u8 = b'P';
pub(crate) const MUTATION: u8 = b'M';
pub(crate) const SNAPSHOT: u8 = b'S';
pub(crate) const INDEX: u8 = b'I';
pub(crate) const LOCK: u8 = b'L';
pub(crate) const OUTCOME: u8 = b'O';
pub(crate) const ACL: u8 = b'C';
pub(crate) const USER: u8 = b'U';

pub(crate) fn doc_key(tag: u8, doc: &DocId) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + 16 + 32);
    k.push(tag);
    k.extend_from_slice(doc.as_bytes());
    k
}

pub(crate) fn with_suffix(tag: u8, doc: &DocId, suffix: &[u8]) -> Vec<u8> {
    let mut k = doc_key(tag, doc);
    k.extend_from_slice(suffix);
    k
}

pub(crate) fn entry(doc: &DocId, seq: Seq) -> Vec<u8> {
    with_suffix(ENTRY, doc, &seq.get().to_be_bytes())
}

/// A block of change hashes: 32 bytes per entry for the 16 entries from
/// `block * BLOCK + 1`, all zeros for entries that are not changes.
pub(crate) fn hash_block(doc: &DocId, block: u64) -> Vec<u8> {
    with_suffix(HASH, doc, &block.to_be_bytes())
}

pub(crate) fn snapshot(doc: &DocId, seq: Seq) -> Vec<u8> {
    with_suffix(SNAPSHOT, doc, &seq.get().to_be_bytes())
}

pub(crate) fn mutation(doc: &DocId, client: &ClientId) -> Vec<u8> {
    with_suffix(MUTATION, doc, client.as_bytes())
}

/// A key's current lock holder (absent when the key is free).
pub(crate) fn lock(doc: &DocId, key: &str) -> Vec<u8> {
    with_suffix(LOCK, doc, key.as_bytes())
}

/// A mutation's recorded outcome, by client and mutation id.
pub(crate) fn outcome(doc: &DocId, client: &ClientId, id: MutationId) -> Vec<u8> {
    let mut k = with_suffix(OUTCOME, doc, client.as_bytes());
    k.extend_from_slice(&id.get().to_be_bytes());
    k
}

/// An admin grant: a user's role in a document.
pub(crate) fn acl(doc: &DocId, user: &str) -> Vec<u8> {
    with_suffix(ACL, doc, user.as_bytes())
}

/// A user of the directory: the roles their last token carried.
pub(crate) fn user(user: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + user.len());
    k.push(USER);
    k.extend_from_slice(user.as_bytes());
    k
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return end;
        }
    }
    // An all-0xFF prefix has no successor; no key of ours is like that.
    vec![u8::MAX; prefix.len() + 1]
}

/// Reads the seq at the end of an entry or snapshot key.
pub(crate) fn seq_of(key: &[u8]) -> Option<Seq> {
    let tail: [u8; 8] = key.get(key.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(Seq(u64::from_be_bytes(tail)))
}

/// Reads the document id of any per-document key.
pub(crate) fn doc_of(key: &[u8]) -> Option<DocId> {
    DocId::from_slice(key.get(1..17)?).ok()
}
