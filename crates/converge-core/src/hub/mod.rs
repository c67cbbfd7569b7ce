//! The server hub: sessions, subscriptions, push/ack and fan-out, as a state machine.
//!
//! Contract with the shell that drives it:
//! - every [`Output::Append`] is executed in the order it was emitted, and its result is
//!   reported with [`Hub::handle_appended`] only once the append is durable (or failed), again in
//!   emission order. The log assigns seqs in that order too, so fan-out leaves the hub in seq
//!   order and every subscriber sees a gap-free stream;
//! - an [`Output::Catchup`] is answered with [`Hub::handle_catchup`] holding only durable
//!   entries. Anything appended while it ran still reaches the subscriber: it is queued and
//!   sent after the catch-up, minus what the catch-up already covered;
//! - the hub never blocks and never fails with I/O; refusals are values.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use converge_proto::{
    Blob, ChangeHash, ClientId, ClientMsg, CloseCode, DocId, Epoch, ErrorCode, FrameError, Limits,
    MutationOutcome, PROTOCOL_VERSION, Position, Seq, ServerMsg, SessionId, UserId, decode_client,
    encode_server,
};

use crate::auth::{Authenticator, Identity};
use crate::locks::{LockChange, LockHolder, LockTable};
use crate::presence::PresenceTable;
use doc_sets::{DocCounts, DocSet};

mod doc_sets;
mod ops;
mod rooms;

pub use ops::{ExternalMutation, LocksRecorded, Mutated, MutationRequest};
pub use rooms::{Audience, Room};

/// A request to the shell, answered by a `handle_*` call carrying the same ticket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// Who pushed: the log binds actors to `user`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushAuthor {
    pub user: UserId,
    pub session: SessionId,
}

/// What the hub asks of its shell.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send one binary frame. Fan-out sends the same `Bytes` to every subscriber.
    Send { session: SessionId, frame: Bytes },
    /// Close the connection with this code (after the frames already queued for it).
    Close {
        session: SessionId,
        code: CloseCode,
        reason: String,
    },
    /// Append these changes to the document's stream, all or nothing, then report.
    /// `relayed`: the author hands back changes the server lost (reconciliation); they are
    /// logged as relayed changes, which pass every causal check but bind no actor.
    Append {
        ticket: Ticket,
        doc: DocId,
        author: PushAuthor,
        changes: Vec<Blob>,
        relayed: bool,
    },
    /// Nobody subscribes to the document any more: the shell may drop what it keeps in
    /// memory for it (a materialized copy, reconciliation state).
    Release { doc: DocId },
    /// Take one automerge sync message of a reconciliation (see [`SyncStep`]), then report.
    Reconcile {
        ticket: Ticket,
        doc: DocId,
        session: SessionId,
        bytes: Blob,
    },
    /// Read what a subscriber at `after` needs (see [`crate::plan_catchup`]), then report.
    Catchup {
        ticket: Ticket,
        doc: DocId,
        after: Option<Position>,
    },
    /// Run a mutation against the document as the log holds it and log its outcome (and
    /// its change) in one batch, then report with [`Hub::handle_mutated`]. Executed in
    /// emission order together with `Append` and `RecordLocks`, like an append.
    Mutate {
        ticket: Ticket,
        request: MutationRequest,
    },
    /// Log these lock events in order, all or nothing, then report with
    /// [`Hub::handle_locks_recorded`]. Executed in emission order, like an append.
    RecordLocks {
        ticket: Ticket,
        doc: DocId,
        changes: Vec<LockChange>,
    },
    /// Read the document's lock table from the log, then report with
    /// [`Hub::handle_locks_loaded`].
    LoadLocks { ticket: Ticket, doc: DocId },
    /// The outcome of a mutation from outside any session ([`Hub::mutate_external`]).
    MutationDone {
        ticket: Ticket,
        result: Result<MutationOutcome, Refusal>,
        /// The id was processed before: `result` is its recorded outcome, nothing was written.
        replayed: bool,
    },
    /// A user said Hello with roles the directory did not hold: record them (the directory
    /// resolves notifications to roles, also for users offline). No answer is expected.
    RecordUser { user: UserId, roles: Vec<String> },
}

/// The shell's answer to [`Output::Reconcile`]: what the client's sync message showed the
/// server lacks, and the server's next sync message (`None`: the server has nothing more to
/// say, and the reconciliation ends with `Reconciled`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SyncStep {
    /// Changes the server lacks, in an order the log can take them (dependencies first).
    pub missing: Vec<Blob>,
    pub reply: Option<Blob>,
}

/// Sync messages one reconciliation may take before it is cut off (automerge's protocol
/// needs a handful of rounds; a peer that keeps going is misbehaving).
pub const MAX_RECONCILE_ROUNDS: u32 = 32;

/// One pushed change, as the log took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushedChange {
    pub hash: ChangeHash,
    pub seq: Seq,
    /// Written now (false: it was already logged at `seq`).
    pub new: bool,
}

/// A durable append: one entry per pushed change, in push order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Appended {
    pub epoch: Epoch,
    pub changes: Vec<PushedChange>,
}

/// A refused request: the code and message the peer is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl Refusal {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            code,
            message: message.into(),
        }
    }
}

/// What a subscriber needs before going live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Catchup {
    /// Entries `from_seq, from_seq + 1, ...` (empty blobs for entries without a change).
    Replay {
        epoch: Epoch,
        from_seq: Seq,
        entries: Vec<Blob>,
    },
    /// A whole document at `seq`, then entries from `seq + 1`.
    Snapshot {
        epoch: Epoch,
        seq: Seq,
        bytes: Blob,
        tail: Vec<Blob>,
        reconcile: bool,
    },
}

