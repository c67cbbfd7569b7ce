//! The load generator's side of the wire: raw protocol connections (no SDK, so the client
//! costs little and every frame is timed where it lands) and the server process it measures.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use converge_proto::{
    Blob, ClientId, ClientMsg, DocId, MAX_FRAME_CEILING, PROTOCOL_VERSION, Position, ServerMsg,
    decode_server, encode_client,
};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Sends client messages.
pub(crate) struct Tx(SplitSink<Ws, Message>);

/// Receives server messages.
pub(crate) struct Rx(SplitStream<Ws>);

impl Tx {
    pub(crate) async fn send(&mut self, msg: &ClientMsg) -> anyhow::Result<()> {
        let frame = encode_client(msg)?;
        self.0.send(Message::Binary(frame.into())).await?;
        Ok(())
    }
}

impl Rx {
    /// The next protocol message (ping/pong/close frames are skipped; a close is an error).
    pub(crate) async fn recv(&mut self) -> anyhow::Result<ServerMsg> {
        loop {
            let frame = self.0.next().await.context("connection closed")??;
            match frame {
                Message::Binary(bytes) => return Ok(decode_server(&bytes, MAX_FRAME_CEILING)?),
                Message::Close(c) => bail!("closed by the server: {c:?}"),
                _ => {}
            }
        }
    }

    /// A message if one is ready now, without waiting.
    pub(crate) fn try_recv(&mut self) -> Option<anyhow::Result<ServerMsg>> {
        use futures_util::FutureExt;
        self.recv().now_or_never()
    }
}

/// The HS256 secret the bench's server runs with (its tokens are minted with it).
const BENCH_SECRET: &str = "converge-bench-secret-not-for-production";

/// A token for `user` (role editor, valid for a day).
fn token(user: &str) -> anyhow::Result<String> {
    token_with(user, "editor")
}

fn token_with(user: &str, role: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = converge_server::auth::claims(user, &[role], now, 86_400);
    Ok(converge_server::auth::mint_hs256(
        BENCH_SECRET.as_bytes(),
        &claims,
    )?)
}

/// Connects and says Hello as `user`; returns once Welcome arrived.
pub(crate) async fn connect(url: &str, user: &str) -> anyhow::Result<(Tx, Rx)> {
    // Nagle off, as the SDK does: a small frame must not wait for a delayed ACK.
    let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true).await?;
    let (sink, stream) = ws.split();
    let (mut tx, mut rx) = (Tx(sink), Rx(stream));
    tx.send(&ClientMsg::Hello {
        protocol: PROTOCOL_VERSION,
        client_id: ClientId::random(),
        token: Some(token(user)?),
    })
    .await?;
    match rx.recv().await? {
        ServerMsg::Welcome { .. } => Ok((tx, rx)),
        other => bail!("expected Welcome, got {}", other.kind()),
    }
}

/// What a catch-up brought: the snapshot (if any), the changes after it, and the position.
pub(crate) struct CaughtUp {
    pub(crate) snapshot: Option<Blob>,
    pub(crate) changes: Vec<Blob>,
    pub(crate) position: Position,
}

/// Subscribes and reads until Live.
pub(crate) async fn subscribe(
    tx: &mut Tx,
    rx: &mut Rx,
    doc: DocId,
    after: Option<Position>,
) -> anyhow::Result<CaughtUp> {
    tx.send(&ClientMsg::Subscribe { doc, after }).await?;
    let mut snapshot = None;
    let mut changes = Vec::new();
    loop {
        match rx.recv().await? {
            ServerMsg::Snapshot { bytes, .. } => snapshot = Some(bytes),
            ServerMsg::Changes { changes: c, .. } => changes.extend(c),
            ServerMsg::Live { epoch, seq, .. } => {
                return Ok(CaughtUp {
                    snapshot,
                    changes,
                    position: Position { epoch, seq },
                });
            }
            ServerMsg::Error { code, message, .. } => bail!("{code}: {message}"),
            _ => {}
        }
    }
}

