//! One task per WebSocket connection: frames in to the hub, frames out from it.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use std::collections::VecDeque;
use std::sync::Arc;

use crate::hub_task::{ConnOut, HubEvent};
use crate::outbox::Outbox;

/// Runs a connection until either side closes it.
/// Messages per second and burst allowed on one connection, checked before the hub: a
/// flooding connection's excess never reaches the hub's queue, so it cannot slow the others.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RateLimit {
    pub(crate) per_sec: u32,
    pub(crate) burst: u32,
}

pub(crate) async fn run(
    socket: WebSocket,
    hub: mpsc::Sender<HubEvent>,
    token: Option<String>,
    rate: RateLimit,
) {
    let quota = std::num::NonZeroU32::new(rate.per_sec.max(1))
        .map(governor::Quota::per_second)
        .zip(std::num::NonZeroU32::new(rate.burst.max(1)))
        .map(|(q, b)| q.allow_burst(b));
    let limiter = quota.map(governor::RateLimiter::direct);
    let mut told: Option<tokio::time::Instant> = None;
    let outbox = Arc::new(Outbox::default());
    let mut batch: VecDeque<ConnOut> = VecDeque::new();
    let (kill_tx, mut kill_rx) = oneshot::channel();
    let (reply, session) = oneshot::channel();
    if hub
        .send(HubEvent::Connect {
            out: outbox.clone(),
            kill: kill_tx,
            reply,
            token,
        })
        .await
        .is_err()
    {
        return;
    }
    let Ok(session) = session.await else { return };
    let (mut sink, mut stream) = socket.split();
    let mut reading = true;
    loop {
        tokio::select! {
            msg = stream.next(), if reading => match msg {
                Some(Ok(Message::Binary(bytes))) => {
                    if limiter.as_ref().is_some_and(|l| l.check().is_err()) {
                        // Dropped here; the hub tells the client at most once a second.
                        let now = tokio::time::Instant::now();
                        if told.is_none_or(|t| now.duration_since(t).as_secs() >= 1) {
                            told = Some(now);
                            let _ = hub.send(HubEvent::RateLimited { session }).await;
                        }
                        continue;
                    }
                    if hub.send(HubEvent::Frame { session, bytes }).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Text(_))) => {
                    let _ = hub.send(HubEvent::Text { session }).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(e)) => {
                    // The transport refused the frame (too large, or broken framing): tell the
                    // hub, which answers with an error and a close; stop reading either way.
                    reading = false;
                    match oversize(&e) {
                        Some(size) => {
                            let _ = hub.send(HubEvent::Oversize { session, size }).await;
                        }
                        None => {
                            tracing::debug!(%session, error = %e, "websocket read failed");
                            break;
                        }
                    }
                }
            },
            more = outbox.take(&mut batch) => {
                if !more {
                    break;
                }
                // Everything waiting goes out in one write where the socket takes it.
                let mut ended = false;
                for out in batch.drain(..) {
                    match out {
                        ConnOut::Frame(frame) => {
                            if sink.feed(Message::Binary(frame)).await.is_err() {
                                ended = true;
                                break;
                            }
                        }
                        ConnOut::Close(code, reason) => {
                            close(&mut sink, code, reason).await;
                            ended = true;
                            break;
                        }
                    }
                }
                if ended || sink.flush().await.is_err() {
                    break;
                }
            }
            killed = &mut kill_rx => {
                if let Ok((code, reason)) = killed {
                    close(&mut sink, code, reason).await;
                }
                break;
            }
        }
    }
    let _ = hub.send(HubEvent::Disconnect { session }).await;
}

async fn close(
    sink: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    code: converge_proto::CloseCode,
    reason: String,
) {
    let mut reason = reason;
    // A close frame's reason is at most 123 bytes.
    while reason.len() > 120 {
        reason.pop();
    }
    let frame = CloseFrame {
        code: code.code(),
        reason: reason.into(),
    };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.flush().await;
}

/// The size of a frame the transport refused for its size, if that is what happened.
fn oversize(e: &axum::Error) -> Option<usize> {
    use tokio_tungstenite::tungstenite::error::{CapacityError, Error};
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(e);
    while let Some(err) = source {
        if let Some(Error::Capacity(CapacityError::MessageTooLong { size, .. })) =
            err.downcast_ref::<Error>()
        {
            return Some(*size);
        }
        source = err.source();
    }
    None
}
