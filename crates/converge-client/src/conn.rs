//! The connection task: connect, drive the session over the socket, and retry.
//!
//! One task per client, for its whole life. Each connection: WebSocket upgrade, `Hello`
//! (the session's), then frames both ways until the socket fails, the heartbeat times out,
//! the server closes, or the client shuts down. Between connections: exponential backoff with
//! full jitter, a circuit breaker after consecutive failures, and no retry at all after an
//! auth failure until the app sets a new token.
//!
//! Writes go through their own task, so a server that reads slowly never stops this task from
//! reading (and answering heartbeats). The session bounds what can queue up for it: one push
//! in flight per document.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use converge_core::{Backoff, CircuitBreaker, SessionEvent};
use converge_proto::{
    ChangeHash, CloseCode, DocId, ErrorCode, MAX_FRAME_CEILING, MutationId, MutationOutcome,
    Position, ServerMsg, decode_server, encode_client,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::client::Shared;
use crate::metrics::Metrics;
use crate::status::Status;
use crate::{doc, lock, ops};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a clean shutdown waits for the server's side of the close handshake.
const GOODBYE_WAIT: Duration = Duration::from_secs(1);

/// How a connection ended.
#[derive(Debug)]
enum Ended {
    Shutdown,
    AuthFailed(String),
    /// `online`: it got as far as Welcome (then it is not a failure for the breaker).
    Lost {
        online: bool,
        reason: String,
    },
}

fn lost(online: bool, reason: impl Into<String>) -> Ended {
    Ended::Lost {
        online,
        reason: reason.into(),
    }
}

/// Codes that mean "this token will not do": retrying with it is pointless.
fn is_auth_error(code: ErrorCode) -> bool {
    matches!(code, ErrorCode::Unauthorized | ErrorCode::TokenExpired)
}

fn is_auth_close(code: CloseCode) -> bool {
    matches!(
        code,
        CloseCode::Unauthorized | CloseCode::TokenExpired | CloseCode::Revoked
    )
}

/// Runs the connection loop until the client shuts down.
pub(crate) async fn run(shared: Arc<Shared>) {
    let config = &shared.config;
    let mut driver = Driver {
        backoff: Backoff::new(
            config.backoff_base.as_millis() as u64,
            config.backoff_cap.as_millis() as u64,
        ),
        breaker: CircuitBreaker::new(
            config.breaker_threshold,
            config.breaker_cool_down.as_millis() as u64,
        ),
        appliers: JoinSet::new(),
        shutdown: shared.shutdown.subscribe(),
        started: Instant::now(),
        shared: shared.clone(),
    };
    driver.run().await;
}

/// The connection loop's state across connections.
struct Driver {
    shared: Arc<Shared>,
    backoff: Backoff,
    breaker: CircuitBreaker,
    /// Appliers of received batches (one per document at a time), awaited at shutdown so
    /// what they applied is also stored.
    appliers: JoinSet<()>,
    shutdown: tokio::sync::watch::Receiver<bool>,
    /// Zero of the monotonic milliseconds the session and the breaker see.
    started: Instant,
}

/// One connection's state.
struct Conn {
    online: bool,
    heartbeat: Interval,
    heartbeat_timeout_ms: u64,
    /// Welcome must arrive before this.
    deadline: Instant,
    to_writer: mpsc::UnboundedSender<Message>,
}

impl Driver {
    async fn run(&mut self) {
        let mut attempts: u64 = 0;
        while !*self.shutdown.borrow() {
            if let Err(until) = self.breaker.check(self.now_ms()) {
                self.set_status(Status::CircuitOpen {
                    until: self.system_time(until),
                });
                if !self.sleep_ms(until.saturating_sub(self.now_ms())).await {
                    break;
                }
            }
            if attempts > 0 {
                Metrics::add(&self.shared.metrics.reconnects, 1);
            }
            attempts += 1;
            self.set_status(Status::Connecting);
            let ended = self.connection().await;
            lock(&self.shared.session).session.disconnected();
            let docs: Vec<_> = lock(&self.shared.docs).values().cloned().collect();
            for d in docs {
                ops::offline(&d);
            }
            self.reap();
            match ended {
                Ended::Shutdown => break,
                Ended::AuthFailed(message) => {
                    tracing::warn!(%message, "the server refused the token; waiting for a new one");
                    self.set_status(Status::AuthFailed { message });
                    self.backoff.reset();
                    let mut shutdown = self.shutdown.clone();
                    tokio::select! {
                        _ = self.shared.token_changed.notified() => {}
                        _ = stopping(&mut shutdown) => break,
                    }
                }
                Ended::Lost { online, reason } => {
                    tracing::info!(%reason, "disconnected");
                    if !online {
                        self.breaker.failure(self.now_ms());
                    }
                    if self.breaker.is_open(self.now_ms()) {
                        continue; // the top of the loop waits out the cool-down
                    }
                    let delay = self.backoff.next_delay_ms(rand::random::<f64>());
                    self.set_status(Status::Offline {
                        retry_at: SystemTime::now() + Duration::from_millis(delay),
                    });
                    if !self.sleep_ms(delay).await {
                        break;
                    }
                }
            }
        }
        while let Some(r) = self.appliers.join_next().await {
            log_applier(r);
        }
    }

    /// Connects and serves one connection until it ends.
    async fn connection(&mut self) -> Ended {
        let config = &self.shared.config;
        let limit = config.max_server_frame_bytes.min(MAX_FRAME_CEILING);
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let deadline = Instant::now() + config.connect_timeout;
        let connecting = tokio_tungstenite::connect_async_with_config(
            self.shared.url.as_str(),
            Some(ws_config),
            true,
        );
        let mut shutdown = self.shutdown.clone();
        let ws = tokio::select! {
            r = tokio::time::timeout_at(deadline, connecting) => match r {
                Err(_) => return lost(false, "timed out connecting"),
                Ok(Err(e)) => return connect_error(e),
                Ok(Ok((ws, _response))) => ws,
            },
            _ = stopping(&mut shutdown) => return Ended::Shutdown,
        };
        let (sink, mut stream) = ws.split();
        let (to_writer, from_conn) = mpsc::unbounded_channel();
        let mut writer = tokio::spawn(write_frames(sink, from_conn, self.shared.clone()));
        let period = config.heartbeat_interval;
        let mut conn = Conn {
            online: false,
            heartbeat: heartbeat(period),
            heartbeat_timeout_ms: self.heartbeat_timeout(period),
            deadline,
            to_writer,
        };
        lock(&self.shared.session).session.connected();
        let ended = loop {
            self.flush(&conn);
            tokio::select! {
                _ = stopping(&mut shutdown) => {
                    goodbye(conn.to_writer, &mut writer, &mut stream).await;
                    return Ended::Shutdown;
                }
                frame = stream.next() => {
                    if let Some(ended) = self.on_frame(frame, &mut conn) {
                        break ended;
                    }
                }
                _ = self.shared.wake.notified() => {}
                _ = conn.heartbeat.tick() => {
                    if let Some(ended) = self.on_heartbeat(&conn) {
                        break ended;
                    }
                }
                _ = tokio::time::sleep_until(conn.deadline), if !conn.online => {
                    break lost(false, "no Welcome within the connect timeout");
                }
                r = &mut writer => {
                    let reason = match r {
                        Ok(Err(e)) => format!("write failed: {e}"),
                        _ => "the writer stopped".to_string(),
                    };
                    break lost(conn.online, reason);
                }
            }
            if let Some(ended) = self.on_events(&mut conn).await {
                break ended;
            }
        };
        // The socket is gone or unwanted: a writer blocked on it must not outlive it.
        writer.abort();
        ended
    }

    /// Sends what the session has queued.
    fn flush(&self, conn: &Conn) {
        let mut state = lock(&self.shared.session);
        while let Some(msg) = state.session.poll_send() {
            match encode_client(&msg) {
                Ok(frame) => {
                    if conn.to_writer.send(Message::Binary(frame.into())).is_err() {
                        return; // the writer ended; the select loop sees why
                    }
                }
                Err(e) => {
                    tracing::error!(kind = msg.kind(), error = %e, "dropping a message that does not encode");
                }
            }
        }
    }

    fn on_frame(
        &mut self,
        frame: Option<Result<Message, tungstenite::Error>>,
        conn: &mut Conn,
    ) -> Option<Ended> {
        let bytes = match frame {
            None => return Some(lost(conn.online, "the server closed the connection")),
            Some(Err(e)) => return Some(lost(conn.online, e.to_string())),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Close(frame))) => return Some(closed(frame, conn.online)),
            Some(Ok(Message::Text(_))) => {
                return Some(lost(conn.online, "a text frame (the protocol is binary)"));
            }
            Some(Ok(_)) => return None, // ping and pong: tungstenite answers pings itself
        };
        Metrics::add(&self.shared.metrics.bytes_received, bytes.len());
        let msg = match decode_server(&bytes, self.shared.config.max_server_frame_bytes) {
            Ok(msg) => msg,
            Err(e) => {
                // Skipped, not fatal: if it carried changes, the session notices the gap in
                // the stream and asks again.
                tracing::warn!(error = %e, "ignoring a frame that does not decode");
                return None;
            }
        };
        if let ServerMsg::Welcome { heartbeat_ms, .. } = &msg
            && *heartbeat_ms > 0
        {
            let period = Duration::from_millis(*heartbeat_ms);
            conn.heartbeat = heartbeat(period);
            conn.heartbeat_timeout_ms = self.heartbeat_timeout(period);
        }
        let now = self.now_ms();
        lock(&self.shared.session).session.handle(msg, now);
        None
    }

    /// Drops a connection whose Pings go unanswered, then sends the next Ping.
    fn on_heartbeat(&self, conn: &Conn) -> Option<Ended> {
        let now = self.now_ms();
        let mut state = lock(&self.shared.session);
        if let Some(sent) = state.session.oldest_unanswered_ping()
            && now.saturating_sub(sent) >= conn.heartbeat_timeout_ms
        {
            return Some(lost(conn.online, "heartbeat timeout"));
        }
        state.session.ping(now);
        None
    }

    /// Acts on everything the session has to report. Every event is handled even when one
    /// ends the connection: a batch whose event were dropped would never be applied.
    async fn on_events(&mut self, conn: &mut Conn) -> Option<Ended> {
        let mut ended = None;
        loop {
            let events: Vec<SessionEvent> = {
                let mut state = lock(&self.shared.session);
                std::iter::from_fn(|| state.session.poll_event()).collect()
            };
            if events.is_empty() {
                break;
            }
            for event in events {
                match event {
                    SessionEvent::Welcome { session, user } => {
                        tracing::info!(session = session.get(), %user, "online");
                        *lock(&self.shared.user) = Some(user);
                        conn.online = true;
                        self.breaker.success();
                        self.backoff.reset();
                        self.set_status(Status::Online);
                    }
                    SessionEvent::Incoming { doc } => self.start_applier(doc),
                    SessionEvent::Acked {
                        doc,
                        hashes,
                        position,
                    } => self.settle(doc, hashes, position, None).await,
                    SessionEvent::Refused {
                        doc,
                        hashes,
                        code,
                        message,
                    } => {
                        tracing::warn!(%doc, %code, %message, count = hashes.len(), "the server refused local changes");
                        self.settle(doc, hashes, None, Some((code, message))).await;
                    }
                    SessionEvent::Live { doc, position } => {
                        tracing::debug!(%doc, epoch = position.epoch.get(), seq = position.seq.get(), "live");
                        if let Some(d) = self.shared.doc(&doc) {
                            ops::live(&self.shared, &d);
                        }
                    }
                    SessionEvent::MutationResult { doc, id, outcome } => {
                        self.mutation_decided(doc, id, outcome).await;
                    }
                    SessionEvent::MutationsSent { doc, ids } => {
                        if let Some(d) = self.shared.doc(&doc) {
                            ops::sent(&d, &ids);
                        }
                    }
                    SessionEvent::LockResult { doc, key, outcome } => {
                        if let Some(d) = self.shared.doc(&doc) {
                            ops::lock_answered(&self.shared, &d, &key, outcome);
                        }
                    }
                    SessionEvent::LockState {
                        doc,
                        key,
                        holder,
                        token,
                        expires_at_ms,
                    } => {
                        if let Some(d) = self.shared.doc(&doc) {
                            ops::lock_state(&d, key, holder, token, expires_at_ms);
                        }
                    }
                    SessionEvent::Event {
                        room,
                        event,
                        data,
                        from,
                    } => {
                        // No receiver is fine: nobody listens for events.
                        let _ = self.shared.events.send(crate::RoomEvent {
                            room,
                            event,
                            data: data.into_vec(),
                            from,
                        });
                    }
                    SessionEvent::Notification(n) => {
                        let _ = self.shared.notifications.send(n);
                    }
                    SessionEvent::Presence { doc, peer, state } => {
                        if let Some(d) = self.shared.doc(&doc) {
                            ops::presence_changed(&d, peer, state.map(|b| b.into_vec()));
                        }
                    }
                    SessionEvent::Error { code, message, .. } if is_auth_error(code) => {
                        ended = Some(Ended::AuthFailed(format!("{code}: {message}")));
                    }
                    SessionEvent::Error { code, message, doc } => {
                        tracing::warn!(?doc, %code, %message, "the server reported an error");
                    }
                    SessionEvent::Pong { rtt_ms } => self.shared.metrics.record_rtt(rtt_ms),
                    SessionEvent::Reconciled { doc, ok, position } => {
                        if ok {
                            tracing::info!(%doc, "reconciled with the server");
                        } else {
                            tracing::warn!(%doc, "reconciliation ended without the server's confirmation");
                        }
                        if let Some(p) = position
                            && let Some(d) = self.shared.doc(&doc)
                        {
                            let shared = self.shared.clone();
                            let stored = tokio::task::spawn_blocking(move || {
                                doc::store_position(&shared, &d, p)
                            })
                            .await;
                            if let Err(e) = stored {
                                tracing::error!(%doc, error = %e, "storing the position failed");
                            }
                        }
                    }
                }
            }
        }
        self.reap();
        ended
    }

    /// Starts applying a document's received batches unless an applier already runs for it
    /// (that one takes the new batch when it finishes the current one).
    fn start_applier(&mut self, id: DocId) {
        let Some(doc) = self.shared.doc(&id) else {
            return;
        };
        if !lock(&self.shared.session).applying.insert(id) {
            return;
        }
        let shared = self.shared.clone();
        self.appliers
            .spawn_blocking(move || doc::drain_incoming(&shared, &doc));
    }

    /// Updates the store for acknowledged or refused changes (fsyncs: on a blocking thread,
    /// awaited so settlements stay in order).
    async fn settle(
        &self,
        id: DocId,
        hashes: Vec<ChangeHash>,
        position: Option<Position>,
        refusal: Option<(ErrorCode, String)>,
    ) {
        let Some(doc) = self.shared.doc(&id) else {
            return;
        };
        let shared = self.shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            doc::settle(&shared, &doc, &hashes, position, refusal);
        })
        .await;
        if let Err(e) = done {
            tracing::error!(doc = %id, error = %e, "settling acknowledged changes failed");
        }
    }

    /// The server decided a mutation: off the stored queue (an fsync, on a blocking thread,
    /// awaited so results are handled in order), then out of the view or awaiting its change.
    async fn mutation_decided(&self, id: DocId, mid: MutationId, outcome: MutationOutcome) {
        let Some(doc) = self.shared.doc(&id) else {
            return;
        };
        let shared = self.shared.clone();
        let done = tokio::task::spawn_blocking(move || {
            if let Err(e) = doc.disk().stored.settle_mutation(mid) {
                tracing::error!(doc = %doc.id, error = %e, "could not take an answered mutation off the stored queue; it is sent again after a restart and answered with its recorded outcome");
            }
            ops::decided(&shared, &doc, mid, outcome);
        })
        .await;
        if let Err(e) = done {
            tracing::error!(doc = %id, error = %e, "handling a mutation result failed");
        }
    }

    fn reap(&mut self) {
        while let Some(r) = self.appliers.try_join_next() {
            log_applier(r);
        }
    }

    fn set_status(&self, status: Status) {
        self.shared.status.send_if_modified(|current| {
            let changed = *current != status;
            *current = status;
            changed
        });
    }

    fn heartbeat_timeout(&self, period: Duration) -> u64 {
        self.shared
            .config
            .heartbeat_timeout
            .unwrap_or(period * 2)
            .as_millis() as u64
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Wall-clock time of a moment given in this driver's milliseconds.
    fn system_time(&self, ms: u64) -> SystemTime {
        SystemTime::now() + Duration::from_millis(ms.saturating_sub(self.now_ms()))
    }

    /// Sleeps unless the client shuts down first; `false` on shutdown.
    async fn sleep_ms(&self, ms: u64) -> bool {
        let mut shutdown = self.shutdown.clone();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(ms)) => true,
            _ = stopping(&mut shutdown) => false,
        }
    }
}

