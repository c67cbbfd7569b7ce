//! The client session: per-document positions, unacknowledged changes and received batches.
//!
//! The shell owns the automerge documents and the on-disk store; this state machine decides
//! what to send and what the shell must apply or persist:
//! - local changes are queued with [`ClientSession::add_local`] and pushed in order, one push
//!   in flight per document, again from the first unacknowledged one after every reconnect
//!   (the server's dedup makes a re-push safe);
//! - received changes accumulate per document until the shell takes them with
//!   [`ClientSession::take_incoming`]: whatever arrived while the previous batch was being
//!   applied goes into the next single apply;
//! - the position a batch brings is persisted by the shell *after* applying the batch, so a
//!   crash can only make the client ask for entries again, never skip them;
//! - after a reconciling snapshot (the server may lack changes this client holds), the shell
//!   calls [`ClientSession::begin_reconcile`] once the batch is applied, and the session runs
//!   automerge's sync protocol with the server on a copy of the document until the server
//!   says `Reconciled`. Positions are not persisted meanwhile (`persist_position` is false),
//!   so a crash mid-way reconciles again after the restart.

use std::collections::{BTreeMap, VecDeque};
use std::panic::{AssertUnwindSafe, catch_unwind};

use automerge::sync::SyncDoc;

use converge_proto::{
    Blob, ChangeHash, ClientId, ClientMsg, DocId, Epoch, ErrorCode, FencingToken, Limits,
    LockOutcome, MutationId, MutationOutcome, PROTOCOL_VERSION, Peer, Position, Seq, ServerMsg,
    SessionId, UserId,
};

/// Mutations one document keeps on the wire at once (below the server's limit, so a
/// client that follows the protocol is never rate limited).
pub const MUTATION_WINDOW: usize = 32;

/// A mutation the client made and the server has not answered: kept durably by the shell
/// and sent (again) until a result arrives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedMutation {
    pub id: MutationId,
    pub name: String,
    pub args: Vec<u8>,
    pub fence: Option<FencingToken>,
}

/// Session settings.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Most changes per push (lowered to the server's limit after Welcome).
    pub max_push_changes: usize,
    /// Most change bytes per push.
    pub max_push_bytes: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            max_push_changes: 256,
            max_push_bytes: 512 * 1024,
        }
    }
}

/// Received state for the shell to apply, in one call.
#[derive(Debug, Clone, PartialEq)]
pub struct IncomingBatch {
    pub doc: DocId,
    /// Replace the document with this snapshot first (merging in local changes the server
    /// may lack when `reconcile` is set).
    pub snapshot: Option<Blob>,
    pub reconcile: bool,
    /// Changes to apply after it, in log order (empty blobs carry no change).
    pub changes: Vec<Vec<u8>>,
    /// The position the batch brings the document to.
    pub position: Position,
    /// Persist `position` once the batch is applied. False while a reconciliation is open:
    /// the stored position stays the old one, so a restart reconciles again.
    pub persist_position: bool,
}

