//! A client process for the socket crash tests, built on the SDK.
//!
//! `crash-client edit STORE URL DOC FROM COUNT`: opens DOC from the client store at STORE
//! (connecting to URL in the background, which may be unreachable), makes COUNT changes that
//! set `e<i>` = i for i in FROM.., and prints `STORED <i>` once each change is in the store.
//! The parent kills it with SIGKILL at a random moment.
//!
//! `crash-client deliver STORE URL DOC`: reopens the store, waits until the server has
//! acknowledged every stored change, prints `CONFIRMED <pending-before>` and exits.

use std::io::Write;
use std::time::Duration;

use anyhow::{Context, bail};
use automerge::{ROOT, transaction::Transactable};
use converge_client::Client;
use converge_proto::DocId;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| {
        args.get(i)
            .context("usage: crash-client edit|deliver STORE URL DOC ...")
    };
    let (store, url, doc): (&str, &str, DocId) = (arg(1)?, arg(2)?, arg(3)?.parse()?);
    let client = Client::connect(url, Some("writer".into()), store).await?;
    let handle = client.doc(doc).await?;
    let mut out = std::io::stdout();
    match arg(0)?.as_str() {
        "edit" => {
            let from: u64 = arg(4)?.parse()?;
            let count: u64 = arg(5)?.parse()?;
            for i in from..from + count {
                handle.change(|d| d.put(ROOT, format!("e{i}"), i as i64))??;
                writeln!(out, "STORED {i}")?;
                out.flush()?;
            }
            // Stay alive (offline) until the parent kills us.
            tokio::time::sleep(Duration::from_secs(600)).await;
        }
        "deliver" => {
            let pending = handle.pending_count();
            tokio::time::timeout(Duration::from_secs(60), handle.wait_until_confirmed())
                .await
                .context("the server did not acknowledge the stored changes")?;
            writeln!(out, "CONFIRMED {pending}")?;
            out.flush()?;
            client.shutdown().await?;
        }
        other => bail!("unknown mode {other}"),
    }
    Ok(())
}
