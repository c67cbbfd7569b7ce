//! `converge serve`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use converge_log::Durability;
use converge_server::ServerConfig;

pub(crate) struct Options {
    pub(crate) addr: SocketAddr,
    pub(crate) data: PathBuf,
    pub(crate) buffered: bool,
    pub(crate) flush_every_ms: u64,
    pub(crate) max_frame_bytes: usize,
    pub(crate) jwt: crate::token::JwtArgs,
    pub(crate) limits: crate::limits::LimitArgs,
}

pub(crate) fn run(opts: Options) -> anyhow::Result<ExitCode> {
    let mut config = ServerConfig {
        addr: opts.addr,
        data_dir: opts.data,
        durability: if opts.buffered {
            Durability::Buffered {
                every: Duration::from_millis(opts.flush_every_ms.max(1)),
            }
        } else {
            Durability::Fsync
        },
        ..ServerConfig::default()
    };
    // Never open by accident: JWT always, with a secret created in the data directory when
    // none is configured.
    config.auth = crate::token::server_auth(&opts.jwt, &config.data_dir)?;
    // The mutators of converge-schema: what the bundled document types are edited with.
    converge_schema::register_all(&mut config.mutators);
    config.hub.limits.max_frame_bytes =
        opts.max_frame_bytes
            .clamp(4096, converge_proto::MAX_FRAME_CEILING) as u32;
    opts.limits.apply(&mut config);
    let runtime = tokio::runtime::Runtime::new().context("starting the runtime")?;
    runtime.block_on(async move {
        let data = config.data_dir.display().to_string();
        let server = converge_server::start(config).await?;
        // The test suite and scripts read this line to find the port when --addr ends in :0.
        println!("converge listening on {} (data: {data})", server.ws_url());
        std::io::Write::flush(&mut std::io::stdout()).context("writing to stdout")?;
        stop_signal().await;
        tracing::info!("shutting down");
        server.shutdown().await?;
        Ok(ExitCode::SUCCESS)
    })
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
