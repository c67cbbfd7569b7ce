//! converge-server: the tokio + axum shell around converge-core's [`converge_core::Hub`].
//!
//! - `GET /ws`: the native sync protocol (docs/protocol.md), one task per connection, small
//!   explicit WebSocket buffers;
//! - `GET /healthz` (the process is up) and `GET /readyz` (the hub serves and is not shutting
//!   down);
//! - the log is a [`converge_log::SledLog`]; appends run on one writer thread in hub order and
//!   are acknowledged after the group-commit flush that makes them durable.
//!
//! ```no_run
//! # async fn run() -> Result<(), converge_server::ServerError> {
//! let server = converge_server::start(converge_server::ServerConfig::default()).await?;
//! println!("serving on {}", server.ws_url());
//! server.shutdown().await
//! # }
//! ```

mod accept;
pub mod auth;
mod config;
mod connection;
mod docs_api;
mod executor;
mod http;
mod hub_task;
mod metrics;
mod notify;
mod outbox;
mod server;
mod workers;

pub use config::ServerConfig;

/// Locks a mutex, taking the data even if a panicking thread poisoned it (every critical
/// section here leaves its data consistent).
fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
pub use executor::{FIRST_EPOCH, LogExecutor, refusal};
pub use server::{ServerError, ServerHandle, start, start_with_log};
