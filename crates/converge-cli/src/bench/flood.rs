//! One connection floods the server far over its message rate while another does round
//! trips (`converge bench flood`): what the flood costs the others, as a ratio of the calm
//! connection's round trip during the flood to its round trip before it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::bail;
use converge_proto::{ClientMsg, ServerMsg};

use super::percentiles;
use super::wire::{Rx, ServerProc, Tx, connect, settle};

/// `n` Ping -> Pong round trips, one every 4 ms (an interactive client, well inside its own
/// rate limit), nonces from `base`.
async fn round_trips(tx: &mut Tx, rx: &mut Rx, n: u64, base: u64) -> anyhow::Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(n as usize);
    let mut tick = tokio::time::interval(Duration::from_millis(4));
    for nonce in base..base + n {
        tick.tick().await;
        let t = Instant::now();
        tx.send(&ClientMsg::Ping { nonce }).await?;
        loop {
            match rx.recv().await? {
                ServerMsg::Pong { nonce: got, .. } if got == nonce => break,
                ServerMsg::Error { code, message, .. } => {
                    bail!("calm connection: {code}: {message}")
                }
                _ => {}
            }
        }
        out.push(t.elapsed());
    }
    Ok(out)
}

pub(super) async fn flood(round_trip_count: u64) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let (mut ctx, mut crx) = connect(&server.url, "calm").await?;
    round_trips(&mut ctx, &mut crx, 50, 0).await?; // warm up
    let unloaded = round_trips(&mut ctx, &mut crx, round_trip_count, 1_000_000).await?;

    let (mut ftx, mut frx) = connect(&server.url, "flood").await?;
    let answered = Arc::new(AtomicU64::new(0));
    let counted = answered.clone();
    let reader = tokio::spawn(async move {
        while let Ok(msg) = frx.recv().await {
            if matches!(msg, ServerMsg::Pong { .. }) {
                counted.fetch_add(1, Ordering::Relaxed);
            }
        }
    });
    let sent = Arc::new(AtomicU64::new(0));
    let sending = sent.clone();
    // Sends until aborted: once the server stops reading it, a send waits for room.
    let flooder = tokio::spawn(async move {
        while ftx.send(&ClientMsg::Ping { nonce: 7 }).await.is_ok() {
            sending.fetch_add(1, Ordering::Relaxed);
        }
    });
    // Past the flood's burst allowance before measuring.
    settle().await;
    let cpu0 = server.cpu_seconds()?;
    let started = Instant::now();
    let loaded = round_trips(&mut ctx, &mut crx, round_trip_count, 2_000_000).await?;
    let secs = started.elapsed().as_secs_f64();
    let cpu = server.cpu_seconds()? - cpu0;
    let (sent, answered) = (
        sent.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed),
    );
    flooder.abort();
    reader.abort();

    let (u50, u99, _) = percentiles(unloaded);
    let (l50, l99, lmax) = percentiles(loaded);
    println!(
        "flood: calm round trip p50 {:.1} us p99 {:.1} us unloaded; during the flood p50 {:.1} us \
         ({:.2}x) p99 {:.1} us ({:.2}x) max {:.2} ms; the flooder sent {sent} pings, {answered} answered; \
         server CPU {:.0}% over {secs:.2} s",
        u50 * 1e3,
        u99 * 1e3,
        l50 * 1e3,
        l50 / u50,
        l99 * 1e3,
        l99 / u99,
        lmax,
        cpu * 100.0 / secs,
    );
    Ok(())
}
