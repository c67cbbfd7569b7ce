//! `converge demo`: two clients edit one schedule, one of them offline for a while; both
//! converge. Then both book the same bed while offline: the server applies one booking,
//! rejects the other, and the loser's view rolls back. Without --server it starts its own
//! server on a temporary directory.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use converge_client::automerge::transaction::Transactable;
use converge_client::automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use converge_client::{Client, ClientConfig, Mutators};
use converge_schema::{BookEvent, Schedule};

const WAIT: Duration = Duration::from_secs(30);

pub(crate) fn run(server: Option<String>) -> anyhow::Result<ExitCode> {
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(demo(server))
}

fn add_event(
    d: &mut AutoCommit,
    id: &str,
    title: &str,
    start: &str,
) -> Result<(), converge_client::automerge::AutomergeError> {
    let events = match d.get(ROOT, "events")? {
        Some((_, id)) => id,
        None => d.put_object(ROOT, "events", ObjType::Map)?,
    };
    let e = d.put_object(&events, id, ObjType::Map)?;
    d.put(&e, "title", title)?;
    d.put(&e, "start", start)?;
    Ok(())
}

async fn demo(server: Option<String>) -> anyhow::Result<ExitCode> {
    let tmp = tempfile::tempdir().context("creating a temporary directory")?;
    let (url, own) = match server {
        Some(url) => (url, None),
        None => {
            let config = converge_server::ServerConfig {
                addr: "127.0.0.1:0".parse()?,
                data_dir: tmp.path().join("server"),
                mutators: mutators(),
                ..Default::default()
            };
            let s = converge_server::start(config).await?;
            (s.ws_url(), Some(s))
        }
    };
    println!("server: {url}");
    let config = || {
        ClientConfig::default()
            .with_backoff(Duration::from_millis(50), Duration::from_millis(500))
            .with_mutators(mutators())
    };

    let alice = Client::connect_with(
        &url,
        Some("alice".into()),
        tmp.path().join("alice"),
        config(),
    )
    .await?;
    let (doc, _) = alice
        .create_doc(|d| {
            d.put(ROOT, "title", "Ward 3 rota")?;
            add_event(d, "e1", "Morning handover", "2026-11-23T07:00")
        })
        .await?;
    let id = doc.id();
    within(doc.wait_until_confirmed())
        .await
        .context("alice's first change")?;
    println!("alice created schedule {id}");

    // Bob joins, then goes offline (his client points at a server that is not there).
    let bob_store = tmp.path().join("bob");
    let bob = Client::connect_with(&url, Some("bob".into()), &bob_store, config()).await?;
    let bob_doc = bob.doc(id).await?;
    within(bob_doc.wait_for(|d| d.get(ROOT, "title").ok().flatten().is_some()))
        .await
        .context("bob's first sync")?;
    // The store is locked while any handle of the client lives.
    drop(bob_doc);
    bob.shutdown().await?;
    let nowhere = unused_url()?;
    let offline = Client::connect_with(&nowhere, Some("bob".into()), &bob_store, config()).await?;
    let offline_doc = offline.doc(id).await?;
    offline_doc.change(|d| add_event(d, "e2", "Bob: night shift swap", "2026-11-23T22:00"))??;
    offline_doc.change(|d| d.put(ROOT, "title", "Ward 3 rota (bob)"))??;
    println!(
        "bob edited offline: {} change(s) pending",
        offline_doc.pending_count()
    );
    drop(offline_doc);
    offline.shutdown().await?;

    // Meanwhile alice keeps editing online.
    doc.change(|d| add_event(d, "e3", "Alice: ward round", "2026-11-23T10:00"))??;
    within(doc.wait_until_confirmed())
        .await
        .context("alice's edit")?;

    // Bob comes back: his offline edits are delivered and he receives alice's.
    let bob = Client::connect_with(&url, Some("bob".into()), &bob_store, config()).await?;
    let bob_doc = bob.doc(id).await?;
    within(bob_doc.wait_until_confirmed())
        .await
        .context("bob's offline edits")?;
    let has_all = |d: &AutoCommit| {
        d.get(ROOT, "events")
            .ok()
            .flatten()
            .is_some_and(|(_, ev)| d.length(&ev) == 3)
    };
    within(bob_doc.wait_for(has_all))
        .await
        .context("bob receiving alice's edit")?;
    within(doc.wait_for(has_all))
        .await
        .context("alice receiving bob's edits")?;

    let a = doc.read(converge_schema::to_json);
    let b = bob_doc.read(converge_schema::to_json);
    println!("alice sees: {}", serde_json::to_string_pretty(&a)?);
    println!("bob sees:   {}", serde_json::to_string_pretty(&b)?);
    let converged = a == b && doc.heads() == bob_doc.heads();
    drop((doc, bob_doc));
    alice.shutdown().await?;
    bob.shutdown().await?;
    if !converged {
        bail!("the two views differ");
    }
    println!("converged: both clients hold the same document");

    double_booking(&url, tmp.path(), &config).await?;
    if let Some(s) = own {
        s.shutdown().await?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The mutators of converge-schema, on both sides.
fn mutators() -> Mutators {
    let mut m = Mutators::new();
    converge_schema::register_all(&mut m);
    m
}

fn booked(d: &AutoCommit) -> Vec<String> {
    converge_schema::read::<Schedule>(d)
        .map(|s| {
            s.events
                .values()
                .map(|e| e.title.as_str().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Two offline clients book the same bed; the server keeps "a bed is booked once".
async fn double_booking(
    url: &str,
    dir: &std::path::Path,
    config: &dyn Fn() -> ClientConfig,
) -> anyhow::Result<()> {
    println!("\n-- two offline clients book the same bed --");
    let (ana_store, ben_store) = (dir.join("ana"), dir.join("ben"));
    let ana = Client::connect_with(url, Some("ana".into()), &ana_store, config()).await?;
    let (doc, created) = ana
        .create_doc(|d| converge_schema::create(d, &Schedule::new("Beds", "Europe/Paris")))
        .await?;
    created?;
    let id = doc.id();
    within(doc.wait_until_confirmed()).await?;
    let ben = Client::connect_with(url, Some("ben".into()), &ben_store, config()).await?;
    let ben_doc = ben.doc(id).await?;
    within(ben_doc.wait_for(|d| converge_schema::read::<Schedule>(d).is_ok())).await?;
    drop((doc, ben_doc));
    ana.shutdown().await?;
    ben.shutdown().await?;

    // Both offline: each books bed 1 from 22:00 to 06:00 and sees its own booking at once.
    let nowhere = unused_url()?;
    for (who, store) in [("ana", &ana_store), ("ben", &ben_store)] {
        let c = Client::connect_with(&nowhere, Some(who.into()), store, config()).await?;
        let d = c.doc(id).await?;
        d.mutate::<BookEvent>(&BookEvent {
            id: format!("{who}-night"),
            title: format!("{who}: night shift, bed 1"),
            resource: "bed-1".into(),
            start: 1_795_384_800_000,
            end: 1_795_413_600_000,
            attendees: vec![who.into()],
        })?;
        println!("{who} (offline) sees: {:?}", d.read(booked));
        drop(d);
        c.shutdown().await?;
    }

    // Both come back: the queued bookings replay; the server applies the first it gets.
    let ana = Client::connect_with(url, Some("ana".into()), &ana_store, config()).await?;
    let ben = Client::connect_with(url, Some("ben".into()), &ben_store, config()).await?;
    let (a, b) = (ana.doc(id).await?, ben.doc(id).await?);
    let settled = |h: &converge_client::DocHandle| h.pending_operations().is_empty();
    within(async {
        while !(settled(&a)
            && settled(&b)
            && a.read(booked) == b.read(booked)
            && a.read(booked).len() == 1)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .context("both bookings decided and the views converged")?;
    let winner = a.read(booked);
    for (who, h) in [("ana", &a), ("ben", &b)] {
        let mine = h.read(booked).iter().any(|t| t.starts_with(who));
        println!(
            "{who}: booking {}; view now: {:?}",
            if mine {
                "Applied"
            } else {
                "Rejected (overlaps), rolled back"
            },
            h.read(booked)
        );
    }
    let converged = a.read(converge_schema::to_json) == b.read(converge_schema::to_json);
    drop((a, b));
    ana.shutdown().await?;
    ben.shutdown().await?;
    if !converged || winner.len() != 1 {
        bail!("the double booking did not resolve to one booking on both sides");
    }
    println!("converged: exactly one booking of bed 1, on both clients");
    Ok(())
}

async fn within<F: std::future::Future>(f: F) -> anyhow::Result<F::Output> {
    tokio::time::timeout(WAIT, f).await.context("timed out")
}

/// A ws:// URL on a free port nobody listens on.
fn unused_url() -> anyhow::Result<String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    drop(l);
    Ok(format!("ws://{addr}/ws"))
}
