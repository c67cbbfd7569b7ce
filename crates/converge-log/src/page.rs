//! Pages: the entries of one append, stored together under the key of the first one's seq.
//!
//! Why: sled spends ~5-7 us per key it inserts, so one key per entry made the flusher the
//! bottleneck of a fast writer. A page is written once, atomically with its batch, and never
//! changed; compaction deletes whole pages. Each entry inside keeps its own bytes and hash, so
//! corruption is still named by seq.
//!
//! Layout: for each entry, a u32 little-endian length, then the stored entry (body || hash).

use converge_proto::limits::MAX_ENTRY_BYTES;
use converge_proto::{DocId, Seq};

use crate::entry::Entry;
use crate::error::LogError;

/// A page is closed once it holds this many entries...
pub(crate) const MAX_PAGE_ENTRIES: usize = 256;
/// ...or this many bytes.
pub(crate) const MAX_PAGE_BYTES: usize = 256 * 1024;

/// Builds pages from stored entries.
#[derive(Debug, Default)]
pub(crate) struct PageWriter {
    pages: Vec<(Seq, Vec<u8>)>,
    count: usize,
}

impl PageWriter {
    /// Adds the stored bytes of the entry at `seq` (seqs must be consecutive).
    pub(crate) fn push(&mut self, seq: Seq, stored: &[u8]) {
        let full = self
            .pages
            .last()
            .is_none_or(|(_, p)| self.count >= MAX_PAGE_ENTRIES || p.len() >= MAX_PAGE_BYTES);
        if full {
            self.pages.push((seq, Vec::with_capacity(stored.len() + 4)));
            self.count = 0;
        }
        if let Some((_, page)) = self.pages.last_mut() {
            // Entries are bounded by MAX_ENTRY_BYTES, far below u32::MAX.
            page.extend_from_slice(&(stored.len() as u32).to_le_bytes());
            page.extend_from_slice(stored);
            self.count += 1;
        }
    }

    /// The pages, each with the seq of its first entry.
    pub(crate) fn finish(self) -> Vec<(Seq, Vec<u8>)> {
        self.pages
    }
}

/// Writes one drain's staged `(key, value)` pairs (in key order) into `batch`, joining pages of
/// one document whose entries follow each other into one page, within the page limits.
///
/// Why: sled's cost is per key, and a document written one append at a time (an editor's
/// keystrokes, a buffered writer) stages one page per append. Joining them as they reach sled
/// is safe because a drain is one atomic batch, pages are never rewritten in place, and
/// readers find the page holding a seq by the nearest key at or below it, whatever the page
/// boundaries. Only pages of one drain are joined, so appends that were made durable one at a
/// time keep a page each. Pages whose framing does not parse are left alone.
pub(crate) fn coalesce<'a>(
    pairs: impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)>,
    batch: &mut crate::kv::WriteBatch,
) {
    /// The page being built: its key, bytes, entry count and the seq after its last entry.
    struct Open {
        key: Vec<u8>,
        page: Vec<u8>,
        count: usize,
        next: u64,
    }
    let mut open: Option<Open> = None;
    for (key, value) in pairs {
        let page_start = match value {
            Some(v) if key.len() == 25 && key[0] == crate::keys::ENTRY => {
                crate::keys::seq_of(key).zip(count_entries(v))
            }
            _ => None,
        };
        let Some((seq, count)) = page_start else {
            if let Some(o) = open.take() {
                batch.put(o.key, o.page);
            }
            match value {
                Some(v) => batch.put(key.clone(), v.clone()),
                None => batch.delete(key.clone()),
            }
            continue;
        };
        let Some(value) = value else { continue };
        if let Some(o) = open.as_mut()
            && o.key[..17] == key[..17]
            && o.next == seq.get()
            && o.count + count <= MAX_PAGE_ENTRIES
            && o.page.len() + value.len() <= MAX_PAGE_BYTES
        {
            o.page.extend_from_slice(value);
            o.count += count;
            o.next += count as u64;
            continue;
        }
        if let Some(o) = open.take() {
            batch.put(o.key, o.page);
        }
        open = Some(Open {
            key: key.clone(),
            page: value.clone(),
            count,
            next: seq.get() + count as u64,
        });
    }
    if let Some(o) = open {
        batch.put(o.key, o.page);
    }
}

/// How many entries a well-framed page holds (None when its framing is broken or it is empty).
fn count_entries(mut page: &[u8]) -> Option<usize> {
    let mut n = 0;
    while !page.is_empty() {
        let (len, rest) = page.split_first_chunk::<4>()?;
        let len = u32::from_le_bytes(*len) as usize;
        page = rest.get(len..)?;
        n += 1;
    }
    (n > 0).then_some(n)
}

/// Splits a page that starts at `first` into its entries' stored bytes. When the framing
/// breaks, the error names the earliest damaged seq: an entry framed before the break that
/// does not open is reported rather than the break itself.
pub(crate) fn split<'p>(
    doc: &DocId,
    first: Seq,
    page: &'p [u8],
) -> Result<Vec<(Seq, &'p [u8])>, LogError> {
    let (entries, broken) = frame(doc, first, page);
    match broken {
        None => Ok(entries),
        Some(e) => {
            for (seq, bytes) in &entries {
                Entry::open(doc, *seq, bytes)?;
            }
            Err(e)
        }
    }
}

