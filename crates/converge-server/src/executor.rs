//! Executes the hub's storage requests against the log. Synchronous: call it from a thread
//! that may block. Shared by the server and the simulation, so both shells behave alike.

use crate::workers::Priority;
use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, Mutex};

use automerge::sync::SyncDoc;
use converge_core::{
    Appended, Catchup, CatchupPlan, Ctx, FenceCheck, HeadView, LockChange, LockHolder,
    LocksRecorded, Mutated, MutationRequest, Mutators, PushAuthor, PushedChange, Refusal, SyncStep,
    plan_catchup,
};
use converge_log::{
    AppendResult, Author, DocHead, DocStore, Durable, EntryKind, EventLog, LockEvent, LockRecord,
    LogError, MutationRecord, NewEntry, StoreConfig, StoreError,
};
use converge_proto::limits::MAX_MESSAGE_BYTES;
use converge_proto::{
    Blob, ChangeHash, DocId, Epoch, ErrorCode, FencingToken, MutationOutcome, Peer, Position, Seq,
    SessionId, UserId,
};

/// Entries read per page while building a catch-up.
const PAGE: usize = 4096;

/// A fresh subscriber finding more entries than this after the newest snapshot (and a tail of
/// over a quarter of its bytes) has a snapshot written in the background for the next ones
/// (`DocStore::snapshot_if_tail_over`).
const JOIN_TAIL_ENTRIES: u64 = 1000;

/// The epoch a stream gets when a push creates it.
pub const FIRST_EPOCH: Epoch = Epoch(1);

/// Reconciliations open at once; a new one beyond this is refused until one ends or expires.
const MAX_RECONCILIATIONS: usize = 1024;

/// A reconciliation's sync state is dropped after this long without a message.
const RECONCILE_IDLE_MS: u64 = 60_000;

/// Runs appends, catch-ups and reconciliation steps for the hub, and keeps the documents it
/// materializes (for reconciliation and snapshots) in a [`DocStore`].
#[derive(Debug, Clone)]
pub struct LogExecutor {
    log: Arc<dyn EventLog>,
    store: Arc<DocStore>,
    /// automerge sync state per (session, document) reconciling.
    reconciliations: Arc<Mutex<HashMap<(SessionId, DocId), Reconciliation>>>,
    /// The mutators this server runs, by name.
    mutators: Arc<Mutators>,
    /// The threads that run [`LogExecutor::blocking`].
    work: Arc<crate::workers::Workers>,
}

#[derive(Debug)]
struct Reconciliation {
    state: automerge::sync::State,
    last_ms: u64,
}

