//! Mutations, locks and presence over a real socket, speaking the raw protocol.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT};
use common::*;
use converge_core::{Ctx, Mutator, Mutators, Rejection};
use converge_log::EntryKind;
use converge_proto::*;

/// Sets `key` to `value` at the root; refuses an empty key; panics on "boom".
struct Put;
impl Mutator for Put {
    const NAME: &'static str = "put";
    type Args = (String, i64);
    fn apply(
        doc: &mut AutoCommit,
        (key, value): (String, i64),
        ctx: &Ctx,
    ) -> Result<(), Rejection> {
        if key.is_empty() {
            return Err(Rejection::new("empty key"));
        }
        if key == "boom" {
            panic!("the mutator blew up");
        }
        if key == "locked" {
            ctx.require_lock("row")?;
        }
        doc.put(ROOT, key, value).map_err(Rejection::from_automerge)
    }
}

async fn server_with_mutators() -> TestServer {
    let dir = tempfile::tempdir().unwrap();
    let mut mutators = Mutators::new();
    mutators.register::<Put>();
    let config = converge_server::ServerConfig {
        addr: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.path().join("data"),
        mutators,
        ..Default::default()
    };
    let handle = converge_server::start(config).await.unwrap();
    TestServer { handle, dir }
}

fn mutate(doc: DocId, id: u64, key: &str, value: i64, fence: Option<u64>) -> ClientMsg {
    ClientMsg::Mutate {
        doc,
        mutation_id: MutationId(id),
        name: Put::NAME.into(),
        args: Blob(encode_args(&(key.to_string(), value)).unwrap()),
        fence: fence.map(FencingToken),
    }
}

/// Reads until the result of mutation `id` (skipping entries and states on the way).
async fn result(ws: &mut Ws, id: u64) -> MutationOutcome {
    loop {
        match recv(ws).await {
            ServerMsg::MutationResult {
                mutation_id,
                outcome,
                ..
            } if mutation_id == MutationId(id) => return outcome,
            ServerMsg::Error { code, message, .. } => panic!("error {code}: {message}"),
            _ => {}
        }
    }
}

async fn error(ws: &mut Ws) -> (ErrorCode, String) {
    loop {
        if let ServerMsg::Error { code, message, .. } = recv(ws).await {
            return (code, message);
        }
    }
}