/// Resolves once the client shuts down (the watch guard is dropped inside, so the future
/// stays `Send`).
async fn stopping(shutdown: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

fn heartbeat(period: Duration) -> Interval {
    let period = period.max(Duration::from_millis(1));
    let mut i = tokio::time::interval_at(Instant::now() + period, period);
    i.set_missed_tick_behavior(MissedTickBehavior::Delay);
    i
}

fn log_applier(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "an applier of received changes failed");
    }
}

/// A failed upgrade: an HTTP 401/403 is the server refusing the credentials.
fn connect_error(e: tungstenite::Error) -> Ended {
    if let tungstenite::Error::Http(response) = &e
        && matches!(response.status().as_u16(), 401 | 403)
    {
        return Ended::AuthFailed(format!("the upgrade was refused: {}", response.status()));
    }
    lost(false, e.to_string())
}

/// The server closed the connection: an auth close stops retrying; any other retries with
/// backoff (with a warning when the code says retrying will not help).
fn closed(frame: Option<CloseFrame>, online: bool) -> Ended {
    let Some(frame) = frame else {
        return lost(online, "closed without a code");
    };
    let raw = u16::from(frame.code);
    let reason = frame.reason.as_str();
    match CloseCode::try_from(raw) {
        Ok(code) if is_auth_close(code) => Ended::AuthFailed(format!("{code}: {reason}")),
        Ok(code) if !code.retryable() => {
            // Retrying will not help (protocol version, a frame the server will refuse
            // again...): it still retries with backoff, but the attempt counts as a failure
            // for the circuit breaker even after having been online, so a client that keeps
            // hitting it stops hammering the server.
            tracing::warn!(%code, %reason, "the server closed with a code that says retrying will not help");
            lost(false, format!("closed with {code}: {reason}"))
        }
        Ok(code) => lost(online, format!("closed with {code}: {reason}")),
        Err(_) => lost(online, format!("closed with {raw}: {reason}")),
    }
}

