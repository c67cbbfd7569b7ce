//! Starting and stopping a server.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{State, WebSocketUpgrade};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use converge_core::{Authenticator, Hub};
use converge_log::{EventLog, LogConfig, SledLog};
use converge_proto::{DocId, UserId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::ServerConfig;
use crate::executor::LogExecutor;
use crate::hub_task::{self, HubEvent};

/// Why the server could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("opening the log in {dir}: {source}")]
    Log {
        dir: String,
        source: converge_log::LogError,
    },
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("starting the server: {0}")]
    Start(std::io::Error),
    #[error("the server task failed: {0}")]
    Task(String),
    #[error("auth configuration: {0}")]
    Auth(#[from] crate::auth::KeyError),
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) hub: mpsc::Sender<HubEvent>,
    ready: watch::Receiver<bool>,
    pub(crate) config: Arc<ServerConfig>,
    /// The same authenticator the hub uses, for the HTTP API.
    pub(crate) auth: Arc<dyn Authenticator + Sync>,
    pub(crate) log: Arc<dyn EventLog>,
    /// The documents the server holds materialized.
    pub(crate) store: Arc<converge_log::DocStore>,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
    /// Per-user token buckets for writes over the HTTP API.
    pub(crate) http_writes: Arc<governor::DefaultKeyedRateLimiter<converge_proto::UserId>>,
}

/// A running server.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    hub: mpsc::Sender<HubEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServerError>>,
    tasks: Option<hub_task::Tasks>,
    log: Arc<dyn EventLog>,
}

/// How long shutdown waits for connections to take their close frame before it stops waiting.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl ServerHandle {
    /// The address it listens on (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The WebSocket URL of the native protocol.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Grants `user` the role `role` in `doc` (`None`: removes the grant), at once for live
    /// sessions too (docs/protocol.md section 4.2).
    pub async fn set_acl(
        &self,
        doc: DocId,
        user: UserId,
        role: Option<String>,
    ) -> Result<(), converge_log::LogError> {
        crate::http::persist_acl(&self.log, doc, &user, role.as_deref()).await?;
        let _ = self.hub.send(HubEvent::SetAcl { doc, user, role }).await;
        Ok(())
    }

    /// Ends every session of `user` now (close 4012 `Revoked`).
    pub async fn revoke_user(&self, user: UserId) {
        let _ = self.hub.send(HubEvent::Revoke { user }).await;
    }

    /// The log the server writes (for tests and tools in the same process).
    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Graceful shutdown: stop accepting, close every session with `ServerShutdown` once
    /// the appends already accepted are durable and acknowledged, flush the log, and wait
    /// for the connections to drain.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        let (done, flushed) = oneshot::channel();
        if self.hub.send(HubEvent::Shutdown { done }).await.is_ok() {
            let _ = flushed.await;
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let served = match (&mut self.task).await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Task(e.to_string())),
        };
        // Wait for the hub task, the writer thread and the work still running on the
        // executor's threads (a snapshot, an eviction) to end, so the log is closed (and its
        // directory free to open again) when this returns.
        if let Some(tasks) = self.tasks.take() {
            let mut hub = tasks.hub;
            if tokio::time::timeout(DRAIN_WAIT, &mut hub).await.is_err() {
                tracing::warn!("connections still open after shutdown; stopping the hub anyway");
                hub.abort();
                let _ = hub.await;
            }
            let writer = tasks.writer;
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
            if tokio::time::timeout(DRAIN_WAIT, tasks.exec.idle())
                .await
                .is_err()
            {
                tracing::warn!("work still running on the executor's threads after shutdown");
            }
        }
        // What that work wrote (a snapshot) goes into the store now, while the data
        // directory surely exists: the last handle to the log may be dropped later by a task
        // the runtime has not dropped yet, and closing the log must then have nothing left
        // to write.
        let log = self.log.clone();
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || log.flush()).await {
            tracing::error!(error = %e, "final flush on shutdown failed");
        }
        served
    }

    /// Resolves when the server stops on its own (it does not, unless it fails).
    pub async fn wait(self) -> Result<(), ServerError> {
        self.task
            .await
            .map_err(|e| ServerError::Task(e.to_string()))?
    }
}

/// Opens the log in `config.data_dir` and starts serving on `config.addr`.
pub async fn start(config: ServerConfig) -> Result<ServerHandle, ServerError> {
    let dir = config.data_dir.clone();
    let durability = config.durability;
    let log = tokio::task::spawn_blocking(move || {
        SledLog::open(
            &dir,
            LogConfig {
                durability,
                ..LogConfig::default()
            },
        )
        .map_err(|source| ServerError::Log {
            dir: dir.display().to_string(),
            source,
        })
    })
    .await
    .map_err(|e| ServerError::Task(e.to_string()))??;
    start_with_log(config, Arc::new(log)).await
}

