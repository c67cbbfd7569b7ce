//! The task that owns the [`Hub`], and the writer that executes its appends in order.
//!
//! Connections talk to the hub over a bounded channel; the hub's frames go back over one
//! bounded channel per connection. Appends run on one writer thread, in the order the hub asked
//! for them (so the log assigns seqs in hub order), and their durability is awaited in that
//! same order before the hub hears back: the contract in converge-core's hub docs.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use converge_core::{
    Appended, Catchup, Hub, HubStats, Output, PushAuthor, Refusal, SyncStep, Ticket,
};
use converge_log::Durable;
use converge_proto::{Blob, CloseCode, DocId, ErrorCode, Position, SessionId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::executor::LogExecutor;

/// New entries of a document between two checks whether a snapshot is due (the log's rule
/// is counted in thousands of entries; checking every append would cost a task each).
const SNAPSHOT_CHECK_EVERY: u64 = 500;

/// Frames queued per connection before it counts as a slow consumer.
pub(crate) const OUTBOX: usize = 1024;

/// What a connection task receives.
#[derive(Debug)]
pub(crate) enum ConnOut {
    Frame(Bytes),
    Close(CloseCode, String),
}

/// What the hub task receives.
#[derive(Debug)]
pub(crate) enum HubEvent {
    Connect {
        out: mpsc::Sender<ConnOut>,
        kill: oneshot::Sender<(CloseCode, String)>,
        reply: oneshot::Sender<SessionId>,
    },
    Frame {
        session: SessionId,
        bytes: Bytes,
    },
    Text {
        session: SessionId,
    },
    Oversize {
        session: SessionId,
        size: usize,
    },
    Disconnect {
        session: SessionId,
    },
    Appended {
        ticket: Ticket,
        doc: DocId,
        changes: Vec<Blob>,
        result: Result<Appended, Refusal>,
    },
    Reconciled {
        ticket: Ticket,
        result: Result<SyncStep, Refusal>,
    },
    /// A background snapshot check for the document finished.
    Snapshotted {
        doc: DocId,
    },
    Catchup {
        ticket: Ticket,
        result: Result<Catchup, Refusal>,
    },
    Stats {
        reply: oneshot::Sender<HubStats>,
    },
    /// Close every session, finish pending appends, flush the log, then answer.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

struct Conn {
    out: mpsc::Sender<ConnOut>,
    kill: Option<oneshot::Sender<(CloseCode, String)>>,
}

struct AppendJob {
    ticket: Ticket,
    doc: DocId,
    author: PushAuthor,
    changes: Vec<Blob>,
    relayed: bool,
    at_ms: u64,
}

/// What the writer hands the durability waiter.
struct Written {
    ticket: Ticket,
    doc: DocId,
    changes: Vec<Blob>,
    wait: WaitFor,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the hub task, the writer thread and the durability waiter. Returns the hub's inbox
/// and a flag that turns false once shutdown began (for /readyz).
/// The hub task and the writer thread, to wait for once the server shuts down: when both have
/// ended, nothing of the server holds the log any more.
#[derive(Debug)]
pub(crate) struct Tasks {
    pub(crate) hub: tokio::task::JoinHandle<()>,
    pub(crate) writer: std::thread::JoinHandle<()>,
}

pub(crate) fn spawn(
    hub: Hub,
    exec: LogExecutor,
) -> std::io::Result<(mpsc::Sender<HubEvent>, watch::Receiver<bool>, Tasks)> {
    let (tx, rx) = mpsc::channel::<HubEvent>(4096);
    let (ready_tx, ready_rx) = watch::channel(true);
    let (job_tx, job_rx) = std::sync::mpsc::channel::<AppendJob>();
    let (wait_tx, wait_rx) = mpsc::unbounded_channel::<Written>();

    let writer_exec = exec.clone();
    let writer = std::thread::Builder::new()
        .name("converge-writer".into())
        .spawn(move || writer(writer_exec, job_rx, wait_tx))?;
    tokio::spawn(waiter(wait_rx, tx.clone()));
    let hub = tokio::spawn(run(hub, exec, rx, tx.clone(), job_tx, ready_tx));
    Ok((tx, ready_rx, Tasks { hub, writer }))
}

enum WaitFor {
    Durable(Appended, Durable),
    Refused(Refusal),
}

/// Appends in hub order. `append` itself only stages the batch (microseconds); the flush
/// happens in the log's group commit, awaited by the waiter.
fn writer(
    exec: LogExecutor,
    jobs: std::sync::mpsc::Receiver<AppendJob>,
    wait: mpsc::UnboundedSender<Written>,
) {
    while let Ok(job) = jobs.recv() {
        let result = exec.append(&job.doc, &job.author, job.at_ms, &job.changes, job.relayed);
        let written = Written {
            ticket: job.ticket,
            doc: job.doc,
            changes: job.changes,
            wait: match result {
                Ok((appended, durable)) => WaitFor::Durable(appended, durable),
                Err(r) => WaitFor::Refused(r),
            },
        };
        if wait.send(written).is_err() {
            return;
        }
    }
}

/// Awaits durability in append order, then tells the hub.
async fn waiter(mut rx: mpsc::UnboundedReceiver<Written>, hub: mpsc::Sender<HubEvent>) {
    while let Some(Written {
        ticket,
        doc,
        changes,
        wait,
    }) = rx.recv().await
    {
        let result = match wait {
            WaitFor::Durable(appended, durable) => match durable.await {
                Ok(()) => Ok(appended),
                Err(e) => {
                    tracing::error!(error = %e, "log flush failed; the write is not acknowledged");
                    Err(Refusal::new(ErrorCode::StorageFailed, e.to_string()))
                }
            },
            WaitFor::Refused(r) => Err(r),
        };
        if hub
            .send(HubEvent::Appended {
                ticket,
                doc,
                changes,
                result,
            })
            .await
            .is_err()
        {
            return;
        }
    }
}

async fn run(
    mut hub: Hub,
    exec: LogExecutor,
    mut rx: mpsc::Receiver<HubEvent>,
    tx: mpsc::Sender<HubEvent>,
    jobs: std::sync::mpsc::Sender<AppendJob>,
    ready: watch::Sender<bool>,
) {
    let mut conns: HashMap<SessionId, Conn> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown: Option<oneshot::Sender<()>> = None;
    // Set once shutdown flushed the log: the task ends when the last connection is gone,
    // dropping the writer's queue (so the writer thread ends) and with it the log.
    let mut stopped = false;
    // Documents with a snapshot check running in the background (one at a time per doc).
    let mut snapshotting: HashSet<DocId> = HashSet::new();
    // New entries per document since its last snapshot check.
    let mut since_check: HashMap<DocId, u64> = HashMap::new();
    loop {
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    HubEvent::Connect { out, kill, reply } => {
                        let session = hub.connect(now_ms());
                        conns.insert(session, Conn { out, kill: Some(kill) });
                        let _ = reply.send(session);
                    }
                    HubEvent::Frame { session, bytes } => hub.handle_frame(session, &bytes, now_ms()),
                    HubEvent::Text { session } => hub.handle_text(session),
                    HubEvent::Oversize { session, size } => hub.handle_oversize(session, size),
                    HubEvent::Disconnect { session } => {
                        conns.remove(&session);
                        hub.disconnect(session);
                    }
                    HubEvent::Appended { ticket, doc, changes, result } => {
                        let wrote = result
                            .as_ref()
                            .map_or(0, |a| a.changes.iter().filter(|c| c.new).count() as u64);
                        hub.handle_appended(ticket, &changes, result);
                        let n = since_check.entry(doc).or_default();
                        *n += wrote;
                        if *n >= SNAPSHOT_CHECK_EVERY && snapshotting.insert(doc) {
                            *n = 0;
                            snapshot_if_due(&exec, &tx, doc);
                        }
                    }
                    HubEvent::Reconciled { ticket, result } => hub.handle_reconcile(ticket, result),
                    HubEvent::Snapshotted { doc } => {
                        snapshotting.remove(&doc);
                        // Entries appended while it ran may already make the next one due
                        // (a burst of pushes ends with no append left to trigger a check).
                        if let Some(n) = since_check.get_mut(&doc)
                            && *n >= SNAPSHOT_CHECK_EVERY
                        {
                            *n = 0;
                            snapshotting.insert(doc);
                            snapshot_if_due(&exec, &tx, doc);
                        }
                    }
                    HubEvent::Catchup { ticket, result } => hub.handle_catchup(ticket, result),
                    HubEvent::Stats { reply } => {
                        let _ = reply.send(hub.stats());
                    }
                    HubEvent::Shutdown { done } => {
                        let _ = ready.send(false);
                        hub.shutdown();
                        shutdown = Some(done);
                    }
                }
            }
            _ = tick.tick() => hub.tick(now_ms()),
        }
        while let Some(out) = hub.poll_output() {
            match out {
                Output::Send { session, frame } => {
                    let Some(c) = conns.get(&session) else {
                        continue;
                    };
                    if c.out.try_send(ConnOut::Frame(frame)).is_err() {
                        hub.handle_slow_consumer(session);
                    }
                }
                Output::Close {
                    session,
                    code,
                    reason,
                } => {
                    if let Some(c) = conns.get_mut(&session)
                        && let Err(mpsc::error::TrySendError::Full(ConnOut::Close(code, reason))) =
                            c.out.try_send(ConnOut::Close(code, reason))
                        && let Some(kill) = c.kill.take()
                    {
                        let _ = kill.send((code, reason));
                    }
                }
                Output::Append {
                    ticket,
                    doc,
                    author,
                    changes,
                    relayed,
                } => {
                    let job = AppendJob {
                        ticket,
                        doc,
                        author,
                        changes,
                        relayed,
                        at_ms: now_ms(),
                    };
                    if jobs.send(job).is_err() {
                        tracing::error!("the writer thread is gone");
                    }
                }
                Output::Catchup { ticket, doc, after } => catchup(&exec, &tx, ticket, doc, after),
                Output::Reconcile {
                    ticket,
                    doc,
                    session,
                    bytes,
                } => reconcile(&exec, &tx, ticket, doc, session, bytes),
                Output::Release { doc } => {
                    since_check.remove(&doc);
                    let exec = exec.clone();
                    tokio::task::spawn_blocking(move || exec.evict(&doc));
                }
            }
        }
        if shutdown.is_some() && hub.drained() {
            let exec = exec.clone();
            let flushed = tokio::task::spawn_blocking(move || exec.log().flush()).await;
            match flushed {
                Ok(Ok(())) => tracing::info!("log flushed; hub stopped"),
                Ok(Err(e)) => tracing::error!(error = %e, "final log flush failed"),
                Err(e) => tracing::error!(error = %e, "final log flush panicked"),
            }
            if let Some(done) = shutdown.take() {
                let _ = done.send(());
            }
            stopped = true;
            // Keep serving stats and closes for connections still draining.
        }
        if stopped && conns.is_empty() {
            break;
        }
    }
}

