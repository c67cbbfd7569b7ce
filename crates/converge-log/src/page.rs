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

        #[test]
        fn split_never_panics(page in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = split(&DocId::from_bytes([0; 16]), Seq(1), &page);
        }
    }
}
