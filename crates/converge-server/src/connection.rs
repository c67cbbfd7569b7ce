//! One task per WebSocket connection: frames in to the hub, frames out from it.

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};

use std::collections::VecDeque;
use std::sync::Arc;

use crate::hub_task::{ConnOut, HubEvent, now_ms};
use crate::outbox::{Outbox, Taken};

/// Messages per second and burst allowed on one connection, checked before the hub: a
/// flooding connection's excess never reaches the hub's queue, so it cannot slow the others.
pub(crate) type RateLimit = converge_core::Rate;

/// The socket, read and written by the connection's one task (not split: a split socket
/// is kept behind a lock in an allocation of its own, taken on every read and write).
type Sink = WebSocket;

/// Completes when the pause (if any) is over.
async fn resume(pause: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match pause {
        Some(sleep) => sleep.await,
        None => std::future::pending().await,
    }
}

/// Runs a connection until either side closes it.
///
/// The connection's future is most of an idle connection's memory, so it is kept small: the
/// future is an `async` block that uses what
/// it captured in place (an `async fn` would keep its arguments and a moved copy of each),
/// waits that are rare (a full hub queue, a close) are boxed, and no await holds a whole
/// `HubEvent`.
pub(crate) fn start(
    socket: WebSocket,
    hub: mpsc::Sender<HubEvent>,
    token: Option<String>,
    rate: RateLimit,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let mut sink = socket;
    async move {
        let mut bucket = converge_core::Bucket::full(rate, now_ms());
        // When the client was last told it is over its rate (the hub's clock, ms, plus 1;
        // 0 = never): 8 bytes a connection, where an `Option<Instant>` takes 16.
        let mut told_ms: u64 = 0;
        // Boxed: a timer is large, and only a connection over its rate has one.
        let mut pause: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
        let outbox = Arc::new(Outbox::default());
        let mut batch: VecDeque<ConnOut> = VecDeque::new();
        let (reply, session) = oneshot::channel();
        let connect = HubEvent::Connect {
            out: outbox.clone(),
            reply,
            token,
        };
        if !to_hub(&hub, connect).await {
            return;
        }
        let Ok(session) = session.await else { return };
        let mut reading = true;
        loop {
            tokio::select! {
                () = resume(&mut pause), if pause.is_some() => pause = None,
                msg = sink.next(), if reading && pause.is_none() => match msg {
                    Some(Ok(Message::Binary(bytes))) => {
                        let now = now_ms();
                        if let Err(wait_ms) = bucket.take_or_wait(rate, now) {
                            // Dropped here; the hub tells the client at most once a second.
                            if told_ms == 0 || now + 1 >= told_ms + 1000 {
                                told_ms = now + 1;
                                to_hub(&hub, HubEvent::RateLimited { session }).await;
                            }
                            // Nothing more is read until the budget allows a message: the
                            // flood waits in the kernel's buffers and TCP pushes back on the
                            // sender, so a flooding peer costs a read per refill, not one per
                            // frame it sends.
                            let wait = std::time::Duration::from_millis(wait_ms);
                            pause = Some(Box::pin(tokio::time::sleep(wait)));
                            continue;
                        }
                        if !to_hub(&hub, HubEvent::Frame { session, bytes }).await {
                            break;
                        }
                    }
                    Some(Ok(Message::Text(_))) => {
                        to_hub(&hub, HubEvent::Text { session }).await;
                    }
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                    Some(Ok(Message::Close(_))) | None => break,
                    Some(Err(e)) => {
                        // The transport refused the frame (too large, or broken framing):
                        // tell the hub, which answers with an error and a close; stop
                        // reading either way.
                        reading = false;
                        match oversize(&e) {
                            Some(size) => {
                                to_hub(&hub, HubEvent::Oversize { session, size }).await;
                            }
                            None => {
                                tracing::debug!(%session, error = %e, "websocket read failed");
                                break;
                            }
                        }
                    }
                },
                taken = outbox.take(&mut batch) => {
                    match taken {
                        Taken::Items => {}
                        Taken::Kill(code, reason) => {
                            Box::pin(close_briefly(&mut sink, code, reason)).await;
                            break;
                        }
                        Taken::End => break,
                    }
                    // Boxed: a write's futures would otherwise take room in every idle
                    // connection's future; the box is one allocation per burst.
                    if !Box::pin(write_unless_killed(&mut sink, &mut batch, &outbox)).await {
                        break;
                    }
                }
            }
        }
        to_hub(&hub, HubEvent::Disconnect { session }).await;
    }
}

/// How long a killed connection may take to send its close frame: its peer may have stopped
/// reading, so the socket may take nothing more.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Writes the batch, unless the hub kills the connection first: a peer that stopped reading
/// leaves the write pending forever, and only the kill (its queue is full) ends it.
async fn write_unless_killed(
    sink: &mut Sink,
    batch: &mut VecDeque<ConnOut>,
    outbox: &Outbox,
) -> bool {
    let (code, reason) = tokio::select! {
        ok = write(sink, batch) => return ok,
        kill = outbox.killed() => kill,
    };
    close_briefly(sink, code, reason).await;
    false
}

/// Sends a close frame if the socket takes it within [`CLOSE_WAIT`]; the connection ends
/// either way.
async fn close_briefly(sink: &mut Sink, code: converge_proto::CloseCode, reason: String) {
    let _ = tokio::time::timeout(CLOSE_WAIT, close(sink, code, reason)).await;
}

/// Sends everything waiting, in one write where the socket takes it. False when the
/// connection is done (the socket failed, or a close was sent).
async fn write(sink: &mut Sink, batch: &mut VecDeque<ConnOut>) -> bool {
    for out in batch.drain(..) {
        match out {
            ConnOut::Frame(frame) => {
                if sink.feed(Message::Binary(frame)).await.is_err() {
                    return false;
                }
            }
            ConnOut::Close(code, reason) => {
                close(sink, code, reason).await;
                return false;
            }
        }
    }
    sink.flush().await.is_ok()
}

/// Hands an event to the hub task; resolves to false when it is gone. Not an `async fn`:
/// that would hold the whole event across its await. Here the wait for room in a full queue
/// is boxed, and the future is a few bytes while the queue has room.
fn to_hub(
    hub: &mpsc::Sender<HubEvent>,
    event: HubEvent,
) -> impl std::future::Future<Output = bool> + Send + '_ {
    use futures_util::future::{Either, ready};
    match hub.try_send(event) {
        Ok(()) => Either::Left(ready(true)),
        Err(mpsc::error::TrySendError::Closed(_)) => Either::Left(ready(false)),
        Err(mpsc::error::TrySendError::Full(event)) => {
            Either::Right(Box::pin(async move { hub.send(event).await.is_ok() }))
        }
    }
}

async fn close(sink: &mut Sink, code: converge_proto::CloseCode, reason: String) {
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
