//! [`Client`]: the store, the session and the connection task, and what they share.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use automerge::AutoCommit;
use converge_core::{ClientSession, Mutators, SessionConfig};
use converge_proto::{ClientId, DEFAULT_MAX_SERVER_FRAME_BYTES, DocId, UserId};
use futures_util::Stream;
use tokio::sync::{Notify, watch};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::doc::{DocHandle, DocShared};
use crate::error::{ClientError, StoreError};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::status::{self, Status};
use crate::store::{Store, StoreLock};
use crate::{conn, lock};

/// Connection policy and limits. The defaults are the design's client connection policy
/// (backoff 500 ms to 30 s, breaker after 5 failures for 30 s, a Ping every 25 s); change
/// fields directly or with the `with_*` methods.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientConfig {
    /// First backoff ceiling; it doubles per failed attempt (full jitter below it).
    pub backoff_base: Duration,
    /// Largest backoff ceiling.
    pub backoff_cap: Duration,
    /// Consecutive failed attempts that open the circuit breaker.
    pub breaker_threshold: u32,
    /// How long the open breaker waits before one trial attempt.
    pub breaker_cool_down: Duration,
    /// Heartbeat Ping interval until the server's Welcome names its own.
    pub heartbeat_interval: Duration,
    /// Drop the connection when a Ping is unanswered this long; `None`: twice the interval.
    pub heartbeat_timeout: Option<Duration>,
    /// Longest wait from starting a connection to the server's Welcome.
    pub connect_timeout: Duration,
    /// Largest frame accepted from the server (checked by the WebSocket layer and the decoder).
    pub max_server_frame_bytes: usize,
    /// How long `connect` waits for a previous client on the same store to let go of it.
    pub store_lock_wait: Duration,
    /// Push sizes (lowered to the server's limits after Welcome).
    pub session: SessionConfig,
    /// The mutators [`crate::DocHandle::mutate`] runs optimistically (the server must
    /// register the same ones under the same names).
    pub mutators: Mutators,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            breaker_threshold: 5,
            breaker_cool_down: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(25),
            heartbeat_timeout: None,
            connect_timeout: Duration::from_secs(10),
            max_server_frame_bytes: DEFAULT_MAX_SERVER_FRAME_BYTES,
            store_lock_wait: Duration::from_secs(5),
            session: SessionConfig::default(),
            mutators: Mutators::new(),
        }
    }
}

impl ClientConfig {
    pub fn with_backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    pub fn with_breaker(mut self, threshold: u32, cool_down: Duration) -> Self {
        self.breaker_threshold = threshold;
        self.breaker_cool_down = cool_down;
        self
    }

    pub fn with_heartbeat(mut self, interval: Duration, timeout: Option<Duration>) -> Self {
        self.heartbeat_interval = interval;
        self.heartbeat_timeout = timeout;
        self
    }

    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    pub fn with_max_server_frame_bytes(mut self, bytes: usize) -> Self {
        self.max_server_frame_bytes = bytes;
        self
    }

    pub fn with_mutators(mut self, mutators: Mutators) -> Self {
        self.mutators = mutators;
        self
    }
}

/// The protocol state machine plus which documents have an apply running.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub(crate) session: ClientSession,
    /// Documents whose received batches are being applied on a blocking thread. One applier
    /// per document at a time, so batches apply in order; it drains the session's batches
    /// until none is left, and only then leaves this set (under this lock, so a batch that
    /// arrives meanwhile is never stranded).
    pub(crate) applying: HashSet<DocId>,
}

