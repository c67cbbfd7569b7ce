//! Every message of the sync protocol. docs/protocol.md specifies each one and the sequences
//! they form; this file is the source of truth for their fields.
//!
//! Byte payloads are [`Blob`]s, encoded as one length-prefixed byte string (not element by
//! element), so a 1 MiB change costs one copy to encode and decode.

use std::fmt;
use std::ops::Deref;

use serde::{Deserialize, Serialize};

use crate::codes::ErrorCode;
use crate::ids::{
    ChangeHash, ClientId, DocId, Epoch, FencingToken, MutationId, Seq, SessionId, UserId,
};

/// The protocol version this build speaks in `Hello.protocol`.
pub const PROTOCOL_VERSION: u16 = 1;

/// Opaque bytes: an automerge change, a snapshot, a sync message, app data.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Blob(#[serde(with = "serde_bytes")] pub Vec<u8>);

impl Blob {
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }
}

impl Deref for Blob {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for Blob {
    fn from(v: Vec<u8>) -> Self {
        Blob(v)
    }
}

impl fmt::Debug for Blob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Blob({} bytes)", self.0.len())
    }
}

/// Where a replica stands in a document's stream: it holds every entry up to `seq` of `epoch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    pub epoch: Epoch,
    pub seq: Seq,
}

/// Limits the server announces in `Welcome`; a client must stay within them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Limits {
    /// Largest frame the server accepts from the client.
    pub max_frame_bytes: u32,
    /// Largest frame the server sends (snapshots are the big ones).
    pub max_server_frame_bytes: u32,
    /// Largest automerge change in a push.
    pub max_change_bytes: u32,
    /// Most changes in one push.
    pub max_push_changes: u32,
    /// Most documents one connection may subscribe to.
    pub max_docs: u32,
}

/// Client to server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ClientMsg {
    /// The first message on a connection.
    Hello {
        protocol: u16,
        client_id: ClientId,
        /// A JWT; may instead travel in the upgrade's Authorization header.
        token: Option<String>,
    },
    /// Start receiving a document: from just after `after`, or from scratch.
    Subscribe {
        doc: DocId,
        after: Option<Position>,
    },
    Unsubscribe {
        doc: DocId,
    },
    /// Local automerge changes, in causal order.
    Push {
        doc: DocId,
        changes: Vec<Blob>,
    },
    /// A server-authoritative mutation (the mutations issue).
    Mutate {
        doc: DocId,
        mutation_id: MutationId,
        name: String,
        args: Blob,
        fence: Option<FencingToken>,
    },
    /// Acquire a lease on `(doc, key)` (the locks issue).
    Lock {
        doc: DocId,
        key: String,
        ttl_ms: u64,
    },
    /// Extends a held lease to `ttl_ms` from now.
    RenewLock {
        doc: DocId,
        key: String,
        token: FencingToken,
        ttl_ms: u64,
    },
    Unlock {
        doc: DocId,
        key: String,
        token: FencingToken,
    },
    /// This session's presence state in a document (the presence issue).
    Presence {
        doc: DocId,
        state: Blob,
    },
    /// An ephemeral event to a room (the rooms issue).
    Publish {
        room: String,
        event: String,
        data: Blob,
    },
    /// A fresh token before the current one expires (the auth issue).
    Reauth {
        token: String,
    },
    Ping {
        nonce: u64,
    },
    /// One automerge sync-protocol message, only during reconciliation.
    SyncMsg {
        doc: DocId,
        bytes: Blob,
    },
}

/// The result of a mutation as the server decided it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MutationOutcome {
    Applied { seq: Seq },
    Rejected { code: ErrorCode, message: String },
}

/// The result of a lock request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LockOutcome {
    Granted {
        token: FencingToken,
        expires_at_ms: u64,
    },
    Renewed {
        token: FencingToken,
        expires_at_ms: u64,
    },
    Released,
    Refused {
        code: ErrorCode,
        message: String,
    },
}

/// Who a presence state or an event came from; stamped by the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub session: SessionId,
    pub user: UserId,
}

/// A notification as delivered live (the notifications issue).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationMsg {
    pub id: String,
    pub priority: String,
    pub category: String,
    pub title: String,
    pub body: String,
    pub data: Blob,
    pub created_at_ms: u64,
}

