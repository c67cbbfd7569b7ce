//! `converge bench`: end-to-end load against a real server process over real WebSockets.
//!
//! The server is this binary's `serve` in a child process (pinned to CPU 0 when `taskset`
//! exists; run the bench on the other core), so its CPU time and RSS are read from /proc
//! without the load generator's own work in them. Every scenario starts a fresh server.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit, ObjType, ROOT, ReadDoc};
use converge_proto::{Blob, ClientMsg, DocId, ServerMsg};
use futures_util::StreamExt;

mod flood;
mod floor;
mod ops;
mod wire;

pub(crate) use floor::{FloorArgs, send as floor_send};
use wire::{ServerProc, connect, drain, keepalive, settle, subscribe};

/// What `converge bench` runs.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct BenchArgs {
    /// fanout, trace, join, catchup, idle, mutate, lock, presence, notify, flood, or all.
    #[arg(default_value = "all")]
    scenario: String,
    /// Reader counts for the fan-out scenario.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    readers: Vec<usize>,
    /// Changes per second the fan-out writer sends.
    #[arg(long, default_value_t = 40)]
    rate: u64,
    /// Changes the fan-out writer sends.
    #[arg(long, default_value_t = 400)]
    changes: usize,
    /// Entries in the stream before a fresh join / missed by the catching-up client.
    #[arg(long, default_value_t = 10_000)]
    history: usize,
    /// Idle connections held open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// The automerge-perf editing trace (automerge-paper.json.gz).
    #[arg(
        long,
        env = "CONVERGE_TRACE",
        default_value = "../shared/data/automerge-paper.json.gz"
    )]
    trace: PathBuf,
    /// Concurrent clients for the mutation round trip.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    mutation_clients: Vec<usize>,
    /// Mutations each client makes, one at a time.
    #[arg(long, default_value_t = 20)]
    per_client: usize,
    /// Lock grants timed.
    #[arg(long, default_value_t = 500)]
    grants: usize,
    /// Presence watchers.
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Users online that one notification reaches.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    notified: Vec<usize>,
    /// Round trips the calm connection times before and during the flood (one every 4 ms).
    #[arg(long, default_value_t = 500)]
    round_trips: u64,
}

pub(crate) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let all = args.scenario == "all";
        let mut ran = false;
        if all || args.scenario == "fanout" {
            for &n in &args.readers {
                fanout(n, args.rate, args.changes).await?;
            }
            ran = true;
        }
        if all || args.scenario == "join" {
            join(args.history).await?;
            ran = true;
        }
        if all || args.scenario == "catchup" {
            catchup(args.history).await?;
            ran = true;
        }
        if all || args.scenario == "idle" {
            idle(args.connections).await?;
            ran = true;
        }
        if all || args.scenario == "trace" {
            trace(&args.trace).await?;
            ran = true;
        }
        if all || args.scenario == "mutate" {
            for &n in &args.mutation_clients {
                ops::mutate(n, args.per_client).await?;
            }
            ran = true;
        }
        if all || args.scenario == "lock" {
            ops::lock(args.grants).await?;
            ran = true;
        }
        if all || args.scenario == "presence" {
            ops::presence(args.watchers, 20, 5).await?;
            ran = true;
        }
        if all || args.scenario == "notify" {
            for &n in &args.notified {
                ops::notify(n).await?;
            }
            ran = true;
        }
        if all || args.scenario == "flood" {
            flood::flood(args.round_trips).await?;
            ran = true;
        }
        if !ran {
            bail!(
                "unknown scenario {:?}: fanout, trace, join, catchup, idle, mutate, lock, presence, notify, flood or all",
                args.scenario
            );
        }
        Ok(())
    })
}

/// Stops a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// `n` small changes from one actor, each setting a key (about 80 bytes each).
fn small_changes(n: usize) -> Vec<Blob> {
    let mut doc = AutoCommit::new().with_actor(ActorId::random());
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        if doc.put(ROOT, format!("k{}", i % 64), i as i64).is_err() {
            break;
        }
        doc.commit();
        if let Some(c) = doc.get_last_local_change() {
            out.push(Blob(c.raw_bytes().to_vec()));
        }
    }
    out
}

