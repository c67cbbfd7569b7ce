//! A burst of subscribers over real sockets does not start a thread each on the server.
//!
//! Alone in its file: it reads the process's thread count, which tests running beside it
//! would disturb.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use converge_proto::*;
use converge_server::LogExecutor;

fn threads() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_subscribers_does_not_start_a_thread_each() {
    let server = server().await;
    let url = server.handle.ws_url();
    let doc = DocId::random();
    let mut writer = hello(&url, "writer").await;
    subscribe(&mut writer, doc, None).await;
    let before = threads();
    // Each subscriber's catch-up waits for a flush and reads the log on the blocking pool.
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
    let after = threads();
    // At most the executor's own threads (already started by the writer's catch-up), plus a
    // few the runtime may start on its own.
    let allowed = LogExecutor::blocking_limit() + 4;
    assert!(
        after.saturating_sub(before) <= allowed,
        "{n} subscribers started {} threads ({before} -> {after}); at most {allowed} expected",
        after.saturating_sub(before)
    );
}
