//! `converge demo`: two clients edit one schedule, one of them offline for a while; both
//! converge. Without --server it starts its own server on a temporary directory.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use converge_client::automerge::transaction::Transactable;
use converge_client::automerge::{AutoCommit, ObjType, ROOT, ReadDoc};
use converge_client::{Client, ClientConfig};

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
                ..Default::default()
            };
            let s = converge_server::start(config).await?;
            (s.ws_url(), Some(s))
        }
    };
    println!("server: {url}");
    let config = || {
        ClientConfig::default().with_backoff(Duration::from_millis(50), Duration::from_millis(500))
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
    alice.shutdown().await?;
    bob.shutdown().await?;
    if let Some(s) = own {
        s.shutdown().await?;
    }
    if !converged {
        bail!("the two views differ");
    }
    println!("converged: both clients hold the same document");
    Ok(ExitCode::SUCCESS)
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
