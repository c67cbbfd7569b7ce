//! A connection flooding the server is throttled with `RateLimited`, and another
//! connection's round trip stays within 2x of its unloaded value (a ratio, measured here).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use converge_proto::*;
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::Message;

/// Median Ping -> Pong time over `n` round trips.
async fn median_rtt(ws: &mut Ws, n: u64, base: u64) -> Duration {
    let mut v = Vec::new();
    for i in 0..n {
        let t = Instant::now();
        send(ws, &ClientMsg::Ping { nonce: base + i }).await;
        loop {
            if let ServerMsg::Pong { nonce, .. } = recv(ws).await
                && nonce == base + i
            {
                break;
            }
        }
        v.push(t.elapsed());
    }
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_throttled_and_others_keep_their_round_trip() {
    let server = server().await;
    let url = server.handle.ws_url();
    let mut calm = hello(&url, "calm").await;
    let unloaded = median_rtt(&mut calm, 200, 0).await;

    let mut flood = hello(&url, "flood").await;
    let frame = encode_client(&ClientMsg::Ping { nonce: 7 }).unwrap();
    // Far over the limit (500/s, burst 1,000), as fast as the socket takes it.
    let flooding = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(2);
        let mut sent = 0u64;
        while Instant::now() < deadline {
            if flood
                .send(Message::Binary(frame.clone().into()))
                .await
                .is_err()
            {
                break;
            }
            sent += 1;
        }
        (flood, sent)
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let loaded = median_rtt(&mut calm, 200, 1_000).await;
    let (mut flood, sent) = flooding.await.unwrap();
    assert!(sent > 2_000, "the flood sent {sent} messages");
    // The flooder was told, with the documented code.
    let limited = loop {
        match recv(&mut flood).await {
            ServerMsg::Error { code, .. } => break code,
            _ => continue,
        }
    };
    assert_eq!(limited, ErrorCode::RateLimited);
    let ratio = loaded.as_secs_f64() / unloaded.as_secs_f64();
    println!("round trip unloaded {unloaded:?}, during the flood {loaded:?}: {ratio:.2}x");
    assert!(ratio <= 2.0, "round trip {ratio:.2}x its unloaded value");
}