/// p50, p99 and max of a set of durations, in milliseconds.
fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort();
    let at = |q: f64| {
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i].as_secs_f64() * 1e3
    };
    (at(0.50), at(0.99), at(1.0))
}

/// Pushes `changes` one per push, waiting for each Ack (a writer that is not pipelining).
async fn push_all(
    tx: &mut wire::Tx,
    rx: &mut wire::Rx,
    doc: DocId,
    changes: &[Blob],
) -> anyhow::Result<()> {
    for group in changes.chunks(256) {
        tx.send(&ClientMsg::Push {
            doc,
            changes: group.to_vec(),
        })
        .await?;
        loop {
            match rx.recv().await? {
                ServerMsg::Ack { .. } => break,
                ServerMsg::Error { code, message, .. } => bail!("push refused: {code}: {message}"),
                _ => {}
            }
        }
    }
    Ok(())
}

/// One writer, `readers` readers, `changes` changes at `rate`/s: delivery latency from the
/// writer's send to each reader's receive, server CPU per delivered change, peak RSS.
async fn fanout(readers: usize, rate: u64, changes: usize) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let payload = small_changes(changes);
    let (mut wtx, mut wrx) = connect(&server.url, "writer").await?;
    subscribe(&mut wtx, &mut wrx, doc, None).await?;
    // The first change creates the stream; readers join after it, so seqs 2.. are timed.
    push_all(&mut wtx, &mut wrx, doc, &payload[..1]).await?;
    let base = Instant::now();
    let sent: Arc<Vec<AtomicU64>> = Arc::new((0..=changes).map(|_| AtomicU64::new(0)).collect());
    let mut tasks = Vec::with_capacity(readers);
    for r in 0..readers {
        let (mut tx, mut rx) = connect(&server.url, &format!("reader{r}")).await?;
        let caught = subscribe(&mut tx, &mut rx, doc, None).await?;
        let sent = sent.clone();
        let last = changes as u64;
        let alive = keepalive(tx);
        tasks.push(tokio::spawn(async move {
            let _alive = AbortOnDrop(alive);
            let mut seen = caught.position.seq.get();
            let mut lat = Vec::with_capacity(changes);
            while seen < last {
                if let ServerMsg::Changes {
                    from_seq,
                    changes: c,
                    ..
                } = rx.recv().await?
                {
                    let now = base.elapsed().as_nanos() as u64;
                    for k in 0..c.len() as u64 {
                        let seq = from_seq.get() + k;
                        if let Some(at) = sent.get(seq as usize) {
                            lat.push(Duration::from_nanos(
                                now.saturating_sub(at.load(Ordering::Relaxed)),
                            ));
                        }
                        seen = seen.max(seq);
                    }
                }
            }
            anyhow::Ok(lat)
        }));
    }
    let acks = drain(wrx);
    settle().await;
    let cpu0 = server.cpu_seconds()?;
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    for (i, change) in payload.iter().enumerate().skip(1) {
        tick.tick().await;
        // Seq i + 1 (the stream's first entry is change 0).
        if let Some(at) = sent.get(i + 1) {
            at.store(base.elapsed().as_nanos() as u64, Ordering::Relaxed);
        }
        wtx.send(&ClientMsg::Push {
            doc,
            changes: vec![change.clone()],
        })
        .await?;
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(tokio::time::timeout(Duration::from_secs(120), t).await???);
    }
    let cpu = server.cpu_seconds()? - cpu0;
    let (_, peak) = server.rss_kib()?;
    acks.abort();
    let delivered = lat.len().max(1);
    let (p50, p99, max) = percentiles(lat);
    println!(
        "fanout readers={readers:<5} rate={rate}/s changes={}: delivery p50 {p50:.2} ms p99 {p99:.2} ms max {max:.2} ms; server CPU {:.2} us per delivered change ({delivered} deliveries); server peak RSS {:.1} MiB",
        changes - 1,
        cpu * 1e6 / delivered as f64,
        peak as f64 / 1024.0
    );
    // Delivery waits for durability: how much of the tail is the disk's.
    println!("  {}", server.log_report().await?);
    drop(server);
    // The floor under the CPU figure (see floor.rs), where the server's figure has enough
    // sends behind it (the floor itself is timed to the nanosecond).
    if readers * (changes - 1) >= 20_000 {
        let sample = ServerMsg::Changes {
            doc,
            epoch: converge_proto::Epoch(1),
            from_seq: converge_proto::Seq(2),
            changes: vec![payload[1].clone()],
        };
        let bytes = floor::ws_frame_bytes(converge_proto::encode_server(&sample)?.len());
        let per_send = floor::measure(readers, rate, changes - 1, bytes).await?;
        println!(
            "  floor: a plain process writing the same {bytes}-byte frames to {readers} loopback TCP sockets: {per_send:.2} us CPU per write; converge / floor = {:.2}",
            cpu * 1e6 / delivered as f64 / per_send.max(f64::MIN_POSITIVE)
        );
    }
    Ok(())
}

