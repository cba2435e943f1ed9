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

use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};

use rustix::fs::{self as rfs, flock, AtFlags, FileType, FlockOperation, Mode, OFlags};
use rustix::io::Errno;

use crate::delete::delete_tree;
use crate::error::StoreError;

/// Prefix of every temporary name this crate creates in the store directory.
pub const TEMP_PREFIX: &str = ".unrooted-tmp-";

/// Whether a name in the store directory is one of our temporary entries.
pub(crate) fn is_temporary_name(name: &[u8]) -> bool {
    name.starts_with(TEMP_PREFIX.as_bytes())
}

/// A locked private directory inside the store for work in progress.
///
/// It exists only while it is used: [`TempArea::tidy`] removes it once empty when no
/// user ([`crate::StoreUse`], a daemon's connection) is left, and the next
/// [`TempArea::new_path`] makes it again (locked anew), so that between operations
/// the store directory holds nothing of ours, as with Nix (its test suite ends with
/// `rmdir $NIX_STORE_DIR`). A `RwLock` keeps a removal from slipping in between a new
/// name and its use.
#[derive(Debug)]
pub(crate) struct TempArea {
    dir: PathBuf,
    // Held open for the flock; dropping it releases the area to the next sweeper.
    lock: Mutex<Option<File>>,
    gate: RwLock<()>,
    users: AtomicUsize,
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
        sweep(store, &store_lock)?;
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
            lock: Mutex::new(Some(lock)),
            gate: RwLock::new(()),
            users: AtomicUsize::new(0),
            counter: AtomicU64::new(0),
        })
    }

    /// One more user: the area is not removed until it is gone.
    pub(crate) fn enter(&self) {
        self.users.fetch_add(1, Ordering::AcqRel);
    }

    /// One user fewer; the last removes the area if it is empty.
    pub(crate) fn leave(&self) {
        if self.users.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.tidy();
        }
    }

    /// Removes the area if nobody uses it and it is empty (emptied sandbox roots kept
    /// for the next build, or work in progress of a thread outside any user, keep it).
    pub(crate) fn tidy(&self) {
        let _gate = self.gate.write().unwrap_or_else(PoisonError::into_inner);
        if self.users.load(Ordering::Acquire) != 0 {
            return;
        }
        let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        if fs::remove_dir(&self.dir).is_ok() {
            *lock = None;
        }
    }

    /// A fresh name inside the area (nothing exists there yet).
    /// Makes the area's directory again when something removed it (with the store
    /// directory around it); the flock of the old one is lost with it.
    pub(crate) fn recreate(&self) -> Result<(), StoreError> {
        let mut lock = self.lock.lock().unwrap_or_else(PoisonError::into_inner);
        match fs::DirBuilder::new().mode(0o700).create(&self.dir) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(StoreError::CreateLayout {
                    path: self.dir.clone(),
                    source: e,
                })
            }
            Err(_) if lock.is_some() => return Ok(()),
            _ => {}
        }
        // A new directory (or one we hold no lock on): lock it, so no other store
        // instance sweeps it as a dead one.
        let file = open_dir(&self.dir).map_err(|source| StoreError::Lock {
            path: self.dir.clone(),
            source,
        })?;
        flock(&file, FlockOperation::NonBlockingLockExclusive).map_err(|e| StoreError::Lock {
            path: self.dir.clone(),
            source: e.into(),
        })?;
        *lock = Some(file);
        Ok(())
    }

    /// A fresh name inside the area, which exists (made again if it was removed);
    /// nothing exists at the name yet.
    pub(crate) fn new_path(&self, what: &str) -> PathBuf {
        let _gate = self.gate.read().unwrap_or_else(PoisonError::into_inner);
        if let Err(e) = self.recreate() {
            // The caller's creation fails with the cause.
            tracing::warn!("the temporary area: {e}");
        }
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

/// Deletes every temporary entry in `store` (open as `store_fd`) that no live process
/// holds.
///
/// Only entries named [`TEMP_PREFIX`]`…` are considered, and store paths are named
/// `<hash>-<name>`, so nothing valid is ever touched: a finished path leaves its area
/// by one `rename` to such a name, and the removal never follows a symlink
/// ([`remove_leftover`]). An entry that cannot be removed, or whose lock cannot be
/// tried (so it might be live), is logged and skipped rather than failing the open;
/// only an unreadable store directory is an error.
fn sweep(store: &Path, store_fd: &File) -> Result<(), StoreError> {
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
        let name = entry.file_name();
        let opened = match open_dir(&path) {
            // A live area is its owner's 0700, so one the owner cannot open is dead
            // (a builder's `chmod 000` given back to the owner as it was).
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                match open_subdir(store_fd.as_fd(), &name) {
                    Ok(fd) => Ok(File::from(fd)),
                    Err(e) => {
                        let source = e.into();
                        warn_kept(
                            &path,
                            &StoreError::Delete {
                                path: path.clone(),
                                source,
                            },
                        );
                        continue;
                    }
                }
            }
            other => other,
        };
        // Not a directory (or vanished): still ours by its name, and nobody can hold
        // a lock on it. A directory is kept locked while it is deleted.
        let held = match opened {
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
        if let Err(e) = remove_leftover(store_fd.as_fd(), &name, &path, held) {
            warn_kept(&path, &e);
        }
    }
    Ok(())
}

