//! Mutations (optimistic, durable, rebased), locks and presence: what a [`DocHandle`] adds to
//! plain CRDT editing.
//!
//! The speculative view: the app reads the document plus every mutation the server has not
//! decided yet (and every applied one whose change has not arrived), each run again, in id
//! order, on a copy. It is rebuilt whenever the document underneath changes (a received
//! batch, a local change) or a mutation is rejected (rollback). A result arrives before the
//! change it names, so an applied mutation moves from "pending" to "awaiting its change" and
//! leaves the view in the same step its change enters the document.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use automerge::AutoCommit;
use converge_core::{Ctx, Mutator, QueuedMutation};
use converge_proto::limits::MAX_NAME_BYTES;
use converge_proto::{
    DocId, ErrorCode, FencingToken, LockOutcome, MutationId, MutationOutcome, Peer, Position, Seq,
    SessionId, UserId, encode_args,
};
use futures_util::Stream;
use tokio::sync::{broadcast, oneshot};

use crate::client::Shared;
use crate::doc::{DocHandle, DocShared};
use crate::error::ClientError;
use crate::lock;

/// Largest presence state the SDK sends (the server's default limit).
pub const MAX_PRESENCE_BYTES: usize = 4096;

/// How long [`DocHandle::lock`] waits for the server's answer.
const LOCK_ANSWER_WAIT: Duration = Duration::from_secs(10);

/// Where a mutation stands, as an app can show it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum OperationState {
    /// Stored and waiting to be sent (offline, or behind earlier ones).
    Queued,
    /// On the wire; `attempt` counts sends (more than 1 after reconnects or retries).
    Sent { attempt: u32 },
    /// The server applied it; its change is the entry `seq` of the document's stream.
    Applied { seq: Seq },
    /// The server refused it; it left the view (rolled back).
    Rejected { code: ErrorCode, message: String },
}

/// A change of one mutation's state, on [`DocHandle::operations`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperationEvent {
    pub doc: DocId,
    pub id: MutationId,
    pub name: String,
    pub state: OperationState,
}

/// A queued mutation's future outcome.
#[derive(Debug)]
pub struct MutationHandle {
    id: MutationId,
    rx: oneshot::Receiver<MutationOutcome>,
}

impl MutationHandle {
    pub fn id(&self) -> MutationId {
        self.id
    }

    /// Waits for the server's decision (forever while offline: the mutation is stored and
    /// sent when a connection is up; wrap this in a timeout where that matters). An error
    /// means the client shut down first; the mutation stays queued in the store and is sent
    /// by the next client on it (see [`DocHandle::operations`] there).
    pub async fn outcome(self) -> Result<MutationOutcome, ClientError> {
        self.rx.await.map_err(|_| ClientError::Closed)
    }
}

/// A held lock, with its fencing token. Renewed in the background at a third of its TTL;
/// released when dropped.
#[derive(Debug)]
pub struct LockGuard {
    shared: std::sync::Arc<Shared>,
    doc: std::sync::Arc<DocShared>,
    key: String,
    token: FencingToken,
    renewer: tokio::task::JoinHandle<()>,
}

impl LockGuard {
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The fencing token to pass with [`DocHandle::mutate_fenced`].
    pub fn token(&self) -> FencingToken {
        self.token
    }

    /// Whether the server's lock table (as this client last heard it) still names this
    /// grant. False after the lease ran out, e.g. while offline.
    pub fn is_held(&self) -> bool {
        self.doc
            .locks
            .borrow()
            .get(&self.key)
            .is_some_and(|l| l.token == self.token)
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        self.renewer.abort();
        lock(&self.shared.session)
            .session
            .unlock(self.doc.id, self.key.clone(), self.token);
        self.shared.wake.notify_one();
    }
}

/// A lock as the document's lock table shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockInfo {
    pub holder: Peer,
    pub token: FencingToken,
    pub expires_at_ms: u64,
}

/// A peer's presence state in a document (the identity is stamped by the server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerPresence {
    pub user: UserId,
    pub state: Vec<u8>,
}

