//! What the garbage collector needs from the store: invalidation, deletion from disk,
//! the `.links` pool and the reserved file.
//!
//! Crash safety comes from the order: the collector invalidates a batch of paths in
//! one transaction (referrers before the paths they refer to, which the database's
//! `on delete restrict` also enforces), and only then deletes them from disk. A
//! crash in between leaves paths on disk that are not in the database: garbage that
//! the next collection removes and that an add of the same path replaces. A valid
//! path therefore never has missing files because of the collector.
//!
//! Deleting from disk takes the path's lock without waiting: a held lock means an
//! add or a build is writing the path right now, and the path is skipped rather
//! than deleted under it (and rather than stalling the whole collection).
//!
//! A [`DeletionLock`] takes those locks for a whole batch with one lock file: the
//! file it holds locked is renamed (never replacing) from one path's `.lock` name to
//! the next, instead of a new lock file being created and deleted for every path.
//! Creating files is what made deleting many paths slow: on ext4 without a journal
//! every new inode is allocated past all the inodes freed in the last minutes, so
//! each creation cost time in proportion to the paths already deleted.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{flock, renameat_with, FlockOperation, RenameFlags, CWD};
use rustix::io::Errno;

use unrooted_format::StorePath;

use crate::canonicalise::is_temporary_name;
use crate::error::StoreError;
use crate::store::LocalStore;

/// What became of one entry the collector asked the store to delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Deleted; `bytes` is the size of the files whose last link went with it.
    Deleted {
        /// Bytes freed.
        bytes: u64,
    },
    /// Nothing was on disk.
    Missing,
    /// Its lock is held by an add or a build: left alone.
    Busy,
    /// The path is (again) valid: left alone.
    StillValid,
    /// An entry the collector never deletes (`.links`, a temporary area).
    Protected,
}

/// What pruning `.links` did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinksStats {
    /// Entries removed (no store file used them any more).
    pub removed: u64,
    /// Bytes freed by removing them.
    pub bytes_freed: u64,
    /// Bytes the remaining shared files save (Nix's "currently hard linking saves").
    pub bytes_saved: i64,
}

/// Paths one lock file serves before a [`DeletionLock`] lets it go (and with it
/// any process that opened it meanwhile and waits for it).
const CARRIER_USES: usize = 256;

/// The collector's locks on the paths it deletes, one at a time, taken without
/// waiting (see the module documentation). Dropped, it releases the last one.
///
/// Every `.lock` name the lock file passes through is first claimed in this
/// process (threads wait for it as for any path lock) and, while the file bears
/// that name, it is the path's lock file, empty and locked, as Nix expects. A
/// process that opened it under an earlier name waits until the file is let go;
/// it is then unlinked and marked stale before it is unlocked, so that process
/// starts over with the current lock file of its path (Nix's protocol). A crash
/// leaves at most one empty, unlocked lock file, as a crash of any lock holder does.
pub struct DeletionLock<'a> {
    store: &'a LocalStore,
    carrier: Option<Carrier>,
    uses: usize,
    /// Whether the file system renames without replacing (`renameat2`).
    rename: bool,
}

/// The lock file a [`DeletionLock`] holds locked, and its current name.
struct Carrier {
    file: File,
    name: PathBuf,
}

impl DeletionLock<'_> {
    /// Locks `target` (a path in the real store directory) without waiting: false
    /// when a thread of this process or another process holds its lock.
    fn acquire(&mut self, target: &Path) -> Result<bool, StoreError> {
        let mut name = target.as_os_str().to_owned();
        name.push(".lock");
        let name = PathBuf::from(name);
        if !self.store.locks.claim(&name) {
            return Ok(false);
        }
        if self.uses >= CARRIER_USES || !self.rename {
            self.release();
        }
        if let Some(carrier) = &mut self.carrier {
            match renameat_with(CWD, &carrier.name, CWD, &name, RenameFlags::NOREPLACE) {
                Ok(()) => {
                    let old = std::mem::replace(&mut carrier.name, name);
                    self.store.locks.unclaim(&old);
                    self.uses += 1;
                    return Ok(true);
                }
                Err(e) => {
                    // Someone's lock file is there (locked or not), or the file
                    // system cannot rename without replacing: the usual way.
                    if e != Errno::EXIST {
                        self.rename = false;
                    }
                    self.release();
                }
            }
        }
        match open_and_try_lock(&name) {
            Ok(Some(file)) => {
                self.carrier = Some(Carrier { file, name });
                self.uses = 1;
                Ok(true)
            }
            Ok(None) => {
                self.store.locks.unclaim(&name);
                Ok(false)
            }
            Err(e) => {
                self.store.locks.unclaim(&name);
                Err(e)
            }
        }
    }

    /// Lets the lock file go: unlinked, then marked stale for anyone waiting for it,
    /// then unlocked (Nix's protocol); removing it is only tidying, so failures are
    /// ignored as in Nix.
    fn release(&mut self) {
        if let Some(Carrier { mut file, name }) = self.carrier.take() {
            let _ = fs::remove_file(&name);
            let _ = file.write_all(b"d");
            drop(file);
            self.store.locks.unclaim(&name);
        }
    }

    /// Deletes an invalid path from disk, holding its lock; a valid or busy path is
    /// left alone. The caller invalidated it first (or found it invalid).
    pub fn delete_invalid_path(&mut self, path: &StorePath) -> Result<DeleteOutcome, StoreError> {
        let real = self.store.real_path(path);
        if !self.acquire(&real)? {
            return Ok(DeleteOutcome::Busy);
        }
        if self.store.is_valid_path(path)? {
            return Ok(DeleteOutcome::StillValid);
        }
        delete_counting(&real)
    }
}

