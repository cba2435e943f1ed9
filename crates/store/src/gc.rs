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
//! A [`DeletionLock`] takes those locks for a whole batch with a few lock files: each
//! file it holds locked is renamed (never replacing) from one path's `.lock` name to
//! the next, instead of a new lock file being created and deleted for every path;
//! it holds a group of them at once, so that the paths' validity is re-checked with
//! one query per group.
//! Creating files is what made deleting many paths slow: on ext4 without a journal
//! every new inode is allocated past all the inodes freed in the last minutes, so
//! each creation cost time in proportion to the paths already deleted.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fd::OwnedFd;
use rustix::fs::{
    open, renameat_with, statat, unlinkat, AtFlags, FileType, Mode, OFlags, RenameFlags,
};
use rustix::io::Errno;

use unrooted_format::StorePath;

use crate::error::StoreError;
use crate::store::LocalStore;
use crate::tmp::is_temporary_name;

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

/// Paths a [`DeletionLock`] holds locked at once: their validity is re-checked with
/// one database query per group instead of one per path.
const GROUP: usize = 64;

/// The collector's locks on the paths it deletes, a group at a time, taken without
/// waiting (see the module documentation). Dropped, it releases the last group.
///
/// Every `.lock` name a lock file passes through is first claimed in this process
/// (threads wait for it as for any path lock) and, while the file bears that name,
/// it is the path's lock file, empty and locked, as Nix expects. A process that
/// opened it under an earlier name waits until the file is let go; it is then
/// unlinked and marked stale before it is unlocked, so that process starts over
/// with the current lock file of its path (Nix's protocol). A crash leaves at most
/// `GROUP` empty, unlocked lock files, as a crash of any lock holder does.
pub struct DeletionLock<'a> {
    store: &'a LocalStore,
    /// The real store directory, opened once: every name is resolved relative to
    /// it rather than walked from `/` again.
    dir: Option<OwnedFd>,
    /// The lock files held, one per path of the current group.
    slots: Vec<Option<Carrier>>,
    /// Whether the file system renames without replacing (`renameat2`).
    rename: bool,
}

/// A lock file a [`DeletionLock`] holds locked, its current name, and how many
/// paths it has served.
struct Carrier {
    file: File,
    /// The full path (the key of the store's in-process claims).
    name: PathBuf,
    uses: usize,
}

/// `<base>.lock`: the lock file of the store entry `base`.
fn lock_name(base: &OsStr) -> OsString {
    let mut name = base.to_owned();
    name.push(".lock");
    name
}

