#![allow(clippy::unwrap_used, clippy::expect_used)]
use automerge::transaction::Transactable;
use automerge::{ROOT, ReadDoc};
use converge_client::{Client, ClientConfig, DocEvent, Status};
use futures_util::StreamExt;
use std::time::Duration;

async fn wait_online(c: &Client) {
    let mut s = c.status_stream().boxed();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(st) = s.next().await {
            if st == Status::Online {
                return;
            }
        }
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_two_clients() {
    let url = "ws://127.0.0.1:7070/ws";
    let d1 = tempfile::tempdir().unwrap();
    let d2 = tempfile::tempdir().unwrap();
    let cfg = ClientConfig::default().with_heartbeat(Duration::from_millis(100), None);
    let a = Client::connect_with(url, Some("alice".into()), d1.path(), cfg.clone())
        .await
        .unwrap();
    wait_online(&a).await;
    let (doc_a, _) = a.create_doc(|d| d.put(ROOT, "title", "x")).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), doc_a.wait_until_confirmed())
        .await
        .unwrap();
    println!("a pos {:?}", doc_a.position());
    let b = Client::connect_with(url, Some("bob".into()), d2.path(), cfg)
        .await
        .unwrap();
    let doc_b = b.doc(doc_a.id()).await.unwrap();
    let mut ev = doc_b.subscribe_changes().boxed();
    tokio::time::timeout(
        Duration::from_secs(5),
        doc_b.wait_for(|d| d.get(ROOT, "title").unwrap().is_some()),
    )
    .await
    .unwrap();
    println!("b first event {:?}", ev.next().await);
    for i in 0..300 {
        doc_a
            .change(|d| d.put(ROOT, format!("k{i}"), i as i64))
            .unwrap()
            .unwrap();
        if i % 7 == 0 {
            doc_b
                .change(|d| d.put(ROOT, format!("b{i}"), i as i64))
                .unwrap()
                .unwrap();
        }
    }
    tokio::time::timeout(Duration::from_secs(20), doc_a.wait_until_confirmed())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(20), doc_b.wait_until_confirmed())
        .await
        .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        doc_b.wait_for(|d| d.get(ROOT, "k299").unwrap().is_some()),
    )
    .await
    .unwrap();
    tokio::time::timeout(
        Duration::from_secs(20),
        doc_a.wait_for(|d| d.get(ROOT, "b294").unwrap().is_some()),
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(doc_a.heads(), doc_b.heads());
    println!(
        "a {:?} {:?}\nb {:?} {:?}",
        a.metrics(),
        doc_a.position(),
        b.metrics(),
        doc_b.position()
    );
    let _ = DocEvent::Acked { count: 0 };
    drop((doc_a, doc_b));
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