/// Hub settings.
#[derive(Debug, Clone)]
pub struct HubConfig {
    pub limits: Limits,
    /// How often clients should ping; a session silent for twice this is closed.
    pub heartbeat_ms: u64,
    /// A connection that has not sent `Hello` within this is closed.
    pub hello_timeout_ms: u64,
    /// Change bytes per replay frame (a replay is split into frames of about this size).
    pub replay_frame_bytes: usize,
    /// Pushes one session may have waiting for the log per document; more are refused with
    /// `RateLimited` (the reference client keeps one in flight). Bounds what a client that
    /// streams pushes without waiting for Acks can queue on the server.
    pub max_pushes_in_flight: u32,
    /// Mutations one session may have waiting per document; more are refused with
    /// `RateLimited` (the reference client keeps a window below this).
    pub max_mutations_in_flight: u32,
    /// Largest presence state in bytes; a larger one is refused with `PresenceTooLarge`.
    pub max_presence_bytes: usize,
    /// Locks one session may hold (or have on their way) in one document; more are refused
    /// with `RateLimited`. Bounds the lock table and the lock events a peer can cause.
    pub max_locks_per_session: usize,
    /// Role name -> permissions.
    pub roles: crate::permissions::Roles,
    /// Messages per second one connection may send on average (a token bucket holding
    /// `message_burst`); beyond it messages are refused with `RateLimited` and dropped.
    pub messages_per_sec: u32,
    pub message_burst: u32,
    /// Messages per second over all connections of one user (so more connections do not
    /// raise a user's rate).
    pub user_message_rate: crate::Rate,
    /// `Publish`es per second from one connection, and from one user.
    pub publish_rate: crate::Rate,
    pub user_publish_rate: crate::Rate,
    /// Largest event data in bytes; larger is refused with `EventTooLarge`.
    pub max_event_bytes: usize,
    /// Connections one user may have open; one more is refused with `TooManyConnections`.
    pub max_connections_per_user: u32,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            limits: Limits {
                max_frame_bytes: converge_proto::DEFAULT_MAX_FRAME_BYTES as u32,
                max_server_frame_bytes: converge_proto::DEFAULT_MAX_SERVER_FRAME_BYTES as u32,
                max_change_bytes: converge_proto::limits::MAX_CHANGE_BYTES as u32,
                max_push_changes: 1024,
                max_docs: 1024,
            },
            heartbeat_ms: 25_000,
            hello_timeout_ms: 10_000,
            replay_frame_bytes: 256 * 1024,
            max_pushes_in_flight: 16,
            max_mutations_in_flight: 64,
            max_presence_bytes: 4096,
            max_locks_per_session: 64,
            roles: crate::permissions::Roles::default(),
            messages_per_sec: 500,
            message_burst: 1000,
            user_message_rate: crate::Rate {
                per_sec: 2000,
                burst: 4000,
            },
            publish_rate: crate::Rate {
                per_sec: 50,
                burst: 100,
            },
            user_publish_rate: crate::Rate {
                per_sec: 100,
                burst: 200,
            },
            max_event_bytes: 64 * 1024,
            max_connections_per_user: 64,
        }
    }
}

/// Counts for /api/stats and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HubStats {
    pub sessions: usize,
    pub subscriptions: usize,
    pub docs: usize,
    /// Ready sessions per user.
    pub sessions_by_user: std::collections::BTreeMap<String, usize>,
    /// Locks held, over every document.
    pub locks_held: usize,
    /// Members (sessions) of every non-empty room, by room name.
    pub rooms: std::collections::BTreeMap<String, usize>,
    /// Users in the directory (seen at some time).
    pub known_users: usize,
    /// Events delivered to rooms since start (from sessions and backends).
    pub events_published: u64,
}

#[derive(Debug)]
enum Handshake {
    /// `upgrade_token`: the token the WebSocket upgrade carried (`Authorization: Bearer`),
    /// used when `Hello` has none.
    AwaitingHello {
        since_ms: u64,
        upgrade_token: Option<String>,
    },
    Ready {
        identity: Identity,
    },
}

#[derive(Debug)]
struct Session {
    handshake: Handshake,
    client: Option<ClientId>,
    docs: DocSet,
    /// Documents this session may reconcile (it was sent a reconciling snapshot), with the
    /// sync messages taken so far.
    reconciling: DocCounts,
    /// Pushes handed to the shell and not yet answered, per document.
    pushes_in_flight: DocCounts,
    /// Mutations handed to the shell and not yet answered, per document.
    mutations_in_flight: DocCounts,
    /// The message rate limit.
    messages: crate::Bucket,
    /// The publish rate limit.
    publishes: crate::Bucket,
    /// When this session was last told it is rate limited (told at most once a second,
    /// except for pushes and mutations, which the client must know to send again).
    limited_told_ms: Option<u64>,
    last_seen_ms: u64,
    closed: bool,
}

/// Something sent to a subscriber in seq order: a fan-out frame or an Ack of its own push.
#[derive(Debug, Clone)]
enum Item {
    /// Entries `from..` from someone else's push; `frame` is the encoded `Changes`.
    Changes {
        from: Seq,
        changes: std::sync::Arc<Vec<Blob>>,
        frame: Bytes,
    },
    /// An Ack; `new` names the seqs the session's own changes took.
    Ack {
        upto: Seq,
        heads: Vec<ChangeHash>,
        new: Option<(Seq, Seq)>,
    },
    /// A frame that must follow the entries before it (a mutation result, a lock state).
    Frame(Bytes),
}

/// A subscription. Boxed while catching up, so the per-document map's slot (one per
/// subscriber, most of them live and idle) is a pointer, not the queue.
#[derive(Debug)]
enum Sub {
    /// Waiting for a catch-up; items released meanwhile are queued here.
    CatchingUp(Box<CatchUp>),
    Live,
}

#[derive(Debug)]
struct CatchUp {
    ticket: Ticket,
    queued: Vec<Item>,
}

#[derive(Debug, Default)]
struct Doc {
    subs: HashMap<SessionId, Sub>,
    epoch: Option<Epoch>,
    presence: PresenceTable,
}

/// A document's lock table, kept while it holds a lock or has a lock event in flight, also
/// when nobody subscribes (leases still run out and are logged as expired).
#[derive(Debug, Default)]
struct LockDoc {
    /// `None` while it is being read from the log.
    table: Option<LockTable>,
    /// Requests that need the table, waiting for it to load.
    held: Vec<Held>,
    /// Lock events handed to the shell and not answered.
    in_flight: u32,
}

#[derive(Debug)]
enum Held {
    Msg(SessionId, ClientMsg),
    External(Ticket, ExternalMutation),
}

/// Where a mutation came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Session(SessionId),
    External,
}

