//! Per-session collections keyed by document, kept as plain vectors.
//!
//! A session usually touches one or a few documents, and every idle connection carries its
//! session: a `BTreeSet` allocates a 200-byte node for the first document and a `HashMap`
//! is 48 bytes before it holds anything. These are 24 bytes empty and grow by one element.
//! Both stay small: a session subscribes to at most `HubConfig::max_docs` documents.

use converge_proto::DocId;

/// The documents a session subscribes to, sorted.
#[derive(Debug, Default)]
pub(super) struct DocSet(Vec<DocId>);

impl DocSet {
    pub(super) fn contains(&self, doc: &DocId) -> bool {
        self.0.binary_search(doc).is_ok()
    }

    /// Returns false when the document was already there.
    pub(super) fn insert(&mut self, doc: DocId) -> bool {
        match self.0.binary_search(&doc) {
            Ok(_) => false,
            Err(i) => {
                // The first document gets room for itself only (not the usual four).
                if self.0.capacity() == 0 {
                    self.0.reserve_exact(1);
                }
                self.0.insert(i, doc);
                true
            }
        }
    }

    pub(super) fn remove(&mut self, doc: &DocId) -> bool {
        match self.0.binary_search(doc) {
            Ok(i) => {
                self.0.remove(i);
                if self.0.is_empty() {
                    self.0 = Vec::new();
                }
                true
            }
            Err(_) => false,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

impl IntoIterator for DocSet {
    type Item = DocId;
    type IntoIter = std::vec::IntoIter<DocId>;

    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

/// A count per document (requests in flight, reconciliation rounds); documents at no count
/// are removed by the caller. Boxed, and absent while empty: a session keeps three of these
/// and nearly always all three are empty, so each costs a pointer.
#[derive(Debug, Default)]
#[allow(clippy::box_collection)] // the point: 8 bytes while empty instead of 24
pub(super) struct DocCounts(Option<Box<Vec<(DocId, u32)>>>);

impl DocCounts {
    pub(super) fn get(&self, doc: &DocId) -> Option<&u32> {
        self.0
            .as_ref()?
            .iter()
            .find(|(d, _)| d == doc)
            .map(|(_, n)| n)
    }

    pub(super) fn get_mut(&mut self, doc: &DocId) -> Option<&mut u32> {
        self.0
            .as_mut()?
            .iter_mut()
            .find(|(d, _)| d == doc)
            .map(|(_, n)| n)
    }

    pub(super) fn contains_key(&self, doc: &DocId) -> bool {
        self.get(doc).is_some()
    }

    pub(super) fn insert(&mut self, doc: DocId, n: u32) {
        *self.entry(doc) = n;
    }

    /// The count of `doc`, added at 0 when absent.
    pub(super) fn entry(&mut self, doc: DocId) -> &mut u32 {
        let counts = self.0.get_or_insert_with(Default::default);
        let i = match counts.iter().position(|(d, _)| *d == doc) {
            Some(i) => i,
            None => {
                counts.push((doc, 0));
                counts.len() - 1
            }
        };
        &mut counts[i].1
    }

    pub(super) fn remove(&mut self, doc: &DocId) -> Option<u32> {
        let counts = self.0.as_mut()?;
        let i = counts.iter().position(|(d, _)| d == doc)?;
        let (_, n) = counts.swap_remove(i);
        if counts.is_empty() {
            self.0 = None;
        }
        Some(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc(i: u8) -> DocId {
        DocId::from_bytes([i; 16])
    }

    #[test]
    fn doc_set_is_a_set() {
        let mut s = DocSet::default();
        assert!(s.insert(doc(3)) && s.insert(doc(1)) && !s.insert(doc(3)));
        assert!(s.contains(&doc(1)) && !s.contains(&doc(2)));
        assert!(s.remove(&doc(1)) && !s.remove(&doc(1)));
        assert_eq!(s.len(), 1);
        assert_eq!(s.into_iter().collect::<Vec<_>>(), vec![doc(3)]);
    }

    #[test]
    fn doc_counts_count_per_doc() {
        let mut c = DocCounts::default();
        *c.entry(doc(1)) += 1;
        *c.entry(doc(1)) += 1;
        *c.entry(doc(2)) += 1;
        assert_eq!(c.get(&doc(1)), Some(&2));
        c.insert(doc(2), 7);
        assert_eq!(c.get(&doc(2)), Some(&7));
        if let Some(n) = c.get_mut(&doc(2)) {
            *n -= 1;
        }
        assert_eq!(c.remove(&doc(2)), Some(6));
        assert!(!c.contains_key(&doc(2)) && c.contains_key(&doc(1)));
        assert_eq!(c.remove(&doc(9)), None);
    }
}