/// What the shell should know about.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// The handshake finished.
    Welcome { session: SessionId, user: UserId },
    /// Received state waits in [`ClientSession::take_incoming`] for this document.
    Incoming { doc: DocId },
    /// These local changes are durable on the server. `position`: persist it now (the
    /// acknowledged entries are the client's own, already in its document).
    Acked {
        doc: DocId,
        hashes: Vec<ChangeHash>,
        position: Option<Position>,
    },
    /// The document caught up with the server and is live.
    Live { doc: DocId, position: Position },
    /// The server refused these local changes for good; they were taken off the queue.
    Refused {
        doc: DocId,
        hashes: Vec<ChangeHash>,
        code: ErrorCode,
        message: String,
    },
    /// An error reply that is not about a push.
    Error {
        code: ErrorCode,
        message: String,
        doc: Option<DocId>,
    },
    /// A Pong: the round trip took `rtt_ms`.
    Pong { rtt_ms: u64 },
    /// The server decided a mutation. It is off the queue: the shell drops it from its
    /// store, and from the speculative view once the document holds the outcome's `seq`
    /// (the result arrives before the entries it names).
    MutationResult {
        doc: DocId,
        id: MutationId,
        outcome: MutationOutcome,
    },
    /// These mutations went on the wire (again, after a reconnect or a transient error).
    MutationsSent { doc: DocId, ids: Vec<MutationId> },
    /// A lock request was answered.
    LockResult {
        doc: DocId,
        key: String,
        outcome: LockOutcome,
    },
    /// A lock changed hands (`holder: None`: free).
    LockState {
        doc: DocId,
        key: String,
        holder: Option<Peer>,
        token: Option<FencingToken>,
        expires_at_ms: Option<u64>,
    },
    /// A peer's presence (`state: None`: it left).
    Presence {
        doc: DocId,
        peer: Peer,
        state: Option<Blob>,
    },
    /// An event published to a room this session is in (`from: None`: a backend).
    Event {
        room: String,
        event: String,
        data: Blob,
        from: Option<Peer>,
    },
    /// A notification pushed live (it is in the user's inbox document too).
    Notification(converge_proto::NotificationMsg),
    /// A reconciliation ended (`ok`: the server has everything this client offered).
    /// `position`: persist it now (held back while the reconciliation was open).
    Reconciled {
        doc: DocId,
        ok: bool,
        position: Option<Position>,
    },
}

/// One open reconciliation: automerge's sync protocol run on a copy of the document.
#[derive(Debug)]
struct Reconcile {
    fork: automerge::Automerge,
    state: automerge::sync::State,
}

#[derive(Debug, Clone)]
struct Pending {
    hash: ChangeHash,
    bytes: Vec<u8>,
}

#[derive(Debug, Default)]
struct DocState {
    position: Option<Position>,
    pending: VecDeque<Pending>,
    /// How many of the first pending changes are in the push on the wire.
    in_flight: usize,
    /// Subscribe was sent on this connection.
    subscribed: bool,
    live: bool,
    incoming: Option<IncomingBatch>,
    /// Isolating a refused change: push one change at a time.
    one_at_a_time: bool,
    /// A reconciling snapshot arrived and the reconciliation has not ended: positions are
    /// not persisted.
    hold_position: bool,
    /// The position held before the reconciling snapshot: presented again on resubscribing
    /// while the reconciliation has not ended, so the server offers it again.
    held_from: Option<Position>,
    /// This subscription's catch-up was a reconciling snapshot.
    offered: bool,
    reconcile: Option<Box<Reconcile>>,
    /// The last mutation id given out for this document (ids are dense per client and
    /// document, from 1).
    last_mutation: u64,
    /// Mutations not answered yet, in id order; the first `mutations_sent` are on the wire.
    mutations: VecDeque<QueuedMutation>,
    mutations_sent: usize,
}