#[derive(Debug)]
enum Pending {
    Push {
        doc: DocId,
        session: SessionId,
    },
    Catchup {
        doc: DocId,
        session: SessionId,
    },
    /// A reconciliation's sync message, with the shell.
    Reconcile {
        doc: DocId,
        session: SessionId,
    },
    /// Changes a reconciliation relayed, being appended; the last group carries the reply.
    Relay {
        doc: DocId,
        session: SessionId,
        then: Option<Option<Blob>>,
    },
    Mutate {
        doc: DocId,
        origin: Origin,
        mutation_id: converge_proto::MutationId,
    },
    /// Lock events being logged; `session` asked for the last of them.
    Locks {
        doc: DocId,
        session: Option<SessionId>,
        changes: Vec<LockChange>,
    },
    LoadLocks {
        doc: DocId,
    },
}

/// The server hub. See the module docs for the contract.
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    auth: Box<dyn Authenticator>,
    /// Boxed: the map keeps ~40% of its slots empty, and an idle connection should not pay
    /// for a whole session in each of those.
    sessions: HashMap<SessionId, Box<Session>>,
    docs: HashMap<DocId, Doc>,
    locks: HashMap<DocId, LockDoc>,
    /// Per-document grants set by admins.
    acl: crate::permissions::Acl,
    /// Users with a session now: their sessions and per-user rate limits.
    users: HashMap<UserId, rooms::UserState>,
    /// Users seen at some time, with the roles of their last token (interned in `role_sets`).
    directory: HashMap<UserId, std::sync::Arc<[String]>>,
    role_sets: std::collections::HashSet<std::sync::Arc<[String]>>,
    /// Events delivered since start (for metrics).
    events_published: u64,
    pending: HashMap<Ticket, Pending>,
    out: VecDeque<Output>,
    next_session: u64,
    next_ticket: u64,
    shutting_down: bool,
}

