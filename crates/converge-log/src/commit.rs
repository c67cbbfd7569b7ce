//! Group commit: appends from every task share one flush.
//!
//! An append applies its batch to the store, then takes a [`Durable`] ticket naming the next
//! flush to *start*. A single flusher thread runs flushes back to back while tickets wait: all
//! appends waiting when a flush starts share it, and appends arriving during it share the next.
//! A flush covers every batch applied before it started, so a ticket resolves when the flush
//! it names has completed. Waiters are released together (one condvar broadcast for threads,
//! one wake per async task), not one by one.
//!
//! With a journal (sled), a flush writes and syncs the journal, and staged writes reach sled
//! in drains: in `Fsync` mode a drainer thread drains whenever the flusher finds more than
//! `drain_at` bytes staged after a flush, so flushes go on while sled indexes a table. In
//! `Buffered` mode tickets resolve at once and the flusher flushes on a timer; between
//! flushes it drains whenever staged writes pass `drain_at` bytes. Either way an appender's
//! thread does not pay for sled's indexing (it still does, as back-pressure, when staging
//! reaches its hard limit).
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
    /// Staged writes passed `drain_at`: drain them (buffered mode: the flusher, before its
    /// next flush; `Fsync` mode: the drainer).
    drain_wanted: bool,
    closed: bool,
    /// Set by the first failed flush; every ticket fails from then on.
    poisoned: Option<LogError>,
    /// Async tasks waiting for a flush to complete, by the parity of the flush they wait
    /// for (see [`parity`]).
    wakers: [Vec<Waker>; 2],
    /// How long flushes took (for operators: /api/stats).
    stats: crate::FlushStats,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    /// Wakes the flusher.
    work: Condvar,
    /// Wakes threads blocked in [`Durable::wait`], by the parity of the flush they wait for.
    done: [Condvar; 2],
    /// Wakes the drainer (`Fsync` mode).
    drain: Condvar,
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
    /// Staged bytes at which the log drains in the background.
    drain_at: usize,
    thread: Option<JoinHandle<()>>,
    /// `Fsync` mode's drainer thread.
    drainer: Option<JoinHandle<()>>,
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
                .spawn(move || flusher(&shared, kv.as_ref(), durability, drain_at))
                .map_err(|e| LogError::Storage(format!("cannot start flusher: {e}")))?
        };
        let mut me = Self {
            shared,
            durability,
            kv,
            drain_at,
            thread: Some(thread),
            drainer: None,
        };
        if durability == Durability::Fsync {
            let shared = me.shared.clone();
            let kv = me.kv.clone();
            // On failure `me` drops, which stops the flusher.
            let drainer = std::thread::Builder::new()
                .name("converge-log-drain".into())
                .spawn(move || drainer(&shared, kv.as_ref()))
                .map_err(|e| LogError::Storage(format!("cannot start drainer: {e}")))?;
            me.drainer = Some(drainer);
        }
        Ok(me)
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

    /// Flushes now, on the caller's thread, and checkpoints: the store itself then holds
    /// everything (with a journal, sled is flushed and the journal starts again). A server
    /// calls it on shutdown, so that closing the log later has nothing left to write: a
    /// background task may drop the last handle after the data directory is gone (a test's
    /// temporary directory), and sled 0.34 hangs in its close when writing one of its files
    /// fails.
    pub(crate) fn flush_now(&self) -> Result<(), LogError> {
        self.kv.checkpoint()
    }
}

impl Drop for Committer {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.work.notify_all();
        self.shared.drain.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(t) = self.drainer.take() {
            let _ = t.join();
        }
        // Whatever was applied and not yet flushed becomes durable on a clean close.
        if let Err(e) = self.kv.flush() {
            tracing::error!(error = %e, "final flush on close failed");
        }
    }
}