/// The entries framed before any break, and the break.
fn frame<'p>(
    doc: &DocId,
    first: Seq,
    mut page: &'p [u8],
) -> (Vec<(Seq, &'p [u8])>, Option<LogError>) {
    let mut out = Vec::new();
    let mut seq = first;
    while !page.is_empty() {
        let corrupt = |reason: &str| LogError::Corrupt {
            doc: *doc,
            seq,
            reason: reason.to_string(),
        };
        let Some((len, rest)) = page.split_first_chunk::<4>() else {
            return (out, Some(corrupt("page ends inside a length")));
        };
        let len = u32::from_le_bytes(*len) as usize;
        if len > MAX_ENTRY_BYTES + 32 || len > rest.len() {
            return (out, Some(corrupt("page ends inside an entry")));
        }
        let (entry, rest) = rest.split_at(len);
        out.push((seq, entry));
        page = rest;
        seq = seq.next();
    }
    if out.is_empty() {
        let empty = LogError::Corrupt {
            doc: *doc,
            seq: first,
            reason: "empty page".into(),
        };
        return (out, Some(empty));
    }
    (out, None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn consecutive_single_entry_pages_become_one() {
        let doc = DocId::from_bytes([1; 16]);
        let table: std::collections::BTreeMap<Vec<u8>, Option<Vec<u8>>> = (1..=10u64)
            .map(|seq| {
                let mut w = PageWriter::default();
                w.push(Seq(seq), &[seq as u8; 20]);
                let (_, page) = w.finish().remove(0);
                (crate::keys::entry(&doc, Seq(seq)), Some(page))
            })
            .collect();
        let mut batch = crate::kv::WriteBatch::default();
        coalesce(table.iter(), &mut batch);
        let ops = batch.into_ops();
        assert_eq!(ops.len(), 1);
        assert_eq!(ops[0].0, crate::keys::entry(&doc, Seq(1)));
        let page = ops[0].1.as_ref().unwrap();
        assert_eq!(split(&doc, Seq(1), page).unwrap().len(), 10);
    }

    proptest! {
        #[test]
        fn pages_round_trip(entries in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..2000), 1..600)) {
            let mut w = PageWriter::default();
            for (i, e) in entries.iter().enumerate() {
                w.push(Seq(10 + i as u64), e);
            }
            let doc = DocId::from_bytes([0; 16]);
            let mut back = Vec::new();
            let mut expected_first = Seq(10);
            for (first, page) in w.finish() {
                prop_assert_eq!(first, expected_first);
                let split = split(&doc, first, &page).unwrap();
                prop_assert!(split.len() <= MAX_PAGE_ENTRIES);
                expected_first = Seq(first.get() + split.len() as u64);
                back.extend(split.into_iter().map(|(_, b)| b.to_vec()));
            }
            prop_assert_eq!(back, entries);
        }

        /// Joining staged pages keeps every entry at its seq, joins only pages that follow
        /// each other in one document, and leaves other keys (and deletes) as they were.
        #[test]
        fn coalesced_pages_hold_the_same_entries(
            appends in proptest::collection::vec((0u8..3, 1usize..4, 1usize..300, any::<bool>()), 1..80),
        ) {
            use std::collections::BTreeMap;
            let mut next = [1u64; 3];
            let mut table: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
            let mut want: BTreeMap<(u8, u64), Vec<u8>> = BTreeMap::new();
            for (d, n, size, gap) in appends {
                let doc = DocId::from_bytes([d; 16]);
                // A gap stands for pages already drained: the run must not join across it.
                if gap {
                    next[d as usize] += 1;
                }
                let first = next[d as usize];
                let mut w = PageWriter::default();
                for i in 0..n {
                    let bytes = vec![d ^ i as u8; size + i];
                    want.insert((d, first + i as u64), bytes.clone());
                    w.push(Seq(first + i as u64), &bytes);
                }
                for (seq, page) in w.finish() {
                    table.insert(crate::keys::entry(&doc, seq), Some(page));
                }
                next[d as usize] = first + n as u64;
            }
            table.insert(b"Dother".to_vec(), Some(b"x".to_vec()));
            table.insert(b"Hgone".to_vec(), None);
            let mut batch = crate::kv::WriteBatch::default();
            coalesce(table.iter(), &mut batch);
            let mut got: BTreeMap<(u8, u64), Vec<u8>> = BTreeMap::new();
            let mut others = 0;
            for (key, value) in batch.into_ops() {
                if key.len() != 25 || key[0] != crate::keys::ENTRY {
                    others += 1;
                    prop_assert_eq!(value.is_some(), key == b"Dother");
                    continue;
                }
                let doc = crate::keys::doc_of(&key).unwrap();
                let first = crate::keys::seq_of(&key).unwrap();
                let page = value.unwrap();
                let entries = split(&doc, first, &page).unwrap();
                prop_assert!(entries.len() <= MAX_PAGE_ENTRIES);
                for (seq, bytes) in entries {
                    let d = doc.as_bytes()[0];
                    prop_assert!(got.insert((d, seq.get()), bytes.to_vec()).is_none());
                }
            }
            prop_assert_eq!(others, 2);
            prop_assert_eq!(got, want);
        }

        #[test]
        fn split_never_panics(page in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = split(&DocId::from_bytes([0; 16]), Seq(1), &page);
        }
    }
}
