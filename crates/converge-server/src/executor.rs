//! Executes the hub's storage requests against the log. Synchronous: call it from a thread
//! that may block. Shared by the server and the simulation, so both shells behave alike.

use std::sync::Arc;

use converge_core::{
    Appended, Catchup, CatchupPlan, HeadView, PushAuthor, PushedChange, Refusal, plan_catchup,
};
use converge_log::{AppendResult, Author, Durable, EntryKind, EventLog, LogError, NewEntry};
use converge_proto::{Blob, ChangeHash, DocId, Epoch, ErrorCode, Position, Seq};

/// Entries read per page while building a catch-up.
const PAGE: usize = 4096;

/// The epoch a stream gets when a push creates it.
pub const FIRST_EPOCH: Epoch = Epoch(1);

/// Runs appends and catch-ups for the hub.
#[derive(Debug, Clone)]
pub struct LogExecutor {
    log: Arc<dyn EventLog>,
}

impl LogExecutor {
    pub fn new(log: Arc<dyn EventLog>) -> Self {
        LogExecutor { log }
    }

    pub fn log(&self) -> &Arc<dyn EventLog> {
        &self.log
    }

    /// Appends pushed changes, all or nothing, creating the stream on the first push. Returns
    /// what the log did and the ticket to wait on before acknowledging.
    pub fn append(
        &self,
        doc: &DocId,
        author: &PushAuthor,
        at_ms: u64,
        changes: &[Blob],
    ) -> Result<(Appended, Durable), Refusal> {
        let entries: Vec<NewEntry> = changes
            .iter()
            .map(|c| NewEntry {
                at_ms,
                author: Author {
                    user: author.user.clone(),
                    session: Some(author.session),
                },
                kind: EntryKind::Change(c.to_vec()),
            })
            .collect();
        // Decoding first also means a push of garbage to a new document creates nothing.
        let hashes = changes
            .iter()
            .map(|c| change_hash(c))
            .collect::<Result<Vec<_>, _>>()?;
        let epoch = match self.log.head(doc) {
            Ok(h) => h.epoch,
            Err(LogError::UnknownDoc(_)) => {
                match self.log.create(*doc, FIRST_EPOCH) {
                    Ok(_) | Err(LogError::DocExists(_)) => {}
                    Err(e) => return Err(refusal(&e)),
                }
                FIRST_EPOCH
            }
            Err(e) => return Err(refusal(&e)),
        };
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

    /// What a subscriber at `after` needs, holding only durable entries.
    pub fn catchup(&self, doc: &DocId, after: Option<Position>) -> Result<Catchup, Refusal> {
        // Everything appended before this point is made durable before any of it is read
        // out, so nothing a crash could take back is ever handed to a subscriber.
        self.log.durable().wait().map_err(|e| refusal(&e))?;
        let head = match self.log.head(doc) {
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
                out.push(match e.kind {
                    EntryKind::Change(bytes) => Blob(bytes),
                    _ => Blob::default(),
                });
            }
        }
        Ok(out)
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
        LogError::MalformedChange(_) => ErrorCode::MalformedChange,
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
