//! The executor's blocking work is bounded: a burst waits its turn.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use converge_log::{Log, LogConfig, MemStorage};
use converge_server::LogExecutor;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn executor_work_runs_at_most_its_limit_at_once() {
    let log = Arc::new(Log::open_in_memory(&MemStorage::new(), LogConfig::default()).unwrap());
    let exec = LogExecutor::new(log);
    let running = Arc::new(AtomicUsize::new(0));
    let most = Arc::new(AtomicUsize::new(0));
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let exec = exec.clone();
            let (running, most) = (running.clone(), most.clone());
            tokio::spawn(async move {
                exec.blocking(move |_| {
                    let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(now, Ordering::SeqCst);
                    std::thread::sleep(std::time::Duration::from_millis(2));
                    running.fetch_sub(1, Ordering::SeqCst);
                    i
                })
                .await
            })
        })
        .collect();
    let mut done = Vec::new();
    for t in tasks {
        done.push(t.await.unwrap().unwrap());
    }
    assert_eq!(done, (0..200).collect::<Vec<_>>(), "every task ran once");
    let most = most.load(Ordering::SeqCst);
    assert!(
        most <= LogExecutor::blocking_limit(),
        "{most} ran at once, the limit is {}",
        LogExecutor::blocking_limit()
    );
    assert!(most >= 2, "the work ran one at a time ({most})");
}
