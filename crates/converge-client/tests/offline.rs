//! A client with no server: it reports being offline, keeps retrying, and everything changed
//! meanwhile is stored and back after a restart.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use automerge::transaction::Transactable;
use automerge::{AutoCommit, ROOT, ReadDoc};
use converge_client::{Client, ClientConfig, ClientError, Status, StoreError};
use futures_util::{Stream, StreamExt};

/// A `ws://` URL on a local port where nothing listens.
fn dead_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("ws://127.0.0.1:{port}/ws")
}

/// Waits (bounded) for the first status that matches.
async fn wait_status(
    statuses: &mut (impl Stream<Item = Status> + Unpin),
    want: impl Fn(&Status) -> bool,
) -> Status {
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(s) = statuses.next().await {
            if want(&s) {
                return s;
            }
        }
        panic!("the status stream ended");
    })
    .await
    .expect("status in time")
}

fn get(doc: &AutoCommit, key: &str) -> Option<String> {
    doc.get(ROOT, key)
        .unwrap()
        .and_then(|(v, _)| v.into_string().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_edits_are_stored_and_back_after_a_restart() {
    let url = dead_url();
    let dir = tempfile::tempdir().unwrap();
    let client = Client::connect(&url, None, dir.path()).await.unwrap();
    let client_id = client.client_id();
    let mut statuses = client.status_stream().boxed();
    let offline = wait_status(&mut statuses, |s| matches!(s, Status::Offline { .. })).await;
    assert!(matches!(offline, Status::Offline { .. }));

    let (doc, ()) = client
        .create_doc(|d| {
            d.put(ROOT, "title", "Ward 3").unwrap();
        })
        .await
        .unwrap();
    assert_eq!(doc.pending_count(), 1);
    doc.change(|d| d.put(ROOT, "shift", "night"))
        .unwrap()
        .unwrap();
    assert_eq!(doc.pending_count(), 2);
    assert!(!doc.is_confirmed());
    assert_eq!(client.metrics().pending, 2);
    assert_eq!(doc.position(), None);
    let (id, heads) = (doc.id(), doc.heads());
    drop(doc);
    drop(client);

    let client = Client::connect(&url, None, dir.path()).await.unwrap();
    assert_eq!(client.client_id(), client_id);
    assert_eq!(client.stored_docs().unwrap(), vec![id]);
    let doc = client.doc(id).await.unwrap();
    assert_eq!(doc.pending_count(), 2);
    assert_eq!(client.metrics().pending, 2);
    assert_eq!(doc.heads(), heads);
    doc.read(|d| {
        assert_eq!(get(d, "title").as_deref(), Some("Ward 3"));
        assert_eq!(get(d, "shift").as_deref(), Some("night"));
    });
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_circuit_opens_after_consecutive_failures() {
    let dir = tempfile::tempdir().unwrap();
    let config = ClientConfig::default()
        .with_backoff(Duration::from_millis(1), Duration::from_millis(5))
        .with_breaker(3, Duration::from_secs(60));
    let client = Client::connect_with(&dead_url(), None, dir.path(), config)
        .await
        .unwrap();
    let mut statuses = client.status_stream().boxed();
    let open = wait_status(&mut statuses, |s| matches!(s, Status::CircuitOpen { .. })).await;
    let Status::CircuitOpen { until } = open else {
        unreachable!()
    };
    assert!(until > std::time::SystemTime::now() + Duration::from_secs(30));
    assert_eq!(
        client.metrics().reconnects,
        2,
        "three attempts, two of them retries"
    );
    client.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_second_client_on_the_same_store_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let url = dead_url();
    let first = Client::connect(&url, None, dir.path()).await.unwrap();
    let mut config = ClientConfig::default();
    config.store_lock_wait = Duration::ZERO;
    let second = Client::connect_with(&url, None, dir.path(), config).await;
    assert!(matches!(
        second,
        Err(ClientError::Store(StoreError::Locked(_)))
    ));
    first.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_url_that_is_not_websocket_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let r = Client::connect("http://127.0.0.1:1/ws", None, dir.path()).await;
    assert!(matches!(r, Err(ClientError::InvalidUrl { .. })));
}

#[tokio::test]
async fn a_panicking_change_leaves_the_document_as_it_was() {
    let dir = tempfile::tempdir().unwrap();
    let client = Client::connect(&dead_url(), None, dir.path())
        .await
        .unwrap();
    let doc = client.doc(converge_client::DocId::random()).await.unwrap();
    let heads = doc.heads();
    let d2 = doc.clone();
    let panicked = std::thread::spawn(move || {
        let _ = d2.change(|d| {
            d.put(ROOT, "half", "done").unwrap();
            panic!("the app's closure failed");
        });
    })
    .join();
    assert!(panicked.is_err());
    assert_eq!(doc.heads(), heads);
    assert_eq!(doc.pending_count(), 0);
    doc.change(|d| d.put(ROOT, "whole", "yes"))
        .unwrap()
        .unwrap();
    doc.read(|d| {
        assert_eq!(get(d, "half"), None);
        assert_eq!(get(d, "whole").as_deref(), Some("yes"));
    });
    client.shutdown().await.unwrap();
}