fn catchup(
    exec: &LogExecutor,
    tx: &mpsc::Sender<HubEvent>,
    ticket: Ticket,
    doc: DocId,
    after: Option<Position>,
) {
    let exec = exec.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let result = tokio::task::spawn_blocking(move || exec.catchup(&doc, after))
            .await
            .unwrap_or_else(|e| Err(Refusal::new(ErrorCode::Internal, e.to_string())));
        let _ = tx.send(HubEvent::Catchup { ticket, result }).await;
    });
}

fn reconcile(
    exec: &LogExecutor,
    tx: &mpsc::Sender<HubEvent>,
    ticket: Ticket,
    doc: DocId,
    session: SessionId,
    bytes: Blob,
) {
    let exec = exec.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let result =
            tokio::task::spawn_blocking(move || exec.reconcile(session, &doc, &bytes, now_ms()))
                .await
                .unwrap_or_else(|e| Err(Refusal::new(ErrorCode::Internal, e.to_string())));
        let _ = tx.send(HubEvent::Reconciled { ticket, result }).await;
    });
}

/// Writes a snapshot in the background when the log says one is due, so a fresh subscriber
/// loads a snapshot and a short tail instead of the whole stream. Off the push path.
fn snapshot_if_due(exec: &LogExecutor, tx: &mpsc::Sender<HubEvent>, doc: DocId) {
    let exec = exec.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let result = tokio::task::spawn_blocking(move || exec.snapshot_if_due(&doc)).await;
        match result {
            Ok(Ok(true)) => tracing::debug!(%doc, "snapshot written"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(%doc, error = %e, "snapshot failed"),
            Err(e) => tracing::error!(%doc, error = %e, "snapshot task failed"),
        }
        let _ = tx.send(HubEvent::Snapshotted { doc }).await;
    });
}

/// Used by the HTTP layer.
pub(crate) async fn stats(tx: &mpsc::Sender<HubEvent>) -> Option<HubStats> {
    let (reply, rx) = oneshot::channel();
    tx.send(HubEvent::Stats { reply }).await.ok()?;
    rx.await.ok()
}