impl LogExecutor {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        let store = Arc::new(DocStore::new(log.clone(), StoreConfig::default()));
        LogExecutor {
            log,
            store,
            reconciliations: Arc::new(Mutex::new(HashMap::new())),
            mutators: Arc::new(Mutators::new()),
            work: Arc::new(crate::workers::Workers::new(Self::blocking_limit())),
        }
    }

    /// How many tasks [`LogExecutor::blocking`] runs at once, on as many threads of its own:
    /// 4 per core, at least 8. automerge's work is CPU-bound, so more at once would only cost
    /// memory (every thread keeps a stack and an allocator arena, ~33 KiB of RSS here).
    pub fn blocking_limit() -> usize {
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        (cores * 4).max(8)
    }

    /// Runs `f` on the executor's own threads (see `workers.rs`), started on first use: a
    /// burst of subscribers (or of anything else the hub hands off) waits its turn instead
    /// of starting a thread each. Awaiting it blocks no async worker.
    pub async fn blocking<R, F>(&self, f: F) -> Result<R, Refusal>
    where
        F: FnOnce(&LogExecutor) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run(Priority::Waited, f).await
    }

    /// As [`Self::blocking`], for work no client waits for (a snapshot): it queues behind
    /// everything [`Self::blocking`] hands over, and runs on all but two of the threads.
    pub async fn blocking_background<R, F>(&self, f: F) -> Result<R, Refusal>
    where
        F: FnOnce(&LogExecutor) -> R + Send + 'static,
        R: Send + 'static,
    {
        self.run(Priority::Background, f).await
    }

    async fn run<R, F>(&self, priority: Priority, f: F) -> Result<R, Refusal>
    where
        F: FnOnce(&LogExecutor) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let exec = self.clone();
        self.work
            .submit(
                priority,
                Box::new(move || {
                    let _ = tx.send(f(&exec));
                }),
            )
            .map_err(|e| Refusal::new(ErrorCode::Internal, e.0))?;
        rx.await
            .map_err(|_| Refusal::new(ErrorCode::Internal, "a blocking task panicked"))
    }

    /// Runs `f` on the executor's threads without waiting for it (its result is not wanted).
    pub fn in_background<F>(&self, f: F)
    where
        F: FnOnce(&LogExecutor) + Send + 'static,
    {
        let exec = self.clone();
        if let Err(e) = self
            .work
            .submit(Priority::Background, Box::new(move || f(&exec)))
        {
            tracing::error!(error = %e.0, "background work not started");
        }
    }

    /// Completes when none of the work handed to [`Self::blocking`] or
    /// [`Self::in_background`] is queued or running.
    pub async fn idle(&self) {
        self.work.idle().await;
    }

    /// The same executor running these mutators.
    pub fn with_mutators(mut self, mutators: Mutators) -> Self {
        self.mutators = Arc::new(mutators);
        self
    }

    /// The materialized documents.
    pub fn store(&self) -> &Arc<DocStore> {
        &self.store
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Appends pushed changes, all or nothing, creating the stream on the first push. Returns
    /// what the log did and the ticket to wait on before acknowledging.
    /// `relayed`: the changes are handed back during reconciliation (see
    /// [`EntryKind::Relayed`]).
    pub fn append(
        &self,
        doc: &DocId,
        author: &PushAuthor,
        at_ms: u64,
        changes: &[Blob],
        relayed: bool,
    ) -> Result<(Appended, Durable), Refusal> {
        let entries: Vec<NewEntry> = changes
            .iter()
            .map(|c| NewEntry {
                at_ms,
                author: Author {
                    user: author.user.clone(),
                    session: Some(author.session),
                },
                kind: if relayed {
                    EntryKind::Relayed(c.to_vec())
                } else {
                    EntryKind::Change(c.to_vec())
                },
            })
            .collect();
        // Decoding first also means a push of garbage to a new document creates nothing.
        let hashes = changes
            .iter()
            .map(|c| change_hash(c))
            .collect::<Result<Vec<_>, _>>()?;
        let epoch = self.ensure_stream(doc)?;
        let appended = self.log.append(doc, entries).map_err(|e| refusal(&e))?;
        let mut out = Vec::with_capacity(changes.len());
        for (result, hash) in appended.results.iter().zip(hashes) {
            let (seq, new) = match result {
                AppendResult::Appended(s) | AppendResult::Granted(s, _) => (*s, true),
                AppendResult::Duplicate(s) => (*s, false),
            };
            out.push(PushedChange { hash, seq, new });
        }
        Ok((
            Appended {
                epoch,
                changes: out,
            },
            appended.durable,
        ))
    }

    /// The stream's epoch, creating the stream if this is the document's first write.
    fn ensure_stream(&self, doc: &DocId) -> Result<Epoch, Refusal> {
        match self.log.head(doc) {
            Ok(h) => Ok(h.epoch),
            Err(LogError::UnknownDoc(_)) => {
                match self.log.create(*doc, FIRST_EPOCH) {
                    Ok(_) | Err(LogError::DocExists(_)) => {}
                    Err(e) => return Err(refusal(&e)),
                }
                Ok(FIRST_EPOCH)
            }
            Err(e) => Err(refusal(&e)),
        }
    }

    /// Runs a mutation exactly once per (document, client, id):
    /// - an id already processed returns its recorded outcome and writes nothing;
    /// - an id past the next one is refused (`MutationGap`) and writes nothing;
    /// - otherwise the outcome (and, when Applied, the change the mutator made, authored by
    ///   the server's user) are logged in one atomic batch together with the client's new
    ///   last id. A rejection (the mutator's, a stale fence, an unknown name, a panic) is an
    ///   outcome too: the id counts, so the client is never blocked.
    ///
    /// Run it in hub order with the appends (the writer thread): the mutator sees every entry
    /// the hub ordered before it.
    pub fn mutate(&self, req: &MutationRequest) -> Result<(Mutated, Durable), Refusal> {
        let doc = &req.doc;
        let epoch = self.ensure_stream(doc)?;
        let last = self
            .log
            .last_mutation(doc, &req.client)
            .map_err(|e| refusal(&e))?
            .map_or(0, |m| m.get());
        let id = req.mutation_id.get();
        if id != 0 && id <= last {
            let recorded = self
                .log
                .mutation_outcome(doc, &req.client, req.mutation_id)
                .map_err(|e| refusal(&e))?
                .ok_or_else(|| {
                    Refusal::new(
                        ErrorCode::Internal,
                        format!("mutation {id} was processed but its outcome is not recorded"),
                    )
                })?;
            let outcome = outcome_for_wire(&recorded.outcome, recorded.seq);
            let mutated = Mutated {
                epoch,
                outcome,
                new: Vec::new(),
            };
            // The original may still be on its way to disk.
            return Ok((mutated, self.log.durable()));
        }
        if id != last + 1 {
            return Err(Refusal::new(
                ErrorCode::MutationGap,
                format!(
                    "mutation ids are dense per client and document: expected {}, got {id}",
                    last + 1
                ),
            ));
        }
        let entry = |outcome: converge_log::MutationOutcome| NewEntry {
            at_ms: req.now_ms,
            author: Author {
                user: req.user.clone(),
                session: req.session,
            },
            kind: EntryKind::Mutation(MutationRecord {
                client: req.client,
                mutation_id: req.mutation_id,
                name: req.name.clone(),
                args: req.args.to_vec(),
                outcome,
            }),
        };
        // An outcome decided without running the mutator: its record alone.
        let record_only = |code: ErrorCode, message: &str| {
            let outcome = rejected(code, message);
            let appended = self
                .log
                .append(doc, vec![entry(outcome.clone())])
                .map_err(|e| refusal(&e))?;
            Ok(mutated(epoch, appended, &outcome, Vec::new()))
        };
        if let Some(message) = &req.denied {
            return record_only(ErrorCode::Forbidden, message);
        }
        let lock = match &req.fence {
            FenceCheck::None => None,
            FenceCheck::Valid { key, token } => Some((key.clone(), *token)),
            FenceCheck::Stale { message } => return record_only(ErrorCode::StaleFence, message),
        };
        let ctx = Ctx {
            user: req.user.clone(),
            client: req.client,
            session: req.session,
            now_ms: req.now_ms,
            lock,
        };
        let server = Author::user(UserId::server());
        let outcome_of = |r: &Result<(), converge_core::Rejection>| match r {
            Ok(()) => converge_log::MutationOutcome::Applied,
            Err(rej) => rejected(rej.code, &rej.message),
        };
        let result = self.store.transact(
            doc,
            &server,
            req.now_ms,
            |d| self.mutators.run(&req.name, d, &req.args, &ctx),
            |r| vec![entry(outcome_of(r))],
        );
        match result {
            Ok((r, appended, changes)) => Ok(mutated(epoch, appended, &outcome_of(&r), changes)),
            // The log refused what the mutator made (a change over the size limit, one that
            // breaks a causal rule): that is this mutation's outcome, recorded so its id
            // counts and the client's queue moves on. Storage failures are not outcomes: the
            // mutation is not recorded and the client sends it again.
            Err(StoreError::Log(e)) if !transient(&e) => {
                let r = refusal(&e);
                record_only(
                    r.code,
                    &format!("the log refused the mutator's change: {}", r.message),
                )
            }
            Err(StoreError::Log(e)) => Err(refusal(&e)),
            Err(other) => Err(Refusal::new(ErrorCode::StorageFailed, other.to_string())),
        }
    }

    /// Logs lock events in order, all or nothing; a grant's token is issued by the log.
    pub fn record_locks(
        &self,
        doc: &DocId,
        changes: &[LockChange],
        at_ms: u64,
    ) -> Result<(LocksRecorded, Durable), Refusal> {
        let epoch = self.ensure_stream(doc)?;
        let entries = changes
            .iter()
            .map(|c| {
                let (event, key, peer, token, expires_at_ms) = match c {
                    LockChange::Granted {
                        key,
                        peer,
                        expires_at_ms,
                    } => (
                        LockEvent::Granted,
                        key,
                        peer,
                        FencingToken(0),
                        *expires_at_ms,
                    ),
                    LockChange::Renewed(h) => (
                        LockEvent::Renewed,
                        &h.key,
                        &h.peer,
                        h.token,
                        h.expires_at_ms,
                    ),
                    LockChange::Released(h) => (
                        LockEvent::Released,
                        &h.key,
                        &h.peer,
                        h.token,
                        h.expires_at_ms,
                    ),
                    LockChange::Expired(h) => (
                        LockEvent::Expired,
                        &h.key,
                        &h.peer,
                        h.token,
                        h.expires_at_ms,
                    ),
                };
                NewEntry {
                    at_ms,
                    author: Author {
                        user: peer.user.clone(),
                        session: Some(peer.session),
                    },
                    kind: EntryKind::Lock(LockRecord {
                        key: key.clone(),
                        event,
                        holder: Author {
                            user: peer.user.clone(),
                            session: Some(peer.session),
                        },
                        token,
                        expires_at_ms,
                    }),
                }
            })
            .collect();
        let appended = self.log.append(doc, entries).map_err(|e| refusal(&e))?;
        let seqs = appended.results.iter().map(|r| r.seq()).collect();
        let tokens = appended
            .results
            .iter()
            .map(|r| match r {
                AppendResult::Granted(_, t) => Some(*t),
                _ => None,
            })
            .collect();
        Ok((
            LocksRecorded {
                epoch,
                seqs,
                tokens,
            },
            appended.durable,
        ))
    }

    /// The document's lock table as the log holds it. The holders' sessions belong to an
    /// earlier process: they are loaded as session 0, which no connection has, so only the
    /// token (renew, release, fence) or expiry ends them.
    pub fn load_locks(&self, doc: &DocId) -> Result<Vec<LockHolder>, Refusal> {
        let records = match self.log.locks(doc) {
            Ok(r) => r,
            Err(LogError::UnknownDoc(_)) => Vec::new(),
            Err(e) => return Err(refusal(&e)),
        };
        Ok(records
            .into_iter()
            .map(|r| LockHolder {
                key: r.key,
                peer: Peer {
                    session: SessionId(0),
                    user: r.holder.user,
                },
                token: r.token,
                expires_at_ms: r.expires_at_ms,
            })
            .collect())
    }

    /// What a subscriber at `after` needs, holding only durable entries.
    pub fn catchup(&self, doc: &DocId, after: Option<Position>) -> Result<Catchup, Refusal> {
        let (head, durable) = self.catchup_head(doc);
        durable.wait().map_err(|e| refusal(&e))?;
        self.catchup_from(doc, after, head)
    }

    /// The first half of a catch-up, quick (in memory): the document's head, and a flush
    /// ticket covering it. The caller waits for the ticket, then calls
    /// [`Self::catchup_from`] with the head.
    ///
    /// The head first, then the ticket: everything up to the head is durable before any of it
    /// is read out, so nothing a crash could take back is ever handed to a subscriber
    /// (waiting first and reading the head after would let entries staged in between through
    /// unflushed). Split in two so that an async caller waits for the flush without holding a
    /// thread: a burst of subscribers would otherwise hold a blocking thread each, and every
    /// thread costs a stack and an allocator arena.
    pub fn catchup_head(&self, doc: &DocId) -> (Result<DocHead, LogError>, Durable) {
        let head = self.log.head(doc);
        (head, self.log.durable())
    }

    /// The second half of a catch-up, once the ticket of [`Self::catchup_head`] is durable.
    pub fn catchup_from(
        &self,
        doc: &DocId,
        after: Option<Position>,
        head: Result<DocHead, LogError>,
    ) -> Result<Catchup, Refusal> {
        let head = match head {
            Ok(h) => h,
            // A document nobody pushed to yet: an empty stream (created by the first push).
            // A client that claims a position in it holds what this server lacks (it lost
            // the document, e.g. restored from an older backup): it must reconcile.
            Err(LogError::UnknownDoc(_)) => {
                return Ok(match after {
                    None => Catchup::Replay {
                        epoch: FIRST_EPOCH,
                        from_seq: Seq(1),
                        entries: Vec::new(),
                    },
                    Some(_) => Catchup::Snapshot {
                        epoch: FIRST_EPOCH,
                        seq: Seq(0),
                        bytes: Blob(automerge::AutoCommit::new().save()),
                        tail: Vec::new(),
                        reconcile: true,
                    },
                });
            }
            Err(e) => return Err(refusal(&e)),
        };
        let view = HeadView {
            epoch: head.epoch,
            last_seq: head.last_seq,
            compacted_through: head.compacted_through,
            snapshot_seq: head.snapshot_seq.unwrap_or(Seq(0)),
        };
        match plan_catchup(after, view) {
            CatchupPlan::Replay { from } => Ok(Catchup::Replay {
                epoch: head.epoch,
                from_seq: from,
                entries: self.entries(doc, from, head.last_seq)?,
            }),
            CatchupPlan::Snapshot { reconcile } => {
                let (seq, bytes) = match self.log.snapshot(doc).map_err(|e| refusal(&e))? {
                    Some(s) => (s.seq, s.bytes),
                    // No snapshot yet (nothing was compacted): an empty document at seq 0
                    // and the whole stream after it.
                    None => (Seq(0), automerge::AutoCommit::new().save()),
                };
                if seq > head.last_seq {
                    // A snapshot written after the head was read: it covers entries the
                    // ticket above may not; wait for one that does.
                    self.log.durable().wait().map_err(|e| refusal(&e))?;
                }
                Ok(Catchup::Snapshot {
                    epoch: head.epoch,
                    seq,
                    bytes: Blob(bytes),
                    tail: self.entries(doc, seq.next(), head.last_seq)?,
                    reconcile,
                })
            }
        }
    }

    /// One step of a reconciliation: takes the client's automerge sync message against the
    /// document as the log holds it, and returns the changes the client showed the server
    /// lacks (for the hub to log as relayed changes) and the server's next sync message.
    /// Nothing is written here.
    pub fn reconcile(
        &self,
        session: SessionId,
        doc: &DocId,
        bytes: &[u8],
        now_ms: u64,
    ) -> Result<SyncStep, Refusal> {
        let bad = |m: String| Refusal::new(ErrorCode::BadSyncMessage, m);
        let msg = automerge::sync::Message::decode(bytes)
            .map_err(|e| bad(format!("not an automerge sync message: {e}")))?;
        // The server's side of the exchange: the log's document (a fresh one if the stream
        // does not exist yet: the server lost all of it).
        let mut server = match self.store.read(doc, |d| d.clone()) {
            Ok(d) => d,
            Err(StoreError::Log(LogError::UnknownDoc(_))) => automerge::Automerge::new(),
            Err(StoreError::Log(e)) => return Err(refusal(&e)),
            Err(e) => return Err(Refusal::new(ErrorCode::StorageFailed, e.to_string())),
        };
        let logged = server.get_heads();
        let mut all = crate::lock(&self.reconciliations);
        all.retain(|_, r| now_ms.saturating_sub(r.last_ms) < RECONCILE_IDLE_MS);
        if !all.contains_key(&(session, *doc)) && all.len() >= MAX_RECONCILIATIONS {
            return Err(Refusal::new(
                ErrorCode::RateLimited,
                "too many reconciliations are open; try again later",
            ));
        }
        let r = all
            .entry((session, *doc))
            .or_insert_with(|| Reconciliation {
                state: automerge::sync::State::new(),
                last_ms: now_ms,
            });
        r.last_ms = now_ms;
        // The peer's changes are taken into a copy only; automerge may panic on hostile ones.
        let step = catch_unwind(AssertUnwindSafe(|| {
            server
                .receive_sync_message(&mut r.state, msg)
                .map_err(|e| e.to_string())?;
            let missing: Vec<Blob> = server
                .get_changes(&logged)
                .into_iter()
                .map(|c| Blob(c.raw_bytes().to_vec()))
                .collect();
            let reply = server
                .generate_sync_message(&mut r.state)
                .map(|m| Blob(m.encode()));
            Ok::<_, String>(SyncStep { missing, reply })
        }));
        let step = match step {
            Ok(Ok(step)) => step,
            Ok(Err(e)) => {
                all.remove(&(session, *doc));
                return Err(bad(format!("the sync message does not apply: {e}")));
            }
            Err(_) => {
                all.remove(&(session, *doc));
                return Err(bad(
                    "the sync message holds changes automerge cannot take".into()
                ));
            }
        };
        if step.reply.is_none() {
            all.remove(&(session, *doc));
        }
        Ok(step)
    }

    /// Writes a snapshot when a fresh subscriber would load a long tail after the newest one
    /// (`DocStore::snapshot_if_tail_over`), so the joiners after it load a short one. The
    /// hub's shell runs it in the background when a fresh subscriber arrives.
    pub fn snapshot_for_joiners(&self, doc: &DocId) -> Result<bool, StoreError> {
        match self.store.snapshot_if_tail_over(doc, JOIN_TAIL_ENTRIES) {
            Err(StoreError::Log(LogError::UnknownDoc(_))) => Ok(false),
            other => other,
        }
    }

    /// Writes a snapshot of the document if the log says one is due (materializing it in
    /// the store), so fresh subscribers load a snapshot and a short tail.
    pub fn snapshot_if_due(&self, doc: &DocId) -> Result<bool, StoreError> {
        self.store.snapshot_if_due(doc)
    }

    /// Drops the document from memory (nobody is subscribed to it any more).
    pub fn evict(&self, doc: &DocId) {
        self.store.evict(doc);
        crate::lock(&self.reconciliations).retain(|(_, d), _| d != doc);
    }

    fn entries(&self, doc: &DocId, from: Seq, through: Seq) -> Result<Vec<Blob>, Refusal> {
        let mut out = Vec::new();
        let mut next = from;
        while next <= through {
            let page = self.log.read(doc, next, PAGE).map_err(|e| refusal(&e))?;
            if page.is_empty() {
                break;
            }
            for e in page {
                if e.seq > through {
                    return Ok(out);
                }
                next = e.seq.next();
                out.push(Blob(e.kind.into_change_bytes().unwrap_or_default()));
            }
        }
        Ok(out)
    }
}

