//! The floor under server CPU per delivered change: what the kernel alone charges a sender
//! for writing one frame to each of N loopback TCP sockets, measured in the same run as the
//! server, in a child process pinned to CPU 0 as the server is.
//!
//! The sender is as plain as a server can be: one thread, blocking `write`s of a prepared
//! frame of the same size as the server's Changes frame, one per reader per change, at the
//! fan-out's rate; no framing, no tasks, no log. It reports CPU per `write` call: at the
//! fan-out's pace every change is its own frame and its own write on each socket, so no
//! server that sends each reader its own copy over TCP can need less per delivery there (a
//! server could put several changes in one write only when they arrive together).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::wire::pinned_command;

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
    let cpu0 = thread_cpu_ns()?;
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
    let cpu = thread_cpu_ns()? - cpu0;
    // The process's only thread, timed around the sends alone, to the nanosecond.
    println!("{CPU_LINE}{cpu}");
    std::io::stdout().flush()?;
    // Until the parent has read the figure and closes.
    let mut rest = Vec::new();
    let _ = socks[0].read_to_end(&mut rest);
    Ok(())
}

/// How the child reports its CPU nanoseconds on stdout.
const CPU_LINE: &str = "floor-cpu-ns ";

/// CPU time the calling thread ran so far (the first field of its schedstat, in ns).
fn thread_cpu_ns() -> anyhow::Result<u64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat")?;
    let ns = stat
        .split_whitespace()
        .next()
        .context("empty schedstat")?
        .parse()?;
    Ok(ns)
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
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().context("no stdout")?;
    // The child's one line, read off the runtime (a blocking read).
    let report = tokio::task::spawn_blocking(move || {
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let line = lines.next().context("the floor sender exited early")??;
        let ns: u64 = line
            .strip_prefix(CPU_LINE)
            .context("no CPU figure from the floor sender")?
            .parse()?;
        anyhow::Ok(ns)
    });
    let result = async {
        let mut socks = Vec::with_capacity(readers);
        for _ in 0..readers {
            let (s, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
                .await
                .context("the floor sender did not connect")??;
            socks.push(s);
        }
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
        let ns = tokio::time::timeout(Duration::from_secs(10), report)
            .await
            .context("the floor sender did not report")???;
        drop(open);
        anyhow::Ok(ns as f64 / 1e3 / (frames * readers).max(1) as f64)
    }
    .await;
    // Done either way (it would exit on its own once the sockets close).
    let _ = child.kill();
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