/// Builds a stream of `n` changes on a fresh server (pushed in groups, acknowledged).
async fn seeded(n: usize) -> anyhow::Result<(ServerProc, DocId, AutoCommit)> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let mut am = AutoCommit::new().with_actor(ActorId::random());
    let list = am.put_object(ROOT, "events", ObjType::List)?;
    let mut changes = Vec::with_capacity(n);
    am.commit();
    if let Some(c) = am.get_last_local_change() {
        changes.push(Blob(c.raw_bytes().to_vec()));
    }
    for i in 1..n {
        let len = am.length(&list);
        let item = am.insert_object(&list, len, ObjType::Map)?;
        am.put(&item, "title", format!("event {i}"))?;
        am.put(&item, "slot", i as i64)?;
        am.commit();
        if let Some(c) = am.get_last_local_change() {
            changes.push(Blob(c.raw_bytes().to_vec()));
        }
    }
    let (mut tx, mut rx) = connect(&server.url, "seeder").await?;
    subscribe(&mut tx, &mut rx, doc, None).await?;
    push_all(&mut tx, &mut rx, doc, &changes).await?;
    Ok((server, doc, am))
}

/// A client that knows nothing joins a document of `history` changes: connect, Hello,
/// Subscribe, snapshot + tail, loaded into an automerge document. Beside it, automerge's own
/// load of the same document (the floor).
async fn join(history: usize) -> anyhow::Result<()> {
    let (server, doc, mut am) = seeded(history).await?;
    // The server writes its snapshot in the background after the appends.
    settle().await;
    let saved = am.save();
    let mut floor = Vec::new();
    let mut joins = Vec::new();
    for i in 0..20 {
        let t = Instant::now();
        let loaded = AutoCommit::load(&saved)?;
        floor.push(t.elapsed());
        drop(loaded);

        let t = Instant::now();
        let (mut tx, mut rx) = connect(&server.url, &format!("joiner{i}")).await?;
        let caught = subscribe(&mut tx, &mut rx, doc, None).await?;
        let mut replica = match &caught.snapshot {
            Some(bytes) => AutoCommit::load(bytes)?,
            None => AutoCommit::new(),
        };
        let tail: Vec<automerge::Change> = caught
            .changes
            .iter()
            .filter(|c| !c.is_empty())
            .map(|c| automerge::Change::from_bytes(c.to_vec()))
            .collect::<Result<_, _>>()?;
        replica.apply_changes(tail)?;
        joins.push(t.elapsed());
        if replica.get_heads() != am.get_heads() {
            bail!("the joined replica differs from the writer's document");
        }
        if i == 0 {
            println!(
                "join: snapshot {} bytes, tail {} changes",
                caught.snapshot.as_ref().map_or(0, |s| s.len()),
                caught.changes.len()
            );
        }
    }
    let (j50, j99, _) = percentiles(joins);
    let (f50, _, _) = percentiles(floor);
    println!(
        "join after {history} changes: p50 {j50:.1} ms p99 {j99:.1} ms (connect + subscribe + load); automerge's own load of the document p50 {f50:.1} ms; ratio {:.2}x",
        j50 / f50.max(1e-9)
    );
    drop(server);
    Ok(())
}

