//! The hub's mutations, locks and presence (docs/protocol.md sections 9 to 11).
//!
//! Mutations and lock events are log writes: they leave the hub as `Output::Mutate` and
//! `Output::RecordLocks`, in the same ordered queue as appends, so every entry they write
//! takes its seq in hub order and reaches every subscriber in the gap-free stream (as an
//! empty blob when it carries no change). Presence is never logged.

use converge_proto::limits::{MAX_ARGS_BYTES, MAX_NAME_BYTES};
use converge_proto::{
    Blob, ClientId, ClientMsg, DocId, Epoch, ErrorCode, FencingToken, LockOutcome, MutationId,
    MutationOutcome, Peer, Seq, ServerMsg, SessionId, UserId,
};

use super::{
    Held, Hub, Item, LockChange, LockDoc, LockHolder, LockTable, Origin, Output, Pending, Refusal,
    Ticket,
};
use crate::locks::FenceCheck;
use crate::permissions::{Permission, permissions};
use crate::presence::PresenceOut;

/// A mutation for the shell to run (see [`Output::Mutate`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MutationRequest {
    pub doc: DocId,
    pub user: UserId,
    /// The connection it came over (`None`: an HTTP call).
    pub session: Option<SessionId>,
    pub client: ClientId,
    pub mutation_id: MutationId,
    pub name: String,
    pub args: Blob,
    /// The fence as the lock table judged it when the hub took the mutation in.
    pub fence: FenceCheck,
    /// Server time when the hub took it in: the mutator's `Ctx::now_ms`.
    pub now_ms: u64,
    /// The caller may not mutate this document: record `Rejected{Forbidden}` with this
    /// message instead of running the mutator (the id still counts, so ids are never reused).
    pub denied: Option<String>,
}

/// The shell's answer to [`Output::Mutate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mutated {
    pub epoch: Epoch,
    pub outcome: MutationOutcome,
    /// The entries written, with their seqs (the mutation record as an empty blob, then its
    /// change); empty when the id was already processed (the recorded outcome is returned).
    pub new: Vec<(Seq, Blob)>,
}

/// The shell's answer to [`Output::RecordLocks`]: the seq of each event and the token the
/// log issued for each grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocksRecorded {
    pub epoch: Epoch,
    pub seqs: Vec<Seq>,
    pub tokens: Vec<Option<FencingToken>>,
}

/// A mutation from a backend (HTTP), outside any session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExternalMutation {
    pub doc: DocId,
    /// The caller, as the shell authenticated it (its permissions are checked here).
    pub identity: crate::auth::Identity,
    pub client: ClientId,
    pub mutation_id: MutationId,
    pub name: String,
    pub args: Blob,
    pub fence: Option<FencingToken>,
}

impl Hub {
    fn identity_peer(&self, session: SessionId) -> Option<Peer> {
        self.identity(session).map(|identity| Peer {
            session,
            user: identity.user.clone(),
        })
    }

    fn subscribed(&self, session: SessionId, doc: &DocId) -> bool {
        self.sessions
            .get(&session)
            .is_some_and(|s| s.docs.contains(doc))
    }

