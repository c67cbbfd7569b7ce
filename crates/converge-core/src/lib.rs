//! converge-core: the sync protocol as sans-io state machines.
//!
//! - [`Hub`]: the server side. Frames, connects, disconnects and storage results go in through
//!   `handle_*`; frames to send, closes and storage requests ([`Output`]) come out of
//!   [`Hub::poll_output`]. It never touches an automerge document, a socket, a file or a clock:
//!   the shell (converge-server, converge-sim) executes the storage requests against the log and
//!   passes the time in.
//! - [`ClientSession`]: the client side. It tracks each document's position and unacknowledged
//!   changes and turns server frames into batches for the shell to apply.
//! - [`Backoff`] and [`CircuitBreaker`]: the client's connection policy, with the random
//!   numbers passed in.
//! - [`apply_changes`]: the one place a replica applies changes, under `catch_unwind`.
//!
//! docs/protocol.md specifies what goes over the wire; this crate is its reference implementation.

mod apply;
mod auth;
mod backoff;
mod catchup;
mod hub;
mod locks;
mod mutation;
mod permissions;
mod presence;
mod rate;
mod session;

pub use apply::{ApplyError, apply_changes, apply_incoming, changes_since};
pub use auth::{AuthError, Authenticator, DevAuthenticator, Identity};
pub use backoff::{Backoff, CircuitBreaker};
pub use catchup::{CatchupPlan, HeadView, plan_catchup};
pub use hub::{
    Appended, Audience, Catchup, ExternalMutation, Hub, HubConfig, HubStats, LocksRecorded,
    MAX_RECONCILE_ROUNDS, Mutated, MutationRequest, Output, PushAuthor, PushedChange, Refusal,
    Room, SyncStep, Ticket,
};
pub use locks::{
    FenceCheck, LockChange, LockHolder, LockRefusal, LockTable, MAX_LOCK_TTL_MS, MIN_LOCK_TTL_MS,
};
pub use mutation::{Ctx, Mutator, Mutators, Rejection};
pub use permissions::{Acl, Permission, Permissions, Roles, global_permissions, permissions};
pub use presence::{PRESENCE_INTERVAL_MS, PRESENCE_TTL_MS, PresenceOut, PresenceTable};
pub use rate::{Bucket, Rate};
pub use session::{
    ClientSession, IncomingBatch, MUTATION_WINDOW, QueuedMutation, SessionConfig, SessionEvent,
};
