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
    Appended, Catchup, ExternalMutation, Hub, HubStats, LockChange, LockHolder, LocksRecorded,
    Mutated, MutationRequest, Output, PushAuthor, Refusal, SyncStep, Ticket,
};
use converge_log::Durable;
use converge_proto::{Blob, CloseCode, DocId, ErrorCode, MutationOutcome, Position, SessionId};
use tokio::sync::{mpsc, oneshot, watch};

use crate::executor::LogExecutor;
use crate::metrics::Metrics;
use crate::outbox::Outbox;
use std::sync::Arc;

/// New entries of a document between two checks whether a snapshot is due (the log's rule
/// is counted in thousands of entries; checking every append would cost a task each).
const SNAPSHOT_CHECK_EVERY: u64 = 500;

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
        out: Arc<Outbox>,
        reply: oneshot::Sender<SessionId>,
        /// The upgrade request's bearer token, if any.
        token: Option<String>,
    },
    Frame {
        session: SessionId,
        bytes: Bytes,
    },
    Text {
        session: SessionId,
    },
    /// The connection dropped messages over its rate limit.
    RateLimited {
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
    Mutated {
        ticket: Ticket,
        result: Result<Mutated, Refusal>,
    },
    LocksRecorded {
        ticket: Ticket,
        result: Result<LocksRecorded, Refusal>,
    },
    LocksLoaded {
        ticket: Ticket,
        result: Result<Vec<LockHolder>, Refusal>,
    },
    /// An admin grant changed (`role: None` removes it).
    SetAcl {
        doc: DocId,
        user: converge_proto::UserId,
        role: Option<String>,
    },
    /// The admin grants of a document.
    GetAcl {
        doc: DocId,
        reply: oneshot::Sender<Vec<(converge_proto::UserId, String)>>,
    },
    /// What an identity may do in a document (HTTP reads).
    Permissions {
        identity: Box<converge_core::Identity>,
        doc: DocId,
        reply: oneshot::Sender<converge_core::Permissions>,
    },
    /// End every session of a user.
    Revoke {
        user: converge_proto::UserId,
    },
    /// A mutation from the HTTP API.
    ExternalMutate {
        mutation: ExternalMutation,
        reply: oneshot::Sender<Result<ExternalDone, Refusal>>,
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
    /// An event from the HTTP API to a room: how many sessions it reached.
    Publish {
        identity: Box<converge_core::Identity>,
        room: String,
        event: String,
        data: Blob,
        reply: oneshot::Sender<Result<usize, Refusal>>,
    },
    /// Who a notification is for.
    Recipients {
        audience: converge_core::Audience,
        reply: oneshot::Sender<std::collections::BTreeSet<converge_proto::UserId>>,
    },
    /// Messages to every session of these users (live notifications): how many were sent.
    SendToUsers {
        messages: Vec<(converge_proto::UserId, converge_proto::ServerMsg)>,
        reply: oneshot::Sender<usize>,
    },
    /// Close every session, finish pending appends, flush the log, then answer.
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

struct Conn {
    out: Arc<Outbox>,
}

impl Drop for Conn {
    /// The hub forgot the connection: its task gets what is queued, then the end.
    fn drop(&mut self) {
        self.out.close();
    }
}

/// A log write, executed by the writer thread in hub order.
enum Job {
    Append {
        ticket: Ticket,
        doc: DocId,
        author: PushAuthor,
        changes: Vec<Blob>,
        relayed: bool,
        at_ms: u64,
    },
    /// Records a user of the directory (no answer; its durability rides on the next flush).
    User {
        user: converge_proto::UserId,
        roles: Vec<String>,
    },
    Mutate {
        ticket: Ticket,
        request: MutationRequest,
    },
    Locks {
        ticket: Ticket,
        doc: DocId,
        changes: Vec<LockChange>,
        at_ms: u64,
    },
}

/// What the writer hands the durability waiter: the event for the hub, sent once `durable`
/// resolves (or turned into a refusal if the flush fails).
struct Written {
    event: HubEvent,
    durable: Option<Durable>,
    /// When the writer took the job (for the append latency).
    started: std::time::Instant,
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Starts the hub task, the writer thread and the durability waiter. Returns the hub's inbox
/// and a flag that turns false once shutdown began (for /readyz).
/// The hub task, the writer thread and the executor's work, to wait for once the server shuts
/// down: when all have ended, nothing of the server holds the log any more.
#[derive(Debug)]
pub(crate) struct Tasks {
    pub(crate) hub: tokio::task::JoinHandle<()>,
    pub(crate) writer: std::thread::JoinHandle<()>,
    /// For the work still running on its threads when the hub ends.
    pub(crate) exec: LogExecutor,
}

pub(crate) fn spawn(
    hub: Hub,
    exec: LogExecutor,
    metrics: Arc<Metrics>,
) -> std::io::Result<(mpsc::Sender<HubEvent>, watch::Receiver<bool>, Tasks)> {
    let (tx, rx) = mpsc::channel::<HubEvent>(4096);
    let (ready_tx, ready_rx) = watch::channel(true);
    let (job_tx, job_rx) = std::sync::mpsc::channel::<Job>();
    let (wait_tx, wait_rx) = mpsc::unbounded_channel::<Written>();

    let writer_exec = exec.clone();
    let writer = std::thread::Builder::new()
        .name("converge-writer".into())
        .spawn(move || writer(writer_exec, job_rx, wait_tx))?;
    tokio::spawn(waiter(wait_rx, tx.clone(), metrics.clone()));
    let tasks_exec = exec.clone();
    let hub = tokio::spawn(run(hub, exec, rx, tx.clone(), job_tx, ready_tx, metrics));
    Ok((
        tx,
        ready_rx,
        Tasks {
            hub,
            writer,
            exec: tasks_exec,
        },
    ))
}

/// Splits a result into the value for the hub and the ticket to wait on.
fn split<T>(r: Result<(T, Durable), Refusal>) -> (Result<T, Refusal>, Option<Durable>) {
    match r {
        Ok((v, d)) => (Ok(v), Some(d)),
        Err(r) => (Err(r), None),
    }
}

/// Log writes in hub order. An append only stages the batch (microseconds); the flush
/// happens in the log's group commit, awaited by the waiter. A mutation also runs its
/// mutator here, on the document as the log holds it at this point of the order.
fn writer(
    exec: LogExecutor,
    jobs: std::sync::mpsc::Receiver<Job>,
    wait: mpsc::UnboundedSender<Written>,
) {
    while let Ok(job) = jobs.recv() {
        let started = std::time::Instant::now();
        let written = match job {
            Job::Append {
                ticket,
                doc,
                author,
                changes,
                relayed,
                at_ms,
            } => {
                let (result, durable) = split(exec.append(&doc, &author, at_ms, &changes, relayed));
                Written {
                    event: HubEvent::Appended {
                        ticket,
                        doc,
                        changes,
                        result,
                    },
                    durable,
                    started,
                }
            }
            Job::User { user, roles } => {
                if let Err(e) = exec.log().set_user(&user, &roles) {
                    tracing::warn!(error = %e, user = user.as_str(), "could not record a user");
                }
                continue;
            }
            Job::Mutate { ticket, request } => {
                let (result, durable) = split(exec.mutate(&request));
                Written {
                    event: HubEvent::Mutated { ticket, result },
                    durable,
                    started,
                }
            }
            Job::Locks {
                ticket,
                doc,
                changes,
                at_ms,
            } => {
                let (result, durable) = split(exec.record_locks(&doc, &changes, at_ms));
                Written {
                    event: HubEvent::LocksRecorded { ticket, result },
                    durable,
                    started,
                }
            }
        };
        if wait.send(written).is_err() {
            return;
        }
    }
}

/// The same event, now saying the write failed (its flush did).
fn failed(event: HubEvent, r: Refusal) -> HubEvent {
    match event {
        HubEvent::Appended {
            ticket,
            doc,
            changes,
            ..
        } => HubEvent::Appended {
            ticket,
            doc,
            changes,
            result: Err(r),
        },
        HubEvent::Mutated { ticket, .. } => HubEvent::Mutated {
            ticket,
            result: Err(r),
        },
        HubEvent::LocksRecorded { ticket, .. } => HubEvent::LocksRecorded {
            ticket,
            result: Err(r),
        },
        other => other,
    }
}

/// Awaits durability in write order, then tells the hub.
async fn waiter(
    mut rx: mpsc::UnboundedReceiver<Written>,
    hub: mpsc::Sender<HubEvent>,
    metrics: Arc<Metrics>,
) {
    while let Some(Written {
        event,
        durable,
        started,
    }) = rx.recv().await
    {
        let event = match durable {
            None => event,
            Some(durable) => match durable.await {
                Ok(()) => event,
                Err(e) => {
                    tracing::error!(error = %e, "log flush failed; the write is not acknowledged");
                    failed(event, Refusal::new(ErrorCode::StorageFailed, e.to_string()))
                }
            },
        };
        metrics.append_took(started.elapsed());
        if hub.send(event).await.is_err() {
            return;
        }
    }
}

async fn run(
    mut hub: Hub,
    exec: LogExecutor,
    mut rx: mpsc::Receiver<HubEvent>,
    tx: mpsc::Sender<HubEvent>,
    jobs: std::sync::mpsc::Sender<Job>,
    ready: watch::Sender<bool>,
    metrics: Arc<Metrics>,
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
    // HTTP mutations waiting for their outcome.
    let mut external: HashMap<Ticket, oneshot::Sender<Result<ExternalDone, Refusal>>> =
        HashMap::new();
    loop {
        // Timed hub work (coalesced presence, expiries) between the per-second ticks.
        let wake = hub.next_wake_ms().map(|at| {
            tokio::time::Instant::now() + Duration::from_millis(at.saturating_sub(now_ms()))
        });
        // Set when the event may fan out a durable write: the time to queue its frames.
        let mut fanout_from: Option<std::time::Instant> = None;
        tokio::select! {
            ev = rx.recv() => {
                let Some(ev) = ev else { break };
                match ev {
                    HubEvent::Connect { out, reply, token } => {
                        let session = hub.connect_with_token(now_ms(), token);
                        conns.insert(session, Conn { out });
                        metrics.connected();
                        let _ = reply.send(session);
                    }
                    HubEvent::Frame { session, bytes } => {
                        metrics.frame_in(&bytes);
                        hub.handle_frame(session, &bytes, now_ms());
                    }
                    HubEvent::Text { session } => hub.handle_text(session),
                    HubEvent::RateLimited { session } => hub.handle_rate_limited(session),
                    HubEvent::Oversize { session, size } => hub.handle_oversize(session, size),
                    HubEvent::Disconnect { session } => {
                        if conns.remove(&session).is_some() {
                            metrics.disconnected();
                        }
                        hub.disconnect(session);
                    }
                    HubEvent::Appended { ticket, doc, changes, result } => {
                        let wrote = result
                            .as_ref()
                            .map_or(0, |a| a.changes.iter().filter(|c| c.new).count() as u64);
                        fanout_from = Some(std::time::Instant::now());
                        hub.handle_appended(ticket, &changes, result);
                        let n = since_check.entry(doc).or_default();
                        *n += wrote;
                        if *n >= SNAPSHOT_CHECK_EVERY && snapshotting.insert(doc) {
                            *n = 0;
                            snapshot_in_background(&exec, &tx, doc, Rule::Due);
                        }
                    }
                    HubEvent::Reconciled { ticket, result } => hub.handle_reconcile(ticket, result),
                    HubEvent::Mutated { ticket, result } => {
                        // A replay (an id answered from its record) decided nothing new.
                        if let Ok(m) = &result
                            && !m.new.is_empty()
                        {
                            metrics.mutation(&m.outcome);
                        }
                        fanout_from = Some(std::time::Instant::now());
                        hub.handle_mutated(ticket, result);
                    }
                    HubEvent::LocksRecorded { ticket, result } => {
                        if let Ok(r) = &result {
                            metrics.lock_granted(r.tokens.iter().flatten().count() as u64);
                        }
                        hub.handle_locks_recorded(ticket, result);
                    }
                    HubEvent::LocksLoaded { ticket, result } => {
                        hub.handle_locks_loaded(ticket, result, now_ms());
                    }
                    HubEvent::SetAcl { doc, user, role } => hub.set_acl(doc, user, role),
                    HubEvent::GetAcl { doc, reply } => {
                        let _ = reply.send(hub.acl(&doc));
                    }
                    HubEvent::Revoke { user } => hub.revoke_user(&user),
                    HubEvent::Permissions { identity, doc, reply } => {
                        let _ = reply.send(hub.permissions_of(&identity, &doc));
                    }
                    HubEvent::ExternalMutate { mutation, reply } => {
                        let ticket = hub.mutate_external(mutation, now_ms());
                        external.insert(ticket, reply);
                    }
                    HubEvent::Snapshotted { doc } => {
                        snapshotting.remove(&doc);
                        // Entries appended while it ran may already make the next one due
                        // (a burst of pushes ends with no append left to trigger a check):
                        // check again at once if any came. The log's rule (new bytes beyond
                        // the snapshot's own size) keeps this from snapshotting too often; a
                        // check that finds nothing due ends the chain.
                        if let Some(n) = since_check.get_mut(&doc)
                            && *n > 0
                        {
                            *n = 0;
                            snapshotting.insert(doc);
                            snapshot_in_background(&exec, &tx, doc, Rule::Due);
                        }
                    }
                    HubEvent::Catchup { ticket, result } => hub.handle_catchup(ticket, result),
                    HubEvent::Stats { reply } => {
                        let _ = reply.send(hub.stats());
                    }
                    HubEvent::Publish { identity, room, event, data, reply } => {
                        let _ = reply.send(hub.publish_external(&identity, &room, event, data));
                    }
                    HubEvent::Recipients { audience, reply } => {
                        let _ = reply.send(hub.recipients(&audience));
                    }
                    HubEvent::SendToUsers { messages, reply } => {
                        let sent = messages
                            .iter()
                            .map(|(user, msg)| hub.send_to_user(user, msg))
                            .sum();
                        let _ = reply.send(sent);
                    }
                    HubEvent::Shutdown { done } => {
                        let _ = ready.send(false);
                        hub.shutdown();
                        shutdown = Some(done);
                    }
                }
            }
            _ = tick.tick() => hub.tick(now_ms()),
            _ = sleep_until(wake) => hub.tick(now_ms()),
        }
        while let Some(out) = hub.poll_output() {
            match out {
                Output::Send { session, frame } => {
                    let Some(c) = conns.get(&session) else {
                        continue;
                    };
                    metrics.frame_out(&frame);
                    if c.out.push(ConnOut::Frame(frame)).is_err() {
                        hub.handle_slow_consumer(session);
                    }
                }
                Output::Close {
                    session,
                    code,
                    reason,
                } => {
                    if let Some(c) = conns.get(&session)
                        && let Err(ConnOut::Close(code, reason)) =
                            c.out.push(ConnOut::Close(code, reason))
                    {
                        c.out.kill(code, reason);
                    }
                }
                Output::Append {
                    ticket,
                    doc,
                    author,
                    changes,
                    relayed,
                } => {
                    let job = Job::Append {
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
                Output::Mutate { ticket, request } => {
                    if jobs.send(Job::Mutate { ticket, request }).is_err() {
                        tracing::error!("the writer thread is gone");
                    }
                }
                Output::RecordLocks {
                    ticket,
                    doc,
                    changes,
                } => {
                    let job = Job::Locks {
                        ticket,
                        doc,
                        changes,
                        at_ms: now_ms(),
                    };
                    if jobs.send(job).is_err() {
                        tracing::error!("the writer thread is gone");
                    }
                }
                Output::LoadLocks { ticket, doc } => load_locks(&exec, &tx, ticket, doc),
                Output::MutationDone {
                    ticket,
                    result,
                    replayed,
                } => {
                    if let Some(reply) = external.remove(&ticket) {
                        let _ =
                            reply.send(result.map(|outcome| ExternalDone { outcome, replayed }));
                    }
                }
                Output::Catchup { ticket, doc, after } => {
                    catchup(&exec, &tx, ticket, doc, after);
                    // A fresh subscriber loads the newest snapshot and all that follows it:
                    // when that is long, a snapshot written now serves the joiners after it.
                    if after.is_none() && snapshotting.insert(doc) {
                        snapshot_in_background(&exec, &tx, doc, Rule::ForJoiners);
                    }
                }
                Output::Reconcile {
                    ticket,
                    doc,
                    session,
                    bytes,
                } => reconcile(&exec, &tx, ticket, doc, session, bytes),
                Output::RecordUser { user, roles } => {
                    if jobs.send(Job::User { user, roles }).is_err() {
                        tracing::error!("the writer thread is gone");
                    }
                }
                Output::Release { doc } => {
                    since_check.remove(&doc);
                    exec.in_background(move |e| e.evict(&doc));
                }
            }
        }
        if let Some(at) = fanout_from {
            metrics.fanout_took(at.elapsed());
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

async fn sleep_until(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn load_locks(exec: &LogExecutor, tx: &mpsc::Sender<HubEvent>, ticket: Ticket, doc: DocId) {
    let exec = exec.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let result = exec
            .blocking(move |e| e.load_locks(&doc))
            .await
            .and_then(|r| r);
        let _ = tx.send(HubEvent::LocksLoaded { ticket, result }).await;
    });
}

/// The outcome of a mutation from the HTTP API.
#[derive(Debug)]
pub(crate) struct ExternalDone {
    pub(crate) outcome: MutationOutcome,
    /// The id was processed before: this is its recorded outcome and nothing was written.
    pub(crate) replayed: bool,
}

/// Runs a mutation from the HTTP API through the hub (in order with every other write).
pub(crate) async fn mutate_external(
    tx: &mpsc::Sender<HubEvent>,
    mutation: ExternalMutation,
) -> Result<ExternalDone, Refusal> {
    let (reply, rx) = oneshot::channel();
    tx.send(HubEvent::ExternalMutate { mutation, reply })
        .await
        .map_err(|_| Refusal::new(ErrorCode::ShuttingDown, "the server is shutting down"))?;
    rx.await
        .map_err(|_| Refusal::new(ErrorCode::ShuttingDown, "the server is shutting down"))?
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
        // The flush is awaited here, not on a blocking thread (see `catchup_head`). Reading
        // the head is quick, but it takes the document's lock, which a writer may hold while
        // it loads an index from disk: not on an async worker either.
        let result = match exec.blocking(move |e| e.catchup_head(&doc)).await {
            Ok((head, durable)) => match durable.await {
                Ok(()) => exec
                    .blocking(move |e| e.catchup_from(&doc, after, head))
                    .await
                    .and_then(|r| r),
                Err(e) => Err(crate::executor::refusal(&e)),
            },
            Err(refused) => Err(refused),
        };
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
        let result = exec
            .blocking(move |e| e.reconcile(session, &doc, &bytes, now_ms()))
            .await
            .and_then(|r| r);
        let _ = tx.send(HubEvent::Reconciled { ticket, result }).await;
    });
}

/// When a background snapshot is written.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// The log's rule (new change bytes beyond the snapshot's size, or many entries).
    Due,
    /// A fresh subscriber arrived and the tail after the newest snapshot is long.
    ForJoiners,
}

/// Writes a snapshot in the background when `rule` says so, so a fresh subscriber loads a
/// snapshot and a short tail instead of the whole stream. Off the push path.
fn snapshot_in_background(exec: &LogExecutor, tx: &mpsc::Sender<HubEvent>, doc: DocId, rule: Rule) {
    let exec = exec.clone();
    let tx = tx.clone();
    tokio::spawn(async move {
        let result = exec
            .blocking_background(move |e| match rule {
                Rule::Due => e.snapshot_if_due(&doc),
                Rule::ForJoiners => e.snapshot_for_joiners(&doc),
            })
            .await;
        match result {
            Ok(Ok(true)) => tracing::debug!(%doc, "snapshot written"),
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(%doc, error = %e, "snapshot failed"),
            Err(e) => tracing::error!(%doc, error = %e.message, "snapshot task failed"),
        }
        let _ = tx.send(HubEvent::Snapshotted { doc }).await;
    });
}

/// Asks the hub something and waits for its answer (`None`: the hub is gone, shutting down).
pub(crate) async fn ask<T>(
    tx: &mpsc::Sender<HubEvent>,
    question: impl FnOnce(oneshot::Sender<T>) -> HubEvent,
) -> Option<T> {
    let (reply, rx) = oneshot::channel();
    tx.send(question(reply)).await.ok()?;
    rx.await.ok()
}

/// Used by the HTTP layer.
pub(crate) async fn stats(tx: &mpsc::Sender<HubEvent>) -> Option<HubStats> {
    ask(tx, |reply| HubEvent::Stats { reply }).await
}
