//! The server core fed an arbitrary sequence of connects, disconnects, frames and storage
//! completions never panics, and its storage requests run against a real (in-memory) log.
//!
//! Input: a sequence of ops. Byte `op % 6`: 0 connect, 1 disconnect session `next byte`, 2 a
//! frame of `next byte` bytes from session `next byte`, 3 a valid Hello, 4 finish appends,
//! 5 finish catch-ups, lock loads, mutations and lock events (the last two fail) and tick. Frames are raw bytes, so the decoder and every handler are reached.
#![no_main]

use std::sync::Arc;

use converge_core::{Catchup, DevAuthenticator, Hub, HubConfig, Output, Refusal};
use converge_log::{Author, EntryKind, EventLog, Log, LogConfig, MemStorage, NewEntry};
use converge_proto::{
    ChangeHash, ClientId, ClientMsg, Epoch, ErrorCode, PROTOCOL_VERSION, Seq, SessionId,
    encode_client,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let storage = MemStorage::new();
    let log = Arc::new(Log::open_in_memory(&storage, LogConfig::default()).unwrap());
    let mut hub = Hub::new(HubConfig::default(), Box::new(DevAuthenticator));
    let mut sessions: Vec<SessionId> = Vec::new();
    let mut appends: Vec<(
        converge_core::Ticket,
        converge_proto::DocId,
        converge_core::PushAuthor,
        Vec<converge_proto::Blob>,
        bool,
    )> = Vec::new();
    let mut catchups = Vec::new();
    let mut pending: Vec<Done> = Vec::new();
    let mut it = data.iter().copied();
    let mut now = 0u64;
    while let Some(op) = it.next() {
        now += 1;
        let pick = |b: Option<u8>, s: &[SessionId]| {
            b.and_then(|b| s.get(b as usize % s.len().max(1)).copied())
        };
        match op % 6 {
            0 => sessions.push(hub.connect(now)),
            1 => {
                if let Some(s) = pick(it.next(), &sessions) {
                    hub.disconnect(s);
                }
            }
            2 => {
                let s = pick(it.next(), &sessions);
                let len = it.next().unwrap_or(0) as usize;
                let frame: Vec<u8> = it.by_ref().take(len).collect();
                if let Some(s) = s {
                    hub.handle_frame(s, &frame, now);
                }
            }
            3 => {
                if let Some(s) = pick(it.next(), &sessions) {
                    let hello = ClientMsg::Hello {
                        protocol: PROTOCOL_VERSION,
                        client_id: ClientId::from_bytes([1; 16]),
                        token: Some(format!("u{}", s.get() % 3)),
                    };
                    hub.handle_frame(s, &encode_client(&hello).unwrap(), now);
                }
            }
            4 => {
                for (ticket, doc, author, changes, relayed) in appends.drain(..) {
                    let result = append(&log, &doc, &author, &changes, relayed);
                    hub.handle_appended(ticket, &changes, result);
                }
            }
            _ => {
                for (ticket, doc) in catchups.drain(..) {
                    let r = catchup(&log, &doc);
                    hub.handle_catchup(ticket, r);
                }
                let failed = || Refusal::new(ErrorCode::StorageFailed, "fuzz");
                for done in pending.drain(..) {
                    match done {
                        Done::Loaded(t) => hub.handle_locks_loaded(t, Ok(Vec::new()), now),
                        Done::Mutated(t) => hub.handle_mutated(t, Err(failed())),
                        Done::Locks(t) => hub.handle_locks_recorded(t, Err(failed())),
                    }
                }
                hub.tick(now * 100);
            }
        }
        while let Some(out) = hub.poll_output() {
            match out {
                Output::Append {
                    ticket,
                    doc,
                    author,
                    changes,
                    relayed,
                } => appends.push((ticket, doc, author, changes, relayed)),
                Output::Catchup { ticket, doc, .. } => catchups.push((ticket, doc)),
                // Lock tables load empty; mutations and lock events fail as a storage failure
                // would (the hub must answer and forget them cleanly).
                Output::LoadLocks { ticket, .. } => pending.push(Done::Loaded(ticket)),
                Output::Mutate { ticket, .. } => pending.push(Done::Mutated(ticket)),
                Output::RecordLocks { ticket, .. } => pending.push(Done::Locks(ticket)),
                // Reconciliation needs a reconciling snapshot, which this target never serves;
                // Release is advice.
                Output::Reconcile { .. }
                | Output::Release { .. }
                | Output::MutationDone { .. }
                | Output::RecordUser { .. }
                | Output::Send { .. }
                | Output::Close { .. } => {}
            }
        }
    }
    // Whatever was accepted is a log every replica can load.
    for doc in log.docs().unwrap() {
        let entries = log.read(&doc, Seq(1), usize::MAX).unwrap();
        let mut am = automerge::AutoCommit::new();
        let changes: Vec<Vec<u8>> = entries
            .into_iter()
            .filter_map(|e| e.kind.into_change_bytes())
            .collect();
        converge_core::apply_changes(&mut am, &changes).expect("logged changes apply");
    }
});

/// A storage request waiting for its (fuzzed) completion.
enum Done {
    Loaded(converge_core::Ticket),
    Mutated(converge_core::Ticket),
    Locks(converge_core::Ticket),
}

fn append(
    log: &Log,
    doc: &converge_proto::DocId,
    author: &converge_core::PushAuthor,
    changes: &[converge_proto::Blob],
    relayed: bool,
) -> Result<converge_core::Appended, Refusal> {
    let refuse = |e: converge_log::LogError| Refusal::new(ErrorCode::Internal, e.to_string());
    let mut hashes = Vec::new();
    for c in changes {
        let change = automerge::Change::from_bytes(c.to_vec())
            .map_err(|e| Refusal::new(ErrorCode::MalformedChange, e.to_string()))?;
        hashes.push(ChangeHash(change.hash().0));
    }
    if log.head(doc).is_err() {
        drop(log.create(*doc, Epoch(1)).map_err(refuse)?);
    }
    let entries = changes
        .iter()
        .map(|c| NewEntry {
            at_ms: 1,
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
    let appended = log.append(doc, entries).map_err(refuse)?;
    appended.durable.wait().map_err(refuse)?;
    Ok(converge_core::Appended {
        epoch: Epoch(1),
        changes: appended
            .results
            .iter()
            .zip(hashes)
            .map(|(r, hash)| converge_core::PushedChange {
                hash,
                seq: r.seq(),
                new: !matches!(r, converge_log::AppendResult::Duplicate(_)),
            })
            .collect(),
    })
}

fn catchup(log: &Log, doc: &converge_proto::DocId) -> Result<Catchup, Refusal> {
    let entries = match log.read(doc, Seq(1), usize::MAX) {
        Ok(e) => e,
        Err(_) => Vec::new(),
    };
    Ok(Catchup::Replay {
        epoch: Epoch(1),
        from_seq: Seq(1),
        entries: entries
            .into_iter()
            .map(|e| match e.kind {
                EntryKind::Change(c) => converge_proto::Blob(c),
                _ => converge_proto::Blob::default(),
            })
            .collect(),
    })
}