/// Server to client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ServerMsg {
    /// The answer to `Hello`.
    Welcome {
        session: SessionId,
        user: UserId,
        roles: Vec<String>,
        server_time_ms: u64,
        /// How often the client should Ping; the server closes a connection silent for 2x this.
        heartbeat_ms: u64,
        limits: Limits,
    },
    /// The whole document (`automerge::save`) as of `seq`; replaces whatever the client held
    /// of this stream. `reconcile`: the client may hold changes the server lacks and should
    /// start reconciliation (docs/protocol.md).
    Snapshot {
        doc: DocId,
        epoch: Epoch,
        seq: Seq,
        bytes: Blob,
        reconcile: bool,
    },
    /// Entries `from_seq, from_seq + 1, ...` of the stream. An entry that carries no change
    /// (a lock event, a rejected mutation) is an empty blob: it advances the position only.
    Changes {
        doc: DocId,
        epoch: Epoch,
        from_seq: Seq,
        changes: Vec<Blob>,
    },
    /// The end of a replay: the subscriber holds everything through `seq` and is now live.
    Live {
        doc: DocId,
        epoch: Epoch,
        seq: Seq,
    },
    /// The pushed changes with these hashes are durable. `new` names the seqs they took when
    /// they were new (`from..=to`); those seqs are this session's own and are not sent back.
    Ack {
        doc: DocId,
        upto_seq: Seq,
        heads: Vec<ChangeHash>,
        new: Option<(Seq, Seq)>,
    },
    MutationResult {
        doc: DocId,
        mutation_id: MutationId,
        outcome: MutationOutcome,
    },
    LockResult {
        doc: DocId,
        key: String,
        outcome: LockOutcome,
    },
    LockState {
        doc: DocId,
        key: String,
        holder: Option<Peer>,
        token: Option<FencingToken>,
        expires_at_ms: Option<u64>,
    },
    /// A peer's presence state, or `None` when it left.
    Presence {
        doc: DocId,
        peer: Peer,
        state: Option<Blob>,
    },
    Event {
        room: String,
        event: String,
        data: Blob,
        from: Option<Peer>,
    },
    Notification(NotificationMsg),
    /// A refused request. The connection stays open unless a close follows.
    Error {
        code: ErrorCode,
        message: String,
        doc: Option<DocId>,
    },
    Pong {
        nonce: u64,
        server_time_ms: u64,
    },
    /// One automerge sync-protocol message, only during reconciliation.
    SyncMsg {
        doc: DocId,
        bytes: Blob,
    },
    /// Reconciliation finished: the server has everything the client offered.
    Reconciled {
        doc: DocId,
    },
}

impl ClientMsg {
    /// Every [`ClientMsg::kind`], in the order of the variants (their tag on the wire).
    pub const KINDS: [&'static str; 13] = [
        "hello",
        "subscribe",
        "unsubscribe",
        "push",
        "mutate",
        "lock",
        "renew_lock",
        "unlock",
        "presence",
        "publish",
        "reauth",
        "ping",
        "sync_msg",
    ];

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMsg::Hello { .. } => "hello",
            ClientMsg::Subscribe { .. } => "subscribe",
            ClientMsg::Unsubscribe { .. } => "unsubscribe",
            ClientMsg::Push { .. } => "push",
            ClientMsg::Mutate { .. } => "mutate",
            ClientMsg::Lock { .. } => "lock",
            ClientMsg::RenewLock { .. } => "renew_lock",
            ClientMsg::Unlock { .. } => "unlock",
            ClientMsg::Presence { .. } => "presence",
            ClientMsg::Publish { .. } => "publish",
            ClientMsg::Reauth { .. } => "reauth",
            ClientMsg::Ping { .. } => "ping",
            ClientMsg::SyncMsg { .. } => "sync_msg",
        }
    }
}

impl ServerMsg {
    /// Every [`ServerMsg::kind`], in the order of the variants (their tag on the wire).
    pub const KINDS: [&'static str; 15] = [
        "welcome",
        "snapshot",
        "changes",
        "live",
        "ack",
        "mutation_result",
        "lock_result",
        "lock_state",
        "presence",
        "event",
        "notification",
        "error",
        "pong",
        "sync_msg",
        "reconciled",
    ];

    /// A short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ServerMsg::Welcome { .. } => "welcome",
            ServerMsg::Snapshot { .. } => "snapshot",
            ServerMsg::Changes { .. } => "changes",
            ServerMsg::Live { .. } => "live",
            ServerMsg::Ack { .. } => "ack",
            ServerMsg::MutationResult { .. } => "mutation_result",
            ServerMsg::LockResult { .. } => "lock_result",
            ServerMsg::LockState { .. } => "lock_state",
            ServerMsg::Presence { .. } => "presence",
            ServerMsg::Event { .. } => "event",
            ServerMsg::Notification(_) => "notification",
            ServerMsg::Error { .. } => "error",
            ServerMsg::Pong { .. } => "pong",
            ServerMsg::SyncMsg { .. } => "sync_msg",
            ServerMsg::Reconciled { .. } => "reconciled",
        }
    }
}