/// Mutations in the view, and those waiting for an answer.
#[derive(Debug, Default)]
pub(crate) struct Speculative {
    /// Not answered, in id order.
    queued: Vec<QueuedMutation>,
    /// Applied by the server; the document does not hold their change (entry `seq`) yet.
    awaiting: Vec<(QueuedMutation, Seq)>,
    /// The position the document was last brought to by a received batch.
    applied: Option<Position>,
    /// The document plus the mutations above; `None` when there are none.
    pub(crate) view: Option<AutoCommit>,
    /// The mutations `view` was built with (so none runs in it twice).
    in_view: std::collections::BTreeSet<MutationId>,
    waiters: HashMap<MutationId, oneshot::Sender<MutationOutcome>>,
    attempts: HashMap<MutationId, u32>,
}

/// Per-document state for this module, kept in [`DocShared`].
#[derive(Debug)]
pub(crate) struct DocOps {
    pub(crate) spec: std::sync::Mutex<Speculative>,
    pub(crate) events: broadcast::Sender<OperationEvent>,
    pub(crate) lock_waiters: std::sync::Mutex<HashMap<String, oneshot::Sender<LockOutcome>>>,
    pub(crate) my_presence: std::sync::Mutex<Option<Vec<u8>>>,
}

impl DocOps {
    pub(crate) fn new(queued: Vec<QueuedMutation>) -> Self {
        DocOps {
            spec: std::sync::Mutex::new(Speculative {
                queued,
                ..Speculative::default()
            }),
            events: broadcast::Sender::new(1024),
            lock_waiters: std::sync::Mutex::new(HashMap::new()),
            my_presence: std::sync::Mutex::new(None),
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The context of an optimistic run: who this client was last told it is and its clock (the
/// lock a fence proves is added per mutation, in [`run_on`]).
fn base_ctx(shared: &Shared) -> Ctx {
    let user = lock(&shared.user)
        .clone()
        .unwrap_or_else(|| UserId::new("anonymous").unwrap_or_else(|_| UserId::server()));
    Ctx {
        user,
        client: lock(&shared.session).session.client_id(),
        session: None,
        now_ms: now_ms(),
        lock: None,
    }
}

/// Runs one mutation on the view (a refusal leaves it unchanged), with the lock its fence
/// names in the lock table this client last heard.
fn run_on(shared: &Shared, doc: &DocShared, view: &mut AutoCommit, m: &QueuedMutation, base: &Ctx) {
    let mut ctx = base.clone();
    ctx.lock = m.fence.and_then(|f| {
        doc.locks
            .borrow()
            .iter()
            .find(|(_, l)| l.token == f)
            .map(|(k, _)| (k.clone(), f))
    });
    if shared
        .config
        .mutators
        .run(&m.name, view, &m.args, &ctx)
        .is_ok()
    {
        view.commit();
    }
}

/// Rebuilds the view from the document and every mutation still in it.
pub(crate) fn rebuild(
    shared: &Shared,
    doc: &DocShared,
    am: &mut AutoCommit,
    spec: &mut Speculative,
) {
    spec.in_view.clear();
    if spec.queued.is_empty() && spec.awaiting.is_empty() {
        spec.view = None;
        return;
    }
    let mut view = am.fork();
    let mut all: Vec<&QueuedMutation> = spec
        .awaiting
        .iter()
        .map(|(m, _)| m)
        .chain(spec.queued.iter())
        .collect();
    all.sort_by_key(|m| m.id);
    let ids: Vec<MutationId> = all.iter().map(|m| m.id).collect();
    let base = base_ctx(shared);
    for m in all {
        run_on(shared, doc, &mut view, m, &base);
    }
    spec.in_view.extend(ids);
    spec.view = Some(view);
}

/// A received batch was applied up to `position`: mutations whose change it brought leave the
/// view, which is rebuilt on the new document.
pub(crate) fn after_batch(
    shared: &Shared,
    doc: &DocShared,
    am: &mut AutoCommit,
    position: Position,
) {
    let mut spec = lock(&doc.ops.spec);
    spec.applied = Some(position);
    spec.awaiting.retain(|(_, seq)| *seq > position.seq);
    if spec.view.is_some() || !spec.queued.is_empty() {
        rebuild(shared, doc, am, &mut spec);
    }
}

/// A local change was made: the mutations run again on top of it.
pub(crate) fn after_local_change(shared: &Shared, doc: &DocShared, am: &mut AutoCommit) {
    let mut spec = lock(&doc.ops.spec);
    if spec.view.is_some() {
        rebuild(shared, doc, am, &mut spec);
    }
}

/// The session sent these mutations (again).
pub(crate) fn sent(doc: &DocShared, ids: &[MutationId]) {
    let mut spec = lock(&doc.ops.spec);
    for id in ids {
        let attempt = {
            let a = spec.attempts.entry(*id).or_default();
            *a += 1;
            *a
        };
        let name = spec
            .queued
            .iter()
            .find(|m| m.id == *id)
            .map(|m| m.name.clone())
            .unwrap_or_default();
        let _ = doc.ops.events.send(OperationEvent {
            doc: doc.id,
            id: *id,
            name,
            state: OperationState::Sent { attempt },
        });
    }
}

/// The server decided a mutation (called after it left the stored queue).
pub(crate) fn decided(shared: &Shared, doc: &DocShared, id: MutationId, outcome: MutationOutcome) {
    let mut am = lock(&doc.am);
    let mut spec = lock(&doc.ops.spec);
    let Some(i) = spec.queued.iter().position(|m| m.id == id) else {
        return;
    };
    let m = spec.queued.remove(i);
    spec.attempts.remove(&id);
    let name = m.name.clone();
    let state = match &outcome {
        MutationOutcome::Applied { seq } => {
            let held = spec.applied.is_some_and(|p| p.seq >= *seq);
            if held {
                // The change arrived first (a resend after a reconnect): the view ran it twice.
                rebuild(shared, doc, &mut am, &mut spec);
            } else {
                spec.awaiting.push((m, *seq));
            }
            OperationState::Applied { seq: *seq }
        }
        MutationOutcome::Rejected { code, message } => {
            // Rollback: the view is rebuilt without it.
            rebuild(shared, doc, &mut am, &mut spec);
            OperationState::Rejected {
                code: *code,
                message: message.clone(),
            }
        }
    };
    if let Some(w) = spec.waiters.remove(&id) {
        let _ = w.send(outcome);
    }
    drop(spec);
    drop(am);
    let _ = doc.ops.events.send(OperationEvent {
        doc: doc.id,
        id,
        name,
        state,
    });
    doc.emit(crate::DocEvent::Mutation { id });
}

impl DocHandle {
    /// Runs mutator `M` at once on the view (the optimistic update), stores the mutation
    /// durably and queues it for the server, which runs it again and decides. Returns a
    /// handle to the decision. Register `M` in [`crate::ClientConfig::mutators`] (and on the
    /// server) under the same name.
    pub fn mutate<M: Mutator>(&self, args: &M::Args) -> Result<MutationHandle, ClientError> {
        self.queue_mutation(M::NAME, args_bytes::<M>(args)?, None)
    }

    /// [`DocHandle::mutate`] carrying a lock's fencing token: the server refuses it
    /// (`StaleFence`) unless the token is still the current one of a lock this user holds.
    pub fn mutate_fenced<M: Mutator>(
        &self,
        args: &M::Args,
        fence: FencingToken,
    ) -> Result<MutationHandle, ClientError> {
        self.queue_mutation(M::NAME, args_bytes::<M>(args)?, Some(fence))
    }

    fn queue_mutation(
        &self,
        name: &str,
        args: Vec<u8>,
        fence: Option<FencingToken>,
    ) -> Result<MutationHandle, ClientError> {
        if name.len() > MAX_NAME_BYTES {
            return Err(ClientError::BadMutation(format!(
                "a mutator name is at most {MAX_NAME_BYTES} bytes"
            )));
        }
        let (shared, doc) = (self.shared(), self.shared_doc());
        let (tx, rx) = oneshot::channel();
        let m = {
            // The disk lock serializes mutations of this document: the id is taken, stored
            // and queued in one step, so ids stay dense even when storing fails.
            let mut disk = doc.disk();
            let id = lock(&shared.session).session.next_mutation_id(&doc.id);
            let m = QueuedMutation {
                id,
                name: name.to_string(),
                args,
                fence,
            };
            disk.stored.queue_mutation(&m)?;
            {
                let mut spec = lock(&doc.ops.spec);
                spec.queued.push(m.clone());
                spec.waiters.insert(id, tx);
            }
            lock(&shared.session)
                .session
                .add_mutation(doc.id, m.clone());
            m
        };
        shared.wake.notify_one();
        {
            let mut am = lock(&doc.am);
            let mut spec = lock(&doc.ops.spec);
            // The result may already have come back; a rejected one is out of the view.
            let still_in = spec.queued.iter().any(|q| q.id == m.id)
                || spec.awaiting.iter().any(|(q, _)| q.id == m.id);
            // A rebuild since it was queued may already have run it in the view.
            if still_in && !spec.in_view.contains(&m.id) {
                match spec.view.as_mut() {
                    Some(view) => {
                        run_on(shared, doc, view, &m, &base_ctx(shared));
                        spec.in_view.insert(m.id);
                    }
                    None => rebuild(shared, doc, &mut am, &mut spec),
                }
            }
        }
        let _ = doc.ops.events.send(OperationEvent {
            doc: doc.id,
            id: m.id,
            name: m.name.clone(),
            state: OperationState::Queued,
        });
        doc.emit(crate::DocEvent::Mutation { id: m.id });
        Ok(MutationHandle { id: m.id, rx })
    }

    /// Mutations of this document the server has not decided, with how often each was sent.
    pub fn pending_operations(&self) -> Vec<(MutationId, String, u32)> {
        let spec = lock(&self.shared_doc().ops.spec);
        spec.queued
            .iter()
            .map(|m| {
                (
                    m.id,
                    m.name.clone(),
                    spec.attempts.get(&m.id).copied().unwrap_or(0),
                )
            })
            .collect()
    }

    /// Every state change of this document's mutations from now on: queued, sent (with the
    /// attempt number), applied, rejected.
    pub fn operations(&self) -> impl Stream<Item = OperationEvent> + Send + 'static {
        futures_util::stream::unfold(
            self.shared_doc().ops.events.subscribe(),
            |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(e) => return Some((e, rx)),
                        Err(broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(broadcast::error::RecvError::Closed) => return None,
                    }
                }
            },
        )
    }

    /// Asks for the lock on `key` with a lease of `ttl` (1 s to 10 min). Needs a live
    /// connection: offline clients cannot hold locks. The guard renews the lease itself and
    /// releases it when dropped.
    pub async fn lock(&self, key: &str, ttl: Duration) -> Result<LockGuard, ClientError> {
        let (shared, doc) = (self.shared(), self.shared_doc());
        if key.len() > MAX_NAME_BYTES {
            return Err(ClientError::BadMutation(format!(
                "a lock key is at most {MAX_NAME_BYTES} bytes"
            )));
        }
        let ttl_ms = ttl.as_millis() as u64;
        let (tx, rx) = oneshot::channel();
        {
            let mut state = lock(&shared.session);
            if !state.session.is_live(&doc.id) {
                return Err(ClientError::Offline);
            }
            lock(&doc.ops.lock_waiters).insert(key.to_string(), tx);
            state.session.lock(doc.id, key.to_string(), ttl_ms);
        }
        shared.wake.notify_one();
        let outcome = tokio::time::timeout(LOCK_ANSWER_WAIT, rx)
            .await
            .map_err(|_| ClientError::Offline)?
            .map_err(|_| ClientError::Offline)?;
        let token = match outcome {
            LockOutcome::Granted { token, .. } | LockOutcome::Renewed { token, .. } => token,
            LockOutcome::Refused { code, message } => {
                return Err(ClientError::Lock { code, message });
            }
            LockOutcome::Released => {
                return Err(ClientError::Lock {
                    code: ErrorCode::LockNotHeld,
                    message: "the lock was released before it was granted".into(),
                });
            }
        };
        let renewer = {
            let shared = self.shared_arc();
            let id = doc.id;
            let key = key.to_string();
            tokio::spawn(async move {
                let every = Duration::from_millis((ttl_ms / 3).max(100));
                loop {
                    tokio::time::sleep(every).await;
                    lock(&shared.session)
                        .session
                        .renew_lock(id, key.clone(), token, ttl_ms);
                    shared.wake.notify_one();
                }
            })
        };
        Ok(LockGuard {
            shared: self.shared_arc(),
            doc: self.shared_doc_arc(),
            key: key.to_string(),
            token,
            renewer,
        })
    }

    /// The document's lock table as this client last heard it, then each change of it.
    pub fn locks(&self) -> impl Stream<Item = BTreeMap<String, LockInfo>> + Send + 'static {
        crate::status::stream(self.shared_doc().locks.subscribe())
    }

