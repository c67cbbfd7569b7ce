//! A fixed set of threads for the executor's blocking work (automerge, log reads).
//!
//! Not tokio's blocking pool: it starts a thread for each task that finds no idle one (up to
//! 512 by default), so a burst of subscribers started one thread each, and even with the
//! tasks bounded by a semaphore it kept starting more when a task was handed over just before
//! the previous thread was idle again. Every thread keeps a stack and a glibc arena (~33 KiB
//! of RSS) while it lives. Here the threads are started once, on first use, and the work
//! queues for them.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex};

type Job = Box<dyn FnOnce() + Send>;

/// The threads, and the queue that feeds them. Dropping the last handle lets the threads end
/// once the queue is empty.
#[derive(Debug)]
pub(crate) struct Workers {
    size: usize,
    queue: Mutex<Option<Sender<Job>>>,
    /// Jobs queued or running (a shutdown waits for none).
    busy: Arc<tokio::sync::watch::Sender<usize>>,
}

/// The work could not be queued: no thread could be started.
#[derive(Debug)]
pub(crate) struct NoWorkers(pub(crate) String);

impl Workers {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            queue: Mutex::new(None),
            busy: Arc::new(tokio::sync::watch::Sender::new(0)),
        }
    }

    /// Completes when no job is queued or running.
    pub(crate) async fn idle(&self) {
        let mut busy = self.busy.subscribe();
        let _ = busy.wait_for(|n| *n == 0).await;
    }

    /// Queues `job`; the first call starts the threads.
    pub(crate) fn submit(&self, job: Job) -> Result<(), NoWorkers> {
        let mut queue = crate::lock(&self.queue);
        if queue.is_none() {
            *queue = Some(self.start()?);
        }
        self.busy.send_modify(|n| *n += 1);
        // Counted down however the job ends: run, panicked, or dropped unrun.
        let done = Done(self.busy.clone());
        let counted: Job = Box::new(move || {
            let _done = done;
            job();
        });
        match queue.as_ref().map(|q| q.send(counted)) {
            Some(Ok(())) => Ok(()),
            // The job was dropped unrun: its guard already counted it down.
            _ => Err(NoWorkers("the work threads are gone".into())),
        }
    }

    fn start(&self) -> Result<Sender<Job>, NoWorkers> {
        let (tx, rx) = channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..self.size {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("converge-work-{i}"))
                .spawn(move || work(&rx))
                .map_err(|e| NoWorkers(format!("cannot start a work thread: {e}")))?;
        }
        Ok(tx)
    }
}

/// Counts a job down when dropped.
struct Done(Arc<tokio::sync::watch::Sender<usize>>);

impl Drop for Done {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

/// Runs jobs until the queue is closed and empty. A job that panics ends alone: its caller
/// sees its result channel closed; the thread goes on.
fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = {
            let rx = crate::lock(rx);
            rx.recv()
        };
        match job {
            Ok(job) => {
                if catch_unwind(AssertUnwindSafe(job)).is_err() {
                    tracing::error!("a blocking task panicked");
                }
            }
            Err(_) => return,
        }
    }
}
