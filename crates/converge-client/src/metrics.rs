//! Connection metrics: heartbeat round trips, reconnects, bytes.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::lock;

/// Round trips kept for the percentile: enough for a stable p99, small enough to sort on read.
const RTT_WINDOW: usize = 512;

/// Weight of the newest sample in the moving average.
const EWMA_ALPHA: f64 = 0.2;

/// A copy of the client's metrics at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct MetricsSnapshot {
    /// Exponentially weighted moving average of heartbeat round trips (0 before the first Pong).
    pub rtt_ewma_ms: f64,
    /// 99th percentile of the last 512 heartbeat round trips (nearest rank; 0 before any).
    pub rtt_p99_ms: f64,
    /// Connection attempts after the first one.
    pub reconnects: u64,
    /// WebSocket payload bytes written.
    pub bytes_sent: u64,
    /// WebSocket payload bytes read.
    pub bytes_received: u64,
    /// Local changes not yet acknowledged, over all open documents.
    pub pending: usize,
}

#[derive(Debug, Default)]
struct Rtt {
    ewma: Option<f64>,
    window: VecDeque<u64>,
}

/// The live counters, shared by the connection task and the SDK.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    rtt: Mutex<Rtt>,
    pub(crate) reconnects: AtomicU64,
    pub(crate) bytes_sent: AtomicU64,
    pub(crate) bytes_received: AtomicU64,
}

impl Metrics {
    pub(crate) fn record_rtt(&self, ms: u64) {
        let mut rtt = lock(&self.rtt);
        let sample = ms as f64;
        rtt.ewma = Some(match rtt.ewma {
            Some(avg) => avg + EWMA_ALPHA * (sample - avg),
            None => sample,
        });
        if rtt.window.len() == RTT_WINDOW {
            rtt.window.pop_front();
        }
        rtt.window.push_back(ms);
    }

    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self, pending: usize) -> MetricsSnapshot {
        let rtt = lock(&self.rtt);
        MetricsSnapshot {
            rtt_ewma_ms: rtt.ewma.unwrap_or(0.0),
            rtt_p99_ms: p99(&rtt.window),
            reconnects: self.reconnects.load(Ordering::Relaxed),
            bytes_sent: self.bytes_sent.load(Ordering::Relaxed),
            bytes_received: self.bytes_received.load(Ordering::Relaxed),
            pending,
        }
    }
}

/// Nearest-rank 99th percentile.
fn p99(window: &VecDeque<u64>) -> f64 {
    if window.is_empty() {
        return 0.0;
    }
    let mut sorted: Vec<u64> = window.iter().copied().collect();
    sorted.sort_unstable();
    let rank = (sorted.len() * 99).div_ceil(100);
    sorted[rank.saturating_sub(1)] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_is_the_nearest_rank() {
        let m = Metrics::default();
        for ms in 1..=100 {
            m.record_rtt(ms);
        }
        let s = m.snapshot(0);
        assert_eq!(s.rtt_p99_ms, 99.0);
        assert!(s.rtt_ewma_ms > 90.0 && s.rtt_ewma_ms < 100.0);
    }

    #[test]
    fn the_window_keeps_the_newest_samples() {
        let m = Metrics::default();
        m.record_rtt(10_000);
        for _ in 0..RTT_WINDOW {
            m.record_rtt(5);
        }
        assert_eq!(m.snapshot(0).rtt_p99_ms, 5.0);
    }

    #[test]
    fn empty_metrics_are_zero() {
        assert_eq!(
            Metrics::default().snapshot(3),
            MetricsSnapshot {
                pending: 3,
                ..MetricsSnapshot::default()
            }
        );
    }
}