impl DocState {
    /// The batch waiting for the shell (a new, empty one if none waits), now bringing the
    /// document to `position`; persisted unless a reconciliation holds positions back.
    fn incoming_at(&mut self, doc: DocId, position: Position) -> &mut IncomingBatch {
        let persist_position = !self.hold_position;
        let batch = self.incoming.get_or_insert_with(|| IncomingBatch {
            doc,
            snapshot: None,
            reconcile: false,
            changes: Vec::new(),
            position,
            persist_position,
        });
        batch.position = position;
        batch.persist_position = persist_position;
        batch
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Conn {
    Offline,
    AwaitingWelcome,
    Online,
}

/// The client's protocol state. See the module docs.
#[derive(Debug)]
pub struct ClientSession {
    client_id: ClientId,
    token: Option<String>,
    config: SessionConfig,
    conn: Conn,
    docs: BTreeMap<DocId, DocState>,
    out: VecDeque<ClientMsg>,
    events: VecDeque<SessionEvent>,
    pings: BTreeMap<u64, u64>,
    next_nonce: u64,
    limits: Option<Limits>,
}

impl ClientSession {
    pub fn new(client_id: ClientId, token: Option<String>, config: SessionConfig) -> Self {
        ClientSession {
            client_id,
            token,
            config,
            conn: Conn::Offline,
            docs: BTreeMap::new(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            pings: BTreeMap::new(),
            next_nonce: 1,
            limits: None,
        }
    }

    pub fn client_id(&self) -> ClientId {
        self.client_id
    }

    /// Replaces the token: sent in the next `Hello`, and at once as `Reauth` when online
    /// (a session whose token expires is closed; renew it before).
    pub fn set_token(&mut self, token: Option<String>) {
        if self.conn == Conn::Online
            && let Some(t) = &token
        {
            self.out.push_back(ClientMsg::Reauth { token: t.clone() });
        }
        self.token = token;
    }

    /// Starts tracking a document at a persisted position with persisted unacknowledged
    /// changes (in the order they were made). Subscribes at once when online.
    pub fn open(&mut self, doc: DocId, position: Option<Position>, pending: Vec<Vec<u8>>) {
        let d = self.docs.entry(doc).or_default();
        d.position = position;
        d.pending = pending
            .into_iter()
            .map(|bytes| Pending {
                hash: hash_of(&bytes),
                bytes,
            })
            .collect();
        if self.conn == Conn::Online {
            self.subscribe(doc);
        }
    }

    /// Restores a document's mutation queue from the store: the last id given out and the
    /// mutations not answered, in id order. Call it after [`Self::open`].
    pub fn restore_mutations(
        &mut self,
        doc: DocId,
        last_id: MutationId,
        queued: Vec<QueuedMutation>,
    ) {
        let d = self.docs.entry(doc).or_default();
        let highest = queued.last().map_or(0, |m| m.id.get());
        d.last_mutation = last_id.get().max(highest);
        d.mutations = queued.into();
        d.mutations_sent = 0;
        self.send_mutations(doc);
    }

    /// The id the next mutation of this document gets.
    pub fn next_mutation_id(&self, doc: &DocId) -> MutationId {
        MutationId(self.docs.get(doc).map_or(0, |d| d.last_mutation) + 1)
    }

    /// Queues a mutation the shell stored durably; its id must be
    /// [`Self::next_mutation_id`] (otherwise it is ignored and false is returned).
    pub fn add_mutation(&mut self, doc: DocId, m: QueuedMutation) -> bool {
        let d = self.docs.entry(doc).or_default();
        if m.id.get() != d.last_mutation + 1 {
            return false;
        }
        d.last_mutation = m.id.get();
        d.mutations.push_back(m);
        self.send_mutations(doc);
        true
    }

    /// Mutations of the document the server has not answered, in id order.
    pub fn pending_mutations(&self, doc: &DocId) -> Vec<QueuedMutation> {
        self.docs
            .get(doc)
            .map(|d| d.mutations.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Asks for a lease on `key` (answered by a `LockResult` event).
    pub fn lock(&mut self, doc: DocId, key: String, ttl_ms: u64) {
        if self.conn == Conn::Online {
            self.out.push_back(ClientMsg::Lock { doc, key, ttl_ms });
        }
    }

    /// Extends a lease.
    pub fn renew_lock(&mut self, doc: DocId, key: String, token: FencingToken, ttl_ms: u64) {
        if self.conn == Conn::Online {
            self.out.push_back(ClientMsg::RenewLock {
                doc,
                key,
                token,
                ttl_ms,
            });
        }
    }

    /// Gives a lease up.
    pub fn unlock(&mut self, doc: DocId, key: String, token: FencingToken) {
        if self.conn == Conn::Online {
            self.out.push_back(ClientMsg::Unlock { doc, key, token });
        }
    }

    /// Sets this session's presence in a live document (dropped while offline: presence
    /// is ephemeral, the shell sets it again after reconnecting).
    /// Publishes an ephemeral event to a room. Events are not queued: offline, it is dropped
    /// and this returns false.
    pub fn publish(&mut self, room: String, event: String, data: Vec<u8>) -> bool {
        if self.conn != Conn::Online {
            return false;
        }
        self.out.push_back(ClientMsg::Publish {
            room,
            event,
            data: Blob(data),
        });
        true
    }

    pub fn set_presence(&mut self, doc: DocId, state: Vec<u8>) {
        if self.conn == Conn::Online && self.is_live(&doc) {
            self.out.push_back(ClientMsg::Presence {
                doc,
                state: Blob(state),
            });
        }
    }

    /// Sends queued mutations, in id order, while the window has room and the document is
    /// live (and not waiting to reconcile: a mutator must see what the server holds).
    fn send_mutations(&mut self, doc: DocId) {
        if self.conn != Conn::Online {
            return;
        }
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        if !d.live || d.hold_position {
            return;
        }
        let mut ids = Vec::new();
        while d.mutations_sent < d.mutations.len() && d.mutations_sent < MUTATION_WINDOW {
            let m = &d.mutations[d.mutations_sent];
            ids.push(m.id);
            self.out.push_back(ClientMsg::Mutate {
                doc,
                mutation_id: m.id,
                name: m.name.clone(),
                args: Blob(m.args.clone()),
                fence: m.fence,
            });
            d.mutations_sent += 1;
        }
        if !ids.is_empty() {
            self.events
                .push_back(SessionEvent::MutationsSent { doc, ids });
        }
    }

    fn mutation_result(&mut self, doc: DocId, id: MutationId, outcome: MutationOutcome) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        let Some(i) = d.mutations.iter().position(|m| m.id == id) else {
            // Answered already (a duplicate after a resend).
            return;
        };
        // Results come in id order; anything before this one was answered or will be sent
        // again, so only this entry leaves the queue.
        d.mutations.remove(i);
        if i < d.mutations_sent {
            d.mutations_sent -= 1;
        }
        self.events
            .push_back(SessionEvent::MutationResult { doc, id, outcome });
        self.send_mutations(doc);
    }

    /// Stops tracking a document.
    pub fn close_doc(&mut self, doc: &DocId) {
        if self.docs.remove(doc).is_some() && self.conn == Conn::Online {
            self.out.push_back(ClientMsg::Unsubscribe { doc: *doc });
        }
    }

    /// Local changes the shell made (and persisted), in order.
    pub fn add_local(&mut self, doc: DocId, changes: Vec<Vec<u8>>) {
        let d = self.docs.entry(doc).or_default();
        for bytes in changes {
            d.pending.push_back(Pending {
                hash: hash_of(&bytes),
                bytes,
            });
        }
        self.push_next(doc);
    }

    /// A connection is up: the session says Hello.
    pub fn connected(&mut self) {
        self.conn = Conn::AwaitingWelcome;
        self.out.clear();
        self.out.push_back(ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: self.client_id,
            token: self.token.clone(),
        });
    }

    /// The connection is gone. Nothing is lost: pending changes are pushed again later.
    pub fn disconnected(&mut self) {
        self.conn = Conn::Offline;
        self.out.clear();
        self.pings.clear();
        for d in self.docs.values_mut() {
            d.in_flight = 0;
            d.subscribed = false;
            d.live = false;
            d.mutations_sent = 0;
            // An open reconciliation is dropped; `hold_position` stays, so the next
            // connection (which presents the old position) reconciles again.
            d.reconcile = None;
        }
    }

    /// The shell applied a reconciling snapshot to `doc`: start automerge's sync protocol with
    /// the server on a copy of the document, to hand back the changes the server lacks.
    pub fn begin_reconcile(&mut self, doc: DocId, local: &automerge::Automerge) {
        if self.conn != Conn::Online {
            return;
        }
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        if !d.hold_position || !d.subscribed {
            return;
        }
        let mut r = Box::new(Reconcile {
            fork: local.clone(),
            state: automerge::sync::State::new(),
        });
        match r.fork.generate_sync_message(&mut r.state) {
            Some(msg) => {
                self.out.push_back(ClientMsg::SyncMsg {
                    doc,
                    bytes: Blob(msg.encode()),
                });
                d.reconcile = Some(r);
            }
            None => self.end_reconcile(doc, false),
        }
    }

    /// Whether the document must still reconcile (a reconciling snapshot arrived and the
    /// reconciliation has not ended): its pushes and stored positions wait until it has.
    pub fn must_reconcile(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|d| d.hold_position)
    }

    /// Whether a reconciliation is open for the document.
    pub fn is_reconciling(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|d| d.reconcile.is_some())
    }

    fn sync_msg(&mut self, doc: DocId, bytes: Blob) {
        let Some(r) = self.docs.get_mut(&doc).and_then(|d| d.reconcile.as_mut()) else {
            return;
        };
        let step = catch_unwind(AssertUnwindSafe(|| {
            let msg = automerge::sync::Message::decode(&bytes).map_err(|e| e.to_string())?;
            r.fork
                .receive_sync_message(&mut r.state, msg)
                .map_err(|e| e.to_string())?;
            Ok::<_, String>(r.fork.generate_sync_message(&mut r.state))
        }));
        match step {
            Ok(Ok(Some(msg))) => self.out.push_back(ClientMsg::SyncMsg {
                doc,
                bytes: Blob(msg.encode()),
            }),
            // Nothing more to send: automerge's protocol has converged from this side (the
            // server knows every change this replica holds, and logged them before it
            // answered). The server may still say `Reconciled`; that is then a no-op.
            Ok(Ok(None)) => self.end_reconcile(doc, true),
            Ok(Err(e)) => {
                tracing::warn!(%doc, error = %e, "bad sync message from the server; reconciliation ended");
                self.end_reconcile(doc, false);
            }
            Err(_) => {
                tracing::warn!(%doc, "a sync message from the server panicked automerge; reconciliation ended");
                self.end_reconcile(doc, false);
            }
        }
    }

    /// Ends the reconciliation and releases the held position.
    fn end_reconcile(&mut self, doc: DocId, ok: bool) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        d.reconcile = None;
        if !d.hold_position {
            return;
        }
        d.hold_position = false;
        d.held_from = None;
        let live = d.live;
        let position = match &mut d.incoming {
            // Persisted with the batch still waiting.
            Some(batch) => {
                batch.persist_position = true;
                None
            }
            None => d.position,
        };
        self.events
            .push_back(SessionEvent::Reconciled { doc, ok, position });
        if live {
            self.push_next(doc);
            self.send_mutations(doc);
        }
    }

