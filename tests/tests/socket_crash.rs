//! Crashes over real sockets: a client process killed mid-way keeps its offline edits, and a
//! server process killed with SIGKILL loses no change a client saw acknowledged.
//!
//! The children are this package's `crash-client` and `crash-server` binaries; the test side
//! uses the SDK and the server library in-process.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, bail};
use automerge::{ROOT, ReadDoc, transaction::Transactable};
use converge_client::{Client, DocEvent, DocHandle};
use converge_proto::DocId;
use converge_server::ServerConfig;
use futures_util::StreamExt;
use rand::{Rng, SeedableRng, rngs::StdRng};

const WAIT: Duration = Duration::from_secs(60);

/// A child process whose stdout lines arrive on a channel, so reads can time out.
struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Proc {
    fn spawn(exe: &str, args: &[&str]) -> anyhow::Result<Proc> {
        let mut child = Command::new(exe)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Ok(Proc { child, lines })
    }

    /// The next line starting with `prefix`, with that prefix removed.
    fn expect(&self, prefix: &str) -> anyhow::Result<String> {
        loop {
            let line = self
                .lines
                .recv_timeout(WAIT)
                .with_context(|| format!("no `{prefix}` line from the child"))?;
            if let Some(rest) = line.strip_prefix(prefix) {
                return Ok(rest.trim().to_string());
            }
        }
    }

    /// SIGKILL, then reap.
    fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

/// A ws URL nothing listens on.
fn dead_url() -> anyhow::Result<String> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    Ok(format!("ws://127.0.0.1:{port}/ws"))
}

fn has(doc: &automerge::AutoCommit, key: &str) -> bool {
    doc.get(ROOT, key).ok().flatten().is_some()
}

fn missing(handle: &DocHandle, keys: &[String]) -> Vec<String> {
    handle.read(|d| keys.iter().filter(|k| !has(d, k)).cloned().collect())
}

/// Waits until the document holds every key, or fails naming the missing ones.
async fn wait_for_keys(handle: &DocHandle, keys: &[String]) -> anyhow::Result<()> {
    let waited =
        tokio::time::timeout(WAIT, handle.wait_for(|d| keys.iter().all(|k| has(d, k)))).await;
    if waited.is_err() {
        bail!("missing after {WAIT:?}: {:?}", missing(handle, keys));
    }
    Ok(())
}

#[test]
fn a_killed_client_process_keeps_its_offline_edits_and_delivers_them() -> anyhow::Result<()> {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Runtime::new()?;
    let server_dir = tempfile::tempdir()?;
    let store = tempfile::tempdir()?;
    let store_path = store.path().to_str().context("utf-8 path")?;
    let server = rt.block_on(converge_server::start(ServerConfig {
        addr: "127.0.0.1:0".parse()?,
        data_dir: server_dir.path().to_path_buf(),
        ..ServerConfig::default()
    }))?;
    let url = server.ws_url();
    let doc = DocId::random();
    let doc_arg = doc.to_string();
    let exe = env!("CARGO_BIN_EXE_crash-client");

    // Three rounds on one store: edit offline, get killed at a random moment, then a new
    // process delivers everything the killed one had stored.
    let mut next = 0u64;
    let mut stored: Vec<String> = Vec::new();
    for _round in 0..3 {
        let count = 200u64;
        let kill_after = rng.random_range(1..count);
        let dead = dead_url()?;
        let editor = Proc::spawn(
            exe,
            &[
                "edit",
                store_path,
                &dead,
                &doc_arg,
                &next.to_string(),
                &count.to_string(),
            ],
        )?;
        let mut last = next;
        for _ in 0..kill_after {
            last = editor.expect("STORED")?.parse()?;
            stored.push(format!("e{last}"));
        }
        editor.kill()?;
        // The change after the last printed one may also have reached the store; numbering
        // skips past anything the killed process may have written.
        next = last + 2;

        let deliver = Proc::spawn(exe, &["deliver", store_path, &url, &doc_arg])?;
        let pending: usize = deliver.expect("CONFIRMED")?.parse()?;
        assert!(
            pending >= 1,
            "the restarted client found nothing pending after {kill_after} stored edits"
        );
        eprintln!("killed after {kill_after} stored edits; {pending} were pending on restart");
        deliver.kill()?;

        // Another client sees every stored edit on the server.
        let reader_store = tempfile::tempdir()?;
        rt.block_on(async {
            let reader = Client::connect(&url, Some("reader".into()), reader_store.path()).await?;
            let handle = reader.doc(doc).await?;
            wait_for_keys(&handle, &stored).await?;
            reader.shutdown().await?;
            anyhow::Ok(())
        })?;
    }
    rt.block_on(server.shutdown())?;
    Ok(())
}

/// One SDK client writing `<name><i>` keys as fast as the store allows.
struct Writer {
    name: &'static str,
    client: Client,
    handle: DocHandle,
    made: u64,
}

