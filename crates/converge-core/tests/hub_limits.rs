//! The hub's bounds on what one session may queue, driven through the public sans-io API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use converge_core::{
    Appended, Catchup, DevAuthenticator, Hub, HubConfig, Output, PushedChange, Ticket,
};
use converge_proto::{
    Blob, ChangeHash, ClientId, ClientMsg, DocId, Epoch, ErrorCode, MAX_FRAME_CEILING,
    PROTOCOL_VERSION, Seq, ServerMsg, SessionId, decode_server, encode_client,
};

const DOC: DocId = DocId::from_bytes([3; 16]);

fn send(hub: &mut Hub, s: SessionId, msg: &ClientMsg) {
    hub.handle_frame(s, &encode_client(msg).unwrap(), 0);
}

/// A session that said Hello as alice (under Dev auth the token is the user id).
fn alice(hub: &mut Hub) -> SessionId {
    let s = hub.connect(0);
    send(
        hub,
        s,
        &ClientMsg::Hello {
            protocol: PROTOCOL_VERSION,
            client_id: ClientId::random(),
            token: Some("alice".into()),
        },
    );
    s
}

/// Drains the hub: frames for the session, append tickets, catch-up tickets.
fn drain(hub: &mut Hub) -> (Vec<ServerMsg>, Vec<Ticket>, Vec<Ticket>) {
    let (mut msgs, mut appends, mut catchups) = (Vec::new(), Vec::new(), Vec::new());
    while let Some(out) = hub.poll_output() {
        match out {
            Output::Send { frame, .. } => {
                msgs.push(decode_server(&frame, MAX_FRAME_CEILING).unwrap())
            }
            Output::Append { ticket, .. } => appends.push(ticket),
            Output::Catchup { ticket, .. } => catchups.push(ticket),
            _ => {}
        }
    }
    (msgs, appends, catchups)
}

#[test]
fn pushes_in_flight_per_document_are_bounded_and_freed_by_acks() {
    let config = HubConfig::default();
    let limit = config.max_pushes_in_flight as usize;
    let mut hub = Hub::new(config, Box::new(DevAuthenticator));
    let s = alice(&mut hub);
    send(
        &mut hub,
        s,
        &ClientMsg::Subscribe {
            doc: DOC,
            after: None,
        },
    );
    let (_, _, catchups) = drain(&mut hub);
    hub.handle_catchup(
        catchups[0],
        Ok(Catchup::Replay {
            epoch: Epoch(1),
            from_seq: Seq(1),
            entries: Vec::new(),
        }),
    );
    drain(&mut hub);

    let mut doc = AutoCommit::new();
    let mut change = |i: i64| {
        doc.put(ROOT, "k", i).unwrap();
        doc.commit();
        let c = doc.get_last_local_change().unwrap();
        (Blob(c.raw_bytes().to_vec()), ChangeHash(c.hash().0))
    };
    let pushes: Vec<(Blob, ChangeHash)> = (0..=limit as i64).map(&mut change).collect();
    for (blob, _) in &pushes {
        send(
            &mut hub,
            s,
            &ClientMsg::Push {
                doc: DOC,
                changes: vec![blob.clone()],
            },
        );
    }
    let (msgs, appends, _) = drain(&mut hub);
    // The first `limit` go to the log; the one after is refused and nothing of it is queued.
    assert_eq!(appends.len(), limit);
    assert!(
        matches!(
            &msgs[..],
            [ServerMsg::Error {
                code: ErrorCode::RateLimited,
                doc: Some(DOC),
                ..
            }]
        ),
        "{msgs:?}"
    );

    // One Ack frees one slot.
    hub.handle_appended(
        appends[0],
        std::slice::from_ref(&pushes[0].0),
        Ok(Appended {
            epoch: Epoch(1),
            changes: vec![PushedChange {
                hash: pushes[0].1,
                seq: Seq(1),
                new: true,
            }],
        }),
    );
    drain(&mut hub);
    send(
        &mut hub,
        s,
        &ClientMsg::Push {
            doc: DOC,
            changes: vec![pushes[limit].0.clone()],
        },
    );
    let (msgs, appends, _) = drain(&mut hub);
    assert_eq!(appends.len(), 1, "{msgs:?}");
}