impl Drop for DeletionLock<'_> {
    fn drop(&mut self) {
        self.release();
    }
}

/// Opens (creating it if needed) and locks the lock file `name` without waiting:
/// `None` when another process holds it or it is stale (its holder unlinked it
/// after we opened it), as the store's other path locks do.
fn open_and_try_lock(name: &Path) -> Result<Option<File>, StoreError> {
    let err = |source| StoreError::Lock {
        path: name.to_owned(),
        source,
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(name)
        .map_err(err)?;
    match flock(&file, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => {}
        Err(e) if e == Errno::WOULDBLOCK => return Ok(None),
        Err(e) => return Err(err(e.into())),
    }
    if file.metadata().map_err(err)?.size() != 0 {
        return Ok(None);
    }
    Ok(Some(file))
}

/// Suffixes of entries that belong to a store path being built (Nix's build
/// directories and check outputs); they are busy while the path's lock is held.
const BUILD_SUFFIXES: &[&str] = &[".chroot", ".check", ".lock"];

impl LocalStore {
    /// Makes `paths` invalid in one transaction. Referrers must come before the
    /// paths they refer to; a path with a valid referrer outside `paths` makes the
    /// whole batch fail and nothing is invalidated.
    pub fn invalidate_paths(&self, paths: &[StorePath]) -> Result<(), StoreError> {
        Ok(self.db().invalidate_paths(paths)?)
    }

    /// The names in the real store directory (one `readdir`), for the collector's
    /// sweep of invalid leftovers.
    pub fn store_entries(&self) -> Result<Vec<OsString>, StoreError> {
        let dir = &self.config.real_store_dir;
        let err = |source| StoreError::Read {
            path: dir.clone(),
            source,
        };
        let mut out = Vec::new();
        for entry in fs::read_dir(dir).map_err(err)? {
            out.push(entry.map_err(err)?.file_name());
        }
        Ok(out)
    }

    /// A lock for deleting many paths one after the other (see [`DeletionLock`]).
    pub fn deletion_lock(&self) -> DeletionLock<'_> {
        DeletionLock {
            store: self,
            carrier: None,
            uses: 0,
            rename: true,
        }
    }

    /// Deletes an invalid path from disk, holding its lock; a valid or busy path is
    /// left alone. The caller invalidated it first (or found it invalid).
    pub fn delete_invalid_path(&self, path: &StorePath) -> Result<DeleteOutcome, StoreError> {
        self.deletion_lock().delete_invalid_path(path)
    }

    /// Deletes an entry of the store directory that is not a valid path: an invalid
    /// leftover, a stale `.lock` file, a build directory of a dead build, or anything
    /// else that does not belong there. `.links`, this store's temporary areas and
    /// entries whose path lock is held are left alone; a stale lock file is removed
    /// with Nix's protocol (locked, unlinked, then marked).
    pub fn delete_garbage_entry(&self, name: &OsStr) -> Result<DeleteOutcome, StoreError> {
        self.deletion_lock().delete_garbage_entry(name)
    }
}