    /// Mutate, Lock, RenewLock and Unlock: checked, then run against the lock table (held
    /// until it has loaded).
    pub(super) fn lock_or_mutate(&mut self, session: SessionId, msg: ClientMsg, now_ms: u64) {
        let (doc, key) = match &msg {
            ClientMsg::Mutate { doc, name, .. } => (*doc, name),
            ClientMsg::Lock { doc, key, .. }
            | ClientMsg::RenewLock { doc, key, .. }
            | ClientMsg::Unlock { doc, key, .. } => (*doc, key),
            _ => return,
        };
        let refusal = if self.shutting_down {
            Some(Refusal::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; send it again after reconnecting",
            ))
        } else if !self.subscribed(session, &doc) {
            Some(Refusal::new(
                ErrorCode::NotSubscribed,
                format!("subscribe to the document before {}", msg.kind()),
            ))
        } else if !matches!(msg, ClientMsg::Mutate { .. })
            && !self.may(session, &doc, Permission::Lock)
        {
            Some(Refusal::new(
                ErrorCode::Forbidden,
                "your roles do not allow locks in this document",
            ))
        } else if key.len() > MAX_NAME_BYTES {
            Some(Refusal::new(
                ErrorCode::FieldTooLong,
                format!("a name or key is at most {MAX_NAME_BYTES} bytes"),
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            // Refusals of a mutation name it, so the client resends exactly those.
            let message = match &msg {
                ClientMsg::Mutate { mutation_id, .. } => {
                    format!("mutation {}: {}", mutation_id.get(), r.message)
                }
                _ => r.message,
            };
            self.error(session, r.code, &message, Some(doc));
            return;
        }
        let needs_table = !matches!(msg, ClientMsg::Mutate { fence: None, .. });
        if needs_table && self.locks.get(&doc).is_none_or(|l| l.table.is_none()) {
            // Not loaded (or its load failed): (re)load it and hold the request meanwhile;
            // never decide on a table that is not the log's.
            self.load_locks(doc);
            if let Some(l) = self.locks.get_mut(&doc) {
                l.held.push(Held::Msg(session, msg));
            }
            return;
        }
        let Some(peer) = self.identity_peer(session) else {
            return;
        };
        match msg {
            ClientMsg::Mutate {
                doc,
                mutation_id,
                name,
                args,
                fence,
            } => self.mutate(session, peer, doc, mutation_id, name, args, fence, now_ms),
            ClientMsg::Lock { doc, key, ttl_ms } => {
                let max = self.config.max_locks_per_session;
                let table = self.table(&doc);
                let held = table.count_for(&peer, &key);
                let r = if held >= max {
                    Err(crate::locks::LockRefusal {
                        code: ErrorCode::RateLimited,
                        message: format!(
                            "this session holds {held} locks in this document (at most {max})"
                        ),
                    })
                } else {
                    table.acquire(&key, &peer, ttl_ms, now_ms)
                };
                self.lock_decided(session, doc, key, r);
            }
            ClientMsg::RenewLock {
                doc,
                key,
                token,
                ttl_ms,
            } => {
                let r = self.table(&doc).renew(&key, &peer, token, ttl_ms, now_ms);
                self.lock_decided(session, doc, key, r);
            }
            ClientMsg::Unlock { doc, key, token } => {
                let r = self.table(&doc).release(&key, &peer, token, now_ms);
                self.lock_decided(session, doc, key, r);
            }
            _ => {}
        }
    }

    /// The loaded lock table of a document (an empty one if it was never loaded: only reached
    /// after `load_locks` ran for a subscription).
    fn table(&mut self, doc: &DocId) -> &mut LockTable {
        let l = self.locks.entry(*doc).or_default();
        l.table.get_or_insert_with(LockTable::default)
    }

    #[allow(clippy::too_many_arguments)]
    fn mutate(
        &mut self,
        session: SessionId,
        peer: Peer,
        doc: DocId,
        mutation_id: MutationId,
        name: String,
        args: Blob,
        fence: Option<FencingToken>,
        now_ms: u64,
    ) {
        // A forbidden mutation is still an outcome: recorded as Rejected{Forbidden} (never the
        // mutator, never a change), so its id counts and is never given out twice, and a
        // duplicate of an id already processed still gets its recorded answer.
        let denied = if !self.may(session, &doc, Permission::Mutate) {
            Some("your roles do not allow mutations in this document".to_string())
        } else {
            inbox_denial(&doc, &name)
        };
        let in_flight = self
            .sessions
            .get(&session)
            .and_then(|s| s.mutations_in_flight.get(&doc))
            .copied()
            .unwrap_or(0);
        let refusal = if args.len() > MAX_ARGS_BYTES {
            Some(Refusal::new(
                ErrorCode::FieldTooLong,
                format!(
                    "mutation {}: arguments of {} bytes are over the limit of {MAX_ARGS_BYTES}",
                    mutation_id.get(),
                    args.len()
                ),
            ))
        } else if in_flight >= self.config.max_mutations_in_flight {
            Some(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "mutation {}: {} mutations to this document are already waiting; wait for their results",
                    mutation_id.get(),
                    self.config.max_mutations_in_flight
                ),
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            self.error(session, r.code, &r.message, Some(doc));
            return;
        }
        let Some(client) = self.sessions.get(&session).and_then(|s| s.client) else {
            return;
        };
        let fence = match fence {
            None => FenceCheck::None,
            Some(f) => self.table(&doc).check_fence(f, &peer, now_ms),
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            *s.mutations_in_flight.entry(doc) += 1;
        }
        let request = MutationRequest {
            doc,
            user: peer.user,
            session: Some(session),
            client,
            mutation_id,
            name,
            args,
            fence,
            now_ms,
            denied,
        };
        self.emit_mutation(Origin::Session(session), request);
    }

    fn emit_mutation(&mut self, origin: Origin, request: MutationRequest) {
        let ticket = self.ticket();
        self.emit_mutation_as(ticket, origin, request);
    }

    /// Hands a mutation to the shell under `ticket` (an HTTP one already has its ticket).
    fn emit_mutation_as(&mut self, ticket: Ticket, origin: Origin, request: MutationRequest) {
        self.pending.insert(
            ticket,
            Pending::Mutate {
                doc: request.doc,
                origin,
                mutation_id: request.mutation_id,
            },
        );
        self.out.push_back(Output::Mutate { ticket, request });
    }

    /// A mutation from a backend (the HTTP API): its outcome comes back as
    /// [`Output::MutationDone`] with the returned ticket. Its change reaches every
    /// subscriber like any other.
    pub fn mutate_external(&mut self, m: ExternalMutation, now_ms: u64) -> Ticket {
        let refusal = if !self
            .permissions_of(&m.identity, &m.doc)
            .has(Permission::Mutate)
        {
            Some(Refusal::new(
                ErrorCode::Forbidden,
                "your roles do not allow mutations in this document",
            ))
        } else if let Some(message) = inbox_denial(&m.doc, &m.name) {
            Some(Refusal::new(ErrorCode::Forbidden, message))
        } else if self.shutting_down {
            Some(Refusal::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down",
            ))
        } else {
            None
        };
        if let Some(r) = refusal {
            let ticket = self.ticket();
            self.out.push_back(Output::MutationDone {
                ticket,
                result: Err(r),
                replayed: false,
            });
            return ticket;
        }
        if m.fence.is_some() {
            self.load_locks(m.doc);
            let loading = self.locks.get(&m.doc).is_some_and(|l| l.table.is_none());
            if loading {
                let ticket = self.ticket();
                let doc = m.doc;
                if let Some(l) = self.locks.get_mut(&doc) {
                    l.held.push(Held::External(ticket, m));
                }
                return ticket;
            }
        }
        let ticket = self.ticket();
        self.external_now(ticket, m, now_ms);
        ticket
    }

