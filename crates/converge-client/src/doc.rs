//! Documents: the handle an app holds, and the shell's two writers besides it (the applier of
//! received batches and the settling of acknowledged changes).

use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::sync::{Arc, Mutex};

use automerge::{AutoCommit, ChangeHash};
use converge_core::IncomingBatch;
use converge_proto::{DocId, ErrorCode, Position};
use futures_util::Stream;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;

use crate::client::Shared;
use crate::error::{ClientError, StoreError};
use crate::lock;
use crate::ops::{self, DocOps, LockInfo, PeerPresence};
use crate::store::StoredDoc;
use std::collections::BTreeMap;

/// Events a document's subscribers hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DocEvent {
    /// A local change was stored and queued for the server.
    Local { heads: Vec<ChangeHash> },
    /// Changes from the server were applied.
    RemoteChanges { heads: Vec<ChangeHash> },
    /// The server made `count` local changes durable.
    Acked { count: usize },
    /// The server refused `count` local changes for good (e.g. no write permission). They
    /// stay in the local document but are no longer pushed.
    Refused {
        code: ErrorCode,
        message: String,
        count: usize,
    },
    /// A mutation was queued or decided (see [`DocHandle::operations`] for the details);
    /// the view may have changed.
    Mutation { id: converge_proto::MutationId },
    /// Received changes could not be applied: the document is unchanged and its stored
    /// position no longer advances in this process, so a restart asks for them again.
    ApplyFailed { message: String },
    /// This subscriber fell behind and missed `missed` events; read the document afresh.
    Lagged { missed: u64 },
}

/// Events buffered per subscriber before it counts as lagging.
const EVENT_BUFFER: usize = 256;

/// One open document, shared by its handles and the connection task.
#[derive(Debug)]
pub(crate) struct DocShared {
    pub(crate) id: DocId,
    /// The replica. Held while a closure runs or a batch applies; never across an await.
    pub(crate) am: Mutex<AutoCommit>,
    /// The document's files and what the shell remembers about writing them.
    disk: Mutex<DocDisk>,
    events: broadcast::Sender<DocEvent>,
    /// Bumped after anything a waiter may be waiting for (heads, pending count).
    changed: watch::Sender<u64>,
    /// Mutations, the speculative view, lock requests, this client's presence.
    pub(crate) ops: DocOps,
    /// The lock table as this client last heard it.
    pub(crate) locks: watch::Sender<BTreeMap<String, LockInfo>>,
    /// Everyone else's presence, by session.
    pub(crate) presence: watch::Sender<BTreeMap<converge_proto::SessionId, PeerPresence>>,
}

#[derive(Debug)]
pub(crate) struct DocDisk {
    pub(crate) stored: StoredDoc,
    /// Local changes made while the store failed: stored (then pushed) by the next change
    /// that succeeds, so nothing reaches the server that is not durable here first.
    unsaved: Vec<Vec<u8>>,
    /// A position from an Ack that arrived while a batch before it was being applied: it
    /// is persisted after that batch, never before it.
    deferred: Option<Position>,
    /// Received changes failed to apply or to be stored: from then on positions are not
    /// persisted, so the next start asks the server for them again.
    position_frozen: bool,
}

impl DocShared {
    pub(crate) fn new(
        id: DocId,
        doc: AutoCommit,
        stored: StoredDoc,
        queued: Vec<converge_core::QueuedMutation>,
    ) -> Self {
        DocShared {
            ops: DocOps::new(queued),
            locks: watch::Sender::new(BTreeMap::new()),
            presence: watch::Sender::new(BTreeMap::new()),
            id,
            am: Mutex::new(doc),
            disk: Mutex::new(DocDisk {
                stored,
                unsaved: Vec::new(),
                deferred: None,
                position_frozen: false,
            }),
            events: broadcast::Sender::new(EVENT_BUFFER),
            changed: watch::Sender::new(0),
        }
    }