impl Hub {
    pub fn new(config: HubConfig, auth: Box<dyn Authenticator>) -> Self {
        Hub {
            config,
            auth,
            sessions: HashMap::new(),
            docs: HashMap::new(),
            locks: HashMap::new(),
            acl: crate::permissions::Acl::default(),
            users: HashMap::new(),
            directory: HashMap::new(),
            role_sets: std::collections::HashSet::new(),
            events_published: 0,
            pending: HashMap::new(),
            out: VecDeque::new(),
            next_session: 1,
            next_ticket: 1,
            shutting_down: false,
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    fn message_rate(&self) -> crate::Rate {
        crate::Rate {
            per_sec: self.config.messages_per_sec,
            burst: self.config.message_burst,
        }
    }

    /// A connection opened. Returns its session id.
    pub fn connect(&mut self, now_ms: u64) -> SessionId {
        self.connect_with_token(now_ms, None)
    }

    /// A connection opened whose upgrade request carried a token (`Authorization: Bearer`);
    /// `Hello` may then leave its token out.
    pub fn connect_with_token(&mut self, now_ms: u64, token: Option<String>) -> SessionId {
        let id = SessionId(self.next_session);
        self.next_session += 1;
        self.sessions.insert(
            id,
            Box::new(Session {
                handshake: Handshake::AwaitingHello {
                    since_ms: now_ms,
                    upgrade_token: token,
                },
                client: None,
                docs: DocSet::default(),
                reconciling: DocCounts::default(),
                pushes_in_flight: DocCounts::default(),
                mutations_in_flight: DocCounts::default(),
                messages: crate::Bucket::full(self.message_rate(), now_ms),
                publishes: crate::Bucket::full(self.config.publish_rate, now_ms),
                limited_told_ms: None,
                last_seen_ms: now_ms,
                closed: false,
            }),
        );
        if self.shutting_down {
            self.close(id, CloseCode::ServerShutdown, "server is shutting down");
        }
        id
    }

    /// The connection is gone (closed by either side). Forgets its subscriptions.
    pub fn disconnect(&mut self, session: SessionId) {
        if let Some(s) = self.sessions.remove(&session) {
            let s = *s;
            for doc in s.docs {
                self.drop_sub(&doc, session);
            }
            if let Handshake::Ready { identity } = s.handshake {
                self.user_left(session, &identity.user);
            }
        }
        // Offline clients hold no locks.
        self.release_locks_of(session);
    }

    /// A binary frame arrived.
    pub fn handle_frame(&mut self, session: SessionId, frame: &[u8], now_ms: u64) {
        let limit = self.config.limits.max_frame_bytes as usize;
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.closed {
            return;
        }
        s.last_seen_ms = now_ms;
        let rate = crate::Rate {
            per_sec: self.config.messages_per_sec,
            burst: self.config.message_burst,
        };
        let mut allowed = s.messages.take(rate, now_ms);
        let user = match &s.handshake {
            Handshake::Ready { identity } => Some(identity.user.clone()),
            Handshake::AwaitingHello { .. } => None,
        };
        if allowed && let Some(user) = user {
            allowed = self.user_may_send(&user, now_ms);
        }
        match decode_client(frame, limit) {
            Ok(msg) if allowed => self.handle_msg(session, msg, now_ms),
            Ok(msg) => self.rate_limited(session, &msg, now_ms),
            Err(e) => self.refuse_frame(session, &e),
        }
    }

    /// The shell dropped messages of this session over its rate limit (it checks before the
    /// hub, so a flood never queues here): the client is told, and re-sends what it needs.
    pub fn handle_rate_limited(&mut self, session: SessionId) {
        let message = format!(
            "more than {} messages per second: messages were dropped",
            self.config.messages_per_sec
        );
        self.error(session, ErrorCode::RateLimited, &message, None);
    }

    /// A message over the connection's rate: dropped, and the sender told (`RateLimited`).
    fn rate_limited(&mut self, session: SessionId, msg: &ClientMsg, now_ms: u64) {
        let rate = self.config.messages_per_sec;
        let (doc, message) = match msg {
            ClientMsg::Mutate {
                doc, mutation_id, ..
            } => (
                Some(*doc),
                format!(
                    "mutation {}: more than {rate} messages per second; send it again later",
                    mutation_id.get()
                ),
            ),
            ClientMsg::Push { doc, .. } => (
                Some(*doc),
                format!("push dropped: more than {rate} messages per second"),
            ),
            _ => {
                let Some(s) = self.sessions.get_mut(&session) else {
                    return;
                };
                if s.limited_told_ms
                    .is_some_and(|t| now_ms.saturating_sub(t) < 1000)
                {
                    return;
                }
                s.limited_told_ms = Some(now_ms);
                (
                    None,
                    format!("more than {rate} messages per second: messages were dropped"),
                )
            }
        };
        self.error(session, ErrorCode::RateLimited, &message, doc);
    }

    /// A text frame arrived: the protocol is binary only.
    pub fn handle_text(&mut self, session: SessionId) {
        self.error(
            session,
            ErrorCode::TextFrame,
            "text frames are not part of the protocol",
            None,
        );
        self.close(session, CloseCode::ProtocolViolation, "text frame");
    }

    /// A frame was larger than the transport allows (the shell's reader refused it).
    pub fn handle_oversize(&mut self, session: SessionId, size: usize) {
        let e = FrameError::TooLarge {
            size,
            limit: self.config.limits.max_frame_bytes as usize,
        };
        self.refuse_frame(session, &e);
    }

    /// The shell could not queue a frame for this session (it reads too slowly): it is closed
    /// rather than let its backlog grow without bound.
    pub fn handle_slow_consumer(&mut self, session: SessionId) {
        self.close(session, CloseCode::SlowConsumer, "outbound queue full");
    }

    fn refuse_frame(&mut self, session: SessionId, e: &FrameError) {
        self.error(session, e.code(), &e.to_string(), None);
        self.close(session, e.close_code(), &e.to_string());
    }

    /// Time passes: closes connections that never said Hello or went silent, sends
    /// coalesced presence, drops expired presence and logs expired leases. Call it at least
    /// every second, and at [`Hub::next_wake_ms`].
    pub fn tick(&mut self, now_ms: u64) {
        self.presence_due(now_ms);
        self.expire_locks(now_ms);
        let silent = self.config.heartbeat_ms.saturating_mul(2);
        let mut expired = Vec::new();
        for (id, s) in &self.sessions {
            if s.closed {
                continue;
            }
            match s.handshake {
                Handshake::AwaitingHello { since_ms, .. }
                    if now_ms.saturating_sub(since_ms) > self.config.hello_timeout_ms =>
                {
                    expired.push((*id, CloseCode::HelloTimeout));
                }
                Handshake::Ready { ref identity }
                    if identity.expires_at_ms.is_some_and(|e| e <= now_ms) =>
                {
                    expired.push((*id, CloseCode::TokenExpired));
                }
                Handshake::Ready { .. } if now_ms.saturating_sub(s.last_seen_ms) > silent => {
                    expired.push((*id, CloseCode::HeartbeatTimeout));
                }
                _ => {}
            }
        }
        expired.sort_by_key(|(id, _)| *id);
        for (id, code) in expired {
            if code == CloseCode::TokenExpired {
                self.error(
                    id,
                    ErrorCode::TokenExpired,
                    "the token expired; send Reauth before it does",
                    None,
                );
                self.close(id, code, "token expired");
            } else {
                self.close(id, code, "timed out");
            }
        }
    }

    /// Stop: every session is closed with `ServerShutdown`; new connections are refused.
    /// Pending appends still report (the shell drains them before closing the log).
    ///
    /// Sessions are closed once every push already handed to the shell has been reported, so
    /// the Acks of work accepted before the shutdown still reach their clients. Pushes that
    /// arrive meanwhile are refused with `ShuttingDown`.
    pub fn shutdown(&mut self) {
        self.shutting_down = true;
        self.finish_shutdown();
    }

    /// Whether shutdown began and every accepted push has been answered.
    pub fn drained(&self) -> bool {
        self.shutting_down
            && !self.pending.values().any(|p| {
                matches!(
                    p,
                    Pending::Push { .. }
                        | Pending::Relay { .. }
                        | Pending::Mutate { .. }
                        | Pending::Locks { .. }
                )
            })
    }

    fn finish_shutdown(&mut self) {
        if !self.drained() {
            return;
        }
        let mut ids: Vec<SessionId> = self.sessions.keys().copied().collect();
        ids.sort();
        for id in ids {
            self.close(id, CloseCode::ServerShutdown, "server is shutting down");
        }
    }

    pub fn stats(&self) -> HubStats {
        let mut sessions_by_user = std::collections::BTreeMap::new();
        for s in self.sessions.values().filter(|s| !s.closed) {
            if let Handshake::Ready { identity } = &s.handshake {
                *sessions_by_user
                    .entry(identity.user.as_str().to_string())
                    .or_insert(0) += 1;
            }
        }
        HubStats {
            // Closed sessions wait for their connection to go; they no longer count.
            sessions: self.sessions.values().filter(|s| !s.closed).count(),
            subscriptions: self.docs.values().map(|d| d.subs.len()).sum(),
            docs: self.docs.len(),
            sessions_by_user,
            locks_held: self
                .locks
                .values()
                .filter_map(|l| l.table.as_ref())
                .map(|t| t.holders().count())
                .sum(),
            rooms: self.room_sizes(),
            known_users: self.directory.len(),
            events_published: self.events_published,
        }
    }

    /// The next request or frame for the shell.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    fn handle_msg(&mut self, session: SessionId, msg: ClientMsg, now_ms: u64) {
        let ready = matches!(
            self.sessions.get(&session).map(|s| &s.handshake),
            Some(Handshake::Ready { .. })
        );
        match msg {
            ClientMsg::Hello {
                protocol,
                client_id,
                token,
            } => {
                if ready {
                    self.error(
                        session,
                        ErrorCode::DuplicateHello,
                        "Hello was already sent",
                        None,
                    );
                    self.close(session, CloseCode::ProtocolViolation, "second Hello");
                } else {
                    self.hello(session, protocol, client_id, token.as_deref(), now_ms);
                }
            }
            _ if !ready => {
                self.error(session, ErrorCode::HelloRequired, "send Hello first", None);
                self.close(
                    session,
                    CloseCode::ProtocolViolation,
                    "message before Hello",
                );
            }
            ClientMsg::Ping { nonce } => self.send(
                session,
                &ServerMsg::Pong {
                    nonce,
                    server_time_ms: now_ms,
                },
            ),
            ClientMsg::Subscribe { doc, after } => self.subscribe(session, doc, after),
            ClientMsg::Unsubscribe { doc } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.docs.remove(&doc);
                    s.reconciling.remove(&doc);
                }
                self.drop_sub(&doc, session);
            }
            ClientMsg::Push { doc, changes } => self.push(session, doc, changes),
            ClientMsg::SyncMsg { doc, bytes } => self.sync_msg(session, doc, bytes),
            msg @ (ClientMsg::Mutate { .. }
            | ClientMsg::Lock { .. }
            | ClientMsg::RenewLock { .. }
            | ClientMsg::Unlock { .. }) => self.lock_or_mutate(session, msg, now_ms),
            ClientMsg::Presence { doc, state } => self.presence(session, doc, state, now_ms),
            ClientMsg::Reauth { token } => self.reauth(session, &token, now_ms),
            ClientMsg::Publish { room, event, data } => {
                self.publish(session, room, event, data, now_ms)
            }
        }
    }

    fn hello(
        &mut self,
        session: SessionId,
        protocol: u16,
        client: ClientId,
        token: Option<&str>,
        now_ms: u64,
    ) {
        if protocol != PROTOCOL_VERSION {
            self.error(
                session,
                ErrorCode::UnsupportedProtocol,
                &format!(
                    "protocol {protocol} is not supported (this server speaks {PROTOCOL_VERSION})"
                ),
                None,
            );
            self.close(
                session,
                CloseCode::UnsupportedProtocol,
                "unsupported protocol",
            );
            return;
        }
        let upgrade = match self.sessions.get_mut(&session).map(|s| &mut s.handshake) {
            Some(Handshake::AwaitingHello { upgrade_token, .. }) => upgrade_token.take(),
            _ => None,
        };
        let token = token.or(upgrade.as_deref());
        let identity = match self.auth.authenticate(token, now_ms) {
            Ok(i) => self.kept(i),
            Err(e) => {
                self.error(session, e.code, &e.message, None);
                self.close(session, CloseCode::Unauthorized, &e.message);
                return;
            }
        };
        let welcome = ServerMsg::Welcome {
            session,
            user: identity.user.clone(),
            roles: identity.roles.to_vec(),
            server_time_ms: now_ms,
            heartbeat_ms: self.config.heartbeat_ms,
            limits: self.config.limits.clone(),
        };
        if !self.user_joined(session, &identity, now_ms) {
            return;
        }
        if let Some(s) = self.sessions.get_mut(&session) {
            s.handshake = Handshake::Ready { identity };
            s.client = Some(client);
        }
        self.send(session, &welcome);
    }

    /// A fresh token for a live session: the same user, a new expiry (and roles, grants).
    /// A refused token changes nothing (the session ends when the old one expires); a token
    /// for another user ends the session.
    fn reauth(&mut self, session: SessionId, token: &str, now_ms: u64) {
        let identity = match self.auth.authenticate(Some(token), now_ms) {
            Ok(i) => self.kept(i),
            Err(e) => {
                self.error(session, e.code, &e.message, None);
                return;
            }
        };
        let Some(Session {
            handshake: Handshake::Ready { identity: current },
            ..
        }) = self.sessions.get_mut(&session).map(|s| &mut **s)
        else {
            return;
        };
        if current.user != identity.user {
            self.error(
                session,
                ErrorCode::UserChanged,
                "Reauth must keep the user; connect again as the other user",
                None,
            );
            self.close(session, CloseCode::Revoked, "Reauth for another user");
            return;
        }
        *current = identity.clone();
        self.note_roles(&identity);
    }

    fn subscribe(&mut self, session: SessionId, doc: DocId, after: Option<Position>) {
        let max_docs = self.config.limits.max_docs as usize;
        if !self.may(session, &doc, crate::permissions::Permission::Read) {
            self.error(
                session,
                ErrorCode::Forbidden,
                "your roles do not allow reading this document",
                Some(doc),
            );
            return;
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if !s.docs.contains(&doc) && s.docs.len() >= max_docs {
            self.error(
                session,
                ErrorCode::TooManyDocs,
                &format!("at most {max_docs} documents per connection"),
                Some(doc),
            );
            return;
        }
        s.docs.insert(doc);
        // A new subscription decides afresh whether this session must reconcile.
        s.reconciling.remove(&doc);
        // Register first, then read: whatever is appended while the read runs is queued.
        // A subscription still catching up is replaced; the answers queued for it (Acks,
        // mutation and lock results) carry over, its entries are read again.
        let ticket = self.ticket();
        let d = self.docs.entry(doc).or_default();
        let carried: Vec<Item> = match d.subs.remove(&session) {
            Some(Sub::CatchingUp(c)) => c
                .queued
                .into_iter()
                .filter(|i| !matches!(i, Item::Changes { .. }))
                .collect(),
            _ => Vec::new(),
        };
        d.subs.insert(
            session,
            Sub::CatchingUp(Box::new(CatchUp {
                ticket,
                queued: carried,
            })),
        );
        self.pending
            .insert(ticket, Pending::Catchup { doc, session });
        self.out.push_back(Output::Catchup { ticket, doc, after });
        self.load_locks(doc);
    }

    fn push(&mut self, session: SessionId, doc: DocId, changes: Vec<Blob>) {
        let limits = &self.config.limits;
        let subscribed = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.docs.contains(&doc));
        let refusal = if self.shutting_down {
            Some(Refusal::new(
                ErrorCode::ShuttingDown,
                "the server is shutting down; push again after reconnecting",
            ))
        } else if !subscribed {
            Some(Refusal::new(
                ErrorCode::NotSubscribed,
                "subscribe to the document before pushing to it",
            ))
        } else if !self.may(session, &doc, crate::permissions::Permission::Write) {
            Some(Refusal::new(
                ErrorCode::Forbidden,
                "push refused: your roles do not allow writing this document",
            ))
        } else if self
            .sessions
            .get(&session)
            .and_then(|s| s.pushes_in_flight.get(&doc))
            .is_some_and(|n| *n >= self.config.max_pushes_in_flight)
        {
            Some(Refusal::new(
                ErrorCode::RateLimited,
                format!(
                    "{} pushes to this document are already waiting for the log; wait for their Acks",
                    self.config.max_pushes_in_flight
                ),
            ))
        } else if changes.is_empty() || changes.len() > limits.max_push_changes as usize {
            Some(Refusal::new(
                ErrorCode::TooManyChanges,
                format!(
                    "a push holds 1 to {} changes, not {}",
                    limits.max_push_changes,
                    changes.len()
                ),
            ))
        } else {
            changes
                .iter()
                .find(|c| c.len() > limits.max_change_bytes as usize)
                .map(|c| {
                    Refusal::new(
                        ErrorCode::ChangeTooLarge,
                        format!(
                            "a change of {} bytes is over the limit of {}",
                            c.len(),
                            limits.max_change_bytes
                        ),
                    )
                })
        };
        if let Some(r) = refusal {
            self.error(session, r.code, &r.message, Some(doc));
            return;
        }
        let Some(author) = self.author(session) else {
            return;
        };
        if let Some(s) = self.sessions.get_mut(&session) {
            *s.pushes_in_flight.entry(doc) += 1;
        }
        let ticket = self.ticket();
        self.pending.insert(ticket, Pending::Push { doc, session });
        self.out.push_back(Output::Append {
            ticket,
            doc,
            author,
            changes,
            relayed: false,
        });
    }

    /// Who a ready session writes as.
    fn author(&self, session: SessionId) -> Option<PushAuthor> {
        self.identity(session).map(|identity| PushAuthor {
            user: identity.user.clone(),
            session,
        })
    }

    /// The identity of a session that finished its handshake.
    fn identity(&self, session: SessionId) -> Option<&Identity> {
        match self.sessions.get(&session).map(|s| &**s) {
            Some(Session {
                handshake: Handshake::Ready { identity },
                ..
            }) => Some(identity),
            _ => None,
        }
    }

    /// A reconciliation's sync message from the client: only after a reconciling snapshot,
    /// and at most [`MAX_RECONCILE_ROUNDS`] of them.
    fn sync_msg(&mut self, session: SessionId, doc: DocId, bytes: Blob) {
        if self.shutting_down {
            self.error(
                session,
                ErrorCode::ShuttingDown,
                "the server is shutting down; reconcile after reconnecting",
                Some(doc),
            );
            return;
        }
        // One step at a time per document: the client sends its next message only after the
        // server's answer, and every step is automerge work on the server's few work
        // threads, so a peer must not queue a reconciliation's rounds all at once.
        let in_flight = self.pending.values().any(|p| {
            matches!(p, Pending::Reconcile { doc: d, session: s } if *d == doc && *s == session)
        });
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        let refusal = match s.reconciling.get_mut(&doc) {
            None => Some("no reconciliation is open for this document"),
            Some(_) if in_flight => {
                s.reconciling.remove(&doc);
                Some(
                    "a sync message came before the answer to the previous one; the reconciliation was ended",
                )
            }
            Some(rounds) if *rounds >= MAX_RECONCILE_ROUNDS => {
                s.reconciling.remove(&doc);
                Some("the reconciliation took too many rounds and was ended")
            }
            Some(rounds) => {
                *rounds += 1;
                None
            }
        };
        if let Some(message) = refusal {
            self.error(session, ErrorCode::BadSyncMessage, message, Some(doc));
            return;
        }
        let ticket = self.ticket();
        self.pending
            .insert(ticket, Pending::Reconcile { doc, session });
        self.out.push_back(Output::Reconcile {
            ticket,
            doc,
            session,
            bytes,
        });
    }

    /// The shell's answer to [`Output::Reconcile`]. The changes the server lacks are appended
    /// as relayed changes, in groups of at most `max_push_changes`, in order; the reply goes
    /// out once the last group is durable.
    pub fn handle_reconcile(&mut self, ticket: Ticket, result: Result<SyncStep, Refusal>) {
        let Some(Pending::Reconcile { doc, session }) = self.pending.remove(&ticket) else {
            return;
        };
        let still_open = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.reconciling.contains_key(&doc));
        if !still_open {
            return;
        }
        let step = match result {
            Ok(step) => step,
            Err(r) => {
                self.reconcile_failed(session, doc, &r);
                return;
            }
        };
        if step.missing.is_empty() {
            self.reconcile_reply(session, doc, step.reply);
            return;
        }
        let Some(author) = self.author(session) else {
            return;
        };
        let group = (self.config.limits.max_push_changes as usize).max(1);
        let groups: Vec<Vec<Blob>> = step.missing.chunks(group).map(<[Blob]>::to_vec).collect();
        let last = groups.len() - 1;
        let mut reply = Some(step.reply);
        for (i, changes) in groups.into_iter().enumerate() {
            let ticket = self.ticket();
            let then = if i == last { reply.take() } else { None };
            self.pending
                .insert(ticket, Pending::Relay { doc, session, then });
            self.out.push_back(Output::Append {
                ticket,
                doc,
                author: author.clone(),
                changes,
                relayed: true,
            });
        }
    }

    /// Sends the server's next sync message, or ends the reconciliation.
    fn reconcile_reply(&mut self, session: SessionId, doc: DocId, reply: Option<Blob>) {
        match reply {
            Some(bytes) => self.send(session, &ServerMsg::SyncMsg { doc, bytes }),
            None => {
                self.end_reconcile(session, doc);
                self.send(session, &ServerMsg::Reconciled { doc });
            }
        }
    }

    /// A reconciliation step was refused: the reconciliation ends with `BadSyncMessage`
    /// (never a push-refusal code, which the client would take as about its own push).
    fn reconcile_failed(&mut self, session: SessionId, doc: DocId, r: &Refusal) {
        self.end_reconcile(session, doc);
        let message = format!("reconciliation ended: {} ({})", r.message, r.code.code());
        self.error(session, ErrorCode::BadSyncMessage, &message, Some(doc));
    }

    fn end_reconcile(&mut self, session: SessionId, doc: DocId) {
        if let Some(s) = self.sessions.get_mut(&session) {
            s.reconciling.remove(&doc);
        }
    }

    /// The shell's answer to [`Output::Append`]: durable, or refused with nothing written.
    /// `changes` must be the pushed changes in push order (to fan out the new ones).
    pub fn handle_appended(
        &mut self,
        ticket: Ticket,
        changes: &[Blob],
        result: Result<Appended, Refusal>,
    ) {
        self.appended(ticket, changes, result);
        if self.shutting_down {
            self.finish_shutdown();
        }
    }

    fn appended(&mut self, ticket: Ticket, changes: &[Blob], result: Result<Appended, Refusal>) {
        let (doc, session) = match self.pending.remove(&ticket) {
            Some(Pending::Push { doc, session }) => {
                if let Some(s) = self.sessions.get_mut(&session)
                    && let Some(n) = s.pushes_in_flight.get_mut(&doc)
                {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        s.pushes_in_flight.remove(&doc);
                    }
                }
                (doc, session)
            }
            Some(Pending::Relay { doc, session, then }) => {
                self.relayed(doc, session, changes, result, then);
                return;
            }
            Some(other) => {
                self.pending.insert(ticket, other);
                return;
            }
            None => return,
        };
        let appended = match result {
            Ok(a) => a,
            Err(r) => {
                self.error(session, r.code, &r.message, Some(doc));
                return;
            }
        };
        let new = self.logged(doc, &appended, changes);
        let heads: Vec<ChangeHash> = appended.changes.iter().map(|c| c.hash).collect();
        let range = new.first().zip(new.last()).map(|(a, b)| (a.0, b.0));
        let upto = appended
            .changes
            .iter()
            .map(|c| c.seq)
            .max()
            .unwrap_or(Seq(0));
        let ack = Item::Ack {
            upto,
            heads,
            new: range,
        };
        self.deliver(doc, session, ack);
        self.fan_out(doc, appended.epoch, new, Some(session));
    }

    /// Records the stream's epoch from a durable append and returns the entries it wrote
    /// (seq and bytes, in order; duplicates left out).
    fn logged<'a>(
        &mut self,
        doc: DocId,
        appended: &Appended,
        changes: &'a [Blob],
    ) -> Vec<(Seq, &'a Blob)> {
        if let Some(d) = self.docs.get_mut(&doc) {
            d.epoch = Some(appended.epoch);
        }
        appended
            .changes
            .iter()
            .zip(changes)
            .filter(|(c, _)| c.new)
            .map(|(c, b)| (c.seq, b))
            .collect()
    }

    /// Relayed changes are durable: everyone, the relayer too, hears them as `Changes` (the
    /// relayer holds them already, but its position must move past their seqs).
    fn relayed(
        &mut self,
        doc: DocId,
        session: SessionId,
        changes: &[Blob],
        result: Result<Appended, Refusal>,
        then: Option<Option<Blob>>,
    ) {
        let appended = match result {
            Ok(a) => a,
            Err(r) => {
                self.reconcile_failed(session, doc, &r);
                return;
            }
        };
        let new = self.logged(doc, &appended, changes);
        self.fan_out(doc, appended.epoch, new, None);
        let open = self
            .sessions
            .get(&session)
            .is_some_and(|s| s.reconciling.contains_key(&doc));
        if let Some(reply) = then
            && open
        {
            self.reconcile_reply(session, doc, reply);
        }
    }

    /// Sends newly logged entries (consecutive seqs) to every subscriber but `except`: one
    /// encoded frame for all.
    fn fan_out(
        &mut self,
        doc: DocId,
        epoch: Epoch,
        new: Vec<(Seq, &Blob)>,
        except: Option<SessionId>,
    ) {
        let Some(from) = new.first().map(|(s, _)| *s) else {
            return;
        };
        let blobs: Vec<Blob> = new.into_iter().map(|(_, b)| b.clone()).collect();
        let msg = ServerMsg::Changes {
            doc,
            epoch,
            from_seq: from,
            changes: blobs,
        };
        let Some(frame) = self.encode(&msg) else {
            return;
        };
        let ServerMsg::Changes { changes, .. } = msg else {
            return;
        };
        let item = Item::Changes {
            from,
            changes: std::sync::Arc::new(changes),
            frame,
        };
        let others: Vec<SessionId> = self
            .docs
            .get(&doc)
            .map(|d| {
                d.subs
                    .keys()
                    .copied()
                    .filter(|s| Some(*s) != except)
                    .collect()
            })
            .unwrap_or_default();
        for other in others {
            self.deliver(doc, other, item.clone());
        }
    }

    /// Sends an item to a subscriber now, or queues it while the subscriber catches up.
    fn deliver(&mut self, doc: DocId, session: SessionId, item: Item) {
        let Some(sub) = self
            .docs
            .get_mut(&doc)
            .and_then(|d| d.subs.get_mut(&session))
        else {
            // Not subscribed any more; an Ack or a result still goes to the session.
            match item {
                Item::Ack { upto, heads, new } => self.send_ack(session, doc, upto, heads, new),
                Item::Frame(frame) => self.send_frame(session, frame),
                Item::Changes { .. } => {}
            }
            return;
        };
        match sub {
            Sub::CatchingUp(c) => c.queued.push(item),
            Sub::Live => self.send_item(doc, session, item),
        }
    }

    fn send_item(&mut self, doc: DocId, session: SessionId, item: Item) {
        match item {
            Item::Changes { frame, .. } | Item::Frame(frame) => self.send_frame(session, frame),
            Item::Ack { upto, heads, new } => self.send_ack(session, doc, upto, heads, new),
        }
    }

    /// The shell's answer to [`Output::Catchup`].
    pub fn handle_catchup(&mut self, ticket: Ticket, result: Result<Catchup, Refusal>) {
        let Some(Pending::Catchup { doc, session }) = self.pending.remove(&ticket) else {
            return;
        };
        // A newer Subscribe for the same doc replaced this one: ignore the stale answer.
        let queued = match self
            .docs
            .get_mut(&doc)
            .and_then(|d| d.subs.get_mut(&session))
        {
            Some(Sub::CatchingUp(c)) if c.ticket == ticket => std::mem::take(&mut c.queued),
            _ => return,
        };
        let catchup = match result {
            Ok(c) => c,
            Err(r) => {
                self.flush_answers(doc, session, queued);
                self.error(session, r.code, &r.message, Some(doc));
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.docs.remove(&doc);
                }
                self.drop_sub(&doc, session);
                return;
            }
        };
        let (epoch, through) = match catchup {
            Catchup::Replay {
                epoch,
                from_seq,
                entries,
            } => {
                let through = Seq((from_seq.get() + entries.len() as u64).saturating_sub(1));
                self.send_replay(session, doc, epoch, from_seq, entries);
                (epoch, through)
            }
            Catchup::Snapshot {
                epoch,
                seq,
                bytes,
                tail,
                reconcile,
            } => {
                if reconcile && let Some(s) = self.sessions.get_mut(&session) {
                    s.reconciling.insert(doc, 0);
                }
                let size = bytes.len() + 64;
                if size > self.config.limits.max_server_frame_bytes as usize {
                    self.flush_answers(doc, session, queued);
                    self.error(
                        session,
                        ErrorCode::SnapshotTooLarge,
                        &format!("the snapshot is {size} bytes, over the frame limit"),
                        Some(doc),
                    );
                    if let Some(s) = self.sessions.get_mut(&session) {
                        s.docs.remove(&doc);
                    }
                    self.drop_sub(&doc, session);
                    return;
                }
                self.send(
                    session,
                    &ServerMsg::Snapshot {
                        doc,
                        epoch,
                        seq,
                        bytes,
                        reconcile,
                    },
                );
                let through = Seq(seq.get() + tail.len() as u64);
                self.send_replay(session, doc, epoch, seq.next(), tail);
                (epoch, through)
            }
        };
        let d = self.docs.entry(doc).or_default();
        d.epoch = Some(epoch);
        if let Some(sub) = d.subs.get_mut(&session) {
            *sub = Sub::Live;
        }
        self.send(
            session,
            &ServerMsg::Live {
                doc,
                epoch,
                seq: through,
            },
        );
        // The document's locks and presence as they are now, before anything newer.
        self.send_lock_table(doc, session);
        self.send_presence_snapshot(doc, session);
        // What was released while the read ran, minus what the read covered.
        for item in queued {
            match item {
                Item::Changes {
                    from, ref changes, ..
                } => {
                    let end = Seq((from.get() + changes.len() as u64).saturating_sub(1));
                    if end <= through {
                        continue;
                    }
                    if from > through {
                        self.send_item(doc, session, item);
                        continue;
                    }
                    let skip = (through.get() - from.get() + 1) as usize;
                    let rest = changes[skip..].to_vec();
                    self.send(
                        session,
                        &ServerMsg::Changes {
                            doc,
                            epoch,
                            from_seq: through.next(),
                            changes: rest,
                        },
                    );
                }
                Item::Frame(frame) => self.send_frame(session, frame),
                Item::Ack { upto, heads, new } => {
                    // The client's own changes the read already covered are not "new" to it.
                    let new = new
                        .filter(|(_, to)| *to > through)
                        .map(|(from, to)| (from.max(through.next()), to));
                    self.send_ack(session, doc, upto, heads, new);
                }
            }
        }
    }

    /// A subscription ends without going live: the answers queued for it still go out (the
    /// entries do not: the client asks for them again when it subscribes again).
    fn flush_answers(&mut self, doc: DocId, session: SessionId, queued: Vec<Item>) {
        for item in queued {
            if !matches!(item, Item::Changes { .. }) {
                self.send_item(doc, session, item);
            }
        }
    }

    /// Sends entries in frames of about `replay_frame_bytes`.
    fn send_replay(
        &mut self,
        session: SessionId,
        doc: DocId,
        epoch: Epoch,
        from_seq: Seq,
        entries: Vec<Blob>,
    ) {
        let budget = self.config.replay_frame_bytes.max(1);
        let mut from = from_seq;
        let mut frame: Vec<Blob> = Vec::new();
        let mut bytes = 0usize;
        for e in entries {
            if !frame.is_empty() && bytes + e.len() > budget {
                let n = frame.len() as u64;
                self.send(
                    session,
                    &ServerMsg::Changes {
                        doc,
                        epoch,
                        from_seq: from,
                        changes: std::mem::take(&mut frame),
                    },
                );
                from = Seq(from.get() + n);
                bytes = 0;
            }
            bytes += e.len();
            frame.push(e);
        }
        if !frame.is_empty() {
            self.send(
                session,
                &ServerMsg::Changes {
                    doc,
                    epoch,
                    from_seq: from,
                    changes: frame,
                },
            );
        }
    }

    fn drop_sub(&mut self, doc: &DocId, session: SessionId) {
        let Some(d) = self.docs.get_mut(doc) else {
            return;
        };
        d.subs.remove(&session);
        let left = d.presence.remove(session);
        if d.subs.is_empty() {
            self.docs.remove(doc);
            self.out.push_back(Output::Release { doc: *doc });
            self.forget_locks_if_idle(doc);
        } else if let Some(out) = left {
            self.broadcast_presence(*doc, out);
        }
    }

    fn ticket(&mut self) -> Ticket {
        let t = Ticket(self.next_ticket);
        self.next_ticket += 1;
        t
    }

    fn encode(&mut self, msg: &ServerMsg) -> Option<Bytes> {
        match encode_server(msg) {
            Ok(f) => Some(Bytes::from(f)),
            Err(e) => {
                tracing::error!(error = %e, kind = msg.kind(), "could not encode a message");
                None
            }
        }
    }

    fn send_ack(
        &mut self,
        session: SessionId,
        doc: DocId,
        upto_seq: Seq,
        heads: Vec<ChangeHash>,
        new: Option<(Seq, Seq)>,
    ) {
        let ack = ServerMsg::Ack {
            doc,
            upto_seq,
            heads,
            new,
        };
        self.send(session, &ack);
    }

    fn send(&mut self, session: SessionId, msg: &ServerMsg) {
        if let Some(frame) = self.encode(msg) {
            self.send_frame(session, frame);
        }
    }

    fn send_frame(&mut self, session: SessionId, frame: Bytes) {
        if self.sessions.get(&session).is_some_and(|s| !s.closed) {
            self.out.push_back(Output::Send { session, frame });
        }
    }

    fn error(&mut self, session: SessionId, code: ErrorCode, message: &str, doc: Option<DocId>) {
        self.send(
            session,
            &ServerMsg::Error {
                code,
                message: message.to_string(),
                doc,
            },
        );
    }

    fn close(&mut self, session: SessionId, code: CloseCode, reason: &str) {
        let Some(s) = self.sessions.get_mut(&session) else {
            return;
        };
        if s.closed {
            return;
        }
        s.closed = true;
        let user = match &s.handshake {
            Handshake::Ready { identity } => Some(identity.user.clone()),
            Handshake::AwaitingHello { .. } => None,
        };
        let docs = std::mem::take(&mut s.docs);
        if let Some(user) = user {
            self.user_left(session, &user);
        }
        for doc in docs {
            self.drop_sub(&doc, session);
        }
        self.out.push_back(Output::Close {
            session,
            code,
            reason: reason.to_string(),
        });
    }
}
