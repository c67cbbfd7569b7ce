//! Applying received changes to a replica, safely.

use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::{AutoCommit, Change};

/// Why a batch was not applied. The document is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// A change does not decode.
    #[error("change {index} of the batch does not decode: {message}")]
    Malformed { index: usize, message: String },
    /// automerge refused the batch.
    #[error("automerge refused the batch: {0}")]
    Refused(String),
    /// automerge panicked on the batch (see DEPENDENCIES.md: unknown actors); the batch is
    /// quarantined by the caller and the document restored.
    #[error("automerge panicked applying the batch: {0}")]
    Panicked(String),
}

/// Applies every change in one automerge call (the per-call cost grows with the document, so
/// one call per batch), under `catch_unwind`. On any failure the document is rolled back to
/// its state before the call, so a poison change cannot leave a half-applied replica.
pub fn apply_changes(doc: &mut AutoCommit, changes: &[Vec<u8>]) -> Result<(), ApplyError> {
    let mut decoded = Vec::with_capacity(changes.len());
    for (index, bytes) in changes.iter().enumerate() {
        if bytes.is_empty() {
            continue; // an entry that carries no change
        }
        decoded.push(
            Change::from_bytes(bytes.clone()).map_err(|e| ApplyError::Malformed {
                index,
                message: e.to_string(),
            })?,
        );
    }
    if decoded.is_empty() {
        return Ok(());
    }
    let before = doc.clone();
    let result = catch_unwind(AssertUnwindSafe(|| doc.apply_changes(decoded)));
    match result {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => {
            *doc = before;
            Err(ApplyError::Refused(e.to_string()))
        }
        Err(panic) => {
            *doc = before;
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(ApplyError::Panicked(message))
        }
    }
}

/// Applies a received batch to a replica: the snapshot first, if any, then the changes, all
/// or nothing.
///
/// A snapshot replaces the replica's history with the server's, then merges the replica's own
/// state back in: changes it holds that the server lacks (unacknowledged local edits, or with
/// `reconcile` changes the server lost) are kept, never dropped. The replica keeps its actor.
pub fn apply_incoming(
    doc: &mut AutoCommit,
    batch: &crate::session::IncomingBatch,
) -> Result<(), ApplyError> {
    let mut next = match &batch.snapshot {
        Some(bytes) => {
            let actor = doc.get_actor().clone();
            let loaded = catch_unwind(AssertUnwindSafe(|| AutoCommit::load(bytes)))
                .map_err(|_| ApplyError::Panicked("loading the snapshot".into()))?
                .map_err(|e| ApplyError::Refused(format!("snapshot: {e}")))?;
            let mut fresh = loaded.with_actor(actor);
            let mut mine = doc.clone();
            catch_unwind(AssertUnwindSafe(|| fresh.merge(&mut mine)))
                .map_err(|_| ApplyError::Panicked("merging local state into the snapshot".into()))?
                .map_err(|e| ApplyError::Refused(format!("merge: {e}")))?;
            fresh
        }
        None => doc.clone(),
    };
    apply_changes(&mut next, &batch.changes)?;
    *doc = next;
    Ok(())
}

/// The changes made to `doc` since `before` (its heads before a local edit), as raw bytes in
/// causal order: what a local edit adds to the pending queue.
pub fn changes_since(doc: &mut AutoCommit, before: &[automerge::ChangeHash]) -> Vec<Vec<u8>> {
    doc.get_changes(before)
        .into_iter()
        .map(|c| c.raw_bytes().to_vec())
        .collect()
}