/// Starts serving a log the caller opened.
pub async fn start_with_log(
    config: ServerConfig,
    log: Arc<dyn EventLog>,
) -> Result<ServerHandle, ServerError> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .map_err(|source| ServerError::Bind {
            addr: config.addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(ServerError::Start)?;
    let auth = config.auth.authenticator()?;
    let mut hub = Hub::new(config.hub.clone(), Box::new(auth.clone()));
    // Admin grants survive restarts: they live in the log's store.
    let grants = read_log(&log, &config, |log| log.acls()).await?;
    for (doc, user, role) in grants {
        hub.set_acl(doc, user, Some(role));
    }
    // The directory of users seen resolves notifications to roles across restarts.
    let users = read_log(&log, &config, |log| log.users()).await?;
    hub.load_directory(users);
    // Notifications need the inbox mutators whatever else the embedder registered.
    // (In the config too: the HTTP API encodes arguments with the same registry.)
    let mut config = config;
    converge_schema::register_inbox(&mut config.mutators);
    let config_writes = config.http_writes_per_sec;
    let accept = crate::accept::AcceptLimits {
        max_pending: config.max_http_connections,
        header_timeout: config.http_header_timeout,
    };
    let exec = LogExecutor::new(log.clone()).with_mutators(config.mutators.clone());
    let store = exec.store().clone();
    let metrics = Arc::new(crate::metrics::Metrics::new());
    let (hub_tx, ready, tasks) =
        hub_task::spawn(hub, exec, metrics.clone()).map_err(ServerError::Start)?;
    let state = AppState {
        hub: hub_tx.clone(),
        ready,
        log: log.clone(),
        store,
        config: Arc::new(config),
        auth,
        metrics,
        http_writes: Arc::new(governor::RateLimiter::keyed(crate::http::write_quota(
            config_writes,
        ))),
    };
    let app = router(state);
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        crate::accept::serve(listener, app, accept, stop_rx).await;
        Ok(())
    });
    tracing::info!(%addr, "converge listening");
    Ok(ServerHandle {
        addr,
        hub: hub_tx,
        stop: Some(stop_tx),
        task,
        tasks: Some(tasks),
        log,
    })
}

/// Reads something the hub needs at start from the log, off the async workers.
async fn read_log<T: Send + 'static>(
    log: &Arc<dyn EventLog>,
    config: &ServerConfig,
    read: impl FnOnce(&dyn EventLog) -> Result<T, converge_log::LogError> + Send + 'static,
) -> Result<T, ServerError> {
    let log = log.clone();
    tokio::task::spawn_blocking(move || read(log.as_ref()))
        .await
        .map_err(|e| ServerError::Task(e.to_string()))?
        .map_err(|source| ServerError::Log {
            dir: config.data_dir.display().to_string(),
            source,
        })
}

fn router(state: AppState) -> Router {
    Router::new()
        .route("/ws", get(ws))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/stats", get(crate::http::stats))
        .route(
            "/api/docs",
            get(crate::docs_api::list).post(crate::docs_api::create),
        )
        .route("/api/notify", axum::routing::post(crate::notify::notify))
        .route("/api/publish", axum::routing::post(crate::notify::publish))
        .route("/api/inbox", get(crate::notify::get_inbox))
        .route(
            "/api/inbox/read",
            axum::routing::post(crate::notify::mark_read),
        )
        .route(
            "/api/inbox/preferences",
            axum::routing::put(crate::notify::set_preferences),
        )
        .route("/api/docs/{id}", get(crate::http::doc_json))
        .route("/api/docs/{id}/events", get(crate::http::doc_events))
        .route(
            "/api/docs/{id}/acl",
            get(crate::http::get_acl).put(crate::http::put_acl),
        )
        .route(
            "/api/docs/{id}/mutations",
            axum::routing::post(crate::http::mutate).layer(axum::extract::DefaultBodyLimit::max(
                crate::http::MAX_BODY_BYTES,
            )),
        )
        .with_state(state)
}

async fn ws(
    State(state): State<AppState>,
    headers: axum::http::HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Response {
    // A token may come with the upgrade instead of in Hello (browsers cannot set headers on
    // a WebSocket, other clients can).
    let token = crate::http::bearer(&headers).map(str::to_string);
    let c = &state.config;
    // Two frames' worth of slack above the protocol limit: the hub checks the exact limit
    // itself and answers with a code; only far larger frames are cut off by the transport.
    let transport_limit = (c.hub.limits.max_frame_bytes as usize).saturating_mul(2);
    let hub = state.hub.clone();
    let rate = crate::connection::RateLimit {
        // At least one a second and a burst of one: a zero would shut every connection up.
        per_sec: c.hub.messages_per_sec.max(1),
        burst: c.hub.message_burst.max(1),
    };
    upgrade
        .read_buffer_size(c.ws_read_buffer)
        .write_buffer_size(c.ws_write_buffer)
        .max_message_size(transport_limit)
        .max_frame_size(transport_limit)
        .on_upgrade(move |socket| {
            // A task of our own, so the one axum spawned for the upgrade (which keeps room
            // for its own state beside ours) ends here.
            tokio::spawn(crate::connection::start(socket, hub, token, rate));
            std::future::ready(())
        })
}

/// `GET /metrics` (admin): Prometheus text.
async fn metrics(State(state): State<AppState>, headers: axum::http::HeaderMap) -> Response {
    if let Err(r) = crate::http::admin(&state, &headers) {
        return r;
    }
    if let Some(s) = hub_task::stats(&state.hub).await {
        state.metrics.set_published(s.events_published);
    }
    (
        StatusCode::OK,
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    let serving = *state.ready.borrow();
    match (serving, hub_task::stats(&state.hub).await) {
        (true, Some(s)) => (
            StatusCode::OK,
            format!("ready sessions={} docs={}\n", s.sessions, s.docs),
        )
            .into_response(),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n").into_response(),
    }
}