/// Keeps a connection alive: a Ping every 10 s (the server closes silent sessions after two
/// heartbeats). Owns the sending half.
pub(crate) fn keepalive(mut tx: Tx) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(10));
        let mut nonce = 0;
        loop {
            tick.tick().await;
            nonce += 1;
            if tx.send(&ClientMsg::Ping { nonce }).await.is_err() {
                return;
            }
        }
    })
}

/// Reads (and drops) everything the server sends, e.g. a writer's Acks.
pub(crate) fn drain(mut rx: Rx) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move { while rx.recv().await.is_ok() {} })
}

/// A `converge serve` child process on a temporary directory, measured through /proc.
pub(crate) struct ServerProc {
    child: Child,
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl ServerProc {
    /// Starts this binary's `serve` on 127.0.0.1:0, pinned to CPU 0 when `taskset` exists
    /// (run the bench itself on the other core: `taskset -c 1 converge bench`).
    pub(crate) fn start() -> anyhow::Result<ServerProc> {
        let dir = tempfile::tempdir()?;
        let exe = std::env::current_exe()?;
        let data = dir.path().join("data");
        let args = [
            "serve".to_string(),
            "--addr".into(),
            "127.0.0.1:0".into(),
            "--data".into(),
            data.display().to_string(),
        ];
        // A profiler to run the server under, e.g. CONVERGE_BENCH_SERVER_WRAPPER=heaptrack
        // (its words come before the server's command line).
        let wrapper: Vec<String> = std::env::var("CONVERGE_BENCH_SERVER_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default();
        let mut cmd = pinned_command(&exe, &wrapper);
        // A process group of its own: a wrapper (a profiler's script) starts the server as its
        // child, and ending the bench must end both.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .args(&args)
            .env("CONVERGE_JWT_SECRET", BENCH_SECRET)
            .env(
                "CONVERGE_LOG",
                std::env::var("CONVERGE_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()?;
        let stdout = child.stdout.take().context("no stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let url = loop {
            let line = lines
                .next()
                .context("the server exited before listening")??;
            if let Some(rest) = line.strip_prefix("converge listening on ") {
                break rest
                    .split_whitespace()
                    .next()
                    .context("no url")?
                    .to_string();
            }
        };
        // Keep reading stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Ok(ServerProc {
            child,
            url,
            _dir: dir,
        })
    }

    /// CPU seconds (user + system) the server used so far.
    pub(crate) fn cpu_seconds(&self) -> anyhow::Result<f64> {
        proc_cpu_seconds(self.child.id())
    }

    /// One admin GET on the server's HTTP API: the body.
    async fn get(&self, path: &str) -> anyhow::Result<String> {
        self.request("GET", path, "").await
    }

    /// One admin POST of a JSON body: the response body.
    pub(crate) async fn post(&self, path: &str, body: &str) -> anyhow::Result<String> {
        self.request("POST", path, body).await
    }

    async fn request(&self, method: &str, path: &str, body: &str) -> anyhow::Result<String> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self
            .url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .context("bad url")?;
        let mut s = tokio::net::TcpStream::connect(addr).await?;
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            token_with("bench-admin", "admin")?,
            body.len()
        );
        s.write_all(req.as_bytes()).await?;
        let mut raw = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut raw)).await??;
        Ok(raw
            .split_once("\r\n\r\n")
            .map_or("", |(_, b)| b)
            .to_string())
    }

    /// How the server's log writes went, from its /metrics histogram and /api/stats: the
    /// time from handing a write to the log to its durability (p50 and p99, as the upper
    /// bounds of their histogram buckets) and the group commit's flushes.
    pub(crate) async fn log_report(&self) -> anyhow::Result<String> {
        let metrics = self.get("/metrics").await?;
        let mut buckets: Vec<(f64, f64)> = Vec::new();
        for line in metrics.lines() {
            let Some(rest) = line.strip_prefix("converge_append_seconds_bucket{le=\"") else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse()?
            };
            buckets.push((le, count.trim().parse()?));
        }
        let total = buckets.last().map_or(0.0, |b| b.1);
        let quantile = |q: f64| {
            buckets
                .iter()
                .find(|(_, c)| *c >= q * total)
                .map_or(f64::NAN, |(le, _)| le * 1000.0)
        };
        let stats: serde_json::Value = {
            let body = self.get("/api/stats").await?;
            let json = body
                .find('{')
                .zip(body.rfind('}'))
                .map_or("null", |(a, b)| &body[a..=b]);
            serde_json::from_str(json)?
        };
        let flush = &stats["flush"];
        Ok(format!(
            "log: {total} writes, durable within p50 <= {:.2} ms, p99 <= {:.2} ms; {} flushes, mean {:.2} ms, max {:.2} ms",
            quantile(0.5),
            quantile(0.99),
            flush["count"],
            flush["mean_us"].as_f64().unwrap_or(0.0) / 1000.0,
            flush["max_us"].as_f64().unwrap_or(0.0) / 1000.0,
        ))
    }

    /// The server's anonymous and file-backed RSS (KiB) and its thread count: what an RSS
    /// figure is made of (file pages are the binary's own code, paged in as it first runs).
    pub(crate) fn memory_parts(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let field = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .unwrap_or("?")
                .to_string()
        };
        // Threads by name: which pools grew.
        let mut names = std::collections::BTreeMap::<String, usize>::new();
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.child.id())) {
            for task in tasks.flatten() {
                let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
                *names.entry(comm.trim().to_string()).or_default() += 1;
            }
        }
        let names: Vec<String> = names.iter().map(|(n, c)| format!("{n} x{c}")).collect();
        format!(
            "RssAnon {} KiB, RssFile {} KiB, {} threads ({})",
            field("RssAnon:"),
            field("RssFile:"),
            field("Threads:"),
            names.join(", ")
        )
    }

    /// (current RSS, peak RSS) in KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let field = |name: &str| -> anyhow::Result<u64> {
            let line = status
                .lines()
                .find(|l| l.starts_with(name))
                .with_context(|| format!("no {name}"))?;
            Ok(line
                .split_whitespace()
                .nth(1)
                .context("no value")?
                .parse()?)
        };
        Ok((field("VmRSS:")?, field("VmHWM:")?))
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        // The whole group (the server, and a wrapper's children), then the child itself.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.child.id())])
            .status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `exe` pinned to CPU 0 when `taskset` exists (the bench runs on CPU 1), under `wrapper`'s
/// words (a profiler) if any.
pub(crate) fn pinned_command(exe: &std::path::Path, wrapper: &[String]) -> Command {
    let pinned = Command::new("taskset").arg("-V").output().is_ok();
    if pinned {
        let mut c = Command::new("taskset");
        c.arg("-c").arg("0").args(wrapper).arg(exe);
        c
    } else if let Some((first, rest)) = wrapper.split_first() {
        let mut c = Command::new(first);
        c.args(rest).arg(exe);
        c
    } else {
        Command::new(exe)
    }
}

/// CPU seconds (user + system) a process used so far, from /proc.
fn proc_cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesized command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11).context("utime")?.parse::<f64>()?
        + fields.get(12).context("stime")?.parse::<f64>()?;
    Ok(ticks / clock_ticks())
}

/// Clock ticks per second for /proc times (`getconf CLK_TCK`; 100 on Linux nearly always).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}

/// Waits a little for the server to settle (background snapshot, freed buffers) before a
/// memory or timing measurement. A benchmark, not a test: a pause is what is wanted here.
pub(crate) async fn settle() {
    tokio::time::sleep(Duration::from_millis(500)).await;
}
