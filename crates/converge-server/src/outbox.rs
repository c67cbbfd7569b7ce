//! A connection's queue of outgoing frames, from the hub task to the connection's task.
//!
//! A tokio mpsc channel allocates its first block of 32 slots and its shared state up front:
//! ~1.8 KiB for every connection, idle or not (measured with heaptrack on `converge bench
//! idle`). This queue allocates nothing until a frame waits, gives its memory back after a
//! burst, and hands the connection everything waiting at once, so a burst goes out in one
//! write.

use std::collections::VecDeque;
use std::sync::Mutex;

use tokio::sync::Notify;

use converge_proto::CloseCode;

use crate::hub_task::ConnOut;

/// Frames queued per connection before it counts as a slow consumer.
pub(crate) const OUTBOX: usize = 1024;

#[derive(Debug, Default)]
pub(crate) struct Outbox {
    state: Mutex<State>,
    ready: Notify,
}

#[derive(Debug, Default)]
struct State {
    queue: VecDeque<ConnOut>,
    /// The hub forgot the connection: nothing more will be queued.
    closed: bool,
    /// Close the socket now with this code, whatever still waits (the queue is full, so the
    /// close could not be queued behind it).
    kill: Option<(CloseCode, String)>,
}

/// What [`Outbox::take`] found.
#[derive(Debug, PartialEq)]
pub(crate) enum Taken {
    /// Items moved into the batch.
    Items,
    /// Close the socket now, with this code.
    Kill(CloseCode, String),
    /// The queue is closed and drained.
    End,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues an item; gives it back when [`OUTBOX`] items wait already (a slow consumer)
    /// or the queue is closed.
    pub(crate) fn push(&self, item: ConnOut) -> Result<(), ConnOut> {
        let mut st = self.lock();
        if st.closed || st.queue.len() >= OUTBOX {
            return Err(item);
        }
        let was_empty = st.queue.is_empty();
        st.queue.push_back(item);
        drop(st);
        // A non-empty queue was not drained yet: its reader will see this item too.
        if was_empty {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The reader closes the socket with `code` at once, before anything still queued (for a
    /// connection whose queue is full). The first kill wins.
    pub(crate) fn kill(&self, code: CloseCode, reason: String) {
        let mut st = self.lock();
        if st.kill.is_none() {
            st.kill = Some((code, reason));
        }
        drop(st);
        self.ready.notify_one();
    }

    /// Waits for a kill, for a reader busy writing what it took: a peer that stopped reading
    /// leaves that write pending forever, and the kill is what ends it. Wakes on pushes too
    /// (they share the notification) and goes back to waiting; the queue's own state is
    /// checked by `take` before it waits, so no push is missed.
    pub(crate) async fn killed(&self) -> (CloseCode, String) {
        loop {
            if let Some(kill) = self.lock().kill.take() {
                return kill;
            }
            self.ready.notified().await;
        }
    }

    /// No more items will be queued; the reader gets what waits, then the end.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits until items are queued and moves them all into `batch` (which must be empty),
    /// or the connection is killed, or the queue is closed and drained. Cancel-safe: nothing
    /// is taken unless it returns.
    pub(crate) async fn take(&self, batch: &mut VecDeque<ConnOut>) -> Taken {
        // The drained batch keeps no capacity, and the queue only ever gets it back empty by
        // the swap below: an idle connection holds no queue memory (a burst's buffers cost
        // ~300 bytes per connection, measured on `converge bench idle`); the price is one
        // allocation when the next burst starts.
        *batch = VecDeque::new();
        loop {
            {
                let mut st = self.lock();
                if let Some((code, reason)) = st.kill.take() {
                    return Taken::Kill(code, reason);
                }
                if !st.queue.is_empty() {
                    std::mem::swap(&mut st.queue, batch);
                    return Taken::Items;
                }
                if st.closed {
                    return Taken::End;
                }
            }
            // notify_one keeps a permit when nobody waits yet, so a push between the check
            // above and this await is not missed.
            self.ready.notified().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn items_come_in_order_then_the_end_and_a_full_queue_refuses() {
        let out = Outbox::default();
        for i in 0..OUTBOX {
            assert!(out.push(ConnOut::Frame(Bytes::from(vec![i as u8]))).is_ok());
        }
        assert!(out.push(ConnOut::Frame(Bytes::new())).is_err(), "full");
        let mut batch = VecDeque::new();
        assert_eq!(out.take(&mut batch).await, Taken::Items);
        assert_eq!(batch.len(), OUTBOX);
        assert!(
            batch
                .iter()
                .enumerate()
                .all(|(i, f)| matches!(f, ConnOut::Frame(b) if b[..] == [i as u8]))
        );
        batch.clear();
        out.push(ConnOut::Frame(Bytes::from_static(b"last")))
            .unwrap();
        out.close();
        assert!(out.push(ConnOut::Frame(Bytes::new())).is_err(), "closed");
        // What was queued before the close still comes, then the end.
        assert_eq!(out.take(&mut batch).await, Taken::Items);
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert_eq!(out.take(&mut batch).await, Taken::End);
    }

    #[tokio::test]
    async fn a_kill_reaches_a_reader_busy_writing() {
        let out = std::sync::Arc::new(Outbox::default());
        let waiter = {
            let out = out.clone();
            tokio::spawn(async move { out.killed().await })
        };
        tokio::task::yield_now().await;
        // A push wakes the waiter, which goes back to waiting.
        out.push(ConnOut::Frame(Bytes::from_static(b"x"))).unwrap();
        tokio::task::yield_now().await;
        out.kill(CloseCode::SlowConsumer, "slow".into());
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), waiter)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, (CloseCode::SlowConsumer, "slow".to_string()));
        // The queued item is still there for take.
        let mut batch = VecDeque::new();
        assert_eq!(out.take(&mut batch).await, Taken::Items);
    }

    #[tokio::test]
    async fn a_kill_comes_before_what_waits_and_the_first_one_wins() {
        let out = Outbox::default();
        out.push(ConnOut::Frame(Bytes::from_static(b"x"))).unwrap();
        out.kill(CloseCode::SlowConsumer, "slow".into());
        out.kill(CloseCode::ServerShutdown, "later".into());
        let mut batch = VecDeque::new();
        assert_eq!(
            out.take(&mut batch).await,
            Taken::Kill(CloseCode::SlowConsumer, "slow".into())
        );
        assert!(batch.is_empty());
    }

    #[tokio::test]
    async fn a_waiting_reader_wakes_for_a_push() {
        let out = std::sync::Arc::new(Outbox::default());
        let reader = {
            let out = out.clone();
            tokio::spawn(async move {
                let mut batch = VecDeque::new();
                out.take(&mut batch).await;
                batch.len()
            })
        };
        tokio::task::yield_now().await;
        out.push(ConnOut::Frame(Bytes::from_static(b"x"))).unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(got, 1);
    }
}
