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
}

/// The work could not be queued: no thread could be started.
#[derive(Debug)]
pub(crate) struct NoWorkers(pub(crate) String);

impl Workers {
    pub(crate) fn new(size: usize) -> Self {
        Self {
            size: size.max(1),
            queue: Mutex::new(None),
        }
    }

    /// Queues `job`; the first call starts the threads.
    pub(crate) fn submit(&self, job: Job) -> Result<(), NoWorkers> {
        let mut queue = crate::lock(&self.queue);
        if queue.is_none() {
            *queue = Some(self.start()?);
        }
        match queue.as_ref().map(|q| q.send(job)) {
            Some(Ok(())) => Ok(()),
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