impl Writer {
    async fn open(name: &'static str, url: &str, store: &Path, doc: DocId) -> anyhow::Result<Self> {
        let client = Client::connect(url, Some(name.to_string()), store).await?;
        let handle = client.doc(doc).await?;
        // Keys written by earlier processes of this store.
        let made = handle.read(|d| {
            (0u64..)
                .take_while(|i| has(d, &format!("{name}{i}")))
                .count()
        }) as u64;
        Ok(Writer {
            name,
            client,
            handle,
            made,
        })
    }

    fn write_one(&mut self) -> anyhow::Result<()> {
        let key = format!("{}{}", self.name, self.made);
        let i = self.made as i64;
        self.handle.change(|d| d.put(ROOT, key, i))??;
        self.made += 1;
        Ok(())
    }

    /// The changes acknowledged so far: acks arrive in push order, so they are a prefix.
    fn acked(&self) -> u64 {
        self.made - self.handle.pending_count() as u64
    }

    fn keys(&self, upto: u64) -> Vec<String> {
        (0..upto).map(|i| format!("{}{i}", self.name)).collect()
    }
}

/// Writes through every writer in turn until a write fails (the caller stops it).
async fn write_until_error(writers: &mut [Writer]) -> anyhow::Result<()> {
    loop {
        for w in writers.iter_mut() {
            w.write_one()?;
        }
        tokio::task::yield_now().await;
    }
}

#[test]
fn a_killed_server_loses_no_acknowledged_change() -> anyhow::Result<()> {
    let seed: u64 = rand::rng().random();
    eprintln!("seed {seed}");
    let mut rng = StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Runtime::new()?;
    let data = tempfile::tempdir()?;
    let data_path = data.path().to_str().context("utf-8 path")?;
    let stores = [tempfile::tempdir()?, tempfile::tempdir()?];
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let exe = env!("CARGO_BIN_EXE_crash-server");
    let doc = DocId::random();

    for round in 0..3 {
        let server = Proc::spawn(exe, &[data_path, &addr])?;
        let url = server.expect("LISTENING")?;
        // Writers reopen their stores each round: whatever was pending is pushed again.
        let mut writers = rt.block_on(async {
            anyhow::Ok(vec![
                Writer::open("alice", &url, stores[0].path(), doc).await?,
                Writer::open("bob", &url, stores[1].path(), doc).await?,
            ])
        })?;
        // Write until alice has seen a random number of acks, then kill the server mid-stream.
        let kill_at = rng.random_range(5..60);
        let mut acks = Box::pin(writers[0].handle.subscribe_changes());
        rt.block_on(async {
            let counting = async {
                let mut seen = 0;
                while seen < kill_at {
                    match acks.next().await {
                        Some(DocEvent::Acked { .. }) => seen += 1,
                        Some(_) => {}
                        None => bail!("event stream ended"),
                    }
                }
                anyhow::Ok(())
            };
            tokio::select! {
                r = write_until_error(&mut writers) => r,
                r = tokio::time::timeout(WAIT, counting) => r.context("no acks")?,
            }
        })?;
        server.kill()?;
        // The server is dead: no ack can arrive any more. Record what each client saw
        // acknowledged, then close the clients.
        let acked: Vec<(&'static str, u64)> = writers.iter().map(|w| (w.name, w.acked())).collect();
        rt.block_on(async {
            for w in writers {
                w.client.shutdown().await?;
            }
            anyhow::Ok(())
        })?;
        eprintln!("round {round}: acknowledged before the kill: {acked:?}");
        assert!(
            acked.iter().any(|(_, n)| *n > 0),
            "round {round}: nothing acked"
        );

        // Restart on the same data directory: before any writer comes back, a fresh reader
        // finds every acknowledged change.
        let server = Proc::spawn(exe, &[data_path, &addr])?;
        let url = server.expect("LISTENING")?;
        rt.block_on(async {
            let reader_store = tempfile::tempdir()?;
            let reader = Client::connect(&url, Some("reader".into()), reader_store.path()).await?;
            let handle = reader.doc(doc).await?;
            for (name, n) in &acked {
                let keys: Vec<String> = (0..*n).map(|i| format!("{name}{i}")).collect();
                wait_for_keys(&handle, &keys)
                    .await
                    .with_context(|| format!("round {round}: acknowledged changes lost"))?;
            }
            reader.shutdown().await?;

            // The writers come back, deliver what was pending, and everyone converges.
            let alice = Writer::open("alice", &url, stores[0].path(), doc).await?;
            let bob = Writer::open("bob", &url, stores[1].path(), doc).await?;
            for w in [&alice, &bob] {
                tokio::time::timeout(WAIT, w.handle.wait_until_confirmed())
                    .await
                    .context("pending changes not delivered after the restart")?;
            }
            let all: Vec<String> = alice
                .keys(alice.made)
                .into_iter()
                .chain(bob.keys(bob.made))
                .collect();
            wait_for_keys(&alice.handle, &all).await?;
            wait_for_keys(&bob.handle, &all).await?;
            assert_eq!(alice.handle.heads(), bob.handle.heads());
            alice.client.shutdown().await?;
            bob.client.shutdown().await?;
            anyhow::Ok(())
        })?;
        server.kill()?;
    }
    Ok(())
}
