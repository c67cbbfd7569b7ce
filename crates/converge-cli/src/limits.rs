//! `converge serve`'s abuse limits: each flag (or CONVERGE_* variable) overrides one default
//! of converge-server (docs/operations.md lists them and the code each breach gets).

use converge_core::Rate;
use converge_server::ServerConfig;

#[derive(Debug, Clone, clap::Args)]
pub(crate) struct LimitArgs {
    /// Documents one connection may subscribe to (default 1024).
    #[arg(long, env = "CONVERGE_MAX_DOCS_PER_CONNECTION")]
    max_docs_per_connection: Option<u32>,
    /// Connections one user may have open (default 64).
    #[arg(long, env = "CONVERGE_MAX_CONNECTIONS_PER_USER")]
    max_connections_per_user: Option<u32>,
    /// Messages per second per connection (default 500, burst twice that).
    #[arg(long, env = "CONVERGE_MESSAGES_PER_SEC")]
    messages_per_sec: Option<u32>,
    /// Messages per second per user over all their connections (default 2000, burst twice).
    #[arg(long, env = "CONVERGE_USER_MESSAGES_PER_SEC")]
    user_messages_per_sec: Option<u32>,
    /// Publishes per second per connection (default 50, burst twice that).
    #[arg(long, env = "CONVERGE_PUBLISHES_PER_SEC")]
    publishes_per_sec: Option<u32>,
    /// Publishes per second per user (default 100, burst twice that).
    #[arg(long, env = "CONVERGE_USER_PUBLISHES_PER_SEC")]
    user_publishes_per_sec: Option<u32>,
    /// Largest presence state in bytes (default 4096).
    #[arg(long, env = "CONVERGE_MAX_PRESENCE_BYTES")]
    max_presence_bytes: Option<usize>,
    /// Largest event data in bytes (default 65536).
    #[arg(long, env = "CONVERGE_MAX_EVENT_BYTES")]
    max_event_bytes: Option<usize>,
    /// Notifications kept per inbox (default 500; read low-priority ones go first).
    #[arg(long, env = "CONVERGE_INBOX_MAX_ITEMS")]
    inbox_max_items: Option<usize>,
    /// Days a notification stays in an inbox (default 30).
    #[arg(long, env = "CONVERGE_INBOX_MAX_AGE_DAYS")]
    inbox_max_age_days: Option<u64>,
    /// Writes per second one user may make over the HTTP API: mutations, inbox, publish
    /// (default 20, burst twice that).
    #[arg(long, env = "CONVERGE_HTTP_WRITES_PER_SEC")]
    http_writes_per_sec: Option<u32>,
    /// Connections at once that have not upgraded to a WebSocket (default 4096); one over
    /// it is closed at once.
    #[arg(long, env = "CONVERGE_MAX_HTTP_CONNECTIONS")]
    max_http_connections: Option<usize>,
    /// Seconds a request's head may take to arrive (default 10).
    #[arg(long, env = "CONVERGE_HTTP_HEADER_TIMEOUT_SECS")]
    http_header_timeout_secs: Option<u64>,
}

/// A rate with a burst of twice the rate (at least 1).
fn rate(per_sec: u32) -> Rate {
    Rate {
        per_sec: per_sec.max(1),
        burst: per_sec.saturating_mul(2).max(1),
    }
}

impl LimitArgs {
    pub(crate) fn apply(&self, c: &mut ServerConfig) {
        let h = &mut c.hub;
        if let Some(n) = self.max_docs_per_connection {
            h.limits.max_docs = n.max(1);
        }
        if let Some(n) = self.max_connections_per_user {
            h.max_connections_per_user = n.max(1);
        }
        if let Some(n) = self.messages_per_sec {
            let r = rate(n);
            (h.messages_per_sec, h.message_burst) = (r.per_sec, r.burst);
        }
        if let Some(n) = self.user_messages_per_sec {
            h.user_message_rate = rate(n);
        }
        if let Some(n) = self.publishes_per_sec {
            h.publish_rate = rate(n);
        }
        if let Some(n) = self.user_publishes_per_sec {
            h.user_publish_rate = rate(n);
        }
        if let Some(n) = self.max_presence_bytes {
            h.max_presence_bytes = n;
        }
        if let Some(n) = self.max_event_bytes {
            h.max_event_bytes = n;
        }
        if let Some(n) = self.inbox_max_items {
            c.inbox_retention.max_items = n.max(1);
        }
        if let Some(days) = self.inbox_max_age_days {
            c.inbox_retention.max_age_ms = days.saturating_mul(24 * 3600 * 1000);
        }
        if let Some(n) = self.http_writes_per_sec {
            c.http_writes_per_sec = n.max(1);
        }
        if let Some(n) = self.max_http_connections {
            c.max_http_connections = n.max(1);
        }
        if let Some(secs) = self.http_header_timeout_secs {
            c.http_header_timeout = std::time::Duration::from_secs(secs.max(1));
        }
    }
}