fn flusher(shared: &Shared, kv: &dyn Kv, durability: Durability, drain_at: usize) {
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
        let mut st = shared.lock();
        st.stats.record(took_us);
        // A completed flush wakes the waiters of its own number only: those of the next one
        // (appends taken while it ran) would only wake to wait again. A failure wakes
        // everyone, to fail.
        let all = match result {
            Ok(()) => {
                st.completed = number;
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "group commit flush failed; the log is poisoned");
                st.poisoned.get_or_insert(e);
                true
            }
        };
        wake_waiters(shared, st, number, all);
        // Buffered mode has no drainer: its flusher checkpoints itself.
        if matches!(durability, Durability::Buffered { .. })
            && !all
            && kv.checkpoint_due()
            && let Err(e) = kv.checkpoint()
        {
            tracing::warn!(error = %e, "checkpoint failed");
        }
        // Staged writes reach the store on the drainer's thread, so flushes go on while
        // sled indexes them: with a journal the flush made them durable already, and a
        // larger table coalesces more rewrites of the same keys.
        if durability == Durability::Fsync
            && !all
            && (kv.backlog() >= drain_at || kv.checkpoint_due())
        {
            let mut st = shared.lock();
            if !st.drain_wanted {
                st.drain_wanted = true;
                drop(st);
                shared.drain.notify_one();
            }
        }
        if closed {
            // Tickets taken after the last flush started fail with Closed when they look.
            let mut st = shared.lock();
            st.poisoned.get_or_insert(LogError::Closed);
            wake_waiters(shared, st, number, true);
            return;
        }
    }
}

