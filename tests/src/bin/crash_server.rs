//! A server process for the socket crash tests: `crash-server DATA_DIR ADDR` serves the log in
//! DATA_DIR with fsync durability (the default) and prints `LISTENING <ws-url>` once bound.
//! The parent kills it with SIGKILL while clients write.

use std::io::Write;

use anyhow::Context;
use converge_server::ServerConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: crash-server DATA_DIR ADDR";
    let data_dir = args.next().context(usage)?;
    let addr = args.next().context(usage)?.parse()?;
    let server = converge_server::start(ServerConfig {
        addr,
        data_dir: data_dir.into(),
        ..ServerConfig::default()
    })
    .await?;
    let mut out = std::io::stdout();
    writeln!(out, "LISTENING {}", server.ws_url())?;
    out.flush()?;
    server.wait().await?;
    Ok(())
}
