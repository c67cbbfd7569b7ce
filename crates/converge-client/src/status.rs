//! What the connection is doing, for an app to show ("offline, retrying in 4 s").

use std::time::SystemTime;

use futures_util::Stream;
use tokio::sync::watch;

/// The connection's state. Documents work in every state: changes made while not
/// [`Status::Online`] are stored and pushed once the connection is back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Opening a connection (TCP, WebSocket upgrade, Hello until Welcome).
    Connecting,
    /// Welcome received: documents are syncing.
    Online,
    /// The connection failed or dropped; the next attempt is at `retry_at`
    /// (exponential backoff with full jitter).
    Offline { retry_at: SystemTime },
    /// Too many attempts failed in a row: no attempt until `until`, then one trial.
    CircuitOpen { until: SystemTime },
    /// The server refused the token. No attempt until [`crate::Client::set_token`].
    AuthFailed { message: String },
}

/// The current status, then every change of it. A watch channel underneath: a consumer that
/// falls behind sees the newest status, not every one in between.
pub(crate) fn stream<T: Clone + Send + Sync + 'static>(
    mut rx: watch::Receiver<T>,
) -> impl Stream<Item = T> + Send + 'static {
    rx.mark_changed();
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.changed().await.ok()?;
        let value = rx.borrow_and_update().clone();
        Some((value, rx))
    })
}