/// An Ack that became due while the session was catching up is not lost when the session
/// subscribes again before that catch-up answered: it carries over to the new one.
#[test]
fn answers_queued_during_a_catch_up_survive_a_resubscribe() {
    let mut hub = Hub::new(HubConfig::default(), Box::new(DevAuthenticator));
    let s = alice(&mut hub);
    let subscribe = ClientMsg::Subscribe {
        doc: DOC,
        after: None,
    };
    send(&mut hub, s, &subscribe);
    let (_, _, first) = drain(&mut hub);
    hub.handle_catchup(
        first[0],
        Ok(Catchup::Replay {
            epoch: Epoch(1),
            from_seq: Seq(1),
            entries: Vec::new(),
        }),
    );
    drain(&mut hub);
    // A push goes to the log; the session subscribes again before the Ack is due.
    let mut doc = AutoCommit::new();
    doc.put(ROOT, "k", 1).unwrap();
    doc.commit();
    let c = doc.get_last_local_change().unwrap();
    let (blob, hash) = (Blob(c.raw_bytes().to_vec()), ChangeHash(c.hash().0));
    send(
        &mut hub,
        s,
        &ClientMsg::Push {
            doc: DOC,
            changes: vec![blob.clone()],
        },
    );
    let (_, appends, _) = drain(&mut hub);
    send(&mut hub, s, &subscribe);
    let (_, _, second) = drain(&mut hub);
    // The Ack is due while the second catch-up runs (queued), then a third Subscribe replaces
    // the second before it answers.
    hub.handle_appended(
        appends[0],
        std::slice::from_ref(&blob),
        Ok(Appended {
            epoch: Epoch(1),
            changes: vec![PushedChange {
                hash,
                seq: Seq(1),
                new: true,
            }],
        }),
    );
    let (msgs, _, _) = drain(&mut hub);
    assert!(msgs.is_empty(), "queued while catching up: {msgs:?}");
    send(&mut hub, s, &subscribe);
    let (_, _, third) = drain(&mut hub);
    hub.handle_catchup(
        second[0],
        Ok(Catchup::Replay {
            epoch: Epoch(1),
            from_seq: Seq(1),
            entries: vec![blob.clone()],
        }),
    );
    assert!(drain(&mut hub).0.is_empty(), "the stale answer is ignored");
    hub.handle_catchup(
        third[0],
        Ok(Catchup::Replay {
            epoch: Epoch(1),
            from_seq: Seq(1),
            entries: vec![blob],
        }),
    );
    let (msgs, _, _) = drain(&mut hub);
    assert!(
        msgs.iter()
            .any(|m| matches!(m, ServerMsg::Ack { heads, .. } if heads == &vec![hash])),
        "the Ack carried over: {msgs:?}"
    );
}

#[test]
fn a_reconciliation_takes_one_sync_message_at_a_time() {
    let mut hub = Hub::new(HubConfig::default(), Box::new(DevAuthenticator));
    let s = alice(&mut hub);
    // A position the server cannot vouch for: it answers with a reconciling snapshot.
    send(
        &mut hub,
        s,
        &ClientMsg::Subscribe {
            doc: DOC,
            after: Some(converge_proto::Position {
                epoch: Epoch(1),
                seq: Seq(5),
            }),
        },
    );
    let (_, _, catchups) = drain(&mut hub);
    hub.handle_catchup(
        catchups[0],
        Ok(Catchup::Snapshot {
            epoch: Epoch(1),
            seq: Seq(0),
            bytes: Blob(AutoCommit::new().save()),
            tail: Vec::new(),
            reconcile: true,
        }),
    );
    drain(&mut hub);

    use automerge::sync::SyncDoc;
    let fork = automerge::Automerge::new();
    let mut state = automerge::sync::State::new();
    let message = fork.generate_sync_message(&mut state).unwrap().encode();
    let sync = ClientMsg::SyncMsg {
        doc: DOC,
        bytes: Blob(message),
    };
    send(&mut hub, s, &sync);
    send(&mut hub, s, &sync);
    let mut steps = 0;
    let mut refused = Vec::new();
    while let Some(out) = hub.poll_output() {
        match out {
            Output::Reconcile { .. } => steps += 1,
            Output::Send { frame, .. } => {
                if let ServerMsg::Error { code, .. } =
                    decode_server(&frame, MAX_FRAME_CEILING).unwrap()
                {
                    refused.push(code);
                }
            }
            _ => {}
        }
    }
    assert_eq!(steps, 1, "the second message waits for no work");
    assert_eq!(refused, vec![ErrorCode::BadSyncMessage]);
}