    /// Sets this client's presence state in the document (sent now if live, and again after
    /// every reconnect; the server coalesces to 20 updates a second and expires it 30 s after
    /// the last one, so an app renews it while it matters).
    pub fn set_presence(&self, state: Vec<u8>) -> Result<(), ClientError> {
        if state.len() > MAX_PRESENCE_BYTES {
            return Err(ClientError::BadMutation(format!(
                "a presence state is at most {MAX_PRESENCE_BYTES} bytes"
            )));
        }
        let (shared, doc) = (self.shared(), self.shared_doc());
        *lock(&doc.ops.my_presence) = Some(state.clone());
        lock(&shared.session).session.set_presence(doc.id, state);
        shared.wake.notify_one();
        Ok(())
    }

    /// Everyone else's presence in the document, by session, then each change of it.
    pub fn presence(
        &self,
    ) -> impl Stream<Item = BTreeMap<SessionId, PeerPresence>> + Send + 'static {
        crate::status::stream(self.shared_doc().presence.subscribe())
    }
}

fn args_bytes<M: Mutator>(args: &M::Args) -> Result<Vec<u8>, ClientError> {
    encode_args(args).map_err(|e| ClientError::BadMutation(format!("{}: {e}", M::NAME)))
}

/// A lock result from the server: to whoever waits for a `lock()` on that key. Only answers
/// to a `Lock` go there (an `Unlock`'s `Released` of an earlier guard must not). A grant
/// nobody waits for any more (its `lock()` timed out) is given back at once, so it cannot
/// block others until its lease runs out.
pub(crate) fn lock_answered(shared: &Shared, doc: &DocShared, key: &str, outcome: LockOutcome) {
    if matches!(outcome, LockOutcome::Released) {
        return;
    }
    let waiter = lock(&doc.ops.lock_waiters).remove(key);
    match (waiter, outcome) {
        (Some(w), outcome) => {
            if let Err(LockOutcome::Granted { token, .. }) = w.send(outcome) {
                give_back(shared, doc, key, token);
            }
        }
        (None, LockOutcome::Granted { token, .. }) => give_back(shared, doc, key, token),
        (None, _) => {}
    }
}