    pub fn is_online(&self) -> bool {
        self.conn == Conn::Online
    }

    /// A heartbeat: queues a Ping in the outbox and remembers when it was sent.
    pub fn ping(&mut self, now_ms: u64) {
        if self.conn != Conn::Online {
            return;
        }
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.pings.insert(nonce, now_ms);
        // Only the newest few pings are kept: an unanswered one is the shell's timeout to judge.
        while self.pings.len() > 8 {
            self.pings.pop_first();
        }
        self.out.push_back(ClientMsg::Ping { nonce });
    }

    /// Pings sent and not answered, oldest first (send time in ms).
    pub fn oldest_unanswered_ping(&self) -> Option<u64> {
        self.pings.values().min().copied()
    }

    /// The next message to send.
    pub fn poll_send(&mut self) -> Option<ClientMsg> {
        self.out.pop_front()
    }

    /// The next event for the shell.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Received state for `doc`, all of it in one batch.
    pub fn take_incoming(&mut self, doc: &DocId) -> Option<IncomingBatch> {
        self.docs.get_mut(doc).and_then(|d| d.incoming.take())
    }

    /// Documents tracked.
    pub fn docs(&self) -> Vec<DocId> {
        self.docs.keys().copied().collect()
    }

    /// The position the session has received through (applied or waiting to be).
    pub fn position(&self, doc: &DocId) -> Option<Position> {
        self.docs.get(doc).and_then(|d| d.position)
    }