/// What a mutation's batch wrote, for the hub to fan out: its record (an empty blob), then
/// the changes it logged; the outcome names the last entry's seq.
fn mutated(
    epoch: Epoch,
    appended: converge_log::Appended,
    outcome: &converge_log::MutationOutcome,
    changes: Vec<Vec<u8>>,
) -> (Mutated, Durable) {
    let seqs: Vec<Seq> = appended.results.iter().map(|r| r.seq()).collect();
    let last = seqs.last().copied().unwrap_or(Seq(0));
    let blobs = std::iter::once(Vec::new()).chain(changes).map(Blob);
    let mutated = Mutated {
        epoch,
        outcome: outcome_for_wire(outcome, last),
        new: seqs.into_iter().zip(blobs).collect(),
    };
    (mutated, appended.durable)
}

/// Log errors that say nothing about the mutation itself (the store failed, the document is
/// broken or deleted): the mutation is not recorded.
fn transient(e: &LogError) -> bool {
    matches!(
        e,
        LogError::Storage(_)
            | LogError::Flush(_)
            | LogError::Closed
            | LogError::Corrupt { .. }
            | LogError::CorruptRecord { .. }
            | LogError::Tombstoned(_)
            | LogError::UnknownDoc(_)
    )
}

/// A rejected outcome for the log (the message cut to what the log stores).
fn rejected(code: ErrorCode, message: &str) -> converge_log::MutationOutcome {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    converge_log::MutationOutcome::Rejected {
        code: code.code(),
        message: message[..end].to_string(),
    }
}