/// Everything the SDK handles and the connection task share.
///
/// Lock order, where more than one is held: a document's `am`, then its `disk`, then
/// `session`. `docs` is never held with another lock.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) url: String,
    pub(crate) config: ClientConfig,
    pub(crate) store: Store,
    /// Held for as long as anything can write to the store.
    _lock: StoreLock,
    pub(crate) session: Mutex<SessionState>,
    /// Open documents; a handle is a reference into this map.
    pub(crate) docs: Mutex<HashMap<DocId, Arc<DocShared>>>,
    /// Serializes opening documents, so two calls for one id load it once.
    open_lock: tokio::sync::Mutex<()>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) metrics: Metrics,
    /// The session has something to send (a local change, a new subscription).
    pub(crate) wake: Notify,
    /// `set_token` was called: an auth failure may be retried.
    pub(crate) token_changed: Notify,
    pub(crate) shutdown: watch::Sender<bool>,
    /// Who the server last said this client is (for the optimistic runs' `Ctx`).
    pub(crate) user: Mutex<Option<UserId>>,
    /// Room events and live notifications, to every stream that listens.
    pub(crate) events: tokio::sync::broadcast::Sender<crate::RoomEvent>,
    pub(crate) notifications: tokio::sync::broadcast::Sender<converge_proto::NotificationMsg>,
}

impl Shared {
    pub(crate) fn doc(&self, id: &DocId) -> Option<Arc<DocShared>> {
        lock(&self.docs).get(id).cloned()
    }
}

/// A converge client: an offline-first store of documents kept in sync with one server.
///
/// Dropping it stops the connection (a close without the goodbye [`Client::shutdown`] says);
/// documents stay usable offline while their handles live.
#[derive(Debug)]
pub struct Client {
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
}

impl Client {
    /// Opens the store at `store_dir` and starts connecting to `url` (`ws://` or `wss://`) in
    /// the background. Returns at once, online or not.
    pub async fn connect(
        url: &str,
        token: Option<String>,
        store_dir: impl AsRef<Path>,
    ) -> Result<Client, ClientError> {
        Self::connect_with(url, token, store_dir, ClientConfig::default()).await
    }

