//! Server settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use converge_core::{HubConfig, Mutators};

use crate::auth::AuthConfig;
use converge_log::Durability;

/// Everything `converge serve` can set.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub addr: SocketAddr,
    /// The sled log lives here (created if missing).
    pub data_dir: PathBuf,
    pub durability: Durability,
    pub hub: HubConfig,
    /// WebSocket read buffer per connection, also the most read per read call. axum's default
    /// (128 KiB) makes an idle connection cost ~108 KiB. Measured with `converge bench idle`
    /// (10k connections): 4 KiB -> 9.5 KiB RSS per idle connection, 1 KiB -> 6.7 KiB; 512
    /// bytes save another ~0.5 KiB and still hold a Hello with a typical JWT. A larger frame
    /// grows the buffer to its length once its header is read; only the number of read calls
    /// per large frame grows.
    pub ws_read_buffer: usize,
    /// WebSocket write buffer per connection (frames are written through at once).
    pub ws_write_buffer: usize,
    /// The mutators clients may call (`converge serve` registers converge-schema's).
    pub mutators: Mutators,
    /// Who may connect: [`AuthConfig::Dev`] (the token is the user id, unverified) by
    /// default for embedding and tests; `converge serve` always runs JWT.
    pub auth: AuthConfig,
    /// How long notifications stay in an inbox, and how many (read low-priority ones go
    /// first); applied at each delivery.
    pub inbox_retention: converge_schema::Retention,
    /// Writes per second one user may make over the HTTP API (mutations, inbox, publish),
    /// with a burst of twice that; beyond it the answer is 429 `RateLimited`. Each such
    /// write is a log record, so it is bounded like a connection's messages.
    pub http_writes_per_sec: u32,
    /// Connections at once that have not upgraded to a WebSocket (request head not yet
    /// read, or an HTTP API request in progress); a connection over this is closed at once.
    pub max_http_connections: usize,
    /// How long a request's head may take to arrive before the connection is closed (a
    /// peer that connects and sends nothing, or trickles its headers).
    pub http_header_timeout: std::time::Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            addr: SocketAddr::from(([127, 0, 0, 1], 7070)),
            data_dir: PathBuf::from("converge-data"),
            durability: Durability::Fsync,
            hub: HubConfig::default(),
            ws_read_buffer: 512,
            ws_write_buffer: 0,
            mutators: Mutators::new(),
            auth: AuthConfig::Dev,
            inbox_retention: converge_schema::Retention::default(),
            http_writes_per_sec: 20,
            max_http_connections: 4096,
            http_header_timeout: std::time::Duration::from_secs(10),
        }
    }
}