    /// The document's files (lock order: after `am`, before the session).
    pub(crate) fn disk(&self) -> std::sync::MutexGuard<'_, DocDisk> {
        lock(&self.disk)
    }

    pub(crate) fn emit(&self, event: DocEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
        self.changed.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Applies received batches for one document until the session has none left (run on a
/// blocking thread). Whatever arrives while one batch applies is taken as the next batch.
pub(crate) fn drain_incoming(shared: &Shared, doc: &DocShared) {
    while let Some(batch) = next_batch(shared, doc) {
        if batch.reconcile {
            // docs/protocol.md section 7: local state is merged into the snapshot, then the
            // session hands back what the server lacks through automerge's sync protocol.
            tracing::warn!(doc = %doc.id, "the server's stream was reset; merging the local document into its snapshot and reconciling");
        }
        let mut am = lock(&doc.am);
        if let Err(e) = converge_core::apply_incoming(&mut am, &batch) {
            drop(am);
            tracing::error!(doc = %doc.id, error = %e, "received changes do not apply; quarantined, the stored position stays where it was");
            lock(&doc.disk).position_frozen = true;
            doc.emit(DocEvent::ApplyFailed {
                message: e.to_string(),
            });
            continue;
        }
        let heads = am.get_heads();
        ops::after_batch(shared, doc, &mut am, batch.position);
        if batch.reconcile {
            lock(&shared.session)
                .session
                .begin_reconcile(doc.id, am.document());
            shared.wake.notify_one();
        }
        let stored = {
            let mut disk = lock(&doc.disk);
            let r = store_batch(&mut disk, &mut am, &batch);
            if r.is_err() {
                disk.position_frozen = true;
            }
            r
        };
        drop(am);
        if let Err(e) = stored {
            tracing::error!(doc = %doc.id, error = %e, "received changes applied but not stored; the server sends them again after a restart");
        }
        doc.emit(DocEvent::RemoteChanges { heads });
    }
}

/// The next batch, or `None` after leaving the applying set. Both under the document's disk
/// lock, which [`settle`] holds while it decides whether to defer a position.
fn next_batch(shared: &Shared, doc: &DocShared) -> Option<IncomingBatch> {
    let mut disk = lock(&doc.disk);
    let mut state = lock(&shared.session);
    if let Some(batch) = state.session.take_incoming(&doc.id) {
        return Some(batch);
    }
    state.applying.remove(&doc.id);
    drop(state);
    if let Some(p) = disk.deferred.take()
        && !disk.position_frozen
        && let Err(e) = disk.stored.write_position(p)
    {
        tracing::error!(doc = %doc.id, error = %e, "could not store the position");
    }
    None
}

/// Stores what a batch brought, then its position (never before: a crash in between only
/// makes the client ask again).
fn store_batch(
    disk: &mut DocDisk,
    am: &mut AutoCommit,
    batch: &IncomingBatch,
) -> Result<(), StoreError> {
    if batch.snapshot.is_some() {
        disk.stored.write_snapshot(am)?;
    } else {
        disk.stored.append_changes(&batch.changes)?;
    }
    // While a reconciliation is open the stored position stays the old one, so a restart
    // reconciles again instead of forgetting what the server still lacks.
    if !disk.position_frozen && batch.persist_position {
        let mut position = batch.position;
        // An Ack's position deferred during this apply covers this batch and the client's
        // own entries after it.
        if let Some(d) = disk.deferred.take()
            && d.epoch == position.epoch
            && d.seq > position.seq
        {
            position = d;
        }
        disk.stored.write_position(position)?;
    }
    if disk.stored.wants_compaction() {
        disk.stored.write_snapshot(am)?;
    }
    Ok(())
}

/// Takes acknowledged or refused changes off the stored queue and persists an Ack's
/// position (deferred while a batch before it is being applied). Runs on a blocking thread.
pub(crate) fn settle(
    shared: &Shared,
    doc: &DocShared,
    hashes: &[converge_proto::ChangeHash],
    position: Option<Position>,
    refusal: Option<(ErrorCode, String)>,
) {
    let mut disk = lock(&doc.disk);
    let count = match disk.stored.settle(hashes) {
        Ok(n) => n,
        Err(e) => {
            tracing::error!(doc = %doc.id, error = %e, "could not take settled changes off the stored queue; they are pushed again after a restart (the server ignores duplicates)");
            hashes.len()
        }
    };
    if let Some(p) = position {
        write_position(shared, doc, &mut disk, p);
    }
    drop(disk);
    doc.emit(match refusal {
        None => DocEvent::Acked { count },
        Some((code, message)) => DocEvent::Refused {
            code,
            message,
            count,
        },
    });
}

/// Persists a position the session released (an Ack's, or the end of a reconciliation), or
/// defers it to the batch being applied. Runs on a blocking thread.
pub(crate) fn store_position(shared: &Shared, doc: &DocShared, position: Position) {
    let mut disk = lock(&doc.disk);
    write_position(shared, doc, &mut disk, position);
}

fn write_position(shared: &Shared, doc: &DocShared, disk: &mut DocDisk, p: Position) {
    if disk.position_frozen {
        return;
    }
    if lock(&shared.session).applying.contains(&doc.id) {
        disk.deferred = Some(p);
    } else if let Err(e) = disk.stored.write_position(p) {
        tracing::error!(doc = %doc.id, error = %e, "could not store the position");
    }
}

/// A handle to an open document. Cheap to clone; every clone is the same document.
#[derive(Debug, Clone)]
pub struct DocHandle {
    shared: Arc<Shared>,
    doc: Arc<DocShared>,
}

impl DocHandle {
    pub(crate) fn new(shared: Arc<Shared>, doc: Arc<DocShared>) -> Self {
        DocHandle { shared, doc }
    }

    pub fn id(&self) -> DocId {
        self.doc.id
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub(crate) fn shared_arc(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    pub(crate) fn shared_doc(&self) -> &DocShared {
        &self.doc
    }

    pub(crate) fn shared_doc_arc(&self) -> Arc<DocShared> {
        self.doc.clone()
    }

    /// Reads the document as the app should show it (use automerge's `ReadDoc`, or
    /// converge-schema's `read`): the replica plus every mutation the server has not decided
    /// yet (the optimistic view; see [`DocHandle::mutate`]).
    pub fn read<R>(&self, f: impl FnOnce(&AutoCommit) -> R) -> R {
        let am = lock(&self.doc.am);
        let spec = lock(&self.doc.ops.spec);
        match &spec.view {
            Some(view) => f(view),
            None => f(&am),
        }
    }

    /// Reads the replica without the undecided mutations: what the server confirmed plus
    /// this client's own CRDT edits.
    pub fn read_confirmed<R>(&self, f: impl FnOnce(&AutoCommit) -> R) -> R {
        f(&lock(&self.doc.am))
    }

    /// Changes the document. Before this returns, the new changes are durable in the store
    /// (one fsync), so they survive a crash or restart; then they are queued for the server.
    /// If `f` panics, its uncommitted edits are rolled back and the panic continues.
    ///
    /// This blocks for the fsync (about 0.1-1 ms); call it from `spawn_blocking` if that
    /// matters to the runtime.
    pub fn change<R>(&self, f: impl FnOnce(&mut AutoCommit) -> R) -> Result<R, ClientError> {
        let mut am = lock(&self.doc.am);
        let before = am.get_heads();
        let r = match catch_unwind(AssertUnwindSafe(|| f(&mut am))) {
            Ok(r) => r,
            Err(panic) => {
                am.rollback();
                // Anything `f` committed itself before panicking is in the document: store
                // it with the next change rather than lose it.
                let committed = converge_core::changes_since(&mut am, &before);
                lock(&self.doc.disk).unsaved.extend(committed);
                drop(am);
                resume_unwind(panic);
            }
        };
        am.commit();
        let new = converge_core::changes_since(&mut am, &before);
        let mut disk = lock(&self.doc.disk);
        let mut changes = std::mem::take(&mut disk.unsaved);
        changes.extend(new);
        if changes.is_empty() {
            return Ok(r);
        }
        if let Err(e) = disk.stored.append_pending(&changes) {
            disk.unsaved = changes;
            return Err(e.into());
        }
        // Queued while the document is still locked, so changes reach the session in the
        // order they were made (a later change depends on the earlier ones).
        lock(&self.shared.session)
            .session
            .add_local(self.doc.id, changes);
        if disk.stored.wants_compaction()
            && let Err(e) = disk.stored.write_snapshot(&mut am)
        {
            tracing::warn!(doc = %self.doc.id, error = %e, "could not compact the stored document");
        }
        drop(disk);
        let heads = am.get_heads();
        ops::after_local_change(&self.shared, &self.doc, &mut am);
        drop(am);
        self.shared.wake.notify_one();
        self.doc.emit(DocEvent::Local { heads });
        Ok(r)
    }

    pub fn heads(&self) -> Vec<ChangeHash> {
        lock(&self.doc.am).get_heads()
    }

    /// Local changes the server has not acknowledged yet.
    pub fn pending_count(&self) -> usize {
        let disk = lock(&self.doc.disk);
        disk.stored.pending_len() + disk.unsaved.len()
    }

    /// Whether every local change is acknowledged (or was refused: see [`DocEvent::Refused`]).
    pub fn is_confirmed(&self) -> bool {
        self.pending_count() == 0
    }

    /// The stored position: the document holds the server's stream through it.
    pub fn position(&self) -> Option<Position> {
        lock(&self.doc.disk).stored.position()
    }

    /// Everything that happens to the document from now on.
    pub fn subscribe_changes(&self) -> impl Stream<Item = DocEvent> + Send + 'static {
        futures_util::stream::unfold(self.doc.events.subscribe(), |mut rx| async move {
            let event = match rx.recv().await {
                Ok(event) => event,
                Err(RecvError::Lagged(missed)) => DocEvent::Lagged { missed },
                Err(RecvError::Closed) => return None,
            };
            Some((event, rx))
        })
    }

    /// Waits until every local change is acknowledged (forever while offline: wrap it in a
    /// timeout where that matters).
    pub async fn wait_until_confirmed(&self) {
        self.wait_until(|h| h.is_confirmed()).await;
    }

    /// Waits until `pred` holds for the document (checked now and after every change).
    pub async fn wait_for(&self, mut pred: impl FnMut(&AutoCommit) -> bool) {
        self.wait_until(|h| h.read(&mut pred)).await;
    }

    async fn wait_until(&self, mut ready: impl FnMut(&DocHandle) -> bool) {
        // Subscribed before the first check, so a change between the two is not missed.
        let mut rx = self.doc.changed.subscribe();
        while !ready(self) {
            if rx.changed().await.is_err() {
                return;
            }
        }
    }
}
