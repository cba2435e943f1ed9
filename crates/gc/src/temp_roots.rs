//! Temporary roots: paths connections are using, paths being added or built, and
//! the temporary roots files of other processes sharing the store.
//!
//! The daemon's own temporary roots live in memory, in a [`TempRoots`] registry.
//! The registry is also the lock between the collector and everyone else: before the
//! collector invalidates a path it marks it *pending* under the registry's mutex, and
//! [`TempRoots::add`] waits while its path is pending. So a path is either rooted
//! before the collector's final check (and kept) or deleted before the root is
//! taken (and the caller, which checks validity after `add`, sees it is gone). This
//! is Nix's protocol with the GC socket, done with a mutex inside one process.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};

use rustix::fs::{flock, FlockOperation};
use unrooted_format::{StoreDir, StorePath};

use crate::error::GcError;

/// Owner ids handed out by [`TempRoots::hold`]; connection ids chosen by the daemon
/// stay below this.
const GUARD_OWNERS: u64 = 1 << 63;

/// The daemon's temporary roots, by owner (a connection id, or a guard).
#[derive(Debug, Default)]
pub struct TempRoots {
    state: Mutex<State>,
    released: Condvar,
    next_guard: AtomicU64,
}

#[derive(Debug, Default)]
struct State {
    roots: BTreeMap<StorePath, BTreeSet<u64>>,
    pending: BTreeSet<StorePath>,
}

/// Temporary roots held for the duration of an add or a build; dropped, they go.
#[derive(Debug)]
pub struct TempRootGuard<'a> {
    registry: &'a TempRoots,
    owner: u64,
}

impl Drop for TempRootGuard<'_> {
    fn drop(&mut self) {
        self.registry.remove_owner(self.owner);
    }
}

impl TempRoots {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a pair of sets updated in single statements: still consistent
        // after a panic elsewhere.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Makes `path` a temporary root of `owner` (a connection id below 2^63),
    /// waiting while the collector is deleting it. The caller must check that the
    /// path is valid *after* this returns.
    pub fn add(&self, owner: u64, path: StorePath) {
        let mut state = self.lock();
        while state.pending.contains(&path) {
            state = self
                .released
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
        state.roots.entry(path).or_default().insert(owner);
    }

    /// Roots `paths` until the guard is dropped (an add or a build in progress).
    pub fn hold(&self, paths: impl IntoIterator<Item = StorePath>) -> TempRootGuard<'_> {
        let owner = GUARD_OWNERS | self.next_guard.fetch_add(1, Ordering::Relaxed);
        for p in paths {
            self.add(owner, p);
        }
        TempRootGuard {
            registry: self,
            owner,
        }
    }

    /// Drops every temporary root of `owner` (a connection closed).
    pub fn remove_owner(&self, owner: u64) {
        let mut state = self.lock();
        state.roots.retain(|_, owners| {
            owners.remove(&owner);
            !owners.is_empty()
        });
    }

    /// Every temporary root and its owners (FindRoots shows `{temp:<owner>}`).
    pub fn snapshot(&self) -> BTreeMap<StorePath, BTreeSet<u64>> {
        self.lock().roots.clone()
    }

    /// Whether `path` is rooted.
    pub fn contains(&self, path: &StorePath) -> bool {
        self.lock().roots.contains_key(path)
    }

    /// The collector's final check: of `candidates`, marks pending and returns those
    /// that `keep` does not reject while the registry is locked, so no root can be
    /// added to them until [`TempRoots::finish_deletion`].
    pub(crate) fn begin_deletion(
        &self,
        candidates: &[StorePath],
        mut keep: impl FnMut(&StorePath, &BTreeMap<StorePath, BTreeSet<u64>>) -> bool,
    ) -> Vec<StorePath> {
        let mut state = self.lock();
        let mut accepted = Vec::new();
        for c in candidates {
            if state.roots.contains_key(c) || keep(c, &state.roots) {
                continue;
            }
            state.pending.insert(c.clone());
            accepted.push(c.clone());
        }
        accepted
    }

    /// Ends the pending state of `paths` and wakes waiting [`TempRoots::add`]s.
    pub(crate) fn finish_deletion(&self, paths: &[StorePath]) {
        let mut state = self.lock();
        for p in paths {
            state.pending.remove(p);
        }
        self.released.notify_all();
    }
}

/// Largest temporary roots file read (a process rooting a million paths).
const MAX_TEMP_ROOTS_FILE: u64 = 256 << 20;

/// Reads the temporary roots of other live processes sharing the store (Nix's
/// `<state>/temproots/<pid>` files, NUL-separated paths, kept locked by their
/// owner) and removes the files of dead processes.
pub(crate) fn read_temp_roots_files(
    state_dir: &Path,
    store_dir: &StoreDir,
) -> Result<BTreeSet<StorePath>, GcError> {
    let dir = state_dir.join("temproots");
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| GcError::ReadTempRoots { path, source }
    };
    let mut out = BTreeSet::new();
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(err(&dir)(e)),
    };
    for entry in entries {
        let path = entry.map_err(err(&dir))?.path();
        let mut file = match fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(err(&path)(e)),
        };
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {
                // Its owner is gone (it holds its file locked while alive).
                tracing::debug!(path = %path.display(), "removing stale temporary roots file");
                match fs::remove_file(&path) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(&path)(e)),
                    // Marks the unlinked file for a process that opened it just before
                    // (Nix's protocol: a non-empty new file means "start over").
                    _ => {
                        let _ = file.write_all(b"d");
                        continue;
                    }
                }
            }
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => {}
            Err(e) => return Err(err(&path)(e.into())),
        }
        let mut bytes = Vec::new();
        (&mut file)
            .take(MAX_TEMP_ROOTS_FILE)
            .read_to_end(&mut bytes)
            .map_err(err(&path))?;
        for item in bytes.split(|&b| b == 0).filter(|i| !i.is_empty()) {
            if let Some(p) = crate::roots::top_level(store_dir, item) {
                out.insert(p);
            }
        }
    }
    Ok(out)
}
