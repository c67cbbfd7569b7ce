//! A connection flooding the server is throttled: what it sends beyond its rate is dropped
//! before the hub, it is told `RateLimited`, it stays connected, and another connection keeps
//! getting every answer meanwhile.
//!
//! How much the flood slows the others is a measurement, not a test (a timed assertion on a
//! shared 2-core CI machine is noise): `converge bench flood`, figures in docs/benchmarks.md.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use converge_proto::*;
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

/// Ping -> Pong times of `n` round trips, one after the other.
async fn round_trips(ws: &mut Ws, n: u64, base: u64) -> Vec<Duration> {
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
    v
}

/// What the flooding connection saw, up to the Pong of its marker Ping.
#[derive(Default)]
struct Seen {
    pongs: u64,
    rate_limited: u64,
}

const MARKER: u64 = u64::MAX;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_connection_is_throttled_and_others_keep_being_served() {
    let server = server().await;
    let hub = converge_server::ServerConfig::default().hub;
    let (per_sec, burst) = (
        u64::from(hub.messages_per_sec),
        u64::from(hub.message_burst),
    );
    let url = server.handle.ws_url();
    let mut calm = hello(&url, "calm").await;
    let unloaded = round_trips(&mut calm, 200, 0).await;

    // Before the flooder's connection exists, so before its limiter starts counting.
    let started = Instant::now();
    let (mut flood_tx, mut flood_rx) = hello(&url, "flood").await.split();
    let (over_burst, past_burst) = tokio::sync::oneshot::channel();
    // Read the flooder's answers as they come, so its own socket never backs up.
    let reader = tokio::spawn(async move {
        let mut seen = Seen::default();
        let mut over_burst = Some(over_burst);
        loop {
            let next = tokio::time::timeout(WAIT, flood_rx.next())
                .await
                .expect("the flooder's marker Pong never came");
            let Some(Ok(Message::Binary(b))) = next else {
                panic!("the flooding connection ended: {next:?}");
            };
            match decode_server(&b, MAX_FRAME_CEILING).unwrap() {
                ServerMsg::Pong { nonce: MARKER, .. } => return seen,
                ServerMsg::Pong { .. } => seen.pongs += 1,
                ServerMsg::Error { code, .. } => {
                    assert_eq!(code, ErrorCode::RateLimited);
                    seen.rate_limited += 1;
                    if let Some(tell) = over_burst.take() {
                        let _ = tell.send(());
                    }
                }
                _ => {}
            }
        }
    });
    let stop = Arc::new(AtomicBool::new(false));
    let stopped = stop.clone();
    let flooding = tokio::spawn(async move {
        let frame = encode_client(&ClientMsg::Ping { nonce: 7 }).unwrap();
        let mut sent = 0u64;
        // As fast as the socket takes it, until the calm connection has its answers; at most
        // three bursts' worth: the server reads the rest at its rate, dropping what is over.
        while !stopped.load(Ordering::Relaxed) && sent < 3 * burst {
            flood_tx
                .send(Message::Binary(frame.clone().into()))
                .await
                .unwrap();
            sent += 1;
        }
        // The marker may itself be over the rate: send it again until it is answered.
        let marker = encode_client(&ClientMsg::Ping { nonce: MARKER }).unwrap();
        let mut retry = tokio::time::interval(Duration::from_millis(50));
        while !reader.is_finished() {
            retry.tick().await;
            flood_tx
                .send(Message::Binary(marker.clone().into()))
                .await
                .unwrap();
        }
        (sent, reader.await.unwrap())
    });
    // The calm connection measures again once the flood is over its burst (the flooder was
    // told). It stays well inside its own budget: 401 pings in all.
    tokio::time::timeout(WAIT, past_burst)
        .await
        .expect("the flood was never refused")
        .unwrap();
    let loaded = round_trips(&mut calm, 200, 2_000).await;
    stop.store(true, Ordering::Relaxed);
    let (sent, seen) = flooding.await.unwrap();
    let elapsed = started.elapsed().as_secs_f64();

    // What the server may answer in `elapsed`: its burst plus its rate (the limiter is exact;
    // a few for rounding).
    let allowed = burst + (per_sec as f64 * elapsed) as u64 + 5;
    println!(
        "flood: sent {sent}, answered {}, told {} times in {elapsed:.2} s (allowed {allowed}); \
         calm median round trip {:?} unloaded, {:?} during the flood",
        seen.pongs,
        seen.rate_limited,
        unloaded[unloaded.len() / 2],
        loaded[loaded.len() / 2],
    );
    assert!(
        seen.pongs <= allowed,
        "{} of {sent} flood pings were answered; the limit allows {allowed}",
        seen.pongs
    );
    assert!(seen.pongs < sent, "nothing over the limit was dropped");
    assert!(seen.rate_limited >= 1, "the flooder was never told");
    // Told, not flooded with errors: about once a second (by the connection's limiter, and
    // at most as often again by the hub's own backstop bucket).
    assert!(
        seen.rate_limited <= 2 * (elapsed.ceil() as u64 + 1),
        "told {} times in {elapsed:.2} s",
        seen.rate_limited
    );
    // The calm connection got every one of its answers during the flood (`round_trips`
    // waits for each); and the server still answers it now.
    assert_eq!(round_trips(&mut calm, 1, 9_000).await.len(), 1);
}