    fn external_now(&mut self, ticket: Ticket, m: ExternalMutation, now_ms: u64) {
        let fence = match m.fence {
            None => FenceCheck::None,
            Some(f) => {
                // A backend has no session: the fence must be the current token of a lock
                // held by the same user.
                let peer = Peer {
                    session: SessionId(0),
                    user: m.identity.user.clone(),
                };
                self.table(&m.doc).check_fence(f, &peer, now_ms)
            }
        };
        let request = MutationRequest {
            doc: m.doc,
            user: m.identity.user,
            session: None,
            client: m.client,
            mutation_id: m.mutation_id,
            name: m.name,
            args: m.args,
            fence,
            now_ms,
            denied: None,
        };
        self.emit_mutation_as(ticket, Origin::External, request);
    }

    /// The shell's answer to [`Output::Mutate`]: the result to the session, then the entries
    /// to every subscriber (the mutating session too: it needs the server's change to rebase).
    pub fn handle_mutated(&mut self, ticket: Ticket, result: Result<Mutated, Refusal>) {
        let Some(Pending::Mutate {
            doc,
            origin,
            mutation_id,
        }) = self.pending.remove(&ticket)
        else {
            return;
        };
        if let Origin::Session(session) = origin
            && let Some(s) = self.sessions.get_mut(&session)
            && let Some(n) = s.mutations_in_flight.get_mut(&doc)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                s.mutations_in_flight.remove(&doc);
            }
        }
        match (origin, result) {
            (origin, Ok(m)) => {
                if let Some(d) = self.docs.get_mut(&doc) {
                    d.epoch = Some(m.epoch);
                }
                // The result goes first: the client then knows, when the entries arrive,
                // that the change it applies is its mutation's, and drops the speculative
                // copy in the same step (no moment shows the effect twice or not at all).
                match origin {
                    Origin::Session(session) => {
                        let msg = ServerMsg::MutationResult {
                            doc,
                            mutation_id,
                            outcome: m.outcome,
                        };
                        if let Some(frame) = self.encode(&msg) {
                            self.deliver(doc, session, Item::Frame(frame));
                        }
                    }
                    Origin::External => self.out.push_back(Output::MutationDone {
                        ticket,
                        result: Ok(m.outcome),
                        // Nothing written: the id was processed before, this is its record.
                        replayed: m.new.is_empty(),
                    }),
                }
                let new: Vec<(Seq, &Blob)> = m.new.iter().map(|(s, b)| (*s, b)).collect();
                self.fan_out(doc, m.epoch, new, None);
            }
            (Origin::Session(session), Err(r)) => {
                let message = format!("mutation {}: {}", mutation_id.get(), r.message);
                self.error(session, r.code, &message, Some(doc));
            }
            (Origin::External, Err(r)) => self.out.push_back(Output::MutationDone {
                ticket,
                result: Err(r),
                replayed: false,
            }),
        }
        if self.shutting_down {
            self.finish_shutdown();
        }
    }

    /// Reads the document's lock table from the log unless the hub has it (or is reading it).
    pub(super) fn load_locks(&mut self, doc: DocId) {
        if self.locks.contains_key(&doc) {
            return;
        }
        self.locks.insert(doc, LockDoc::default());
        let ticket = self.ticket();
        self.pending.insert(ticket, Pending::LoadLocks { doc });
        self.out.push_back(Output::LoadLocks { ticket, doc });
    }

    /// The shell's answer to [`Output::LoadLocks`]: the holders as the log recorded them.
    /// Requests that waited for the table run now.
    pub fn handle_locks_loaded(
        &mut self,
        ticket: Ticket,
        result: Result<Vec<LockHolder>, Refusal>,
        now_ms: u64,
    ) {
        let Some(Pending::LoadLocks { doc }) = self.pending.remove(&ticket) else {
            return;
        };
        let Some(l) = self.locks.get_mut(&doc) else {
            return;
        };
        let held = std::mem::take(&mut l.held);
        match result {
            Ok(holders) => l.table = Some(LockTable::from_holders(holders)),
            Err(r) => {
                // Without the table nothing lock-related can be decided: refuse what
                // waited, and read it again on the next subscription.
                self.locks.remove(&doc);
                for h in held {
                    match h {
                        Held::Msg(session, _) => {
                            self.error(session, r.code, &r.message, Some(doc));
                        }
                        Held::External(ticket, _) => self.out.push_back(Output::MutationDone {
                            ticket,
                            result: Err(r.clone()),
                            replayed: false,
                        }),
                    }
                }
                return;
            }
        }
        // Subscribers already live learn the table now.
        let live: Vec<SessionId> = self
            .docs
            .get(&doc)
            .map(|d| {
                d.subs
                    .iter()
                    .filter(|(_, s)| matches!(s, super::Sub::Live))
                    .map(|(id, _)| *id)
                    .collect()
            })
            .unwrap_or_default();
        for session in live {
            self.send_lock_table(doc, session);
        }
        for h in held {
            match h {
                Held::Msg(session, msg) => self.lock_or_mutate(session, msg, now_ms),
                Held::External(ticket, m) => self.external_now(ticket, m, now_ms),
            }
        }
        self.expire_locks(now_ms);
        self.forget_locks_if_idle(&doc);
    }

    fn lock_decided(
        &mut self,
        session: SessionId,
        doc: DocId,
        key: String,
        decision: Result<Vec<LockChange>, crate::locks::LockRefusal>,
    ) {
        match decision {
            Ok(changes) if !changes.is_empty() => self.record_locks(doc, Some(session), changes),
            Ok(_) => {}
            Err(r) => self.send(
                session,
                &ServerMsg::LockResult {
                    doc,
                    key,
                    outcome: LockOutcome::Refused {
                        code: r.code,
                        message: r.message,
                    },
                },
            ),
        }
    }

    fn record_locks(&mut self, doc: DocId, session: Option<SessionId>, changes: Vec<LockChange>) {
        let ticket = self.ticket();
        self.locks.entry(doc).or_default().in_flight += 1;
        self.pending.insert(
            ticket,
            Pending::Locks {
                doc,
                session,
                changes: changes.clone(),
            },
        );
        self.out.push_back(Output::RecordLocks {
            ticket,
            doc,
            changes,
        });
    }

    /// The shell's answer to [`Output::RecordLocks`].
    pub fn handle_locks_recorded(
        &mut self,
        ticket: Ticket,
        result: Result<LocksRecorded, Refusal>,
    ) {
        let Some(Pending::Locks {
            doc,
            session,
            changes,
        }) = self.pending.remove(&ticket)
        else {
            return;
        };
        if let Some(l) = self.locks.get_mut(&doc) {
            l.in_flight = l.in_flight.saturating_sub(1);
        }
        let recorded = match result {
            Ok(r) => r,
            Err(r) => {
                for c in &changes {
                    self.table(&doc).failed(c);
                }
                if let (Some(session), Some(last)) = (session, changes.last()) {
                    let key = last.key().to_string();
                    self.send(
                        session,
                        &ServerMsg::LockResult {
                            doc,
                            key,
                            outcome: LockOutcome::Refused {
                                code: r.code,
                                message: r.message,
                            },
                        },
                    );
                }
                self.forget_locks_if_idle(&doc);
                self.after_write();
                return;
            }
        };
        let mut gone = Vec::new();
        for (i, c) in changes.iter().enumerate() {
            let token = recorded.tokens.get(i).copied().flatten();
            self.table(&doc).applied(c, token);
            // Granted to a session that left while the grant was on its way: give it back.
            if let LockChange::Granted { peer, .. } = c
                && self.sessions.get(&peer.session).is_none_or(|s| s.closed)
            {
                gone.push(peer.session);
            }
        }
        if let Some(d) = self.docs.get_mut(&doc) {
            d.epoch = Some(recorded.epoch);
        }
        // Lock events are entries of the stream: everyone's position moves past them.
        let empty = Blob(Vec::new());
        let new: Vec<(Seq, &Blob)> = recorded.seqs.iter().map(|s| (*s, &empty)).collect();
        self.fan_out(doc, recorded.epoch, new, None);
        let mut keys: Vec<String> = changes.iter().map(|c| c.key().to_string()).collect();
        keys.dedup();
        for key in keys {
            self.broadcast_lock_state(doc, &key);
        }
        if let (Some(session), Some(last)) = (session, changes.last()) {
            let outcome = match last {
                LockChange::Granted { expires_at_ms, .. } => {
                    let token = recorded.tokens.last().copied().flatten();
                    match token {
                        Some(token) => LockOutcome::Granted {
                            token,
                            expires_at_ms: *expires_at_ms,
                        },
                        None => LockOutcome::Refused {
                            code: ErrorCode::Internal,
                            message: "the log issued no token".into(),
                        },
                    }
                }
                LockChange::Renewed(h) => LockOutcome::Renewed {
                    token: h.token,
                    expires_at_ms: h.expires_at_ms,
                },
                LockChange::Released(_) | LockChange::Expired(_) => LockOutcome::Released,
            };
            let msg = ServerMsg::LockResult {
                doc,
                key: last.key().to_string(),
                outcome,
            };
            if let Some(frame) = self.encode(&msg) {
                self.deliver(doc, session, Item::Frame(frame));
            }
        }
        for session in gone {
            self.release_locks_of(session);
        }
        self.forget_locks_if_idle(&doc);
        self.after_write();
    }

    fn after_write(&mut self) {
        if self.shutting_down {
            self.finish_shutdown();
        }
    }

    fn lock_state_msg(&self, doc: DocId, key: &str) -> ServerMsg {
        let holder = self
            .locks
            .get(&doc)
            .and_then(|l| l.table.as_ref())
            .and_then(|t| t.holder(key));
        ServerMsg::LockState {
            doc,
            key: key.to_string(),
            holder: holder.map(|h| h.peer.clone()),
            token: holder.map(|h| h.token),
            expires_at_ms: holder.map(|h| h.expires_at_ms),
        }
    }

    fn broadcast_lock_state(&mut self, doc: DocId, key: &str) {
        let msg = self.lock_state_msg(doc, key);
        let Some(frame) = self.encode(&msg) else {
            return;
        };
        let subs: Vec<SessionId> = self
            .docs
            .get(&doc)
            .map(|d| d.subs.keys().copied().collect())
            .unwrap_or_default();
        for s in subs {
            self.deliver(doc, s, Item::Frame(frame.clone()));
        }
    }

    /// Every held lock of the document, to one subscriber that just went live.
    pub(super) fn send_lock_table(&mut self, doc: DocId, session: SessionId) {
        let keys: Vec<String> = self
            .locks
            .get(&doc)
            .and_then(|l| l.table.as_ref())
            .map(|t| t.holders().map(|h| h.key.clone()).collect())
            .unwrap_or_default();
        for key in keys {
            let msg = self.lock_state_msg(doc, &key);
            self.send(session, &msg);
        }
    }

    /// Logs the release of every lock a session held (it disconnected).
    pub(super) fn release_locks_of(&mut self, session: SessionId) {
        let docs: Vec<DocId> = self.locks.keys().copied().collect();
        for doc in docs {
            let changes = match self.locks.get_mut(&doc).and_then(|l| l.table.as_mut()) {
                Some(t) => t.release_session(session),
                None => continue,
            };
            if !changes.is_empty() {
                self.record_locks(doc, None, changes);
            }
        }
    }

    /// Logs every lease that ran out.
    pub(super) fn expire_locks(&mut self, now_ms: u64) {
        let docs: Vec<DocId> = self.locks.keys().copied().collect();
        for doc in docs {
            let changes = match self.locks.get_mut(&doc).and_then(|l| l.table.as_mut()) {
                Some(t) if t.next_expiry().is_some_and(|e| e <= now_ms) => t.expire(now_ms),
                _ => continue,
            };
            if !changes.is_empty() {
                self.record_locks(doc, None, changes);
            }
        }
    }

    /// Drops a document's lock table when nobody subscribes and nothing is held or on its
    /// way: the log's table is then the same, and a later subscription reads it again.
    pub(super) fn forget_locks_if_idle(&mut self, doc: &DocId) {
        if self.docs.contains_key(doc) {
            return;
        }
        let idle = self.locks.get(doc).is_some_and(|l| {
            l.in_flight == 0 && l.held.is_empty() && l.table.as_ref().is_some_and(|t| t.is_empty())
        });
        if idle {
            self.locks.remove(doc);
        }
    }

    /// A session's presence state in a document.
    pub(super) fn presence(&mut self, session: SessionId, doc: DocId, state: Blob, now_ms: u64) {
        if !self.subscribed(session, &doc) {
            self.error(
                session,
                ErrorCode::NotSubscribed,
                "subscribe to the document before setting presence in it",
                Some(doc),
            );
            return;
        }
        if !self.may(session, &doc, Permission::Presence) {
            self.error(
                session,
                ErrorCode::Forbidden,
                "your roles do not allow presence in this document",
                Some(doc),
            );
            return;
        }
        if state.len() > self.config.max_presence_bytes {
            let message = format!(
                "a presence state is at most {} bytes, not {}",
                self.config.max_presence_bytes,
                state.len()
            );
            self.error(session, ErrorCode::PresenceTooLarge, &message, Some(doc));
            return;
        }
        // The identity is the server's: whatever the state says, it is sent as this peer.
        let Some(peer) = self.identity_peer(session) else {
            return;
        };
        let out = self
            .docs
            .get_mut(&doc)
            .and_then(|d| d.presence.set(peer, state, now_ms));
        if let Some(out) = out {
            self.broadcast_presence(doc, out);
        }
    }

    /// Sends a presence update to every live subscriber but its own session.
    pub(super) fn broadcast_presence(&mut self, doc: DocId, out: PresenceOut) {
        let (peer, state) = match out {
            PresenceOut::State { peer, state } => (peer, Some(state)),
            PresenceOut::Left { peer } => (peer, None),
        };
        let from = peer.session;
        let targets: Vec<SessionId> = self
            .docs
            .get(&doc)
            .map(|d| {
                d.subs
                    .iter()
                    .filter(|(s, sub)| **s != from && matches!(sub, super::Sub::Live))
                    .map(|(s, _)| *s)
                    .collect()
            })
            .unwrap_or_default();
        self.send_to(&targets, &ServerMsg::Presence { doc, peer, state });
    }

    /// Everyone's presence, to a subscriber that just went live.
    pub(super) fn send_presence_snapshot(&mut self, doc: DocId, session: SessionId) {
        let states = self
            .docs
            .get(&doc)
            .map(|d| d.presence.snapshot())
            .unwrap_or_default();
        for (peer, state) in states {
            if peer.session != session {
                self.send(
                    session,
                    &ServerMsg::Presence {
                        doc,
                        peer,
                        state: Some(state),
                    },
                );
            }
        }
    }

    pub(super) fn presence_due(&mut self, now_ms: u64) {
        let docs: Vec<DocId> = self
            .docs
            .iter()
            .filter(|(_, d)| d.presence.next_due().is_some_and(|t| t <= now_ms))
            .map(|(id, _)| *id)
            .collect();
        for doc in docs {
            let outs = self
                .docs
                .get_mut(&doc)
                .map(|d| d.presence.due(now_ms))
                .unwrap_or_default();
            for out in outs {
                self.broadcast_presence(doc, out);
            }
        }
    }

    /// When [`Hub::tick`] next has timed work (coalesced presence, presence expiry, lease
    /// expiry), besides the per-second session checks.
    pub fn next_wake_ms(&self) -> Option<u64> {
        let presence = self.docs.values().filter_map(|d| d.presence.next_due());
        let leases = self
            .locks
            .values()
            .filter_map(|l| l.table.as_ref().and_then(LockTable::next_expiry));
        presence.chain(leases).min()
    }
}

