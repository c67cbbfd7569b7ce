//! Reconciliation over real sockets: a server restored from an older backup gets back, through
//! an SDK client that held them, changes it had acknowledged and lost, including another
//! user's.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, bail};
use automerge::{ROOT, ReadDoc, transaction::Transactable};
use converge_client::{Client, DocHandle};
use converge_log::{Log, LogConfig};
use converge_proto::DocId;
use converge_server::{ServerConfig, ServerHandle};

const WAIT: Duration = Duration::from_secs(30);

async fn serve(dir: &Path) -> anyhow::Result<ServerHandle> {
    Ok(converge_server::start(ServerConfig {
        addr: "127.0.0.1:0".parse()?,
        data_dir: dir.to_path_buf(),
        ..ServerConfig::default()
    })
    .await?)
}

fn has(doc: &automerge::AutoCommit, key: &str) -> bool {
    doc.get(ROOT, key).ok().flatten().is_some()
}

async fn wait_keys(handle: &DocHandle, keys: &[&str]) -> anyhow::Result<()> {
    if tokio::time::timeout(WAIT, handle.wait_for(|d| keys.iter().all(|k| has(d, k))))
        .await
        .is_err()
    {
        bail!(
            "missing: {:?}",
            handle.read(|d| keys
                .iter()
                .filter(|k| !has(d, k))
                .copied()
                .collect::<Vec<_>>())
        );
    }
    Ok(())
}

async fn confirmed(handle: &DocHandle) -> anyhow::Result<()> {
    tokio::time::timeout(WAIT, handle.wait_until_confirmed())
        .await
        .context("not acknowledged")
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_gets_back_what_a_client_holds() -> anyhow::Result<()> {
    let root = tempfile::tempdir()?;
    let (data, backup, restored) = (
        root.path().join("data"),
        root.path().join("backup"),
        root.path().join("restored"),
    );
    let (alice_store, bob_store, reader_store) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let doc = DocId::random();

    // 1. alice writes `before`; the server is stopped and its directory backed up.
    let server = serve(&data).await?;
    let alice = Client::connect(&server.ws_url(), Some("alice".into()), alice_store.path()).await?;
    let a = alice.doc(doc).await?;
    a.change(|d| d.put(ROOT, "before", 1))??;
    confirmed(&a).await?;
    // A store stays locked while any handle to one of its documents lives.
    drop(a);
    alice.shutdown().await?;
    server.shutdown().await?;
    copy_dir(&data, &backup)?;

    // 2. After the backup: alice writes `lost` (acknowledged), bob receives it, then both go.
    let server = serve(&data).await?;
    let url = server.ws_url();
    let alice = Client::connect(&url, Some("alice".into()), alice_store.path()).await?;
    let bob = Client::connect(&url, Some("bob".into()), bob_store.path()).await?;
    let a = alice.doc(doc).await?;
    let b = bob.doc(doc).await?;
    a.change(|d| d.put(ROOT, "lost", 2))??;
    confirmed(&a).await?;
    wait_keys(&b, &["before", "lost"]).await?;
    drop((a, b));
    alice.shutdown().await?;
    bob.shutdown().await?;
    server.shutdown().await?;

    // 3. The disk is lost; the backup is restored (what `converge restore` does): a copy,
    //    every document moved to a new epoch.
    drop(Log::restore(&backup, &restored, LogConfig::default())?);
    let server = serve(&restored).await?;
    let url = server.ws_url();

    // 4. bob comes back first and hands back alice's acknowledged-then-lost change.
    let bob = Client::connect(&url, Some("bob".into()), bob_store.path()).await?;
    let b = bob.doc(doc).await?;
    b.change(|d| d.put(ROOT, "after", 3))??;
    confirmed(&b).await?;
    let reader = Client::connect(&url, Some("reader".into()), reader_store.path()).await?;
    let r = reader.doc(doc).await?;
    wait_keys(&r, &["before", "lost", "after"]).await?;
    // Relaying did not take alice's actor: she can still push as herself.
    let alice = Client::connect(&url, Some("alice".into()), alice_store.path()).await?;
    let a = alice.doc(doc).await?;
    a.change(|d| d.put(ROOT, "alice_again", 4))??;
    confirmed(&a).await?;
    wait_keys(&r, &["before", "lost", "after", "alice_again"]).await?;
    wait_keys(&b, &["alice_again"]).await?;
    assert_eq!(r.heads().len(), b.heads().len());
    for c in [alice, bob, reader] {
        c.shutdown().await?;
    }
    server.shutdown().await?;
    Ok(())
}
