#![allow(clippy::unwrap_used, clippy::expect_used)]
use automerge::transaction::Transactable;
use converge_client::{Client, ClientConfig, Status};
use futures_util::StreamExt;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_server_restart() {
    let url = "ws://127.0.0.1:7070/ws";
    let d1 = tempfile::tempdir().unwrap();
    let cfg = ClientConfig::default().with_breaker(5, Duration::from_secs(2));
    let a = Client::connect_with(url, None, d1.path(), cfg)
        .await
        .unwrap();
    let mut s = a.status_stream().boxed();
    let (doc, _) = a
        .create_doc(|d| d.put(automerge::ROOT, "title", "x"))
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), doc.wait_until_confirmed())
        .await
        .unwrap();
    std::fs::write("/tmp/cv-ready", "1").unwrap();
    let mut seen = vec![];
    tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(st) = s.next().await {
            seen.push(st.clone());
            if matches!(st, Status::Offline { .. } | Status::CircuitOpen { .. }) {
                return;
            }
        }
    })
    .await
    .unwrap();
    doc.change(|d| d.put(automerge::ROOT, "offline", true))
        .unwrap()
        .unwrap();
    assert_eq!(doc.pending_count(), 1);
    tokio::time::timeout(Duration::from_secs(40), doc.wait_until_confirmed())
        .await
        .unwrap();
    while let Some(Some(st)) = s.next().now_or_never() {
        seen.push(st);
    }
    println!("statuses {seen:?}\n{:?} {:?}", a.metrics(), doc.position());
    drop(doc);
    a.shutdown().await.unwrap();
}
use futures_util::FutureExt;
