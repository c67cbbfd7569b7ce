//! Accepting connections, in place of `axum::serve`, for two bounds it does not set: a
//! deadline for a request's head (a peer that opens a connection and sends nothing, or
//! trickles its headers, is closed after `header_timeout`), and a cap on connections still
//! in their HTTP phase (beyond it a new connection is closed at once). A connection that
//! upgrades to a WebSocket leaves both: the hub bounds it from then on (Hello deadline,
//! connections per user, heartbeats).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, oneshot, watch};

/// The bounds on connections before they upgrade.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AcceptLimits {
    /// Connections in their HTTP phase at once (request head not yet read, or an HTTP API
    /// request being answered).
    pub(crate) max_pending: usize,
    /// How long a request's head may take to arrive.
    pub(crate) header_timeout: Duration,
}

/// How long a stopping server lets HTTP requests in progress finish; a connection still in its
/// HTTP phase after that (a peer still sending its request head) is cut off.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Where the connections stand while the server stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Closing {
    Open,
    /// Finish the request in progress, then close (idle keep-alive connections close now).
    Graceful,
    /// Close now.
    Now,
}

/// Completes once the server's closing reaches `stage` (or the server is gone).
async fn reached(closing: &mut watch::Receiver<Closing>, stage: Closing) {
    // The guard `wait_for` returns is not Send: dropped here, before any other await.
    let _ = closing.wait_for(|c| *c >= stage).await.is_ok();
}

/// Serves `app` on `listener` until `stop` fires; then stops accepting, lets the requests in
/// progress finish for up to [`SHUTDOWN_GRACE`] (idle keep-alive connections are closed at
/// once, the rest after it) and returns.
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: AcceptLimits,
    mut stop: oneshot::Receiver<()>,
) {
    let max = limits.max_pending.clamp(1, Semaphore::MAX_PERMITS);
    let pending = Arc::new(Semaphore::new(max));
    let (closing, closing_rx) = watch::channel(Closing::Open);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    loop {
        let tcp = tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    // Out of file descriptors, mostly: the listener stays; the peers that
                    // wait are taken when descriptors free up.
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            tracing::debug!(max, "too many connections in their HTTP phase: closed");
            continue;
        };
        // Small frames (acks, results, presence) go out at once: with Nagle's algorithm a
        // second frame waits for the peer's delayed ACK, ~40 ms on Linux.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let conn = http
            .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(app.clone()))
            .with_upgrades();
        let mut closing = closing_rx.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let mut conn = std::pin::pin!(conn);
            let ended = tokio::select! {
                ended = conn.as_mut() => ended,
                () = reached(&mut closing, Closing::Graceful) => {
                    conn.as_mut().graceful_shutdown();
                    tokio::select! {
                        ended = conn.as_mut() => ended,
                        // Dropping the connection closes it.
                        () = reached(&mut closing, Closing::Now) => return,
                    }
                }
            };
            if let Err(e) = ended {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        });
    }
    let _ = closing.send(Closing::Graceful);
    // Every HTTP-phase connection holds a permit until it ends.
    let all = max as u32;
    if tokio::time::timeout(SHUTDOWN_GRACE, pending.acquire_many(all))
        .await
        .is_err()
    {
        let _ = closing.send(Closing::Now);
        let _ = pending.acquire_many(all).await;
    }
}
