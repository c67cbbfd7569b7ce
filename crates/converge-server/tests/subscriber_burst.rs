//! A burst of subscribers over real sockets does not start a thread each on the server.
//!
//! Alone in its file: it reads the process's thread count, which tests running beside it
//! would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use converge_proto::*;
use converge_server::LogExecutor;

/// This process's threads whose name starts with `prefix` (names are cut at 15 bytes).
fn threads(prefix: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .flatten()
        .filter(|t| {
            std::fs::read_to_string(t.path().join("comm"))
                .is_ok_and(|name| name.starts_with(prefix))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_subscribers_does_not_start_a_thread_each() {
    let server = server().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut writer = hello(&url, "writer").await;
    subscribe(&mut writer, doc, None).await;
    // The executor's threads are running (the writer's catch-up started them).
    let tokio_before = threads("tokio");
    // Each subscriber's catch-up waits for a flush and reads the log off the async workers.
    let n = 300;
    let conns = futures_util::future::join_all((0..n).map(|i| {
        let url = url.clone();
        async move {
            let mut ws = hello(&url, &format!("reader{i}")).await;
            subscribe(&mut ws, doc, None).await;
            ws
        }
    }))
    .await;
    assert_eq!(conns.len(), n);
    let work = threads("converge-work");
    let tokio_started = threads("tokio").saturating_sub(tokio_before);
    assert!(
        work <= LogExecutor::blocking_limit(),
        "{work} work threads; the limit is {}",
        LogExecutor::blocking_limit()
    );
    // tokio's blocking pool starts a thread per task that finds none idle: the burst must
    // not go there (it started 140 threads when it did).
    assert!(
        tokio_started <= 2,
        "{n} subscribers started {tokio_started} tokio threads"
    );
}