const DIR_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::NOFOLLOW)
    .union(OFlags::CLOEXEC);

/// Removes the leftover `name` of the store directory `store_fd` (shown as `path`)
/// and everything below it; `top` is the leftover opened as a directory, `None` when
/// it is not one.
///
/// Every step goes through a descriptor of a directory opened with `O_NOFOLLOW` from
/// its parent's descriptor, and modes are changed through descriptors too, never by
/// a path: a symlink in the leftover, or one swapped in by a process that still ran in
/// it (a killed daemon's dying build), is removed as a link, and nothing outside the
/// leftover, least of all a valid path, is ever opened, emptied or chmodded. For the
/// same reason the walk keeps one descriptor per level rather than climbing back by
/// `..`, which a directory renamed meanwhile would lead elsewhere. A name that
/// vanished meanwhile is as good as removed.
fn remove_leftover(
    store_fd: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
    top: Option<File>,
) -> Result<(), StoreError> {
    let failed = |names: &[OsString], source: Errno| StoreError::Delete {
        path: names.iter().fold(path.to_path_buf(), |p, n| p.join(n)),
        source: source.into(),
    };
    let Some(top) = top else {
        return match rfs::unlinkat(store_fd, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => Ok(()),
            Err(e) => Err(failed(&[], e)),
        };
    };
    let top = OwnedFd::from(top);
    make_removable(&top).map_err(|e| failed(&[], e))?;
    // The open directories from the top down, each but the first with its name in
    // the one above.
    let mut dirs: Vec<OwnedFd> = vec![top];
    let mut names: Vec<OsString> = Vec::new();
    loop {
        let cur = dirs.last().expect("the top stays until the end");
        match empty_files_find_subdir(cur).map_err(|(n, e)| {
            let mut at = names.clone();
            at.extend(n);
            failed(&at, e)
        })? {
            Some(sub) => {
                let opened = open_subdir(cur.as_fd(), &sub);
                names.push(sub);
                match opened {
                    Ok(fd) => dirs.push(fd),
                    // Gone meanwhile: nothing left to remove there.
                    Err(Errno::NOENT) => {
                        names.pop();
                    }
                    Err(e) => return Err(failed(&names, e)),
                }
            }
            None => {
                dirs.pop();
                let (parent, done) = match (dirs.last(), names.pop()) {
                    (Some(parent), Some(done)) => (parent.as_fd(), done),
                    _ => (store_fd, name.to_owned()),
                };
                match rfs::unlinkat(parent, &done, AtFlags::REMOVEDIR) {
                    Ok(()) | Err(Errno::NOENT) => {}
                    Err(e) => {
                        let mut at = names.clone();
                        if !dirs.is_empty() {
                            at.push(done);
                        }
                        return Err(failed(&at, e));
                    }
                }
                if dirs.is_empty() {
                    return Ok(());
                }
            }
        }
    }
}

/// Gives the owner full access to the directory `dir` (a read-only canonicalised tree,
/// a builder's `chmod 500`), so its entries can be removed.
fn make_removable(dir: &OwnedFd) -> Result<(), Errno> {
    let st = rfs::fstat(dir)?;
    if st.st_mode & 0o700 != 0o700 {
        rfs::fchmod(dir, Mode::RWXU)?;
    }
    Ok(())
}

/// Opens the subdirectory `name` of `dir`, never following a symlink, and makes it
/// removable ([`make_removable`]).
fn open_subdir(dir: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    let fd = match rfs::openat(dir, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ACCESS) => {
            // Unreadable to its owner (a builder's `chmod 000`). chmod by name would
            // follow a symlink swapped in meanwhile, so the mode is changed through an
            // `O_PATH` handle on the entry itself, checked to be a directory, by its
            // `/proc/self/fd` link (how the C library changes a mode without following).
            let handle = rfs::openat(
                dir,
                name,
                OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            if FileType::from_raw_mode(rfs::fstat(&handle)?.st_mode) != FileType::Directory {
                return Err(Errno::NOTDIR);
            }
            rfs::chmod(
                format!("/proc/self/fd/{}", handle.as_raw_fd()).as_str(),
                Mode::RWXU,
            )?;
            rfs::openat(dir, name, DIR_FLAGS, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    make_removable(&fd)?;
    Ok(fd)
}

/// Unlinks every entry of `dir` that is not a directory and returns the first
/// subdirectory's name, or `None` once `dir` is empty. `Err` names the entry that
/// could not be removed, if it was one.
fn empty_files_find_subdir(dir: &OwnedFd) -> Result<Option<OsString>, (Option<OsString>, Errno)> {
    let entries = rfs::Dir::read_from(dir).map_err(|e| (None, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| (None, e))?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name);
        // unlink never follows a symlink; a directory answers EISDIR.
        match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) | Err(Errno::NOENT) => {}
            Err(Errno::ISDIR) => return Ok(Some(name.to_owned())),
            Err(e) => return Err((Some(name.to_owned()), e)),
        }
    }
    Ok(None)
}

/// The one warning for a leftover `path` that `error` kept from being removed.
fn warn_kept(path: &Path, error: &StoreError) {
    let why = unrooted_format::error_chain(error);
    tracing::warn!(
        "cannot remove {}, a temporary leftover of an earlier run ({why}); it is never a valid store path, so the store opens without it, but it keeps its space until an administrator removes it as root (rm -rf {})",
        path.display(),
        path.display()
    );
}