/// A client at an early position misses `history` changes, then reconnects and catches up:
/// connect, Hello, Subscribe at its position, replay, applied in one call.
async fn catchup(history: usize) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let changes = small_changes(history + 1);
    let (mut wtx, mut wrx) = connect(&server.url, "writer").await?;
    subscribe(&mut wtx, &mut wrx, doc, None).await?;
    push_all(&mut wtx, &mut wrx, doc, &changes[..1]).await?;
    // The reader holds the first entry, then goes away.
    let (mut tx, mut rx) = connect(&server.url, "reader").await?;
    let first = subscribe(&mut tx, &mut rx, doc, None).await?;
    let mut base = AutoCommit::new();
    let c0: Vec<automerge::Change> = first
        .changes
        .iter()
        .map(|c| automerge::Change::from_bytes(c.to_vec()))
        .collect::<Result<_, _>>()?;
    base.apply_changes(c0)?;
    drop((tx, rx));
    push_all(&mut wtx, &mut wrx, doc, &changes[1..]).await?;
    settle().await;
    let mut times = Vec::new();
    for i in 0..10 {
        let mut replica = base.clone();
        let t = Instant::now();
        let (mut tx, mut rx) = connect(&server.url, &format!("reader{i}")).await?;
        let caught = subscribe(&mut tx, &mut rx, doc, Some(first.position)).await?;
        let missed: Vec<automerge::Change> = caught
            .changes
            .iter()
            .map(|c| automerge::Change::from_bytes(c.to_vec()))
            .collect::<Result<_, _>>()?;
        let n = missed.len();
        replica.apply_changes(missed)?;
        times.push(t.elapsed());
        if caught.snapshot.is_some() || n != history {
            bail!(
                "expected a replay of {history} changes, got {n} (snapshot: {})",
                caught.snapshot.is_some()
            );
        }
    }
    let (p50, p99, _) = percentiles(times);
    println!(
        "catch-up of {history} missed changes: p50 {p50:.1} ms p99 {p99:.1} ms (connect + subscribe + replay + apply)"
    );
    Ok(())
}

