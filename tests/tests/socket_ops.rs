//! Mutations, locks and presence through the SDK over real sockets.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use converge_client::{
    Client, ClientConfig, ClientError, DocHandle, ErrorCode, MutationOutcome, Mutators,
    OperationState,
};
use converge_schema::{BookEvent, MoveEvent, Schedule};
use converge_server::{ServerConfig, ServerHandle};
use futures_util::StreamExt;

const WAIT: Duration = Duration::from_secs(30);

fn mutators() -> Mutators {
    let mut m = Mutators::new();
    converge_schema::register_all(&mut m);
    m
}

async fn serve(dir: &Path, addr: &str) -> anyhow::Result<ServerHandle> {
    Ok(converge_server::start(ServerConfig {
        addr: addr.parse()?,
        data_dir: dir.to_path_buf(),
        mutators: mutators(),
        ..ServerConfig::default()
    })
    .await?)
}

async fn client(url: &str, user: &str, store: &Path) -> anyhow::Result<Client> {
    let config = ClientConfig::default()
        .with_backoff(Duration::from_millis(20), Duration::from_millis(200))
        .with_breaker(1000, Duration::from_millis(100))
        .with_mutators(mutators());
    Ok(Client::connect_with(url, Some(user.into()), store, config).await?)
}

fn events(h: &DocHandle) -> Vec<String> {
    h.read(|d| {
        converge_schema::read::<Schedule>(d)
            .map(|s| s.events.keys().cloned().collect())
            .unwrap_or_default()
    })
}

fn booking(id: &str, who: &str) -> BookEvent {
    BookEvent {
        id: id.into(),
        title: format!("night shift ({who})"),
        resource: "bed-1".into(),
        start: 0,
        end: 3_600_000,
        attendees: vec![who.into()],
    }
}

