//! Per-path locks, compatible with Nix's `PathLocks`.
//!
//! Two adders of the same path — threads of this process, or other processes,
//! including real Nix tools sharing the store — must not both write it. Nix locks
//! `<real path>.lock` with `flock`; we do the same so that the two interoperate. A
//! lock file that its last holder deleted is marked by one byte written into it after
//! the unlink: a waiter that then gets the lock sees a non-empty file, knows it holds
//! a lock nobody else can see, and starts over (Nix's protocol, byte for byte).
//!
//! Within this process an in-memory mutex per path is taken first, so threads queue
//! in memory instead of each opening the lock file; `flock` alone would also work
//! (each open is a separate lock), but the map keeps the number of descriptors down
//! when many connections add the same path.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, PoisonError};

use rustix::fs::{flock, FlockOperation};

use crate::error::StoreError;

/// The in-process half of path locking: the set of lock files held by some thread.
#[derive(Debug, Default)]
pub(crate) struct LockMap {
    held: Mutex<HashSet<PathBuf>>,
    released: Condvar,
}

/// A held lock on one path; released (and its lock file deleted, as Nix does once a
/// path is finished) on drop.
pub(crate) struct PathLock<'a> {
    map: &'a LockMap,
    key: PathBuf,
    file: Option<File>,
}

/// Opens (creating it, 0600) the lock file `path` as Nix does, read-write; a lock
/// file someone else made that the store owner may not write (a root `nix-store` in
/// local mode makes them root's 0644, and Nix's test suite `touch`es them as root) is
/// opened read-only instead, which `flock` needs no more than.
pub(crate) fn open_lock_file(path: &Path) -> std::io::Result<File> {
    let rw = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path);
    match rw {
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            OpenOptions::new().read(true).open(path).map_err(|_| e)
        }
        other => other,
    }
}

/// Whether a lock file we hold a lock on is no longer the lock: its holder marked it
/// (one byte written) or removed it (no links left) after we opened it.
pub(crate) fn is_stale(meta: &std::fs::Metadata) -> bool {
    meta.size() != 0 || meta.nlink() == 0
}

/// How [`open_locked`] takes its lock file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LockHow {
    /// Exclusively, waiting for other holders; a file that turned stale while we
    /// waited is opened and locked anew (Nix's `PathLocks`).
    Exclusive,
    /// Exclusively without waiting: `None` when another process holds it or it turned
    /// stale, so the caller can skip the path and come back later.
    TryExclusive,
    /// Shared, waiting; for a lock file that is never deleted or marked (`big-lock`),
    /// so it is never stale.
    Shared,
}

/// Opens the lock file `path` ([`open_lock_file`]) and `flock`s it as `how` says: the
/// one way the store takes a lock file. `None` only with [`LockHow::TryExclusive`].
pub(crate) fn open_locked(path: &Path, how: LockHow) -> Result<Option<File>, StoreError> {
    let err = |source| StoreError::Lock {
        path: path.to_owned(),
        source,
    };
    loop {
        let file = open_lock_file(path).map_err(err)?;
        let operation = match how {
            LockHow::Exclusive => FlockOperation::LockExclusive,
            LockHow::TryExclusive => FlockOperation::NonBlockingLockExclusive,
            LockHow::Shared => FlockOperation::LockShared,
        };
        match flock(&file, operation) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::WOULDBLOCK && how == LockHow::TryExclusive => {
                return Ok(None)
            }
            Err(e) => return Err(err(e.into())),
        }
        if how == LockHow::Shared || !is_stale(&file.metadata().map_err(err)?) {
            return Ok(Some(file));
        }
        if how == LockHow::TryExclusive {
            return Ok(None);
        }
        tracing::debug!(path = %path.display(), "lock file became stale, retrying");
    }
}

impl LockMap {
    /// Locks `target` (a path in the real store directory) by locking
    /// `<target>.lock`, waiting as long as another holder needs.
    pub(crate) fn lock(&self, target: &Path) -> Result<PathLock<'_>, StoreError> {
        let mut lock_path = target.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            while held.contains(&lock_path) {
                held = self
                    .released
                    .wait(held)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            held.insert(lock_path.clone());
        }
        // From here on the drop of `lock` releases the in-process claim, also when
        // taking the file lock fails.
        let mut lock = PathLock {
            map: self,
            key: lock_path,
            file: None,
        };
        lock.file = open_locked(&lock.key, LockHow::Exclusive)?;
        Ok(lock)
    }
}

