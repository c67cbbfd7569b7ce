//! Prometheus metrics for `/metrics` (series prefixed `converge_`; docs/operations.md lists
//! them).
//!
//! Each server owns its recorder instead of installing a global one, so several servers in one
//! process (tests, embedders) keep apart. Every series is registered up front (a handle per
//! message kind, per error code), so recording is an atomic add on the hub task: no lookups,
//! no allocation on the hot path.

use std::collections::HashMap;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use converge_proto::{
    ClientMsg, ErrorCode, MutationOutcome, ServerMsg, client_frame_kind, decode_server,
    server_frame_kind,
};

/// Latency buckets in seconds: 100 us to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

const META: Metadata<'static> = Metadata::new("converge", Level::INFO, Some(module_path!()));

/// The server's metrics.
pub(crate) struct Metrics {
    handle: PrometheusHandle,
    connections: Gauge,
    in_msgs: HashMap<&'static str, Counter>,
    in_bytes: Counter,
    out_msgs: HashMap<&'static str, Counter>,
    out_bytes: Counter,
    errors: HashMap<u16, Counter>,
    mutations_applied: Counter,
    mutations_rejected: HashMap<u16, Counter>,
    lock_grants: Counter,
    notifications: Counter,
    events: Counter,
    append_seconds: Histogram,
    fanout_seconds: Histogram,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Metrics {
    pub(crate) fn new() -> Self {
        let recorder: PrometheusRecorder = match PrometheusBuilder::new().set_buckets(BUCKETS) {
            Ok(b) => b.build_recorder(),
            // Only an empty bucket list is refused; ours is not. Fall back to summaries.
            Err(_) => PrometheusBuilder::new().build_recorder(),
        };
        let counter = |name: &'static str, help: &'static str, labels: Vec<Label>| {
            recorder.describe_counter(KeyName::from_const_str(name), None, help.into());
            recorder.register_counter(&Key::from_parts(name, labels), &META)
        };
        let by_kind = |name: &'static str, help: &'static str, kinds: &[&'static str]| {
            kinds
                .iter()
                .map(|k| (*k, counter(name, help, vec![Label::new("type", *k)])))
                .collect::<HashMap<_, _>>()
        };
        let by_code = |name: &'static str, help: &'static str| {
            ErrorCode::ALL
                .iter()
                .map(|c| {
                    let labels = vec![
                        Label::new("code", c.code().to_string()),
                        Label::new("error", c.name()),
                    ];
                    (c.code(), counter(name, help, labels))
                })
                .collect::<HashMap<_, _>>()
        };
        let histogram = |name: &'static str, help: &'static str| {
            recorder.describe_histogram(
                KeyName::from_const_str(name),
                Some(Unit::Seconds),
                help.into(),
            );
            recorder.register_histogram(&Key::from_name(name), &META)
        };
        recorder.describe_gauge(
            KeyName::from_const_str("converge_connections"),
            None,
            "WebSocket connections open".into(),
        );
        let connections = recorder.register_gauge(&Key::from_name("converge_connections"), &META);
        Metrics {
            connections,
            in_msgs: by_kind(
                "converge_messages_in_total",
                "Protocol messages received, by type",
                &ClientMsg::KINDS,
            ),
            in_bytes: counter(
                "converge_bytes_in_total",
                "Bytes of protocol frames received",
                vec![],
            ),
            out_msgs: by_kind(
                "converge_messages_out_total",
                "Protocol messages sent, by type (a fan-out counts once per recipient)",
                &ServerMsg::KINDS,
            ),
            out_bytes: counter(
                "converge_bytes_out_total",
                "Bytes of protocol frames sent",
                vec![],
            ),
            errors: by_code(
                "converge_errors_total",
                "Error messages sent to clients, by code",
            ),
            mutations_applied: counter(
                "converge_mutations_total",
                "Mutations decided, by outcome",
                vec![Label::new("outcome", "applied")],
            ),
            mutations_rejected: by_code(
                "converge_mutations_rejected_total",
                "Mutations rejected, by code",
            ),
            lock_grants: counter("converge_lock_grants_total", "Locks granted", vec![]),
            notifications: counter(
                "converge_notifications_total",
                "Notifications written to inboxes",
                vec![],
            ),
            events: counter(
                "converge_events_published_total",
                "Events published to rooms",
                vec![],
            ),
            append_seconds: histogram(
                "converge_append_seconds",
                "From handing a write to the log to its durability",
            ),
            fanout_seconds: histogram(
                "converge_fanout_seconds",
                "From a write's durability to its frames being queued for every subscriber",
            ),
            handle: recorder.handle(),
        }
    }

    /// The Prometheus text exposition.
    pub(crate) fn render(&self) -> String {
        self.handle.run_upkeep();
        self.handle.render()
    }

    pub(crate) fn connected(&self) {
        self.connections.increment(1.0);
    }

    pub(crate) fn disconnected(&self) {
        self.connections.decrement(1.0);
    }

    pub(crate) fn frame_in(&self, frame: &[u8]) {
        self.in_bytes.increment(frame.len() as u64);
        if let Some(c) = client_frame_kind(frame).and_then(|k| self.in_msgs.get(k)) {
            c.increment(1);
        }
    }

    pub(crate) fn frame_out(&self, frame: &[u8]) {
        self.out_bytes.increment(frame.len() as u64);
        let kind = server_frame_kind(frame);
        if let Some(c) = kind.and_then(|k| self.out_msgs.get(k)) {
            c.increment(1);
        }
        // Errors are rare: decoding one for its code costs nothing that matters.
        if kind == Some("error")
            && let Ok(ServerMsg::Error { code, .. }) = decode_server(frame, frame.len())
            && let Some(c) = self.errors.get(&code.code())
        {
            c.increment(1);
        }
    }

    pub(crate) fn mutation(&self, outcome: &MutationOutcome) {
        match outcome {
            MutationOutcome::Applied { .. } => self.mutations_applied.increment(1),
            MutationOutcome::Rejected { code, .. } => {
                if let Some(c) = self.mutations_rejected.get(&code.code()) {
                    c.increment(1);
                }
            }
        }
    }

    pub(crate) fn lock_granted(&self, n: u64) {
        self.lock_grants.increment(n);
    }

    pub(crate) fn notified(&self, n: u64) {
        self.notifications.increment(n);
    }

    /// Events are counted by the hub (sessions publish there too); set at each scrape.
    pub(crate) fn set_published(&self, total: u64) {
        self.events.absolute(total);
    }

    pub(crate) fn append_took(&self, d: Duration) {
        self.append_seconds.record(d.as_secs_f64());
    }

    pub(crate) fn fanout_took(&self, d: Duration) {
        self.fanout_seconds.record(d.as_secs_f64());
    }
}