async fn until<F: Fn() -> bool>(what: &str, f: F) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_offline_sdk_clients_book_one_slot_one_wins_and_the_other_rolls_back()
-> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (alice_store, bob_store) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let server = serve(data.path(), "127.0.0.1:0").await?;
    let addr = server.local_addr().to_string();
    let url = server.ws_url();

    let alice = client(&url, "alice", alice_store.path()).await?;
    let bob = client(&url, "bob", bob_store.path()).await?;
    let (a, created) = alice
        .create_doc(|d| converge_schema::create(d, &Schedule::new("Ward 3", "Europe/Paris")))
        .await?;
    created?;
    tokio::time::timeout(WAIT, a.wait_until_confirmed()).await?;
    let b = bob.doc(a.id()).await?;
    tokio::time::timeout(
        WAIT,
        b.wait_for(|d| converge_schema::read::<Schedule>(d).is_ok()),
    )
    .await
    .context("bob receives the schedule")?;

    // The server goes away; both book the same bed offline.
    server.shutdown().await?;
    let ha = alice
        .mutate::<BookEvent>(a.id(), &booking("ana", "alice"))
        .await?;
    let hb = b.mutate::<BookEvent>(&booking("ben", "bob"))?;
    assert_eq!(
        events(&a),
        vec!["ana".to_string()],
        "alice's optimistic view"
    );
    assert_eq!(events(&b), vec!["ben".to_string()], "bob's optimistic view");
    assert_eq!(a.pending_operations().len(), 1);
    let mut bob_ops = b.operations().boxed();

    // Back on the same address: the queued mutations replay.
    let server = serve(data.path(), &addr).await?;
    let oa = tokio::time::timeout(WAIT, ha.outcome()).await??;
    let ob = tokio::time::timeout(WAIT, hb.outcome()).await??;
    let outcomes = [&oa, &ob];
    let applied = outcomes
        .iter()
        .filter(|o| matches!(o, MutationOutcome::Applied { .. }))
        .count();
    assert_eq!(applied, 1, "{outcomes:?}");
    let winner = if matches!(oa, MutationOutcome::Applied { .. }) {
        "ana"
    } else {
        "ben"
    };
    for o in outcomes {
        if let MutationOutcome::Rejected { code, .. } = o {
            assert_eq!(*code, ErrorCode::MutationRejected);
        }
    }
    // Both views show the winner only (the loser's rolled back), and nothing is pending.
    until("both views converge on the winner", || {
        events(&a) == vec![winner.to_string()] && events(&b) == vec![winner.to_string()]
    })
    .await?;
    assert!(a.pending_operations().is_empty() && b.pending_operations().is_empty());
    // bob's operations stream saw his mutation sent and decided.
    let mut states = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(Duration::from_millis(200), bob_ops.next()).await {
        states.push(e.state);
    }
    assert!(
        states
            .iter()
            .any(|s| matches!(s, OperationState::Sent { attempt } if *attempt >= 1)),
        "{states:?}"
    );
    assert!(
        states.iter().any(|s| matches!(
            s,
            OperationState::Applied { .. } | OperationState::Rejected { .. }
        )),
        "{states:?}"
    );
    alice.shutdown().await?;
    bob.shutdown().await?;
    server.shutdown().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn locks_fence_mutations_and_presence_reaches_the_others() -> anyhow::Result<()> {
    let data = tempfile::tempdir()?;
    let (alice_store, bob_store) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let server = serve(data.path(), "127.0.0.1:0").await?;
    let url = server.ws_url();
    let alice = client(&url, "alice", alice_store.path()).await?;
    let bob = client(&url, "bob", bob_store.path()).await?;
    let (a, created) = alice
        .create_doc(|d| converge_schema::create(d, &Schedule::new("Ward 3", "Europe/Paris")))
        .await?;
    created?;
    tokio::time::timeout(WAIT, a.wait_until_confirmed()).await?;
    let outcome = a.mutate::<BookEvent>(&booking("e1", "alice"))?.outcome();
    assert!(matches!(
        tokio::time::timeout(WAIT, outcome).await??,
        MutationOutcome::Applied { .. }
    ));
    let b: DocHandle = bob.doc(a.id()).await?;
    let mut bob_locks = b.locks().boxed();
    let mut bob_presence = b.presence().boxed();
    until("bob is live", || {
        b.read(|d| converge_schema::read::<Schedule>(d).is_ok())
    })
    .await?;

    // alice takes the event's lock; bob is refused while she holds it.
    let key = converge_schema::event_lock_key("e1");
    let guard = tokio::time::timeout(WAIT, a.lock(&key, Duration::from_secs(3))).await??;
    let refused = loop {
        match tokio::time::timeout(WAIT, b.lock(&key, Duration::from_secs(3))).await? {
            Err(ClientError::Lock { code, .. }) => break code,
            Err(ClientError::Offline) => tokio::time::sleep(Duration::from_millis(20)).await,
            other => bail!("bob should be refused, got {other:?}"),
        }
    };
    assert_eq!(refused, ErrorCode::LockHeld);
    // bob's lock table shows alice as the holder.
    tokio::time::timeout(WAIT, async {
        while let Some(t) = bob_locks.next().await {
            if t.get(&key)
                .is_some_and(|l| l.holder.user.as_str() == "alice")
            {
                return;
            }
        }
    })
    .await
    .context("bob's lock table shows alice")?;

    // A fenced move with alice's token is applied; the lease renews itself past its TTL.
    tokio::time::sleep(Duration::from_millis(3_500)).await;
    assert!(guard.is_held(), "the guard renewed the lease");
    let moved = MoveEvent {
        id: "e1".into(),
        start: 3_600_000,
        end: 7_200_000,
        resource: None,
        require_lock: true,
    };
    let o = a
        .mutate_fenced::<MoveEvent>(&moved, guard.token())?
        .outcome();
    assert!(matches!(
        tokio::time::timeout(WAIT, o).await??,
        MutationOutcome::Applied { .. }
    ));
    // Without the fence the same move is refused.
    let o = a.mutate::<MoveEvent>(&moved)?.outcome();
    match tokio::time::timeout(WAIT, o).await?? {
        MutationOutcome::Rejected { code, .. } => assert_eq!(code, ErrorCode::StaleFence),
        other => bail!("{other:?}"),
    }
    // Dropping the guard releases the lock: bob's table shows it free.
    drop(guard);
    tokio::time::timeout(WAIT, async {
        while let Some(t) = bob_locks.next().await {
            if !t.contains_key(&key) {
                return;
            }
        }
    })
    .await
    .context("the lock is released")?;

    // Drop a guard and take the lock again at once: the old Unlock's answer must not be taken
    // for the new request's.
    let g1 = tokio::time::timeout(WAIT, a.lock("row-2", Duration::from_secs(3))).await??;
    drop(g1);
    let g2 = tokio::time::timeout(WAIT, a.lock("row-2", Duration::from_secs(3))).await??;
    until("the second guard holds the lock", || g2.is_held()).await?;
    drop(g2);

    // Presence: alice's state reaches bob, stamped with her identity.
    a.set_presence(b"cursor:e1".to_vec())?;
    tokio::time::timeout(WAIT, async {
        while let Some(p) = bob_presence.next().await {
            if p.values()
                .any(|s| s.user.as_str() == "alice" && s.state == b"cursor:e1")
            {
                return;
            }
        }
    })
    .await
    .context("bob sees alice's presence")?;
    // alice leaves: bob's presence map loses her.
    alice.shutdown().await?;
    tokio::time::timeout(WAIT, async {
        while let Some(p) = bob_presence.next().await {
            if p.values().all(|s| s.user.as_str() != "alice") {
                return;
            }
        }
    })
    .await
    .context("alice left")?;
    bob.shutdown().await?;
    server.shutdown().await?;
    Ok(())
}