impl LockMap {
    /// Locks `target` like [`LockMap::lock`] but without waiting: `None` when a
    /// thread of this process or another process holds it (an add or a build is
    /// writing the path), so the collector can skip the path instead of stalling.
    pub(crate) fn try_lock(&self, target: &Path) -> Result<Option<PathLock<'_>>, StoreError> {
        let mut lock_path = target.as_os_str().to_owned();
        lock_path.push(".lock");
        let lock_path = PathBuf::from(lock_path);
        {
            let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
            if !held.insert(lock_path.clone()) {
                return Ok(None);
            }
        }
        let mut lock = PathLock {
            map: self,
            key: lock_path,
            file: None,
        };
        // A stale file (its holder deleted it after we opened it) is a lock nobody
        // else can see: "busy", as when another process holds it.
        Ok(open_locked(&lock.key, LockHow::TryExclusive)?.map(|file| {
            lock.file = Some(file);
            lock
        }))
    }
}

impl LockMap {
    /// Claims `lock_path` (a `.lock` file) for a thread of this process without
    /// touching the file: false when another thread holds it. The collector's
    /// deletion lock carries one file lock from path to path and claims each name
    /// here first, so threads of this process wait for it as for a [`PathLock`].
    pub(crate) fn claim(&self, lock_path: &Path) -> bool {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.insert(lock_path.to_owned())
    }

    /// Gives up a claim made by [`LockMap::claim`] and wakes the threads waiting for
    /// it.
    pub(crate) fn unclaim(&self, lock_path: &Path) {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.remove(lock_path);
        self.released.notify_all();
    }
}

/// The locks of a build's outputs (`<output>.lock`, Nix's `outputLocks`), held from
/// before the builder starts until the outputs are registered, so that another process
/// (a `nix-store` in local mode on the same store, the collector) sees the build;
/// released, and the lock files removed, on drop.
pub struct OutputLocks<'a> {
    paths: std::collections::BTreeSet<unrooted_format::StorePath>,
    _locks: Vec<PathLock<'a>>,
}

impl std::fmt::Debug for OutputLocks<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputLocks")
            .field("paths", &self.paths)
            .finish()
    }
}

impl OutputLocks<'_> {
    /// Whether `path`'s lock is among these.
    pub fn holds(&self, path: &unrooted_format::StorePath) -> bool {
        self.paths.contains(path)
    }
}

impl crate::LocalStore {
    /// Locks the output paths of a build, in one global order, waiting for other
    /// holders.
    pub fn lock_outputs(
        &self,
        paths: &std::collections::BTreeSet<unrooted_format::StorePath>,
    ) -> Result<OutputLocks<'_>, StoreError> {
        let mut locks = Vec::with_capacity(paths.len());
        for p in paths {
            locks.push(self.locks.lock(&self.real_path(p))?);
        }
        Ok(OutputLocks {
            paths: paths.clone(),
            _locks: locks,
        })
    }
}

impl Drop for PathLock<'_> {
    fn drop(&mut self) {
        if let Some(mut file) = self.file.take() {
            // Unlink first, then mark the file stale for anyone already waiting on it;
            // removing the file is only tidying, so failures are ignored as in Nix.
            let _ = std::fs::remove_file(&self.key);
            let _ = file.write_all(b"d");
        }
        let mut held = self.map.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.remove(&self.key);
        self.map.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn lock_files_of_others_lock_read_only_and_unlinked_ones_are_stale() {
        let dir = tempfile::tempdir().unwrap();
        // A lock file someone else made, read-only to us (as a root client's `touch`
        // is to the store owner): flock needs no write access.
        let p = dir.path().join("x.lock");
        std::fs::write(&p, b"").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o444)).unwrap();
        let ro = OpenOptions::new().read(true).open(&p).unwrap();
        flock(&ro, FlockOperation::NonBlockingLockExclusive).unwrap();
        assert!(!is_stale(&ro.metadata().unwrap()));
        // Its holder removed it after we opened it: stale, even though nobody could
        // write the marker byte.
        std::fs::remove_file(&p).unwrap();
        assert!(is_stale(&ro.metadata().unwrap()));
        // open_lock_file makes a missing one, 0600.
        let f = open_lock_file(&p).unwrap();
        assert_eq!(f.metadata().unwrap().mode() & 0o777, 0o600);
    }

    #[test]
    fn one_opener_for_every_way_of_locking() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("y.lock");
        let held = open_locked(&p, LockHow::Exclusive).unwrap().unwrap();
        // Held by another open file description: busy.
        assert!(open_locked(&p, LockHow::TryExclusive).unwrap().is_none());
        drop(held);
        let again = open_locked(&p, LockHow::TryExclusive).unwrap().unwrap();
        // Marked stale by its holder (Nix's protocol): busy for a try.
        (&again).write_all(b"d").unwrap();
        drop(again);
        assert!(open_locked(&p, LockHow::TryExclusive).unwrap().is_none());
        // A shared lock never looks at the marker.
        let a = open_locked(&p, LockHow::Shared).unwrap().unwrap();
        let b = open_locked(&p, LockHow::Shared).unwrap().unwrap();
        drop((a, b));
    }
}