impl DeletionLock<'_> {
    /// [`LocalStore::delete_garbage_entry`] with this lock for store paths.
    pub fn delete_garbage_entry(&mut self, name: &OsStr) -> Result<DeleteOutcome, StoreError> {
        let store = self.store;
        let bytes = name.as_bytes();
        if bytes == b".links"
            || bytes.is_empty()
            || bytes.contains(&b'/')
            || bytes == b"."
            || bytes == b".."
            || is_temporary_name(bytes)
        {
            return Ok(DeleteOutcome::Protected);
        }
        let real = store.config.real_store_dir.join(name);
        let text = String::from_utf8_lossy(bytes);
        if let Some(stem) = BUILD_SUFFIXES.iter().find_map(|s| text.strip_suffix(s)) {
            let owner = store.config.real_store_dir.join(stem);
            let Some(lock) = store.locks.try_lock(&owner)? else {
                return Ok(DeleteOutcome::Busy);
            };
            if text.ends_with(".lock") {
                // Dropping the lock unlinks the file and marks it stale for anyone
                // who opened it before the unlink.
                drop(lock);
                return Ok(DeleteOutcome::Deleted { bytes: 0 });
            }
            return delete_counting(&real);
        }
        if let Ok(path) = StorePath::from_base_name(&text) {
            return self.delete_invalid_path(&path);
        }
        let Some(_lock) = store.locks.try_lock(&real)? else {
            return Ok(DeleteOutcome::Busy);
        };
        delete_counting(&real)
    }
}

impl LocalStore {
    /// Every valid path with its references and deriver, in one pass over the
    /// database (the collector's liveness computation).
    pub fn query_reference_graph(
        &self,
    ) -> Result<std::collections::BTreeMap<StorePath, unrooted_db::GraphNode>, StoreError> {
        Ok(self.db().reference_graph()?)
    }

    /// Removes `.links` entries no store file links to any more (link count 1).
    pub fn prune_links(&self) -> Result<LinksStats, StoreError> {
        let dir = self.config.real_store_dir.join(".links");
        let err = |source| StoreError::Read {
            path: dir.clone(),
            source,
        };
        let mut stats = LinksStats::default();
        let mut actual: i64 = 0;
        let mut unshared: i64 = 0;
        for entry in fs::read_dir(&dir).map_err(err)? {
            let entry = entry.map_err(err)?;
            let path = entry.path();
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(StoreError::Read { path, source }),
            };
            if meta.nlink() == 1 {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(source) => return Err(StoreError::Delete { path, source }),
                }
                stats.removed += 1;
                stats.bytes_freed += meta.len();
                continue;
            }
            let size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
            actual = actual.saturating_add(size);
            let links = i64::try_from(meta.nlink()).unwrap_or(i64::MAX);
            unshared = unshared.saturating_add(links.saturating_sub(1).saturating_mul(size));
        }
        stats.bytes_saved = unshared - actual;
        Ok(stats)
    }

    /// Deletes `<state>/db/reserved` so a collection can run on a full disk; it is
    /// recreated at the next open.
    pub fn remove_reserved_space(&self) -> Result<(), StoreError> {
        let path = self.config.state_dir.join("db/reserved");
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                Err(StoreError::Delete { path, source: e })
            }
            _ => Ok(()),
        }
    }
}

/// Deletes the tree at `path` (read-only store directories included) and returns the
/// size of the non-directories whose last link it removed, as Nix counts freed bytes.
fn delete_counting(path: &Path) -> Result<DeleteOutcome, StoreError> {
    let err = |p: &Path, source| StoreError::Delete {
        path: p.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(DeleteOutcome::Missing),
        Err(e) => return Err(err(path, e)),
    };
    let mut bytes = 0u64;
    let mut stack = vec![(path.to_path_buf(), meta, false)];
    while let Some((p, meta, visited)) = stack.pop() {
        if !meta.is_dir() {
            if meta.nlink() == 1 {
                bytes += meta.len();
            }
            match fs::remove_file(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(&p, e)),
                _ => continue,
            }
        }
        if visited {
            match fs::remove_dir(&p) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(err(&p, e)),
                _ => continue,
            }
        }
        if meta.mode() & 0o700 != 0o700 {
            fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).map_err(|e| err(&p, e))?;
        }
        let mut children = Vec::new();
        for entry in fs::read_dir(&p).map_err(|e| err(&p, e))? {
            let child = entry.map_err(|e| err(&p, e))?.path();
            match fs::symlink_metadata(&child) {
                Ok(m) => children.push((child, m, false)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(err(&child, e)),
            }
        }
        stack.push((p, meta, true));
        stack.extend(children);
    }
    Ok(DeleteOutcome::Deleted { bytes })
}
