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

use crate::hub_task::ConnOut;

/// Frames queued per connection before it counts as a slow consumer.
pub(crate) const OUTBOX: usize = 1024;

/// Capacity a drained batch may keep; a larger one (after a burst) is given back.
const KEEP: usize = 16;

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

    /// No more items will be queued; the reader gets what waits, then the end.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.ready.notify_one();
    }

    /// Waits until items are queued and moves them all into `batch` (which must be empty).
    /// Returns false once the queue is closed and drained. Cancel-safe: nothing is taken
    /// unless it returns.
    pub(crate) async fn take(&self, batch: &mut VecDeque<ConnOut>) -> bool {
        if batch.capacity() > KEEP {
            *batch = VecDeque::new();
        }
        loop {
            {
                let mut st = self.lock();
                if !st.queue.is_empty() {
                    std::mem::swap(&mut st.queue, batch);
                    return true;
                }
                if st.closed {
                    return false;
                }
                // Give back what a burst left behind while nothing waits.
                if st.queue.capacity() > KEEP {
                    st.queue = VecDeque::new();
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
        assert!(out.take(&mut batch).await);
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
        assert!(out.take(&mut batch).await);
        assert_eq!(batch.len(), 1);
        batch.clear();
        assert!(!out.take(&mut batch).await);
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
