//! converge-client: the tokio client SDK.
//!
//! A [`Client`] keeps documents in an on-disk store and in sync with one converge server.
//! It is offline-first: [`Client::connect`] returns at once, documents open and change without
//! a network, and every change is durable in the store before [`DocHandle::change`] returns,
//! so it survives a crash or restart and is pushed, in order and exactly once (the server
//! ignores duplicates), whenever a connection is up.
//!
//! ```no_run
//! use automerge::{ReadDoc, transaction::Transactable};
//! use converge_client::{Client, Status};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = Client::connect("ws://127.0.0.1:7070/ws", None, "./converge-store").await?;
//! let (doc, created) = client
//!     .create_doc(|d| d.put(automerge::ROOT, "title", "Ward 3"))
//!     .await?;
//! created?;
//! doc.change(|d| d.put(automerge::ROOT, "title", "Ward 3 (nights)"))??;
//! println!("{} change(s) wait for the server; {:?}", doc.pending_count(), client.status());
//! doc.wait_until_confirmed().await; // once online
//! let title = doc.read(|d| d.get(automerge::ROOT, "title").ok().flatten().map(|(v, _)| v.to_string()));
//! println!("{title:?}");
//! client.shutdown().await?;
//! # Ok(()) }
//! ```
//!
//! The pieces:
//! - the protocol is converge-core's sans-io [`converge_core::ClientSession`]; this crate is
//!   its shell: sockets, time, randomness, files;
//! - [`store`]: plain files, crash-safe (its module docs give the format and the argument);
//! - the connection task: WebSocket (tokio-tungstenite), reconnect with exponential backoff and
//!   full jitter, a circuit breaker, heartbeat Pings with a timeout, a [`Status`] stream;
//! - received changes are applied on a blocking thread, one automerge call per batch (whatever
//!   arrived during the previous apply), and stored before their position is;
//! - [`MetricsSnapshot`]: heartbeat round trips (EWMA, p99), reconnects, bytes, pending changes.

mod client;
mod conn;
mod doc;
mod error;
mod metrics;
mod ops;
mod queue;
mod record;
mod rooms;
mod status;
pub mod store;

pub use client::{Client, ClientConfig};
pub use doc::{DocEvent, DocHandle};
pub use error::{ClientError, StoreError};
pub use metrics::MetricsSnapshot;
pub use ops::{
    LockGuard, LockInfo, MAX_PRESENCE_BYTES, MutationHandle, OperationEvent, OperationState,
    PeerPresence,
};
pub use rooms::{Feed, RoomEvent};
pub use status::Status;

pub use automerge;
pub use converge_core::{Ctx, Mutator, Mutators, Rejection};
pub use converge_proto::{
    DocId, ErrorCode, FencingToken, MutationId, MutationOutcome, NotificationMsg, Peer, Position,
    SessionId, UserId,
};

/// Locks a mutex, also after a panic elsewhere poisoned it: every critical section here leaves
/// its data consistent at each step, so a poisoned lock still guards valid state.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