impl Hub {
    /// Whether the session's identity may do `p` in `doc` (its roles, its token's grants and
    /// the ACL, as they are now).
    pub(super) fn may(&self, session: SessionId, doc: &DocId, p: Permission) -> bool {
        self.identity(session)
            .is_some_and(|identity| self.permissions_of(identity, doc).has(p))
    }

    /// Sets (or, with `None`, removes) an admin grant: `user` gets `role` in `doc`. Applies at
    /// once: a live session of that user that can no longer read the document loses its
    /// subscription (`Forbidden`); later requests are judged by the new rights.
    pub fn set_acl(&mut self, doc: DocId, user: UserId, role: Option<String>) {
        self.acl.set(doc, user.clone(), role);
        let affected: Vec<SessionId> = self
            .docs
            .get(&doc)
            .map(|d| d.subs.keys().copied().collect())
            .unwrap_or_default();
        for session in affected {
            let theirs = self.identity(session).is_some_and(|i| i.user == user);
            if theirs && !self.may(session, &doc, Permission::Read) {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.docs.remove(&doc);
                    s.reconciling.remove(&doc);
                }
                self.drop_sub(&doc, session);
                self.error(
                    session,
                    ErrorCode::Forbidden,
                    "your access to this document was withdrawn",
                    Some(doc),
                );
            }
        }
    }

    /// What `identity` may do in `doc` now (for the shell's HTTP API).
    pub fn permissions_of(
        &self,
        identity: &crate::auth::Identity,
        doc: &DocId,
    ) -> crate::Permissions {
        permissions(&self.config.roles, &self.acl, identity, doc)
    }

    /// The admin grants of a document.
    pub fn acl(&self, doc: &DocId) -> Vec<(UserId, String)> {
        self.acl.of_doc(doc)
    }

    /// Ends every session of `user` now (`Forbidden`, close 4012 `Revoked`): for a user whose
    /// access was revoked (their tokens should stop being issued too).
    pub fn revoke_user(&mut self, user: &UserId) {
        let theirs: Vec<SessionId> = self
            .sessions
            .keys()
            .copied()
            .filter(|id| self.identity(*id).is_some_and(|i| i.user == *user))
            .collect();
        for session in theirs {
            self.error(
                session,
                ErrorCode::Forbidden,
                "your access was revoked",
                None,
            );
            self.close(
                session,
                converge_proto::CloseCode::Revoked,
                "access revoked",
            );
        }
    }
}

/// An inbox takes only the inbox's own mutators: its owner may mutate it (mark read, set
/// preferences), which must not let them write any other kind of data into it.
fn inbox_denial(doc: &DocId, name: &str) -> Option<String> {
    (doc.is_inbox() && !name.starts_with("inbox."))
        .then(|| format!("an inbox takes only the inbox.* mutators, not {name:?}"))
}
