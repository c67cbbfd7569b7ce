//! What sled's flush leaves in the page cache, made durable.
//!
//! sled 0.34's flush ends with `sync_file_range` on its log file. That writes the dirty pages
//! and waits for them, but commits neither the file's size nor its block allocation, and does
//! not flush the disk's write cache. Values too large for one of its log buffers (over ~128
//! KiB: big pages, snapshots, large tree nodes) go to files under `blobs/`, which sled never
//! syncs at all. A process crash loses none of that (the page cache outlives the process); a
//! machine crash or a power cut could. So after each of sled's flushes the log `fdatasync`s
//! sled's log file, and `fsync`s every blob file created since the last time and the blob
//! directory: an acknowledged append is on disk, not only in the kernel.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use crate::error::LogError;
use crate::sync::lock;

/// sled's files in a log directory (names as sled 0.34.7 gives them).
const LOG_FILE: &str = "db";
const BLOB_DIR: &str = "blobs";

/// The kernel stamps a directory's modification time from a coarse clock (a tick of a few
/// ms), so a blob created just after a listing, in the same tick as the change before it,
/// leaves the stamp as it was. A listing that began at least this long after the stamp saw
/// every change that stamp stands for; an unchanged stamp then means nothing new.
const STAMP_SLACK: Duration = Duration::from_millis(100);

pub(crate) struct DiskSync {
    log: File,
    blobs: PathBuf,
    seen: Mutex<Seen>,
}

#[derive(Default)]
struct Seen {
    /// The blob directory's modification time when it was last listed in full.
    stamp: Option<SystemTime>,
    /// When that listing began.
    listed_at: Option<SystemTime>,
    /// Blob files already synced.
    synced: HashSet<OsString>,
}

fn io(what: &str, path: &Path, e: std::io::Error) -> LogError {
    LogError::Storage(format!("{what} {}: {e}", path.display()))
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io("cannot sync directory", dir, e))
}

impl DiskSync {
    /// For the sled database open at `dir`; syncs what is there now.
    pub(crate) fn open(dir: &Path) -> Result<Self, LogError> {
        let path = dir.join(LOG_FILE);
        let log = File::open(&path).map_err(|e| io("cannot open", &path, e))?;
        let me = Self {
            log,
            blobs: dir.join(BLOB_DIR),
            seen: Mutex::default(),
        };
        me.sync()?;
        // The directory's own entries (the log file, sled's config, the blob directory).
        sync_dir(dir)?;
        Ok(me)
    }

    /// Makes everything sled flushed so far durable. Call after sled's flush returned.
    pub(crate) fn sync(&self) -> Result<(), LogError> {
        self.log
            .sync_data()
            .map_err(|e| io("cannot sync", Path::new(LOG_FILE), e))?;
        self.sync_blobs()
    }

    /// Whether the blob file `name` was synced (for tests).
    #[cfg(test)]
    pub(crate) fn has_synced(&self, name: &std::ffi::OsStr) -> bool {
        lock(&self.seen).synced.contains(name)
    }

    fn sync_blobs(&self) -> Result<(), LogError> {
        let stamp = match std::fs::metadata(&self.blobs) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot read", &self.blobs, e)),
        };
        let mut seen = lock(&self.seen);
        let settled = match (stamp, seen.stamp, seen.listed_at) {
            (Some(now), Some(then), Some(listed)) => {
                now == then && listed.duration_since(then).is_ok_and(|d| d >= STAMP_SLACK)
            }
            _ => false,
        };
        if settled {
            return Ok(());
        }
        let listed_at = SystemTime::now();
        let entries =
            std::fs::read_dir(&self.blobs).map_err(|e| io("cannot list", &self.blobs, e))?;
        let mut present = HashSet::new();
        let mut new = false;
        for entry in entries {
            let entry = entry.map_err(|e| io("cannot list", &self.blobs, e))?;
            let name = entry.file_name();
            if !seen.synced.contains(&name) {
                match File::open(entry.path()).and_then(|f| f.sync_all()) {
                    Ok(()) => new = true,
                    // Removed by sled in the meantime (an obsolete blob): nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io("cannot sync", &entry.path(), e)),
                }
            }
            present.insert(name);
        }
        if new {
            sync_dir(&self.blobs)?;
        }
        seen.synced = present;
        seen.stamp = stamp;
        seen.listed_at = Some(listed_at);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_blob_files_are_found_and_remembered() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG_FILE), b"log").unwrap();
        let sync = DiskSync::open(dir.path()).unwrap();
        // No blob directory yet: nothing to do.
        sync.sync().unwrap();
        std::fs::create_dir(dir.path().join(BLOB_DIR)).unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("17"), b"blob").unwrap();
        sync.sync().unwrap();
        assert!(lock(&sync.seen).synced.contains(&OsString::from("17")));
        std::fs::remove_file(dir.path().join(BLOB_DIR).join("17")).unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("18"), b"blob").unwrap();
        sync.sync().unwrap();
        let seen = lock(&sync.seen);
        assert!(seen.synced.contains(&OsString::from("18")));
        assert!(
            !seen.synced.contains(&OsString::from("17")),
            "a removed blob is forgotten"
        );
    }
}
