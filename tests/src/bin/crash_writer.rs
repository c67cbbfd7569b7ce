//! A child process for the crash test: appends changes with fsync durability from several
//! threads and prints `ACK <doc> <seq> <change-hash>` for each append once it is durable.
//! The parent kills it with SIGKILL at random moments.

use std::io::Write;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use converge_log::{AppendResult, EventLog, LogConfig, LogError, SledLog};
use converge_proto::{DocId, Epoch};
use converge_tests::{Writer, change_entry, user};

const THREADS: u8 = 4;

fn main() -> anyhow::Result<()> {
    let dir = std::env::args().nth(1).context("usage: crash-writer DIR")?;
    let log = Arc::new(SledLog::open(&dir, LogConfig::default())?);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let docs = [DocId::from_bytes([1; 16]), DocId::from_bytes([2; 16])];
    for d in docs {
        match log.create(d, Epoch(1)) {
            Ok(durable) => durable.wait()?,
            Err(LogError::DocExists(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let threads: Vec<_> = (0..THREADS)
        .map(|t| {
            let log = log.clone();
            let out = out.clone();
            let doc = docs[usize::from(t % 2)];
            std::thread::spawn(move || -> anyhow::Result<()> {
                // A fresh actor per run and thread: its changes start at seq 1.
                let actor = *uuid_like(t).as_bytes();
                let author = user(&format!("writer-{t}"));
                let mut w = Writer::new(&actor);
                for i in 0.. {
                    let bytes = w.put("n", i);
                    let hash = automerge::Change::from_bytes(bytes.clone())?.hash();
                    let appended = log.append(&doc, vec![change_entry(&author, bytes)])?;
                    appended.durable.wait()?;
                    let AppendResult::Appended(seq) = appended.results[0] else {
                        anyhow::bail!("unexpected duplicate");
                    };
                    let mut out = out.lock().unwrap_or_else(|e| e.into_inner());
                    writeln!(out, "ACK {doc} {seq} {hash}")?;
                    out.flush()?;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join()
            .map_err(|_| anyhow::anyhow!("writer thread panicked"))??;
    }
    Ok(())
}

fn uuid_like(t: u8) -> DocId {
    // DocId::random is a UUIDv4; reuse it as 16 random actor bytes, tagged with the thread.
    let mut b = *DocId::random().as_bytes();
    b[0] = t;
    DocId::from_bytes(b)
}
