//! Embedding converge's document store: create a schedule, edit it, close, reopen from the log.
//!
//! Run: `cargo run -p embed-store` (writes to a temporary directory and prints the schedule).
use std::sync::Arc;

use converge_log::{Author, DocStore, EventLog, LogConfig, SledLog, StoreConfig};
use converge_proto::UserId;
use converge_schema::{Event, Schedule, create, read, update};

fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let me = Author::user(UserId::new("alice")?);

    let id = {
        // The log is the source of truth; the store materializes documents from it.
        let log = Arc::new(SledLog::open(dir.path(), LogConfig::default())?);
        let store = DocStore::new(log, StoreConfig::default());
        let (id, created) = store.create(&me, 0, |doc| {
            create(doc, &Schedule::new("Ward 3", "Europe/Paris"))
        })?;
        created.wait()?; // durable (fsync) before we say it exists
        let (_, appended) = store.change(&id, &me, 1, |doc| {
            update(doc, |s: &mut Schedule| {
                s.events.insert(
                    "e1".into(),
                    Event::new("Night shift", "bed-1", 0, 3_600_000),
                );
            })
        })?;
        if let Some(a) = appended {
            a.durable.wait()?;
        }
        id
    };

    // A new process would do exactly this: open the log and read the document back.
    let log = Arc::new(SledLog::open(dir.path(), LogConfig::default())?);
    println!("{} entries in {id}", log.head(&id)?.last_seq);
    let store = DocStore::new(log, StoreConfig::default());
    let schedule: Schedule = store.read(&id, read)??;
    println!(
        "{}: {} event(s)",
        schedule.title.as_str(),
        schedule.events.len()
    );
    Ok(())
}
