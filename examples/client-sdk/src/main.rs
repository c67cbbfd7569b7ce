//! Embedding converge's client SDK: connect, open (or create) a schedule, change it, wait for
//! the server to make the change durable, print the document as JSON.
//!
//! Run: `cargo run --release -- serve` in one terminal, then, in another,
//! `CONVERGE_TOKEN=$(cargo run --release -- token --user alice | tail -1) cargo run -p client-sdk`
//! (or add a URL: `cargo run -p client-sdk -- ws://HOST:PORT/ws`). The change is stored first,
//! so it also works with no server: it then waits up to 10 s, says so, and pushes next time.
use std::time::Duration;

use converge_client::Client;
use converge_schema::{Event, Schedule, create, to_json, update};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url = std::env::args()
        .nth(1)
        .unwrap_or("ws://127.0.0.1:7070/ws".into());
    let store = std::env::temp_dir().join("converge-client-sdk");
    // The server checks JWTs: `converge token` mints one with the server's secret.
    let token = std::env::var("CONVERGE_TOKEN").ok();
    let client = Client::connect(&url, token, &store).await?;

    // The store remembers documents across runs: reuse the first one, or create a schedule.
    let doc = match client.stored_docs()?.first() {
        Some(id) => client.doc(*id).await?,
        None => {
            let schedule = Schedule::new("Ward 3", "Europe/Paris");
            let (doc, created) = client.create_doc(|d| create(d, &schedule)).await?;
            created?;
            doc
        }
    };
    let n = doc.change(|d| {
        update(d, |s: &mut Schedule| {
            let n = s.events.len();
            s.events.insert(
                format!("e{n}"),
                Event::new("Night shift", "bed-1", 0, 3_600_000),
            );
            n + 1
        })
    })??;
    println!(
        "{} has {n} event(s); {} change(s) pending",
        doc.id(),
        doc.pending_count()
    );

    match tokio::time::timeout(Duration::from_secs(10), doc.wait_until_confirmed()).await {
        Ok(()) => println!("confirmed by {url}"),
        Err(_) => println!(
            "not confirmed yet ({:?}); the change waits in {}",
            client.status(),
            store.display()
        ),
    }
    println!("{}", serde_json::to_string_pretty(&doc.read(to_json))?);
    client.shutdown().await?;
    Ok(())
}