/// The mutation entries of a document, in log order.
fn logged(server: &TestServer, doc: &DocId) -> Vec<(u64, converge_log::MutationOutcome)> {
    let log = server.handle.log();
    log.flush().unwrap();
    log.read(doc, Seq(1), 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.kind {
            EntryKind::Mutation(m) => Some((m.mutation_id.get(), m.outcome)),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn a_mutation_is_applied_once_and_a_duplicate_returns_the_recorded_outcome() {
    let server = server_with_mutators().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut ws = hello(&url, "alice").await;
    subscribe(&mut ws, doc, None).await;

    send(&mut ws, &mutate(doc, 1, "a", 1, None)).await;
    // The result comes before the entries it names.
    let first = match recv(&mut ws).await {
        ServerMsg::MutationResult { outcome, .. } => outcome,
        other => panic!("expected the result first, got {other:?}"),
    };
    let MutationOutcome::Applied { seq } = first else {
        panic!("{first:?}")
    };
    match recv(&mut ws).await {
        ServerMsg::Changes {
            from_seq, changes, ..
        } => {
            assert_eq!(changes.len(), 2, "the mutation record and its change");
            assert!(changes[0].is_empty());
            assert!(!changes[1].is_empty());
            assert_eq!(Seq(from_seq.get() + 1), seq);
        }
        other => panic!("{other:?}"),
    }
    // The same id again: the same answer, nothing written.
    send(&mut ws, &mutate(doc, 1, "a", 99, None)).await;
    assert_eq!(result(&mut ws, 1).await, first);
    assert_eq!(
        logged(&server, &doc),
        vec![(1, converge_log::MutationOutcome::Applied)]
    );
}

#[tokio::test]
async fn a_gap_is_refused_and_writes_nothing() {
    let server = server_with_mutators().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut ws = hello(&url, "alice").await;
    subscribe(&mut ws, doc, None).await;
    send(&mut ws, &mutate(doc, 3, "a", 1, None)).await;
    let (code, message) = error(&mut ws).await;
    assert_eq!(code, ErrorCode::MutationGap);
    assert!(message.contains("expected 1"), "{message}");
    assert!(logged(&server, &doc).is_empty());
    // The next id still works.
    send(&mut ws, &mutate(doc, 1, "a", 1, None)).await;
    assert!(matches!(
        result(&mut ws, 1).await,
        MutationOutcome::Applied { .. }
    ));
}

#[tokio::test]
async fn refusals_panics_and_unknown_names_are_recorded_and_the_ids_still_count() {
    let server = server_with_mutators().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut ws = hello(&url, "alice").await;
    subscribe(&mut ws, doc, None).await;

    send(&mut ws, &mutate(doc, 1, "", 1, None)).await;
    send(&mut ws, &mutate(doc, 2, "boom", 1, None)).await;
    send(
        &mut ws,
        &ClientMsg::Mutate {
            doc,
            mutation_id: MutationId(3),
            name: "nope".into(),
            args: Blob(Vec::new()),
            fence: None,
        },
    )
    .await;
    send(
        &mut ws,
        &ClientMsg::Mutate {
            doc,
            mutation_id: MutationId(4),
            name: Put::NAME.into(),
            args: Blob(vec![0xff; 3]),
            fence: None,
        },
    )
    .await;
    send(&mut ws, &mutate(doc, 5, "ok", 5, None)).await;
    let mut seen = Vec::new();
    for id in 1..=4 {
        match result(&mut ws, id).await {
            MutationOutcome::Rejected { code, .. } => seen.push(code),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            ErrorCode::MutationRejected,
            ErrorCode::MutatorPanicked,
            ErrorCode::UnknownMutator,
            ErrorCode::BadArgs
        ]
    );
    assert!(matches!(
        result(&mut ws, 5).await,
        MutationOutcome::Applied { .. }
    ));
    let ids: Vec<u64> = logged(&server, &doc).iter().map(|(id, _)| *id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5]);
}

async fn lock_result(ws: &mut Ws) -> LockOutcome {
    loop {
        if let ServerMsg::LockResult { outcome, .. } = recv(ws).await {
            return outcome;
        }
    }
}

#[tokio::test]
async fn locks_are_exclusive_fenced_and_released_on_disconnect() {
    let server = server_with_mutators().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut alice = hello(&url, "alice").await;
    let mut bob = hello(&url, "bob").await;
    subscribe(&mut alice, doc, None).await;
    subscribe(&mut bob, doc, None).await;

    let lock = |ttl_ms| ClientMsg::Lock {
        doc,
        key: "row".into(),
        ttl_ms,
    };
    send(&mut alice, &lock(30_000)).await;
    let LockOutcome::Granted { token, .. } = lock_result(&mut alice).await else {
        panic!("alice should get the lock")
    };
    send(&mut bob, &lock(30_000)).await;
    match lock_result(&mut bob).await {
        LockOutcome::Refused { code, .. } => assert_eq!(code, ErrorCode::LockHeld),
        other => panic!("{other:?}"),
    }
    // A bad TTL is refused with its code.
    send(&mut bob, &lock(0)).await;
    match lock_result(&mut bob).await {
        LockOutcome::Refused { code, .. } => assert_eq!(code, ErrorCode::BadLockRequest),
        other => panic!("{other:?}"),
    }
    // A fenced mutation with alice's token passes; bob carrying it is refused (wrong user).
    send(&mut alice, &mutate(doc, 1, "locked", 1, Some(token.get()))).await;
    assert!(matches!(
        result(&mut alice, 1).await,
        MutationOutcome::Applied { .. }
    ));
    send(&mut bob, &mutate(doc, 1, "locked", 2, Some(token.get()))).await;
    match result(&mut bob, 1).await {
        MutationOutcome::Rejected { code, .. } => assert_eq!(code, ErrorCode::StaleFence),
        other => panic!("{other:?}"),
    }
    // Without a fence the mutator's own lock check refuses.
    send(&mut alice, &mutate(doc, 2, "locked", 3, None)).await;
    match result(&mut alice, 2).await {
        MutationOutcome::Rejected { code, .. } => assert_eq!(code, ErrorCode::StaleFence),
        other => panic!("{other:?}"),
    }
    // alice goes away: the lock is released, bob gets it with a higher token.
    drop(alice);
    let mut bob_token = None;
    for _ in 0..50 {
        send(&mut bob, &lock(30_000)).await;
        match lock_result(&mut bob).await {
            LockOutcome::Granted { token: t, .. } => {
                bob_token = Some(t);
                break;
            }
            LockOutcome::Refused { .. } => {
                // The disconnect is still on its way to the hub: wait for the lock state.
                loop {
                    if let ServerMsg::LockState { holder: None, .. } = recv(&mut bob).await {
                        break;
                    }
                }
            }
            other => panic!("{other:?}"),
        }
    }
    let bob_token = bob_token.expect("bob gets the lock after alice left");
    assert!(bob_token > token);
    // The stale token is refused now.
    send(&mut bob, &mutate(doc, 2, "locked", 4, Some(token.get()))).await;
    match result(&mut bob, 2).await {
        MutationOutcome::Rejected { code, .. } => assert_eq!(code, ErrorCode::StaleFence),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn lock_tokens_keep_increasing_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let start = || {
        let config = converge_server::ServerConfig {
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().join("data"),
            ..Default::default()
        };
        converge_server::start(config)
    };
    let doc = DocId::random();
    let mut tokens = Vec::new();
    for round in 0..2 {
        let server = start().await.unwrap();
        let mut ws = hello(&server.ws_url(), "alice").await;
        subscribe(&mut ws, doc, None).await;
        for k in 0..3 {
            send(
                &mut ws,
                &ClientMsg::Lock {
                    doc,
                    key: format!("k{round}-{k}"),
                    ttl_ms: 5_000,
                },
            )
            .await;
            match lock_result(&mut ws).await {
                LockOutcome::Granted { token, .. } => tokens.push(token.get()),
                other => panic!("{other:?}"),
            }
        }
        drop(ws);
        server.shutdown().await.unwrap();
    }
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
}

async fn presence(ws: &mut Ws) -> (Peer, Option<Blob>) {
    loop {
        if let ServerMsg::Presence { peer, state, .. } = recv(ws).await {
            return (peer, state);
        }
    }
}

#[tokio::test]
async fn presence_is_stamped_coalesced_snapshotted_and_left_on_disconnect() {
    let server = server_with_mutators().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut alice = hello(&url, "alice").await;
    let mut bob = hello(&url, "bob").await;
    subscribe(&mut alice, doc, None).await;
    subscribe(&mut bob, doc, None).await;

    // A burst of 50 updates: bob sees far fewer than 50, and the last one wins.
    for n in 0..50u8 {
        send(
            &mut alice,
            &ClientMsg::Presence {
                doc,
                state: Blob(vec![n]),
            },
        )
        .await;
    }
    let mut seen = Vec::new();
    loop {
        let (peer, state) = presence(&mut bob).await;
        assert_eq!(peer.user.as_str(), "alice", "the server stamps the sender");
        let v = state.unwrap().into_vec();
        seen.push(v[0]);
        if v[0] == 49 {
            break;
        }
    }
    assert!(
        seen.len() < 50,
        "coalesced: {} updates went out",
        seen.len()
    );

    // A late subscriber gets a snapshot of everyone's state.
    let mut carol = hello(&url, "carol").await;
    send(&mut carol, &ClientMsg::Subscribe { doc, after: None }).await;
    let (peer, state) = presence(&mut carol).await;
    assert_eq!(peer.user.as_str(), "alice");
    assert_eq!(state.unwrap().into_vec(), vec![49]);

    // Too large: refused with its code.
    send(
        &mut bob,
        &ClientMsg::Presence {
            doc,
            state: Blob(vec![0; 5000]),
        },
    )
    .await;
    assert_eq!(error(&mut bob).await.0, ErrorCode::PresenceTooLarge);

    // alice leaves: the others hear `left`.
    drop(alice);
    loop {
        let (peer, state) = presence(&mut bob).await;
        if peer.user.as_str() == "alice" && state.is_none() {
            break;
        }
    }
}

#[tokio::test]
async fn a_session_holds_a_bounded_number_of_locks() {
    let server = server_with_mutators().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut ws = hello(&url, "alice").await;
    subscribe(&mut ws, doc, None).await;
    let max = converge_core::HubConfig::default().max_locks_per_session;
    for k in 0..=max {
        send(
            &mut ws,
            &ClientMsg::Lock {
                doc,
                key: format!("k{k}"),
                ttl_ms: 30_000,
            },
        )
        .await;
        let outcome = lock_result(&mut ws).await;
        if k < max {
            assert!(
                matches!(outcome, LockOutcome::Granted { .. }),
                "{k}: {outcome:?}"
            );
        } else {
            match outcome {
                LockOutcome::Refused { code, .. } => assert_eq!(code, ErrorCode::RateLimited),
                other => panic!("lock {k} beyond the bound: {other:?}"),
            }
        }
    }
}
