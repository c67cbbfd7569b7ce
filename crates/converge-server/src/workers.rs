//! A fixed set of threads for the executor's blocking work (automerge, log reads).
//!
//! Not tokio's blocking pool: it starts a thread for each task that finds no idle one (up to
//! 512 by default), so a burst of subscribers started one thread each, and even with the
//! tasks bounded by a semaphore it kept starting more when a task was handed over just before
//! the previous thread was idle again. Every thread keeps a stack and a glibc arena (~33 KiB
//! of RSS) while it lives. Here the threads are started once, on first use, and the work
//! queues for them.
//!
//! Two queues: work someone waits for (a catch-up, a reconciliation step, loading locks) goes
//! first, and work nobody waits for (snapshots, eviction) runs on all but two threads at
//! most, so a run of long snapshots cannot hold up a joining client's catch-up.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Condvar, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// Which queue a job waits in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Priority {
    /// Someone is waiting for the result.
    Waited,
    /// Nobody is: it may wait behind everything `Waited`.
    Background,
}

/// Threads kept free of background work, for the work someone waits for.
const KEPT_FOR_WAITED: usize = 2;

/// The threads, and the queue that feeds them. Dropping it lets the threads end once the
/// queue is empty.
#[derive(Debug)]
pub(crate) struct Workers {
    size: usize,
    shared: Mutex<Option<Arc<Shared>>>,
    /// Jobs queued or running (a shutdown waits for none).
    busy: Arc<tokio::sync::watch::Sender<usize>>,
}

#[derive(Default)]
struct Queues {
    waited: VecDeque<Job>,
    background: VecDeque<Job>,
    /// Background jobs running now.
    running_background: usize,
    /// No more jobs will come: threads end once the queues are empty.
    closed: bool,
}

struct Shared {
    queues: Mutex<Queues>,
    /// Signalled when a job is queued, a background job ends, or the queues close.
    ready: Condvar,
    /// At most this many background jobs run at once.
    background_limit: usize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("background_limit", &self.background_limit)
            .finish_non_exhaustive()
    }
}

/// The work could not be queued: no thread could be started.
#[derive(Debug)]
pub(crate) struct NoWorkers(pub(crate) String);

impl Workers {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            shared: Mutex::new(None),
            busy: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Completes when no job is queued or running.
    pub(crate) async fn idle(&self) {
        let mut busy = self.busy.subscribe();
        let _ = busy.wait_for(|n| *n == 0).await;
    }

    /// Queues `job`; the first call starts the threads.
    pub(crate) fn submit(&self, priority: Priority, job: Job) -> Result<(), NoWorkers> {
        let shared = {
            let mut slot = crate::lock(&self.shared);
            match slot.as_ref() {
                Some(s) => s.clone(),
                None => {
                    let s = self.start()?;
                    *slot = Some(s.clone());
                    s
                }
            }
        };
        self.busy.send_modify(|n| *n += 1);
        // Counted down however the job ends: run, panicked, or dropped unrun.
        let done = Done(self.busy.clone());
        let counted: Job = Box::new(move || {
            let _done = done;
            job();
        });
        {
            let mut q = crate::lock(&shared.queues);
            match priority {
                Priority::Waited => q.waited.push_back(counted),
                Priority::Background => q.background.push_back(counted),
            }
        }
        shared.ready.notify_one();
        Ok(())
    }

    fn start(&self) -> Result<Arc<Shared>, NoWorkers> {
        let shared = Arc::new(Shared {
            queues: Mutex::new(Queues::default()),
            ready: Condvar::new(),
            background_limit: self.size.saturating_sub(KEPT_FOR_WAITED).max(1),
        });
        for i in 0..self.size {
            let worker = shared.clone();
            let started = std::thread::Builder::new()
                .name(format!("converge-work-{i}"))
                .spawn(move || work(&worker));
            if let Err(e) = started {
                // The threads already started end at once.
                crate::lock(&shared.queues).closed = true;
                shared.ready.notify_all();
                return Err(NoWorkers(format!("cannot start a work thread: {e}")));
            }
        }
        Ok(shared)
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        if let Some(shared) = crate::lock(&self.shared).take() {
            crate::lock(&shared.queues).closed = true;
            shared.ready.notify_all();
        }
    }
}

/// Counts a job down when dropped.
struct Done(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Runs jobs until the queues are closed and empty, waited-for work first. A job that
/// panics ends alone: its caller sees its result channel closed; the thread goes on.
fn work(shared: &Shared) {
    loop {
        let (job, background) = {
            let mut q = crate::lock(&shared.queues);
            loop {
                if let Some(job) = q.waited.pop_front() {
                    break (job, false);
                }
                if q.running_background < shared.background_limit
                    && let Some(job) = q.background.pop_front()
                {
                    q.running_background += 1;
                    break (job, true);
                }
                if q.closed && q.waited.is_empty() && q.background.is_empty() {
                    return;
                }
                q = shared.ready.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!("a blocking task panicked");
        }
        if background {
            crate::lock(&shared.queues).running_background -= 1;
            // A thread may be waiting for room to run the next background job.
            shared.ready.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    const WAIT: Duration = Duration::from_secs(10);

    #[test]
    fn waited_work_passes_background_work_and_keeps_its_threads() {
        // Three threads: at most one runs background work.
        let workers = Workers::new(3);
        let (release_tx, release_rx) = channel::<()>();
        let (started_tx, started_rx) = channel::<()>();
        let (order_tx, order_rx) = channel::<&'static str>();
        workers
            .submit(
                Priority::Background,
                Box::new(move || {
                    started_tx.send(()).unwrap();
                    // Holds the one background slot until the test lets it go (or gives up).
                    let _ = release_rx.recv_timeout(WAIT);
                }),
            )
            .unwrap();
        started_rx.recv_timeout(WAIT).unwrap();
        // A job that reports its label when it runs.
        let record = |priority, label: &'static str| {
            let o = order_tx.clone();
            workers
                .submit(priority, Box::new(move || o.send(label).unwrap()))
                .unwrap();
        };
        record(Priority::Background, "background");
        record(Priority::Waited, "waited");
        // The waited job runs on a free thread while the second background job waits for
        // the slot.
        assert_eq!(order_rx.recv_timeout(WAIT).unwrap(), "waited");
        assert!(order_rx.recv_timeout(Duration::from_millis(50)).is_err());
        release_tx.send(()).unwrap();
        assert_eq!(order_rx.recv_timeout(WAIT).unwrap(), "background");
    }
}
