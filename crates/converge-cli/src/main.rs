//! The `converge` binary.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use converge_log::{Author, DocStore, EventLog, Log, LogConfig, LogError, StoreConfig};
use converge_proto::{DocId, Seq, UserId};
use converge_schema::{DocKind, to_json};
use indicatif::{ProgressBar, ProgressStyle};

mod bench;
mod demo;
mod limits;
mod serve;
mod token;

/// converge: an event-sourced sync engine. Documents live in an append-only log.
#[derive(Debug, Parser)]
#[command(name = "converge", version, about)]
struct Cli {
    /// Log as JSON lines instead of text (the filter is CONVERGE_LOG, e.g. `info,converge_server=debug`).
    #[arg(long, global = true, env = "CONVERGE_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, clap::Args)]
struct DataDir {
    /// The log's directory.
    #[arg(long, env = "CONVERGE_DATA", default_value = "./converge-data")]
    data: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the server: the native protocol on /ws, health on /healthz and /readyz. Stops
    /// gracefully on Ctrl-C or SIGTERM (closes sessions, flushes the log).
    Serve {
        /// Where to listen.
        #[arg(long, env = "CONVERGE_ADDR", default_value = "127.0.0.1:7070")]
        addr: std::net::SocketAddr,
        #[command(flatten)]
        data: DataDir,
        /// `fsync` (an acknowledged change is on disk) or `buffered` (flushed every
        /// --flush-every-ms; a crash can lose that much acknowledged work).
        #[arg(long, env = "CONVERGE_DURABILITY", default_value = "fsync", value_parser = ["fsync", "buffered"])]
        durability: String,
        #[arg(long, env = "CONVERGE_FLUSH_EVERY_MS", default_value_t = 100)]
        flush_every_ms: u64,
        /// Largest frame a client may send, in bytes.
        #[arg(long, env = "CONVERGE_MAX_FRAME_BYTES", default_value_t = converge_proto::DEFAULT_MAX_FRAME_BYTES)]
        max_frame_bytes: usize,
        #[command(flatten)]
        jwt: token::JwtArgs,
        #[command(flatten)]
        limits: limits::LimitArgs,
    },
    /// Prints a signed token (HS256, the server's secret: --jwt-secret, CONVERGE_JWT_SECRET,
    /// or <data>/jwt-secret) as its last line.
    Token(token::TokenArgs),
    /// Two clients edit one schedule, one of them offline for a while, then both converge;
    /// prints both views. Starts its own server on a temporary directory unless --server.
    Demo {
        /// A running server's WebSocket URL, e.g. ws://127.0.0.1:7070/ws.
        #[arg(long)]
        server: Option<String>,
    },
    /// End-to-end load against a `converge serve` child process over real WebSockets:
    /// fan-out latency, the editing trace, fresh join, catch-up, idle connections. Prints
    /// p50/p99/max, server CPU per delivered change and RSS. Run it on the other core from
    /// the server: `taskset -c 1 converge bench` (the server is pinned to CPU 0).
    Bench(bench::BenchArgs),
    /// The sender of `converge bench`'s floor measurement (its child process).
    #[command(hide = true)]
    BenchFloor(bench::FloorArgs),
    /// Creates a document from a JSON file and prints its id as the last line.
    Import {
        /// The JSON file (the document's typed shape; see docs/schema.md).
        file: PathBuf,
        /// What the JSON describes.
        #[arg(long, value_parser = parse_kind)]
        kind: DocKind,
        #[command(flatten)]
        data: DataDir,
    },
    /// Prints a document as JSON, now or as it was at a past seq.
    Replay {
        /// The document id (base58check, or an automerge: URL).
        doc: String,
        /// Show the document as it was after this seq.
        #[arg(long)]
        at: Option<u64>,
        #[command(flatten)]
        data: DataDir,
    },
    /// Walks every document's hash chain; exits 1 at the first break.
    Verify {
        #[command(flatten)]
        data: DataDir,
    },
    /// Lists documents with their entry counts, sizes and snapshots.
    Inspect {
        #[command(flatten)]
        data: DataDir,
    },
    /// Snapshots every document, drops the entries the snapshots cover (history before them
    /// is gone), and rewrites the store to give the space back. Run it with the server stopped.
    Compact {
        #[command(flatten)]
        data: DataDir,
    },
    /// Restores a backup (a copy of a data directory taken with the server stopped) into an
    /// empty --data directory and moves every document to a new epoch, so clients that hold
    /// changes made after the backup hand them back (reconciliation) instead of trusting their
    /// positions. Run it with the server stopped.
    Restore {
        /// The backup: a converge data directory.
        #[arg(long)]
        from: PathBuf,
        #[command(flatten)]
        data: DataDir,
    },
}

fn parse_kind(s: &str) -> Result<DocKind, String> {
    s.parse()
        .map_err(|e: converge_schema::SchemaError| e.to_string())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_filter = match cli.command {
        Command::Serve { .. } => "info",
        _ => "warn",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CONVERGE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if cli.log_json {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let result = match cli.command {
        Command::Serve {
            addr,
            data,
            durability,
            flush_every_ms,
            max_frame_bytes,
            jwt,
            limits,
        } => serve::run(serve::Options {
            addr,
            data: data.data,
            buffered: durability == "buffered",
            flush_every_ms,
            max_frame_bytes,
            jwt,
            limits,
        }),
        Command::Token(args) => token::run(args),
        Command::Demo { server } => demo::run(server),
        Command::Bench(args) => bench::run(args).map(|()| ExitCode::SUCCESS),
        Command::BenchFloor(args) => bench::floor_send(args).map(|()| ExitCode::SUCCESS),
        Command::Import { file, kind, data } => import(&file, kind, &data.data),
        Command::Replay { doc, at, data } => replay(&doc, at, &data.data),
        Command::Verify { data } => verify(&data.data),
        Command::Inspect { data } => inspect(&data.data),
        Command::Compact { data } => compact(&data.data),
        Command::Restore { from, data } => restore(&from, &data.data),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Opens an existing log; commands that only read never create one by accident.
fn open_existing(dir: &Path) -> anyhow::Result<Arc<Log>> {
    if !dir.exists() {
        bail!("no converge log at {} (use --data)", dir.display());
    }
    open(dir)
}

fn open(dir: &Path) -> anyhow::Result<Arc<Log>> {
    let log = Log::open(dir, LogConfig::default())
        .with_context(|| format!("opening the log at {}", dir.display()))?;
    Ok(Arc::new(log))
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn import(file: &Path, kind: DocKind, dir: &Path) -> anyhow::Result<ExitCode> {
    // Parse and validate before the log is even opened: bad input writes nothing.
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let typed = kind.parse_json(&text)?;
    let log = open(dir)?;
    let store = DocStore::new(log.clone(), StoreConfig::default());
    let author = Author::user(UserId::new("converge-cli")?);
    let (id, durable) = store.create(&author, now_ms(), |doc| typed.write(doc))?;
    durable.wait()?;
    eprintln!("imported {kind} from {}", file.display());
    println!("{id}");
    Ok(ExitCode::SUCCESS)
}

fn replay(doc: &str, at: Option<u64>, dir: &Path) -> anyhow::Result<ExitCode> {
    let id: DocId = doc
        .parse()
        .with_context(|| format!("document id {doc:?}"))?;
    let log = open_existing(dir)?;
    let store = DocStore::new(log, StoreConfig::default());
    let json = match at {
        Some(seq) => to_json(&store.load_at(&id, Seq(seq))?),
        None => store.read(&id, to_json)?,
    };
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(ExitCode::SUCCESS)
}

fn verify(dir: &Path) -> anyhow::Result<ExitCode> {
    let log = open_existing(dir)?;
    let docs = log.docs()?;
    let bar = ProgressBar::new(docs.len() as u64).with_style(
        ProgressStyle::with_template("verifying {bar:40} {pos}/{len} documents, {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let mut entries = 0u64;
    for doc in &docs {
        match log.verify(doc) {
            Ok(n) => entries += n,
            Err(e) => {
                bar.abandon();
                match &e {
                    LogError::Corrupt { doc, seq, reason } => {
                        println!("BROKEN document {doc} seq {seq}: {reason}");
                    }
                    other => println!("BROKEN document {doc}: {other}"),
                }
                return Ok(ExitCode::FAILURE);
            }
        }
        bar.inc(1);
        bar.set_message(format!("{entries} entries"));
    }
    bar.finish_and_clear();
    println!(
        "ok: {} documents, {entries} entries, every chain holds",
        docs.len()
    );
    Ok(ExitCode::SUCCESS)
}

fn inspect(dir: &Path) -> anyhow::Result<ExitCode> {
    let log = open_existing(dir)?;
    let docs = log.docs()?;
    println!(
        "{:<30} {:>5} {:>9} {:>9} {:>12} {:>12} {:>10} {:>10}",
        "document",
        "epoch",
        "last_seq",
        "entries",
        "entry_bytes",
        "change_bytes",
        "snapshot",
        "snap_bytes"
    );
    for doc in &docs {
        let head = log.head(doc)?;
        let stats = log.stats(doc)?;
        println!(
            "{:<30} {:>5} {:>9} {:>9} {:>12} {:>12} {:>10} {:>10}{}",
            doc.to_string(),
            head.epoch,
            head.last_seq,
            stats.entries,
            stats.entry_bytes,
            stats.change_bytes,
            head.snapshot_seq.map_or("-".to_string(), |s| s.to_string()),
            stats.snapshot_bytes,
            if head.tombstoned { " (deleted)" } else { "" },
        );
    }
    println!(
        "{} documents, {} bytes on disk",
        docs.len(),
        log.size_on_disk()?
    );
    Ok(ExitCode::SUCCESS)
}

fn restore(from: &Path, dir: &Path) -> anyhow::Result<ExitCode> {
    let log = Log::restore(from, dir, LogConfig::default())?;
    let docs = log.docs()?.len();
    log.flush()?;
    println!(
        "restored {docs} documents from {} into {}; each moved to a new epoch",
        from.display(),
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn compact(dir: &Path) -> anyhow::Result<ExitCode> {
    let dropped = {
        let log = open_existing(dir)?;
        let store = DocStore::new(log.clone(), StoreConfig::default());
        let docs = log.docs()?;
        let bar = ProgressBar::new(docs.len() as u64).with_style(
            ProgressStyle::with_template("compacting {bar:40} {pos}/{len} documents")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        let mut dropped = 0;
        for doc in &docs {
            if log.head(doc)?.last_seq > Seq(0) {
                store.snapshot(doc)?;
                dropped += log.compact(doc)?;
                store.evict(doc);
            }
            bar.inc(1);
        }
        bar.finish_and_clear();
        log.flush()?;
        dropped
    };
    let (before, after) = Log::vacuum(dir)?;
    println!("dropped {dropped} entries; {before} bytes on disk before, {after} after");
    Ok(ExitCode::SUCCESS)
}