    /// Unacknowledged local changes of a document.
    pub fn pending_count(&self, doc: &DocId) -> usize {
        self.docs.get(doc).map_or(0, |d| d.pending.len())
    }

    pub fn pending_total(&self) -> usize {
        self.docs.values().map(|d| d.pending.len()).sum()
    }

    /// Whether the document is live on the current connection.
    pub fn is_live(&self, doc: &DocId) -> bool {
        self.docs.get(doc).is_some_and(|d| d.live)
    }

    /// A frame from the server, decoded.
    pub fn handle(&mut self, msg: ServerMsg, now_ms: u64) {
        match msg {
            ServerMsg::Welcome {
                session,
                user,
                limits,
                ..
            } => {
                self.conn = Conn::Online;
                self.config.max_push_changes = self
                    .config
                    .max_push_changes
                    .min(limits.max_push_changes as usize)
                    .max(1);
                self.config.max_push_bytes = self
                    .config
                    .max_push_bytes
                    .min((limits.max_frame_bytes as usize).saturating_sub(4096))
                    .max(1);
                self.limits = Some(limits);
                self.events
                    .push_back(SessionEvent::Welcome { session, user });
                let docs: Vec<DocId> = self.docs.keys().copied().collect();
                for doc in docs {
                    self.subscribe(doc);
                }
            }
            ServerMsg::Snapshot {
                doc,
                epoch,
                seq,
                bytes,
                reconcile,
            } => {
                let Some(d) = self.docs.get_mut(&doc) else {
                    return;
                };
                let position = Position { epoch, seq };
                if reconcile && !d.hold_position {
                    d.held_from = d.position;
                }
                d.position = Some(position);
                d.hold_position |= reconcile;
                d.offered |= reconcile;
                // Changes still waiting are kept: applying them after the snapshot and the
                // merge is harmless (automerge skips what it has) and keeps anything of the
                // old stream the snapshot lacks.
                let was_empty = d.incoming.is_none();
                let batch = d.incoming_at(doc, position);
                batch.snapshot = Some(bytes);
                batch.reconcile |= reconcile;
                if was_empty {
                    self.events.push_back(SessionEvent::Incoming { doc });
                }
            }
            ServerMsg::Changes {
                doc,
                epoch,
                from_seq,
                changes,
            } => self.changes(doc, epoch, from_seq, changes),
            ServerMsg::Live { doc, epoch, seq } => {
                let Some(d) = self.docs.get_mut(&doc) else {
                    return;
                };
                let position = Position { epoch, seq };
                match d.position {
                    Some(p) if p.epoch == epoch && p.seq < seq => {
                        // Live promises everything through `seq` was sent: a position short
                        // of it means frames went missing. Never skip: ask again.
                        tracing::warn!(%doc, have = p.seq.get(), live = seq.get(), "gap before Live; resubscribing");
                        self.subscribe(doc);
                        return;
                    }
                    _ => d.position = Some(position),
                }
                d.live = true;
                let stale_hold = d.hold_position && !d.offered;
                self.events.push_back(SessionEvent::Live { doc, position });
                if stale_hold {
                    // The server no longer asks this client to reconcile (e.g. another of
                    // its subscriptions finished it): nothing is held back any more.
                    self.end_reconcile(doc, false);
                }
                self.push_next(doc);
                self.send_mutations(doc);
            }
            ServerMsg::Ack {
                doc, heads, new, ..
            } => self.ack(doc, heads, new),
            ServerMsg::Error { code, message, doc } => self.error(code, message, doc),
            ServerMsg::SyncMsg { doc, bytes } => self.sync_msg(doc, bytes),
            ServerMsg::Reconciled { doc } => self.end_reconcile(doc, true),
            ServerMsg::MutationResult {
                doc,
                mutation_id,
                outcome,
            } => self.mutation_result(doc, mutation_id, outcome),
            ServerMsg::LockResult { doc, key, outcome } => {
                self.events
                    .push_back(SessionEvent::LockResult { doc, key, outcome });
            }
            ServerMsg::LockState {
                doc,
                key,
                holder,
                token,
                expires_at_ms,
            } => self.events.push_back(SessionEvent::LockState {
                doc,
                key,
                holder,
                token,
                expires_at_ms,
            }),
            ServerMsg::Presence { doc, peer, state } => {
                self.events
                    .push_back(SessionEvent::Presence { doc, peer, state });
            }
            ServerMsg::Event {
                room,
                event,
                data,
                from,
            } => self.events.push_back(SessionEvent::Event {
                room,
                event,
                data,
                from,
            }),
            ServerMsg::Notification(n) => self.events.push_back(SessionEvent::Notification(n)),
            ServerMsg::Pong { nonce, .. } => {
                if let Some(sent) = self.pings.remove(&nonce) {
                    // Older pings were answered out of order or lost; they no longer count.
                    self.pings.retain(|n, _| *n > nonce);
                    self.events.push_back(SessionEvent::Pong {
                        rtt_ms: now_ms.saturating_sub(sent),
                    });
                    // A heartbeat also retries mutations a transient error took off the wire.
                    let docs: Vec<DocId> = self.docs.keys().copied().collect();
                    for doc in docs {
                        self.send_mutations(doc);
                    }
                }
            }
        }
    }

