//! The store's private temporary area, and removal of earlier ones left by a crash.
//!
//! Everything being added is first written below `<store>/.unrooted-tmp-<pid>-<nanos>/`,
//! a directory of mode 0700 that this store instance holds an exclusive `flock` on
//! for as long as it is open. It lies inside the store directory so that a finished
//! path reaches its final name with one `rename` on the same file system. A process
//! that dies loses its lock with it; the next store to open finds the area unlocked
//! and deletes it. An area whose lock is held belongs to a live process and is left
//! alone. Creating an area and sweeping old ones happen under a `flock` of the store
//! directory itself, so a sweeper never sees a new area before its owner locked it.
//!
//! A leftover the store owner cannot remove (a build's tree still owned by subordinate
//! ids after a daemon was killed and the host then lost its ranges, a file root put
//! there) does not stop the store from opening: its name keeps it out of every query
//! and from ever becoming valid, so it costs space, not correctness. The sweep warns,
//! naming it, and goes on.

use std::fs::{self, File};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{flock, FlockOperation, OFlags};

use crate::canonicalise::{delete_tree, is_temporary_name};
use crate::error::StoreError;

/// Prefix of every temporary name this crate creates in the store directory.
pub const TEMP_PREFIX: &str = ".unrooted-tmp-";

/// A locked private directory inside the store for work in progress.
#[derive(Debug)]
pub(crate) struct TempArea {
    dir: PathBuf,
    // Held open for the flock; dropping it releases the area to the next sweeper.
    _lock: File,
    counter: AtomicU64,
}

impl TempArea {
    /// Sweeps dead areas in `store` and creates this instance's.
    pub(crate) fn create(store: &Path) -> Result<Self, StoreError> {
        let store_lock = open_dir(store).map_err(|source| StoreError::Lock {
            path: store.to_owned(),
            source,
        })?;
        flock(&store_lock, FlockOperation::LockExclusive).map_err(|e| StoreError::Lock {
            path: store.to_owned(),
            source: e.into(),
        })?;
        sweep(store)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let mut attempt = 0u32;
        let dir = loop {
            let dir = store.join(format!(
                "{TEMP_PREFIX}{}-{nanos}-{attempt}",
                std::process::id()
            ));
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => break dir,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempt < 100 => {
                    attempt += 1;
                }
                Err(source) => return Err(StoreError::CreateLayout { path: dir, source }),
            }
        };
        let lock = open_dir(&dir).map_err(|source| StoreError::Lock {
            path: dir.clone(),
            source,
        })?;
        flock(&lock, FlockOperation::NonBlockingLockExclusive).map_err(|e| StoreError::Lock {
            path: dir.clone(),
            source: e.into(),
        })?;
        drop(store_lock);
        Ok(Self {
            dir,
            _lock: lock,
            counter: AtomicU64::new(0),
        })
    }

    /// A fresh name inside the area (nothing exists there yet).
    pub(crate) fn new_path(&self, what: &str) -> PathBuf {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.dir.join(format!("{what}-{n}"))
    }
}

impl Drop for TempArea {
    fn drop(&mut self) {
        // Normally empty by now; anything left is garbage of failed operations.
        if let Err(e) = delete_tree(&self.dir) {
            tracing::warn!(error = %e, "could not remove the temporary area");
        }
    }
}

fn open_dir(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC).bits() as i32)
        .open(path)
}

/// Deletes every temporary entry in `store` that no live process holds.
///
/// Only entries named [`TEMP_PREFIX`]`…` are considered, and store paths are named
/// `<hash>-<name>`, so nothing valid is ever touched: a finished path leaves its area
/// by one `rename` to such a name. An entry that cannot be removed, or whose lock
/// cannot be tried (so it might be live), is logged and skipped rather than failing
/// the open; only an unreadable store directory is an error.
fn sweep(store: &Path) -> Result<(), StoreError> {
    let read = fs::read_dir(store).map_err(|source| StoreError::Read {
        path: store.to_owned(),
        source,
    })?;
    for entry in read {
        let entry = entry.map_err(|source| StoreError::Read {
            path: store.to_owned(),
            source,
        })?;
        if !is_temporary_name(entry.file_name().as_bytes()) {
            continue;
        }
        let path = entry.path();
        // Not a directory (or vanished): still ours by its name, and nobody can hold
        // a lock on it. A directory is kept locked while it is deleted.
        let _held = match open_dir(&path) {
            Ok(dir) => match flock(&dir, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => Some(dir),
                // A live store instance owns it.
                Err(e) if e == rustix::io::Errno::WOULDBLOCK => continue,
                Err(e) => {
                    tracing::warn!(
                        "not removing {}, a temporary leftover of an earlier run: cannot tell whether a running store still uses it (locking it failed: {})",
                        path.display(),
                        io::Error::from(e)
                    );
                    continue;
                }
            },
            Err(_) => None,
        };
        tracing::info!(path = %path.display(), "removing temporary leftover of an earlier run");
        if let Err(e) = delete_tree(&path) {
            warn_kept(&path, &e);
        }
    }
    Ok(())
}

/// The one warning for a leftover `path` that `error` kept from being removed.
fn warn_kept(path: &Path, error: &StoreError) {
    let mut why = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(s) = source {
        why.push_str(": ");
        why.push_str(&s.to_string());
        source = s.source();
    }
    tracing::warn!(
        "cannot remove {}, a temporary leftover of an earlier run ({why}); it is never a valid store path, so the store opens without it, but it keeps its space until an administrator removes it as root (rm -rf {})",
        path.display(),
        path.display()
    );
}
