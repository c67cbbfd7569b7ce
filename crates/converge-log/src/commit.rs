//! Group commit: appends from every task share one flush.
//!
//! An append applies its batch to the store, then takes a [`Durable`] ticket naming the next
//! flush to *start*. A single flusher thread runs flushes back to back while tickets wait: all
//! appends waiting when a flush starts share it, and appends arriving during it share the next.
//! A flush covers every batch applied before it started, so a ticket resolves when the flush
//! it names has completed. Waiters are released together (one condvar broadcast for threads,
//! one wake per async task), not one by one.
//!
//! In `Buffered` mode tickets resolve at once and the thread flushes on a timer; between
//! flushes it also drains staged writes into sled whenever they pass `drain_at` bytes, so an
//! appender's thread does not pay for sled's indexing (it still does, as back-pressure, when
//! staging reaches its hard limit).
//!
//! A failed flush poisons the committer: every waiting and later ticket fails. After an fsync
//! error the kernel may have dropped the dirty pages, so retrying could report success for
//! data that is gone; the log must be reopened (which recovers from what is on disk).

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::thread::JoinHandle;
use std::time::Duration;

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

#[derive(Debug, Default)]
struct State {
    /// Flushes started so far; a ticket taken now waits for flush number `started + 1`.
    started: u64,
    /// Flushes completed so far.
    completed: u64,
    /// A ticket is waiting for a flush that has not started.
    wanted: bool,
    /// The flusher is parked; only then does a new ticket need to wake it.
    idle: bool,
    /// Buffered mode: staged writes passed `drain_at`; drain them before the next flush.
    drain_wanted: bool,
    closed: bool,
    /// Set by the first failed flush; every ticket fails from then on.
    poisoned: Option<LogError>,
    /// Async tasks waiting for a flush to complete.
    wakers: Vec<Waker>,
    /// How long flushes took (for operators: /api/stats).
    stats: crate::FlushStats,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher.
    work: Condvar,
    /// Wakes threads blocked in [`Durable::wait`].
    done: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        crate::sync::lock(&self.state)
    }
}

/// Owns the flusher thread.
pub(crate) struct Committer {
    shared: Arc<Shared>,
    durability: Durability,
    kv: Arc<dyn Kv>,
    /// Staged bytes at which a buffered log drains in the background.
    drain_at: usize,
    thread: Option<JoinHandle<()>>,
}

impl Committer {
    pub(crate) fn start(
        kv: Arc<dyn Kv>,
        durability: Durability,
        drain_at: usize,
    ) -> Result<Self, LogError> {
        let shared = Arc::new(Shared::default());
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
            drain_at,
            thread: Some(thread),
        })
    }

    /// A ticket that resolves once everything applied before this call is durable.
    pub(crate) fn ticket(&self) -> Durable {
        match self.durability {
            Durability::Buffered { .. } => {
                if self.kv.backlog() >= self.drain_at {
                    let mut st = self.shared.lock();
                    if !st.drain_wanted {
                        st.drain_wanted = true;
                        drop(st);
                        self.shared.work.notify_one();
                    }
                }
                Durable::ready()
            }
            Durability::Fsync => {
                let mut st = self.shared.lock();
                if st.closed {
                    return Durable::failed(LogError::Closed);
                }
                if let Some(e) = &st.poisoned {
                    return Durable::failed(e.clone());
                }
                st.wanted = true;
                let target = st.started + 1;
                let idle = st.idle;
                drop(st);
                if idle {
                    self.shared.work.notify_one();
                }
                Durable(Inner::Waiting {
                    target,
                    shared: self.shared.clone(),
                })
            }
        }
    }

    /// How long the flushes so far took.
    pub(crate) fn stats(&self) -> crate::FlushStats {
        self.shared.lock().stats
    }

    /// Flushes now, on the caller's thread.
    pub(crate) fn flush_now(&self) -> Result<(), LogError> {
        self.kv.flush()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
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
    let mut next_flush = std::time::Instant::now();
    loop {
        let (number, closed) = {
            let mut st = shared.lock();
            match durability {
                Durability::Fsync => {
                    while !st.wanted && !st.closed {
                        st.idle = true;
                        st = shared.work.wait(st).unwrap_or_else(|e| e.into_inner());
                    }
                    st.idle = false;
                }
                Durability::Buffered { every } => {
                    next_flush += every.max(Duration::from_millis(1));
                    st = wait_buffered(shared, kv, st, next_flush);
                    // A flush that overran its period is not followed by a burst of others.
                    next_flush = next_flush.max(std::time::Instant::now());
                }
            }
            st.wanted = false;
            st.started += 1;
            (st.started, st.closed)
        };
        let started = std::time::Instant::now();
        let result = kv.flush();
        let took_us = started.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
        let wakers = {
            let mut st = shared.lock();
            st.stats.record(took_us);
            match result {
                Ok(()) => st.completed = number,
                Err(e) => {
                    tracing::error!(error = %e, "group commit flush failed; the log is poisoned");
                    st.poisoned.get_or_insert(e);
                }
            }
            std::mem::take(&mut st.wakers)
        };
        shared.done.notify_all();
        for w in wakers {
            w.wake();
        }
        if closed {
            // Tickets taken after the last flush started fail with Closed when they look.
            let mut st = shared.lock();
            st.poisoned.get_or_insert(LogError::Closed);
            let wakers = std::mem::take(&mut st.wakers);
            drop(st);
            shared.done.notify_all();
            for w in wakers {
                w.wake();
            }
            return;
        }
    }
}

/// Buffered mode: waits until `deadline` (or close), draining staged writes into the store
/// whenever a ticket asks for it meanwhile.
fn wait_buffered<'a>(
    shared: &'a Shared,
    kv: &dyn Kv,
    mut st: MutexGuard<'a, State>,
    deadline: std::time::Instant,
) -> MutexGuard<'a, State> {
    loop {
        if st.closed {
            return st;
        }
        if st.drain_wanted {
            st.drain_wanted = false;
            drop(st);
            // A failed drain keeps its writes staged; the flush that follows retries them and
            // poisons the log if it fails too.
            if let Err(e) = kv.drain() {
                tracing::warn!(error = %e, "background drain failed");
            }
            st = shared.lock();
            continue;
        }
        let now = std::time::Instant::now();
        if now >= deadline {
            return st;
        }
        st = shared
            .work
            .wait_timeout(st, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
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
    Waiting { target: u64, shared: Arc<Shared> },
}

/// The outcome for a ticket waiting for flush `target`, if known yet.
fn outcome(st: &State, target: u64) -> Option<Result<(), LogError>> {
    if st.completed >= target {
        Some(Ok(()))
    } else {
        st.poisoned.clone().map(Err)
    }
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
            Inner::Waiting { target, shared } => {
                let mut st = shared.lock();
                loop {
                    if let Some(r) = outcome(&st, target) {
                        return r;
                    }
                    st = shared.done.wait(st).unwrap_or_else(|e| e.into_inner());
                }
            }
        }
    }
}

impl Future for Durable {
    type Output = Result<(), LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Inner::Done(r) => Poll::Ready(r.take().unwrap_or(Ok(()))),
            Inner::Waiting { target, shared } => {
                let mut st = shared.lock();
                match outcome(&st, *target) {
                    Some(r) => Poll::Ready(r),
                    None => {
                        st.wakers.push(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}
