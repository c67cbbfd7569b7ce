//! The client's two failure domains: the on-disk store, and the SDK calls around it.
//!
//! Connection trouble is not an error here: the connection loop retries on its own and reports
//! what it is doing through [`crate::Status`].

use std::io;
use std::path::PathBuf;

/// Why the on-disk store could not do what was asked.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A file holds bytes this store never writes (not a torn tail: those are dropped on open).
    #[error("{path} is damaged: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// Another client (in this or another process) has the store open.
    #[error("the store at {0} is in use by another client")]
    Locked(PathBuf),
}

impl StoreError {
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| StoreError::Io { op, path, source }
    }
}

/// Why an SDK call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The on-disk store failed. For [`crate::DocHandle::change`] this means the change is in
    /// the document in memory but not yet durable: it is written (and pushed) with the next
    /// change that succeeds, and is lost if the process ends first.
    #[error("client store: {0}")]
    Store(#[from] StoreError),
    /// The server URL is not a WebSocket URL.
    #[error("invalid server url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// A mutation, lock key or presence state is not acceptable (too large, does not
    /// encode); nothing was queued.
    #[error("{0}")]
    BadMutation(String),
    /// The call needs a live connection (locks: offline clients cannot hold one).
    #[error("not connected to the server")]
    Offline,
    /// The server refused a lock request.
    #[error("lock refused: {code}: {message}")]
    Lock {
        code: converge_proto::ErrorCode,
        message: String,
    },
    /// The client shut down before the answer came.
    #[error("the client shut down before the server answered")]
    Closed,
    /// A background task the call waited on panicked or was cancelled.
    #[error("background task failed: {0}")]
    Task(String),
}

impl From<tokio::task::JoinError> for ClientError {
    fn from(e: tokio::task::JoinError) -> Self {
        ClientError::Task(e.to_string())
    }
}