/// `n` connections that said Hello and subscribed to a document, then idle: the server's
/// RSS growth per connection.
async fn idle(n: usize) -> anyhow::Result<()> {
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let (mut wtx, mut wrx) = connect(&server.url, "writer").await?;
    subscribe(&mut wtx, &mut wrx, doc, None).await?;
    push_all(&mut wtx, &mut wrx, doc, &small_changes(1)).await?;
    settle().await;
    let (before, _) = server.rss_kib()?;
    let parts_before = server.memory_parts();
    let cpu0 = server.cpu_seconds()?;
    let t = Instant::now();
    // 256 at a time: each Subscribe waits for a log flush, which concurrent ones share.
    let url = server.url.clone();
    let conns: Vec<(AbortOnDrop, wire::Rx)> = futures_util::stream::iter(0..n)
        .map(|i| {
            let url = url.clone();
            async move {
                let (mut tx, mut rx) = connect(&url, &format!("idle{i}"))
                    .await
                    .with_context(|| format!("connection {i} (raise `ulimit -n`?)"))?;
                subscribe(&mut tx, &mut rx, doc, None).await?;
                anyhow::Ok((AbortOnDrop(keepalive(tx)), rx))
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_, _>>()?;
    let took = t.elapsed();
    settle().await;
    let (after, _) = server.rss_kib()?;
    let cpu = server.cpu_seconds()? - cpu0;
    println!(
        "idle: {n} connections (Hello + Subscribe) in {:.1} s; server RSS {:.1} -> {:.1} MiB: {:.2} KiB per idle connection; server CPU {:.0} us per connection set-up",
        took.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        (after.saturating_sub(before)) as f64 / n.max(1) as f64,
        cpu * 1e6 / n.max(1) as f64
    );
    println!(
        "idle: before: {parts_before}; after: {}",
        server.memory_parts()
    );
    drop(conns);
    Ok(())
}

/// The automerge-perf editing trace through the server: one change per edit, pushed the way
/// the SDK's session pushes an editor's changes (one push in flight; each push takes what has
/// accumulated, up to 256 changes / 512 KiB: here everything has, as for an editor outrunning
/// the round trip); a reader applies what it receives in batches (all that is waiting, in one
/// call). Timed from the writer's first push until the reader's document holds the final text.
async fn trace(path: &std::path::Path) -> anyhow::Result<()> {
    let (changes, end) = trace_changes(path)?;
    let server = ServerProc::start()?;
    let doc = DocId::random();
    let (mut wtx, mut wrx) = connect(&server.url, "writer").await?;
    subscribe(&mut wtx, &mut wrx, doc, None).await?;
    let (mut rtx, mut rrx) = connect(&server.url, "reader").await?;
    subscribe(&mut rtx, &mut rrx, doc, None).await?;
    let _alive = AbortOnDrop(keepalive(rtx));
    let total = changes.len() as u64;
    let cpu0 = server.cpu_seconds()?;
    let t = Instant::now();
    let writer = tokio::spawn(async move {
        let mut rest = &changes[..];
        while !rest.is_empty() {
            let mut n = 0;
            let mut bytes = 0;
            while n < rest.len() && n < 256 && (n == 0 || bytes + rest[n].len() <= 512 * 1024) {
                bytes += rest[n].len();
                n += 1;
            }
            wtx.send(&ClientMsg::Push {
                doc,
                changes: rest[..n].to_vec(),
            })
            .await?;
            rest = &rest[n..];
            loop {
                match wrx.recv().await? {
                    ServerMsg::Ack { .. } => break,
                    ServerMsg::Error { code, message, .. } => {
                        bail!("push refused: {code}: {message}")
                    }
                    _ => {}
                }
            }
        }
        anyhow::Ok((wtx, wrx))
    });
    let mut replica = AutoCommit::new();
    let mut seen = 0u64;
    let mut applies = 0u64;
    while seen < total {
        let mut batch: Vec<automerge::Change> = Vec::new();
        let mut take = |msg: ServerMsg, seen: &mut u64| -> anyhow::Result<()> {
            if let ServerMsg::Changes { changes: c, .. } = msg {
                *seen += c.len() as u64;
                for b in c {
                    batch.push(automerge::Change::from_bytes(b.into_vec())?);
                }
            }
            Ok(())
        };
        take(rrx.recv().await?, &mut seen)?;
        while let Some(msg) = rrx.try_recv() {
            take(msg?, &mut seen)?;
        }
        replica.apply_changes(batch)?;
        applies += 1;
    }
    let took = t.elapsed();
    let cpu = server.cpu_seconds()? - cpu0;
    let _writer = writer.await??;
    let text_obj = match replica.get(ROOT, "text")? {
        Some((_, id)) => id,
        None => bail!("the reader has no text"),
    };
    let text = replica.text(&text_obj)?;
    if text != end {
        bail!("the reader's text differs from endContent");
    }
    let (_, peak) = server.rss_kib()?;
    println!(
        "trace: {total} changes writer -> server -> reader in {:.2} s ({:.0} changes/s; reader applied in {applies} batches); text equals endContent; server CPU {:.2} s ({:.2} us per change), peak RSS {:.1} MiB",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64(),
        cpu,
        cpu * 1e6 / total as f64,
        peak as f64 / 1024.0
    );
    Ok(())
}

/// The trace as one change per edit, and its final text.
fn trace_changes(path: &std::path::Path) -> anyhow::Result<(Vec<Blob>, String)> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("the editing trace at {} (--trace)", path.display()))?;
    let mut json = String::new();
    flate2::read::GzDecoder::new(file).read_to_string(&mut json)?;
    let v: serde_json::Value = serde_json::from_str(&json)?;
    let end = v["endContent"].as_str().context("endContent")?.to_string();
    let mut am = AutoCommit::new().with_actor(ActorId::random());
    let text = am.put_object(ROOT, "text", ObjType::Text)?;
    am.commit();
    let txns = v["txns"].as_array().context("txns")?;
    for txn in txns {
        for p in txn["patches"].as_array().context("patches")? {
            let pos = p[0].as_u64().context("pos")? as usize;
            let del = p[1].as_i64().context("del")? as isize;
            let ins = p[2].as_str().context("ins")?;
            am.splice_text(&text, pos, del, ins)?;
        }
        am.commit();
    }
    let changes = am
        .get_changes(&[])
        .iter()
        .map(|c| Blob(c.raw_bytes().to_vec()))
        .collect();
    Ok((changes, end))
}