    /// [`Client::connect`] with a chosen configuration.
    pub async fn connect_with(
        url: &str,
        token: Option<String>,
        store_dir: impl AsRef<Path>,
        config: ClientConfig,
    ) -> Result<Client, ClientError> {
        check_url(url)?;
        let root = store_dir.as_ref().to_path_buf();
        let store = tokio::task::spawn_blocking(move || Store::open(root)).await??;
        let store_lock = take_lock(&store, config.store_lock_wait).await?;
        let client_id = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.client_id()).await??
        };
        let session = ClientSession::new(client_id, token, config.session.clone());
        let shared = Arc::new(Shared {
            url: url.to_string(),
            config,
            store,
            _lock: store_lock,
            session: Mutex::new(SessionState {
                session,
                applying: HashSet::new(),
            }),
            docs: Mutex::new(HashMap::new()),
            open_lock: tokio::sync::Mutex::new(()),
            status: watch::Sender::new(Status::Connecting),
            metrics: Metrics::default(),
            wake: Notify::new(),
            token_changed: Notify::new(),
            shutdown: watch::Sender::new(false),
            user: Mutex::new(None),
            events: tokio::sync::broadcast::Sender::new(crate::rooms::FEED_CAPACITY),
            notifications: tokio::sync::broadcast::Sender::new(crate::rooms::FEED_CAPACITY),
        });
        let task = tokio::spawn(conn::run(shared.clone()));
        Ok(Client {
            shared,
            task: Some(task),
        })
    }

    /// This installation's id (persisted in the store).
    pub fn client_id(&self) -> ClientId {
        lock(&self.shared.session).session.client_id()
    }

    /// Opens a document: from the store if it has it, else empty until the server sends it.
    /// Opening an open document returns another handle to it.
    pub async fn doc(&self, id: DocId) -> Result<DocHandle, ClientError> {
        if let Some(doc) = self.shared.doc(&id) {
            return Ok(DocHandle::new(self.shared.clone(), doc));
        }
        let _opening = self.shared.open_lock.lock().await;
        if let Some(doc) = self.shared.doc(&id) {
            return Ok(DocHandle::new(self.shared.clone(), doc));
        }
        let store = self.shared.store.clone();
        let (stored, loaded) = tokio::task::spawn_blocking(move || store.open_doc(id)).await??;
        let doc = Arc::new(DocShared::new(
            id,
            loaded.doc,
            stored,
            loaded.mutations.clone(),
        ));
        // In the map before the session knows it, so everything the session reports about
        // the document finds it.
        lock(&self.shared.docs).insert(id, doc.clone());
        {
            let mut state = lock(&self.shared.session);
            state.session.open(id, loaded.position, loaded.pending);
            state
                .session
                .restore_mutations(id, loaded.last_mutation, loaded.mutations);
        }
        // Stored mutations show in the view at once.
        {
            let mut am = lock(&doc.am);
            let mut spec = lock(&doc.ops.spec);
            crate::ops::rebuild(&self.shared, &doc, &mut am, &mut spec);
        }
        self.shared.wake.notify_one();
        Ok(DocHandle::new(self.shared.clone(), doc))
    }

    /// Creates a new document (a random id) and makes its first change with `init`.
    pub async fn create_doc<R>(
        &self,
        init: impl FnOnce(&mut AutoCommit) -> R,
    ) -> Result<(DocHandle, R), ClientError> {
        let doc = self.doc(DocId::random()).await?;
        let r = doc.change(init)?;
        Ok((doc, r))
    }

    /// Runs mutator `M` on document `doc` (opened if it is not): the optimistic update at
    /// once, the server's decision through the returned handle. See [`DocHandle::mutate`].
    pub async fn mutate<M: converge_core::Mutator>(
        &self,
        doc: DocId,
        args: &M::Args,
    ) -> Result<crate::MutationHandle, ClientError> {
        self.doc(doc).await?.mutate::<M>(args)
    }

    /// Documents the store holds (open or not).
    pub fn stored_docs(&self) -> Result<Vec<DocId>, ClientError> {
        Ok(self.shared.store.doc_ids()?)
    }

    pub fn status(&self) -> Status {
        self.shared.status.borrow().clone()
    }

    /// The current status, then each change of it (a slow reader sees the newest).
    pub fn status_stream(&self) -> impl Stream<Item = Status> + Send + 'static {
        status::stream(self.shared.status.subscribe())
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.shared
    }

    pub fn metrics(&self) -> MetricsSnapshot {
        let pending = lock(&self.shared.session).session.pending_total();
        self.shared.metrics.snapshot(pending)
    }

    /// Replaces the token: an open connection sends it as `Reauth` (renew a token before it
    /// expires, or the server closes the session with `TokenExpired`); the next Hello sends
    /// it; and after [`Status::AuthFailed`] the client retries at once.
    pub fn set_token(&self, token: Option<String>) {
        lock(&self.shared.session).session.set_token(token);
        self.shared.wake.notify_one();
        self.shared.token_changed.notify_one();
    }

    /// Closes the connection with a normal close and waits for received changes that are
    /// being applied to be stored. Every local change is already durable when `change`
    /// returns, so nothing else needs flushing.
    pub async fn shutdown(mut self) -> Result<(), ClientError> {
        self.shared.shutdown.send_replace(true);
        if let Some(task) = self.task.take() {
            task.await?;
        }
        Ok(())
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.shared.shutdown.send_replace(true);
    }
}

/// Refuses, before anything starts, a URL the connection loop could only fail on forever.
fn check_url(url: &str) -> Result<(), ClientError> {
    let invalid = |reason: String| ClientError::InvalidUrl {
        url: url.to_string(),
        reason,
    };
    let request = url
        .into_client_request()
        .map_err(|e| invalid(e.to_string()))?;
    match request.uri().scheme_str() {
        Some("ws") => Ok(()),
        Some("wss") => Err(invalid(
            "wss:// needs TLS, which this build does not include; use ws:// behind a TLS proxy"
                .into(),
        )),
        other => Err(invalid(format!("the scheme must be ws, not {other:?}"))),
    }
}

/// Takes the store's lock, waiting a little for a client that is shutting down to let go.
async fn take_lock(store: &Store, wait: Duration) -> Result<StoreLock, StoreError> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        if let Some(l) = store.try_lock()? {
            return Ok(l);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(StoreError::Locked(store.root().to_path_buf()));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