/// A recorded outcome as the client is told it; `seq`: the entry that settles it.
fn outcome_for_wire(outcome: &converge_log::MutationOutcome, seq: Seq) -> MutationOutcome {
    match outcome {
        converge_log::MutationOutcome::Applied => MutationOutcome::Applied { seq },
        converge_log::MutationOutcome::Rejected { code, message } => MutationOutcome::Rejected {
            code: ErrorCode::try_from(*code).unwrap_or(ErrorCode::MutationRejected),
            message: message.clone(),
        },
    }
}

fn change_hash(bytes: &[u8]) -> Result<ChangeHash, Refusal> {
    automerge::Change::from_bytes(bytes.to_vec())
        .map(|c| ChangeHash(c.hash().0))
        .map_err(|e| Refusal::new(ErrorCode::MalformedChange, e.to_string()))
}

/// The code a peer is told for a log error.
pub fn refusal(e: &LogError) -> Refusal {
    let code = match e {
        LogError::TooLarge { what: "batch", .. } => ErrorCode::TooManyChanges,
        LogError::TooLarge { .. } => ErrorCode::ChangeTooLarge,
        LogError::MalformedChange(_) | LogError::OpIdReused { .. } => ErrorCode::MalformedChange,
        LogError::ActorOwnedByOther { .. } => ErrorCode::ActorOwnedByOther,
        LogError::SeqGap { .. } => ErrorCode::SeqGap,
        LogError::SeqConflict { .. } => ErrorCode::SeqConflict,
        LogError::MissingDependency { .. } => ErrorCode::MissingDependency,
        LogError::UnknownActor { .. } => ErrorCode::UnknownActor,
        LogError::UnknownDoc(_) => ErrorCode::UnknownDoc,
        LogError::Tombstoned(_) => ErrorCode::DocDeleted,
        LogError::Corrupt { .. } | LogError::CorruptRecord { .. } => ErrorCode::DocBroken,
        LogError::Storage(_) | LogError::Flush(_) | LogError::Closed => ErrorCode::StorageFailed,
        _ => ErrorCode::Internal,
    };
    Refusal::new(code, e.to_string())
}
