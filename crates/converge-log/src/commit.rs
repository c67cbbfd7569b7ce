//! Group commit: appends from every task share one flush.
//!
//! An append applies its batch to the store, then asks the committer for a [`Durable`] ticket.
//! In `Fsync` mode a single flusher thread takes every ticket asked for so far, flushes once,
//! and resolves them all; appends that arrive during that flush ride the next one. So a flush
//! covers every batch whose ticket it resolves (each batch was applied before its ticket was
//! taken), and throughput grows with the number of concurrent appenders.
//! In `Buffered` mode tickets resolve at once and the thread flushes on a timer.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::oneshot;

use crate::error::LogError;
use crate::kv::Kv;

/// When an append counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// An append resolves after a flush (fsync) that covers it. The default.
    Fsync,
    /// Appends resolve at once and a flush runs every `every`. A crash (of the process or of
    /// the machine) can lose up to `every` of acknowledged writes: sled keeps unflushed writes
    /// in memory only.
    Buffered { every: Duration },
}

type Waiter = oneshot::Sender<Result<(), LogError>>;

#[derive(Default)]
struct State {
    waiters: Vec<Waiter>,
    closed: bool,
    /// The flusher is parked on the condvar. While it is busy flushing it looks at the
    /// waiters again before parking, so appends skip the wake-up syscall.
    idle: bool,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

/// Owns the flusher thread.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    durability: Durability,
    kv: Arc<dyn Kv>,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub(crate) fn start(kv: Arc<dyn Kv>, durability: Durability) -> Result<Self, LogError> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let thread = {
            let shared = shared.clone();
            let kv = kv.clone();
            std::thread::Builder::new()
                .name("converge-log-flush".into())
                .spawn(move || flusher(&shared, kv.as_ref(), durability))
                .map_err(|e| LogError::Storage(format!("cannot start flusher: {e}")))?
        };
        Ok(Self {
            shared,
            durability,
            kv,
            thread: Some(thread),
        })
    }

    /// A ticket that resolves once everything applied before this call is durable.
    pub(crate) fn ticket(&self) -> Durable {
        match self.durability {
            Durability::Buffered { .. } => Durable::ready(),
            Durability::Fsync => {
                let (tx, rx) = oneshot::channel();
                let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
                if st.closed {
                    return Durable::failed(LogError::Closed);
                }
                st.waiters.push(tx);
                let idle = st.idle;
                drop(st);
                if idle {
                    self.shared.wake.notify_one();
                }
                Durable(Inner::Waiting(rx))
            }
        }
    }

    /// Flushes now, on the caller's thread.
    pub(crate) fn flush_now(&self) -> Result<(), LogError> {
        self.kv.flush()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        {
            let mut st = self.shared.state.lock().unwrap_or_else(|e| e.into_inner());
            st.closed = true;
        }
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Whatever was applied and not yet flushed becomes durable on a clean close.
        if let Err(e) = self.kv.flush() {
            tracing::error!(error = %e, "final flush on close failed");
        }
    }
}

fn flusher(shared: &Shared, kv: &dyn Kv, durability: Durability) {
    loop {
        let (waiters, closed) = {
            let mut st = shared.state.lock().unwrap_or_else(|e| e.into_inner());
            match durability {
                Durability::Fsync => {
                    while st.waiters.is_empty() && !st.closed {
                        st.idle = true;
                        st = shared.wake.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    st.idle = false;
                }
                Durability::Buffered { every } => {
                    if !st.closed {
                        st = shared
                            .wake
                            .wait_timeout(st, every.max(Duration::from_millis(1)))
                            .unwrap_or_else(|e| e.into_inner())
                            .0;
                    }
                }
            }
            (std::mem::take(&mut st.waiters), st.closed)
        };
        if !waiters.is_empty() || matches!(durability, Durability::Buffered { .. }) {
            let result = kv.flush();
            if let Err(e) = &result {
                tracing::error!(error = %e, "group commit flush failed");
            }
            for w in waiters {
                let _ = w.send(result.clone());
            }
        }
        if closed {
            return;
        }
    }
}

/// Resolves when an append is durable (see [`Durability`]).
///
/// Await it in async code; call [`Durable::wait`] from a thread that may block (never from
/// inside an async task).
#[derive(Debug)]
#[must_use = "an append is acknowledged only once its Durable resolves"]
pub struct Durable(Inner);

#[derive(Debug)]
enum Inner {
    Done(Option<Result<(), LogError>>),
    Waiting(oneshot::Receiver<Result<(), LogError>>),
}

impl Durable {
    pub(crate) fn ready() -> Self {
        Durable(Inner::Done(Some(Ok(()))))
    }

    pub(crate) fn failed(e: LogError) -> Self {
        Durable(Inner::Done(Some(Err(e))))
    }

    /// Blocks the thread until the append is durable.
    pub fn wait(self) -> Result<(), LogError> {
        match self.0 {
            Inner::Done(r) => r.unwrap_or(Ok(())),
            Inner::Waiting(rx) => rx.blocking_recv().unwrap_or(Err(LogError::Closed)),
        }
    }
}

impl Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Done(r) => Poll::Ready(r.take().unwrap_or(Ok(()))),
            Inner::Waiting(rx) => Pin::new(rx)
                .poll(cx)
                .map(|r| r.unwrap_or(Err(LogError::Closed))),
        }
    }
}
