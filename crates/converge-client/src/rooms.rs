//! Rooms, events and notifications on the client: publish an event, receive the events of the
//! rooms this connection is in, receive notifications pushed live, and open the inbox.
//!
//! Events are ephemeral: nothing is queued offline and a receiver that falls behind misses
//! the oldest (it is told how many). Notifications are also in the user's inbox document,
//! which syncs like any other: open it with [`Client::inbox`] to read what arrived while
//! offline and to mark items read ([`converge_schema`]'s `inbox.mark_read` mutator).

use converge_proto::{DocId, NotificationMsg, Peer, UserId};
use futures_util::Stream;
use tokio::sync::broadcast;

use crate::client::Client;
use crate::error::ClientError;
use crate::{DocHandle, lock};

/// Events and notifications kept for a slow receiver before it misses the oldest.
pub(crate) const FEED_CAPACITY: usize = 1024;

/// An event published to a room.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomEvent {
    pub room: String,
    pub event: String,
    pub data: Vec<u8>,
    /// Who published it (`None`: a backend, through `POST /api/publish`).
    pub from: Option<Peer>,
}

/// What a feed stream yields: an item, or how many a slow receiver missed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Feed<T> {
    Item(T),
    Missed(u64),
}

fn feed<T: Clone + Send + 'static>(
    rx: broadcast::Receiver<T>,
) -> impl Stream<Item = Feed<T>> + Send + 'static {
    futures_util::stream::unfold(rx, |mut rx| async move {
        match rx.recv().await {
            Ok(item) => Some((Feed::Item(item), rx)),
            Err(broadcast::error::RecvError::Lagged(n)) => Some((Feed::Missed(n), rx)),
            Err(broadcast::error::RecvError::Closed) => None,
        }
    })
}

impl Client {
    /// Publishes an ephemeral event to a room (`doc:<id>`, `user:<id>` or `role:<name>`);
    /// every other member online gets it. Needs the publish permission; a refusal comes back
    /// as an error the client logs. Offline, nothing is sent: [`ClientError::Offline`].
    pub fn publish(&self, room: &str, event: &str, data: Vec<u8>) -> Result<(), ClientError> {
        let shared = self.shared();
        let sent = lock(&shared.session)
            .session
            .publish(room.to_string(), event.to_string(), data);
        if !sent {
            return Err(ClientError::Offline);
        }
        shared.wake.notify_one();
        Ok(())
    }

    /// Events of the rooms this connection is in, from now on.
    pub fn events(&self) -> impl Stream<Item = Feed<RoomEvent>> + Send + 'static {
        feed(self.shared().events.subscribe())
    }

    /// Notifications pushed live to this user, from now on. Those held back (quiet hours,
    /// muted categories) and those sent while offline are in the inbox document.
    pub fn notifications(&self) -> impl Stream<Item = Feed<NotificationMsg>> + Send + 'static {
        feed(self.shared().notifications.subscribe())
    }

    /// The user's inbox document (server-written; read it with `converge_schema::Inbox`,
    /// mark items read with the `inbox.mark_read` mutator).
    pub async fn inbox(&self, user: &UserId) -> Result<DocHandle, ClientError> {
        self.doc(DocId::inbox_of(user)).await
    }
}