fn give_back(shared: &Shared, doc: &DocShared, key: &str, token: FencingToken) {
    lock(&shared.session)
        .session
        .unlock(doc.id, key.to_string(), token);
    shared.wake.notify_one();
}

/// The lock table changed.
pub(crate) fn lock_state(
    doc: &DocShared,
    key: String,
    holder: Option<Peer>,
    token: Option<FencingToken>,
    expires_at_ms: Option<u64>,
) {
    doc.locks
        .send_modify(|t| match (holder, token, expires_at_ms) {
            (Some(holder), Some(token), Some(expires_at_ms)) => {
                t.insert(
                    key,
                    LockInfo {
                        holder,
                        token,
                        expires_at_ms,
                    },
                );
            }
            _ => {
                t.remove(&key);
            }
        });
}

/// A peer's presence changed.
pub(crate) fn presence_changed(doc: &DocShared, peer: Peer, state: Option<Vec<u8>>) {
    doc.presence.send_modify(|p| match state {
        Some(state) => {
            p.insert(
                peer.session,
                PeerPresence {
                    user: peer.user,
                    state,
                },
            );
        }
        None => {
            p.remove(&peer.session);
        }
    });
}

/// The connection is gone: presence and locks as heard on it no longer hold.
pub(crate) fn offline(doc: &DocShared) {
    doc.presence.send_modify(BTreeMap::clear);
    doc.locks.send_modify(BTreeMap::clear);
    lock(&doc.ops.lock_waiters).clear();
}

/// The document went live: this client's presence goes out again.
pub(crate) fn live(shared: &Shared, doc: &DocShared) {
    let mine = lock(&doc.ops.my_presence).clone();
    if let Some(state) = mine {
        lock(&shared.session).session.set_presence(doc.id, state);
    }
}