/// `Fsync` mode: drains staged writes into the store whenever the flusher asks.
fn drainer(shared: &Shared, kv: &dyn Kv) {
    loop {
        let mut st = shared.lock();
        while !st.drain_wanted && !st.closed {
            st = shared.drain.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        if st.closed {
            return;
        }
        st.drain_wanted = false;
        drop(st);
        // A failed drain keeps its writes staged; the next one retries them (and a failed
        // journal fails the flushes, which poisons the log). A failed checkpoint is tried
        // again only after another `CHECKPOINT_BYTES` of journal (see `Staged`).
        let done = if kv.checkpoint_due() {
            kv.checkpoint()
        } else {
            kv.drain()
        };
        if let Err(e) = done {
            tracing::warn!(error = %e, "background drain or checkpoint failed");
        }
    }
}

/// Which of the two waiter sets a ticket for flush `target` waits in. At any moment waiters
/// wait for the flush running (`started`) or the one after it, never further: a ticket names
/// `started + 1`. So when flush `n` completes, the waiters of `n` are exactly one parity.
fn parity(target: u64) -> usize {
    usize::from(target % 2 == 1)
}

/// Wakes the threads and tasks waiting for flush `number` (or every waiter), after
/// releasing the lock.
fn wake_waiters(shared: &Shared, mut st: MutexGuard<'_, State>, number: u64, all: bool) {
    let mut wakers = std::mem::take(&mut st.wakers[parity(number)]);
    if all {
        wakers.append(&mut st.wakers[parity(number + 1)]);
    }
    drop(st);
    shared.done[parity(number)].notify_all();
    if all {
        shared.done[parity(number + 1)].notify_all();
    }
    for w in wakers {
        w.wake();
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
                    st = shared.done[parity(target)]
                        .wait(st)
                        .unwrap_or_else(|e| e.into_inner());
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
                        st.wakers[parity(*target)].push(cx.waker().clone());
                        Poll::Pending
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kv::{Pair, WriteBatch};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::task::Wake;

    const WAIT: Duration = Duration::from_secs(10);

    /// A store whose flushes wait to be let through one by one, and say when they begin.
    struct GateKv {
        let_through: Mutex<u32>,
        opened: Condvar,
        began: Mutex<mpsc::Sender<()>>,
        fail: bool,
    }

    impl Kv for GateKv {
        fn get(&self, _: &[u8]) -> Result<Option<Vec<u8>>, LogError> {
            Ok(None)
        }
        fn range(&self, _: &[u8], _: &[u8], _: bool, _: usize) -> Result<Vec<Pair>, LogError> {
            Ok(Vec::new())
        }
        fn apply(&self, _: WriteBatch) -> Result<(), LogError> {
            Ok(())
        }
        fn flush(&self) -> Result<(), LogError> {
            let _ = crate::sync::lock(&self.began).send(());
            let mut open = crate::sync::lock(&self.let_through);
            while *open == 0 {
                open = self.opened.wait(open).unwrap_or_else(|e| e.into_inner());
            }
            *open -= 1;
            if self.fail {
                Err(LogError::Storage("the disk is gone".into()))
            } else {
                Ok(())
            }
        }
        fn is_empty(&self) -> Result<bool, LogError> {
            Ok(true)
        }
        fn size_on_disk(&self) -> Result<u64, LogError> {
            Ok(0)
        }
    }

    fn gate(fail: bool) -> (Arc<GateKv>, mpsc::Receiver<()>) {
        let (tx, rx) = mpsc::channel();
        let kv = Arc::new(GateKv {
            let_through: Mutex::new(0),
            opened: Condvar::new(),
            began: Mutex::new(tx),
            fail,
        });
        (kv, rx)
    }

    fn open_one(kv: &GateKv) {
        *crate::sync::lock(&kv.let_through) += 1;
        kv.opened.notify_all();
    }

    /// Lets every flush through when dropped: declared after the committer, it drops first,
    /// so closing the committer (which joins its flusher) never waits on a shut gate, even
    /// when an assertion fails.
    struct OpenOnDrop(Arc<GateKv>);

    impl Drop for OpenOnDrop {
        fn drop(&mut self) {
            *crate::sync::lock(&self.0.let_through) = u32::MAX;
            self.0.opened.notify_all();
        }
    }

    /// Counts its wakes and reports each on a channel.
    struct Counting(AtomicUsize, Mutex<mpsc::Sender<()>>);

    impl Wake for Counting {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
            let _ = crate::sync::lock(&self.1).send(());
        }
    }

    /// Flush 1 running with a waiter (`first`), and a ticket taken meanwhile (`second`, for
    /// flush 2), polled once with a counting waker.
    struct TwoTickets {
        // Dropped first (fields drop in order): see `OpenOnDrop`.
        _open: OpenOnDrop,
        _committer: Committer,
        kv: Arc<GateKv>,
        began: mpsc::Receiver<()>,
        first: Option<Durable>,
        second: Durable,
        counting: Arc<Counting>,
        waker: Waker,
        woke: mpsc::Receiver<()>,
    }

    fn two_tickets(fail: bool) -> TwoTickets {
        let (kv, began) = gate(fail);
        let committer = Committer::start(kv.clone(), Durability::Fsync, usize::MAX).unwrap();
        let first = committer.ticket();
        began.recv_timeout(WAIT).unwrap();
        let second = committer.ticket();
        let (woke_tx, woke) = mpsc::channel();
        let counting = Arc::new(Counting(AtomicUsize::new(0), Mutex::new(woke_tx)));
        let mut t = TwoTickets {
            _open: OpenOnDrop(kv.clone()),
            _committer: committer,
            kv,
            began,
            first: Some(first),
            second,
            waker: Waker::from(counting.clone()),
            counting,
            woke,
        };
        assert!(t.poll_second().is_pending());
        t
    }

    impl TwoTickets {
        fn poll_second(&mut self) -> Poll<Result<(), LogError>> {
            let mut cx = Context::from_waker(&self.waker);
            Pin::new(&mut self.second).poll(&mut cx)
        }

        /// Lets flush 1 through and returns its waiter's outcome.
        fn finish_first(&mut self) -> Result<(), LogError> {
            open_one(&self.kv);
            self.first.take().map_or(Ok(()), Durable::wait)
        }
    }

    #[test]
    fn a_flush_wakes_its_own_waiters_and_not_the_next_ones() {
        let mut t = two_tickets(false);
        t.finish_first().unwrap();
        // Flush 2 has begun, so flush 1 is done waking its waiters.
        t.began.recv_timeout(WAIT).unwrap();
        assert_eq!(
            t.counting.0.load(Ordering::SeqCst),
            0,
            "woken by a flush before its own"
        );
        assert!(t.poll_second().is_pending());

        open_one(&t.kv);
        t.woke.recv_timeout(WAIT).unwrap();
        assert!(matches!(t.poll_second(), Poll::Ready(Ok(()))));
    }

    #[test]
    fn a_failed_flush_fails_every_waiter() {
        let mut t = two_tickets(true);
        assert!(t.finish_first().is_err());
        // The ticket for the next flush fails too, without waiting for that flush.
        t.woke.recv_timeout(WAIT).unwrap();
        assert!(matches!(t.poll_second(), Poll::Ready(Err(_))));
    }
}