impl DeletionLock<'_> {
    fn dir(&mut self) -> Result<&OwnedFd, StoreError> {
        if self.dir.is_none() {
            let path = &self.store.config.real_store_dir;
            let fd = open(
                path,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| StoreError::Read {
                path: path.clone(),
                source: e.into(),
            })?;
            self.dir = Some(fd);
        }
        Ok(self.dir.as_ref().expect("opened above"))
    }

    /// Locks the store entry `base` without waiting, with the lock file of `slot`:
    /// false when a thread of this process or another process holds its lock. The
    /// store directory must be open ([`DeletionLock::dir`]).
    fn acquire(&mut self, slot: usize, base: &OsStr) -> Result<bool, StoreError> {
        let lock_base = lock_name(base);
        let name = self.store.config.real_store_dir.join(&lock_base);
        if !self.store.locks.claim(&name) {
            return Ok(false);
        }
        if self.slots.len() <= slot {
            self.slots.resize_with(slot + 1, || None);
        }
        if self.slots[slot]
            .as_ref()
            .is_some_and(|c| c.uses >= CARRIER_USES)
            || !self.rename
        {
            self.release(slot);
        }
        if let (Some(carrier), Some(dir)) = (self.slots[slot].as_mut(), self.dir.as_ref()) {
            let old = carrier.name.file_name().unwrap_or_default();
            match renameat_with(dir, old, dir, &lock_base, RenameFlags::NOREPLACE) {
                Ok(()) => {
                    let old = std::mem::replace(&mut carrier.name, name);
                    carrier.uses += 1;
                    self.store.locks.unclaim(&old);
                    return Ok(true);
                }
                Err(e) => {
                    // Someone's lock file is there (locked or not), or the file
                    // system cannot rename without replacing: the usual way.
                    if e != Errno::EXIST {
                        self.rename = false;
                    }
                    self.release(slot);
                }
            }
        }
        match crate::lock::open_locked(&name, crate::lock::LockHow::TryExclusive) {
            Ok(Some(file)) => {
                self.slots[slot] = Some(Carrier {
                    file,
                    name,
                    uses: 1,
                });
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

    /// Lets the lock file of `slot` go: unlinked, then marked stale for anyone
    /// waiting for it, then unlocked (Nix's protocol); removing it is only tidying,
    /// so failures are ignored as in Nix.
    fn release(&mut self, slot: usize) {
        if let Some(Carrier { mut file, name, .. }) =
            self.slots.get_mut(slot).and_then(Option::take)
        {
            let _ = fs::remove_file(&name);
            let _ = file.write_all(b"d");
            drop(file);
            self.store.locks.unclaim(&name);
        }
    }

    /// Deletes an invalid path from disk, holding its lock; a valid or busy path is
    /// left alone. The caller invalidated it first (or found it invalid).
    pub fn delete_invalid_path(&mut self, path: &StorePath) -> Result<DeleteOutcome, StoreError> {
        let mut outcomes = Vec::with_capacity(1);
        self.delete_invalid_paths(std::slice::from_ref(path), &mut outcomes)?;
        Ok(outcomes.pop().unwrap_or(DeleteOutcome::Missing))
    }

    /// [`DeletionLock::delete_invalid_path`] for many paths, in order, pushing what
    /// became of each to `outcomes` (so that on an error, those done are known): a
    /// group of them is locked, checked to be still invalid in one query while the
    /// locks are held (an add that registers a path holds its lock), then deleted.
    pub fn delete_invalid_paths(
        &mut self,
        paths: &[StorePath],
        outcomes: &mut Vec<DeleteOutcome>,
    ) -> Result<(), StoreError> {
        self.dir()?;
        let store = self.store;
        for group in paths.chunks(GROUP) {
            let bases: Vec<OsString> = group
                .iter()
                .map(|p| OsString::from(p.to_base_name()))
                .collect();
            let mut locked = Vec::with_capacity(group.len());
            for (slot, base) in bases.iter().enumerate() {
                locked.push(self.acquire(slot, base)?);
            }
            // A pooled reader: the check does not wait for the writer's connection
            // while the collector invalidates the next batch on it (WAL lets a
            // reader see every committed change while another connection writes).
            let locked_paths = group.iter().zip(&locked).filter(|(_, l)| **l);
            let valid = store.reader()?.valid_subset(locked_paths.map(|(p, _)| p))?;
            for ((path, base), locked) in group.iter().zip(&bases).zip(locked) {
                outcomes.push(if !locked {
                    DeleteOutcome::Busy
                } else if valid.contains(path) {
                    DeleteOutcome::StillValid
                } else {
                    let dir = self.dir.as_ref().expect("opened above");
                    delete_entry(dir, base, &store.config.real_store_dir)?
                });
            }
        }
        Ok(())
    }
}

impl Drop for DeletionLock<'_> {
    fn drop(&mut self) {
        for slot in 0..self.slots.len() {
            self.release(slot);
        }
    }
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

    /// The valid paths among `paths`, asked in a few queries.
    pub fn valid_subset<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<std::collections::BTreeSet<StorePath>, StoreError> {
        Ok(self.db().valid_subset(paths)?)
    }

    /// The valid referrers of each of `paths` that has any, asked in a few queries.
    pub fn query_referrers_of_many<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<
        std::collections::BTreeMap<StorePath, std::collections::BTreeSet<StorePath>>,
        StoreError,
    > {
        Ok(self.db().referrers_of_many(paths)?)
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
            dir: None,
            slots: Vec::new(),
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

/// Deletes the entry `base` of the store directory `dir` (its path `parent/base`):
/// a file or symlink with one `unlinkat` after its `statx`, a tree with
/// [`delete_counting`].
fn delete_entry(dir: &OwnedFd, base: &OsStr, parent: &Path) -> Result<DeleteOutcome, StoreError> {
    let err = |source: Errno| StoreError::Delete {
        path: parent.join(base),
        source: source.into(),
    };
    let st = match statat(dir, base, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::NOENT) => return Ok(DeleteOutcome::Missing),
        Err(e) => return Err(err(e)),
    };
    if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
        return delete_counting(&parent.join(base));
    }
    let bytes = if st.st_nlink == 1 {
        u64::try_from(st.st_size).unwrap_or(0)
    } else {
        0
    };
    match unlinkat(dir, base, AtFlags::empty()) {
        Ok(()) => Ok(DeleteOutcome::Deleted { bytes }),
        Err(Errno::NOENT) => Ok(DeleteOutcome::Missing),
        Err(e) => Err(err(e)),
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
