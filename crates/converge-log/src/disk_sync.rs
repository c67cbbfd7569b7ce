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
/// every change that stamp stands for; an unchanged stamp then means nothing new. Local file
/// systems are assumed (a network one's server clock may differ from ours).
const STAMP_SLACK: Duration = Duration::from_millis(100);
/// The same for a file system that keeps whole seconds only (its stamps have no fraction).
const COARSE_STAMP_SLACK: Duration = Duration::from_millis(2_100);

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

/// `fsync` of a file or a directory (a directory's sync makes its entries durable).
fn fsync(path: &Path) -> std::io::Result<()> {
    File::open(path)?.sync_all()
}

fn sync_dir(dir: &Path) -> Result<(), LogError> {
    fsync(dir).map_err(|e| io("cannot sync directory", dir, e))
}

/// Makes the entries of `path`'s directory (a creation, a rename) durable.
pub(crate) fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => fsync(p),
        _ => fsync(Path::new(".")),
    }
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
        // Nothing is in sled yet: no blob is being written.
        me.sync(&|| {})?;
        // sled's config, which it never syncs, and the directory's own entries (the log
        // file, the config, the blob directory), and the directory's entry in its parent.
        let conf = dir.join("conf");
        if conf.exists() {
            fsync(&conf).map_err(|e| io("cannot sync", &conf, e))?;
        }
        sync_dir(dir)?;
        sync_parent(dir).map_err(|e| io("cannot sync the directory holding", dir, e))?;
        Ok(me)
    }

    /// Makes everything sled flushed so far durable. Call after sled's flush returned, with
    /// `quiesce` returning once no call into sled that began before it is still running
    /// (sled writes a blob file in several steps within one call).
    pub(crate) fn sync(&self, quiesce: &dyn Fn()) -> Result<(), LogError> {
        self.log
            .sync_data()
            .map_err(|e| io("cannot sync", Path::new(LOG_FILE), e))?;
        self.sync_blobs(quiesce)
    }

    /// Whether the blob file `name` was synced (for tests).
    #[cfg(test)]
    pub(crate) fn has_synced(&self, name: &std::ffi::OsStr) -> bool {
        lock(&self.seen).synced.contains(name)
    }

    /// Syncs blob files created since the last call (and the blob directory), only.
    pub(crate) fn sync_blobs(&self, quiesce: &dyn Fn()) -> Result<(), LogError> {
        let stamp = match std::fs::metadata(&self.blobs) {
            Ok(m) => m.modified().ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io("cannot read", &self.blobs, e)),
        };
        let mut seen = lock(&self.seen);
        let settled = match (stamp, seen.stamp, seen.listed_at) {
            (Some(now), Some(then), Some(listed)) => {
                let whole_seconds = then
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .is_ok_and(|d| d.subsec_nanos() == 0);
                let slack = if whole_seconds {
                    COARSE_STAMP_SLACK
                } else {
                    STAMP_SLACK
                };
                now == then && listed.duration_since(then).is_ok_and(|d| d >= slack)
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
        let mut fresh = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io("cannot list", &self.blobs, e))?;
            let name = entry.file_name();
            if !seen.synced.contains(&name) {
                fresh.push((name.clone(), entry.path()));
            }
            present.insert(name);
        }
        if !fresh.is_empty() {
            // A blob sled is still writing may be among them: let every call into sled that
            // is running now end, so each listed file is whole when synced (sled never
            // writes to a blob file again once the call that made it has returned).
            quiesce();
            for (name, path) in fresh {
                match fsync(&path) {
                    Ok(()) => {}
                    // Removed by sled in the meantime (an obsolete blob): nothing to keep.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        present.remove(&name);
                    }
                    Err(e) => return Err(io("cannot sync", &path, e)),
                }
            }
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
        let quiesced = std::cell::Cell::new(0);
        let quiesce = || quiesced.set(quiesced.get() + 1);
        // No blob directory yet: nothing to do.
        sync.sync(&quiesce).unwrap();
        std::fs::create_dir(dir.path().join(BLOB_DIR)).unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("17"), b"blob").unwrap();
        sync.sync(&quiesce).unwrap();
        assert!(sync.has_synced(std::ffi::OsStr::new("17")));
        assert_eq!(quiesced.get(), 1, "a new blob waits for sled's calls first");
        // Nothing new: no wait.
        sync.sync(&quiesce).unwrap();
        assert_eq!(quiesced.get(), 1);
        std::fs::remove_file(dir.path().join(BLOB_DIR).join("17")).unwrap();
        std::fs::write(dir.path().join(BLOB_DIR).join("18"), b"blob").unwrap();
        sync.sync(&quiesce).unwrap();
        assert!(sync.has_synced(std::ffi::OsStr::new("18")));
        assert!(
            !sync.has_synced(std::ffi::OsStr::new("17")),
            "a removed blob is forgotten"
        );
    }
}
