//! The floor under server CPU per delivered change: what the kernel alone charges a sender
//! for writing one frame to each of N loopback TCP sockets, measured in the same run as the
//! server, the same way (a child process pinned to CPU 0, its CPU read from /proc).
//!
//! The sender is as plain as a server can be: one thread, blocking `write`s of a prepared
//! frame of the same size as the server's Changes frame, one per reader per change, at the
//! fan-out's rate; no framing, no tasks, no log. Whatever per-delivery CPU it needs, no
//! server that sends each reader its own copy over TCP can need less.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::wire::{pinned_command, proc_cpu_seconds};

/// The hidden `converge bench-floor` child: connects, waits for the go byte on every
/// socket, sends, then waits for the parent to close.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct FloorArgs {
    /// The parent's listener.
    #[arg(long)]
    sink: SocketAddr,
    /// Sockets (one per reader).
    #[arg(long)]
    conns: usize,
    /// Frames written to each socket.
    #[arg(long)]
    frames: usize,
    /// Frames per second.
    #[arg(long)]
    rate: u64,
    /// Bytes in one frame.
    #[arg(long)]
    frame_bytes: usize,
}

/// The child's side.
pub(crate) fn send(args: FloorArgs) -> anyhow::Result<()> {
    let mut socks = Vec::with_capacity(args.conns);
    for _ in 0..args.conns {
        let s = TcpStream::connect(args.sink)?;
        // As the server's sockets: a frame goes out when written.
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let mut go = [0u8; 1];
    for s in &mut socks {
        s.read_exact(&mut go)?;
    }
    let frame = vec![0x82u8; args.frame_bytes];
    let every = Duration::from_micros(1_000_000 / args.rate.max(1));
    let start = Instant::now();
    for i in 0..args.frames {
        let due = start + every * i as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        for s in &mut socks {
            s.write_all(&frame)?;
        }
    }
    // Until the parent has read the CPU figure and closes.
    let mut rest = Vec::new();
    let _ = socks[0].read_to_end(&mut rest);
    Ok(())
}

/// The parent's side: CPU microseconds the child spent per frame sent, with `readers`
/// sockets read by this process's runtime (as the fan-out's readers are).
pub(crate) async fn measure(
    readers: usize,
    rate: u64,
    frames: usize,
    frame_bytes: usize,
) -> anyhow::Result<f64> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let sink = listener.local_addr()?;
    let mut cmd = pinned_command(&std::env::current_exe()?, &[]);
    let mut child = cmd
        .args(["bench-floor", "--sink", &sink.to_string()])
        .args(["--conns", &readers.to_string()])
        .args(["--frames", &frames.to_string()])
        .args(["--rate", &rate.to_string()])
        .args(["--frame-bytes", &frame_bytes.to_string()])
        .stdin(Stdio::null())
        .spawn()?;
    let result = async {
        let mut socks = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (s, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .context("the floor sender did not connect")??;
            socks.push(s);
        }
        let cpu0 = proc_cpu_seconds(child.id())?;
        let mut tasks = Vec::with_capacity(readers);
        for mut s in socks {
            tasks.push(tokio::spawn(async move {
                s.write_all(&[1]).await?;
                let mut buf = vec![0u8; 64 * 1024];
                let mut left = frames * frame_bytes;
                while left > 0 {
                    let n = s.read(&mut buf).await?;
                    anyhow::ensure!(n > 0, "the floor sender closed early");
                    left = left.saturating_sub(n);
                }
                anyhow::Ok(s)
            }));
        }
        let limit = Duration::from_secs(30 + frames as u64 / rate.max(1) * 2);
        let mut open = Vec::with_capacity(readers);
        for t in tasks {
            open.push(tokio::time::timeout(limit, t).await???);
        }
        let cpu = proc_cpu_seconds(child.id())? - cpu0;
        drop(open);
        anyhow::Ok(cpu * 1e6 / (frames * readers).max(1) as f64)
    }
    .await;
    if result.is_err() {
        let _ = child.kill();
    }
    let _ = child.wait();
    result
}

/// The size on the wire of a binary WebSocket frame from the server (unmasked) holding
/// `payload` bytes.
pub(crate) fn ws_frame_bytes(payload: usize) -> usize {
    let header = match payload {
        0..=125 => 2,
        126..=65_535 => 4,
        _ => 10,
    };
    header + payload
}