    fn subscribe(&mut self, doc: DocId) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        d.subscribed = true;
        d.live = false;
        d.in_flight = 0;
        d.mutations_sent = 0;
        d.offered = false;
        d.reconcile = None;
        if d.hold_position {
            // What arrives next continues the held position, not the newer one.
            d.position = d.held_from;
        }
        let after = d.position;
        self.out.push_back(ClientMsg::Subscribe { doc, after });
    }

    fn changes(&mut self, doc: DocId, epoch: Epoch, from_seq: Seq, changes: Vec<Blob>) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        let expected = d
            .position
            .filter(|p| p.epoch == epoch)
            .map_or(Seq(1), |p| p.seq.next());
        if from_seq != expected {
            // A frame that does not continue the stream: never guess. Ask again from what
            // is held; the server answers with a replay or a snapshot.
            tracing::warn!(%doc, got = from_seq.get(), expected = expected.get(), "stream gap; resubscribing");
            self.subscribe(doc);
            return;
        }
        let position = Position {
            epoch,
            seq: Seq((from_seq.get() + changes.len() as u64).saturating_sub(1)),
        };
        d.position = Some(position);
        let batch = d.incoming_at(doc, position);
        let was_empty = batch.snapshot.is_none() && batch.changes.is_empty();
        batch
            .changes
            .extend(changes.into_iter().map(Blob::into_vec));
        if was_empty {
            self.events.push_back(SessionEvent::Incoming { doc });
        }
    }

    fn ack(&mut self, doc: DocId, heads: Vec<ChangeHash>, new: Option<(Seq, Seq)>) {
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        // One Ack answers one whole push.
        d.pending.retain(|p| !heads.contains(&p.hash));
        d.in_flight = 0;
        let mut persist = None;
        if let (Some((from, to)), Some(p)) = (new, d.position)
            && from == p.seq.next()
        {
            let position = Position {
                epoch: p.epoch,
                seq: to,
            };
            d.position = Some(position);
            match &mut d.incoming {
                // Persisted together with the batch that precedes it.
                Some(batch) => batch.position = position,
                None if d.hold_position => {}
                None => persist = Some(position),
            }
        }
        self.events.push_back(SessionEvent::Acked {
            doc,
            hashes: heads,
            position: persist,
        });
        self.push_next(doc);
    }

    fn error(&mut self, code: ErrorCode, message: String, doc: Option<DocId>) {
        if code == ErrorCode::RateLimited && message.contains("messages per second") {
            // The server dropped messages (this client sent too fast): anything on the wire
            // may be gone. Pushes and mutations go out again on the next trigger (the
            // server's dedup makes that safe).
            for d in self.docs.values_mut() {
                d.in_flight = 0;
                d.mutations_sent = 0;
            }
        }
        if let Some(doc) = doc
            && self.is_reconciling(&doc)
            && matches!(code, ErrorCode::BadSyncMessage)
        {
            tracing::warn!(%doc, %message, "the server ended the reconciliation");
            self.end_reconcile(doc, false);
            self.events.push_back(SessionEvent::Error {
                code,
                message,
                doc: Some(doc),
            });
            return;
        }
        let push_refusal = matches!(code.code(), 4000..=4999);
        if let (true, Some(doc)) = (push_refusal, doc)
            && let Some(d) = self.docs.get_mut(&doc)
            && d.in_flight > 0
        {
            if d.in_flight > 1 {
                // A push is all or nothing: find the change at fault by pushing one at a
                // time, so the good changes before it still get through.
                d.one_at_a_time = true;
                d.in_flight = 0;
                self.push_next(doc);
                return;
            }
            let refused: Vec<ChangeHash> = d.pending.drain(..1).map(|p| p.hash).collect();
            d.in_flight = 0;
            d.one_at_a_time = false;
            self.events.push_back(SessionEvent::Refused {
                doc,
                hashes: refused,
                code,
                message,
            });
            self.push_next(doc);
            return;
        }
        if let Some(d) = doc.and_then(|doc| self.docs.get_mut(&doc)) {
            // Any other error about the document ends the push on the wire; the changes stay
            // pending and go out with the next push or after reconnecting.
            d.in_flight = 0;
            // A mutation refused before it ran (rate limit, shutdown, a gap after an earlier
            // refusal) was not processed: every unanswered one goes out again on the next
            // trigger (a result, Live, a heartbeat, a new mutation). Duplicates are answered
            // with their recorded outcome, so resending is safe.
            // Only errors about a mutation (the hub names it: "mutation <id>: ...") put the
            // window back; any other error would resend mutations still being processed.
            if message.starts_with("mutation ") {
                d.mutations_sent = 0;
            }
        }
        self.events
            .push_back(SessionEvent::Error { code, message, doc });
    }

    /// Pushes the next group of pending changes if none is in flight and the doc is live.
    fn push_next(&mut self, doc: DocId) {
        if self.conn != Conn::Online {
            return;
        }
        let (max_n, max_bytes) = (self.config.max_push_changes, self.config.max_push_bytes);
        let Some(d) = self.docs.get_mut(&doc) else {
            return;
        };
        // A pending change may depend on changes the server lost: it waits until the
        // reconciliation has handed those back, or the server would refuse it for good.
        if d.hold_position {
            return;
        }
        if !d.live || d.in_flight > 0 || d.pending.is_empty() {
            return;
        }
        let mut changes = Vec::new();
        let mut bytes = 0;
        let max_n = if d.one_at_a_time { 1 } else { max_n };
        for p in d.pending.iter().take(max_n) {
            if !changes.is_empty() && bytes + p.bytes.len() > max_bytes {
                break;
            }
            bytes += p.bytes.len();
            changes.push(Blob(p.bytes.clone()));
        }
        d.in_flight = changes.len();
        self.out.push_back(ClientMsg::Push { doc, changes });
    }
}

/// The automerge hash of a change's bytes (all zeros for bytes that are not a change; the
/// server refuses those and the session reports them).
fn hash_of(bytes: &[u8]) -> ChangeHash {
    automerge::Change::from_bytes(bytes.to_vec())
        .map(|c| ChangeHash(c.hash().0))
        .unwrap_or(ChangeHash([0; 32]))
}