/// Writes frames in order, flushing whenever the queue runs dry.
async fn write_frames(
    mut sink: SplitSink<Ws, Message>,
    mut from_conn: mpsc::UnboundedReceiver<Message>,
    shared: Arc<Shared>,
) -> Result<(), tungstenite::Error> {
    while let Some(msg) = from_conn.recv().await {
        let mut bytes = msg.len();
        sink.feed(msg).await?;
        while let Ok(more) = from_conn.try_recv() {
            bytes += more.len();
            sink.feed(more).await?;
        }
        sink.flush().await?;
        Metrics::add(&shared.metrics.bytes_sent, bytes);
    }
    sink.close().await
}

/// A clean close: send Close, then wait briefly for the server's.
async fn goodbye(
    to_writer: mpsc::UnboundedSender<Message>,
    writer: &mut JoinHandle<Result<(), tungstenite::Error>>,
    stream: &mut SplitStream<Ws>,
) {
    let _ = to_writer.send(Message::Close(Some(CloseFrame {
        code: WsCloseCode::Normal,
        reason: "client shutdown".into(),
    })));
    drop(to_writer);
    let _ = tokio::time::timeout(GOODBYE_WAIT, async {
        while let Some(Ok(msg)) = stream.next().await {
            if msg.is_close() {
                break;
            }
        }
    })
    .await;
    let _ = tokio::time::timeout(GOODBYE_WAIT, &mut *writer).await;
    writer.abort();
}
