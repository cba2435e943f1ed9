//! Removing a sandbox root or build directory after the build, whatever the builder
//! left in it: directories it made unreadable (`mkdir x; chmod 000 x`), read-only
//! directories, trees deeper than any path or descriptor limit.

use std::ffi::{OsStr, OsString};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};
use rustix::io::Errno;

use crate::error::CleanupError;

/// Removes `path` and everything below it, without following symlinks. A missing path
/// is not an error.
///
/// Directories are made searchable and writable (0700) before they are emptied, which
/// the owner may always do: entries the builder created are owned by the daemon user,
/// since the builder's uid maps to it. Descent keeps two descriptors and one name per
/// level, so depth is bounded by memory, not by `RLIMIT_NOFILE` or the stack.
///
/// Call it only once the sandbox is gone: nothing may be changing the tree meanwhile.
pub fn remove_tree(path: &Path) -> Result<(), CleanupError> {
    clear(path, true)
}

/// Removes everything below the directory `path` as [`remove_tree`] does, but keeps
/// `path` itself (its mode may have been changed to 0700), so that it can be used
/// again: making and removing directories is what a build's file-system set-up
/// spends most on (a new inode, and a freed block to discard, each time).
pub fn empty_dir(path: &Path) -> Result<(), CleanupError> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| CleanupError::new(path, e))?;
    if !meta.is_dir() {
        return Err(CleanupError::new(path, Errno::NOTDIR));
    }
    clear(path, false)
}

fn clear(path: &Path, remove_top: bool) -> Result<(), CleanupError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(CleanupError::new(path, e)),
    };
    if !meta.is_dir() {
        return std::fs::remove_file(path).map_err(|e| CleanupError::new(path, e));
    }
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(CleanupError::new(path, Errno::INVAL));
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let top_parent = rfs::open(
        parent,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| CleanupError::new(parent, e))?;

    let mut names: Vec<OsString> = Vec::new();
    let shown = |names: &[OsString]| -> PathBuf {
        let mut p = path.to_path_buf();
        p.extend(names);
        p
    };
    let mut cur =
        open_dir_forcing(top_parent.as_fd(), name).map_err(|e| CleanupError::new(path, e))?;
    loop {
        match empty_files_find_subdir(&cur).map_err(|e| CleanupError::new(&shown(&names), e))? {
            Some(sub) => {
                names.push(sub);
                let sub = names.last().expect("just pushed");
                let next = open_dir_forcing(cur.as_fd(), sub)
                    .map_err(|e| CleanupError::new(&shown(&names), e))?;
                cur = next;
            }
            None => {
                let Some(done) = names.pop() else {
                    if !remove_top {
                        return Ok(());
                    }
                    return rfs::unlinkat(&top_parent, name, AtFlags::REMOVEDIR)
                        .map_err(|e| CleanupError::new(path, e));
                };
                // Nothing else changes the tree now, so `..` is the directory we came
                // from.
                let up = rfs::openat(
                    &cur,
                    "..",
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| CleanupError::new(&shown(&names), e))?;
                rfs::unlinkat(&up, &done, AtFlags::REMOVEDIR).map_err(|e| {
                    let mut p = shown(&names);
                    p.push(&done);
                    CleanupError::new(&p, e)
                })?;
                cur = up;
            }
        }
    }
}

/// Changes the owner of `path` and of everything below it to `uid`:`gid`, never
/// following a symlink, and leaves every mode as it is. Runs as root of the reclaiming
/// user namespace (see [`crate::IdMaps::reclaim`]), whose capabilities let it enter
/// directories the builder made unreadable. As in [`remove_tree`], descent keeps one
/// descriptor and the names still to visit, so depth is bounded by memory only.
/// `Err` names the entry that failed.
pub(crate) fn chown_tree(path: &Path, uid: u32, gid: u32) -> Result<(), (PathBuf, Errno)> {
    let owner = (
        Some(rustix::fs::Uid::from_raw(uid)),
        Some(rustix::fs::Gid::from_raw(gid)),
    );
    let chown_at = |dir: BorrowedFd<'_>, name: &OsStr| {
        rfs::chownat(dir, name, owner.0, owner.1, AtFlags::SYMLINK_NOFOLLOW)
    };
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let meta = match rfs::lstat(path) {
        Ok(m) => m,
        Err(Errno::NOENT) => return Ok(()),
        Err(e) => return Err((path.to_path_buf(), e)),
    };
    chown_at(rfs::CWD, path.as_os_str()).map_err(|e| (path.to_path_buf(), e))?;
    if rfs::FileType::from_raw_mode(meta.st_mode) != rfs::FileType::Directory {
        return Ok(());
    }
    let mut cur = rfs::open(path, flags, Mode::empty()).map_err(|e| (path.to_path_buf(), e))?;
    let mut names: Vec<OsString> = Vec::new();
    let shown = |names: &[OsString], last: Option<&OsStr>| -> PathBuf {
        let mut p = path.to_path_buf();
        p.extend(names);
        if let Some(l) = last {
            p.push(l);
        }
        p
    };
    // Subdirectories still to visit, one list per level of `names`.
    let mut pending: Vec<Vec<OsString>> = Vec::new();
    let visit = |dir: &OwnedFd, names: &[OsString]| -> Result<Vec<OsString>, (PathBuf, Errno)> {
        let mut subdirs = Vec::new();
        let entries = rfs::Dir::read_from(dir).map_err(|e| (shown(names, None), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| (shown(names, None), e))?;
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let name = OsStr::from_bytes(name);
            chown_at(dir.as_fd(), name).map_err(|e| (shown(names, Some(name)), e))?;
            let is_dir = match entry.file_type() {
                rfs::FileType::Directory => true,
                rfs::FileType::Unknown => rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
                    .map(|st| rfs::FileType::from_raw_mode(st.st_mode) == rfs::FileType::Directory)
                    .map_err(|e| (shown(names, Some(name)), e))?,
                _ => false,
            };
            if is_dir {
                subdirs.push(name.to_owned());
            }
        }
        Ok(subdirs)
    };
    pending.push(visit(&cur, &names)?);
    loop {
        let next = pending.last_mut().and_then(Vec::pop);
        match next {
            Some(sub) => {
                let fd = rfs::openat(&cur, &sub, flags, Mode::empty())
                    .map_err(|e| (shown(&names, Some(&sub)), e))?;
                names.push(sub);
                cur = fd;
                pending.push(visit(&cur, &names)?);
            }
            None => {
                pending.pop();
                if names.pop().is_none() {
                    return Ok(());
                }
                // Nothing else changes the tree now (the build's processes are gone),
                // so `..` is the directory we came from.
                cur = rfs::openat(&cur, "..", flags, Mode::empty())
                    .map_err(|e| (shown(&names, None), e))?;
            }
        }
    }
}

/// Opens the directory `name` in `dir` for reading and makes it 0700.
fn open_dir_forcing(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = match rfs::openat(dir, name, flags, Mode::empty()) {
        Ok(fd) => fd,
        Err(Errno::ACCESS) => {
            // O_NOFOLLOW|O_DIRECTORY got as far as the permission check, so `name` is
            // a directory, not a symlink chmod could follow.
            rfs::chmodat(dir, name, Mode::RWXU, AtFlags::empty())?;
            rfs::openat(dir, name, flags, Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    rfs::fchmod(&fd, Mode::RWXU)?;
    Ok(fd)
}

/// Unlinks every non-directory entry of `dir` and returns the first subdirectory's
/// name, or `None` when the directory is empty.
fn empty_files_find_subdir(dir: &OwnedFd) -> rustix::io::Result<Option<OsString>> {
    for entry in rfs::Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = OsStr::from_bytes(name);
        match rfs::unlinkat(dir, name, AtFlags::empty()) {
            Ok(()) => {}
            Err(Errno::ISDIR) => return Ok(Some(name.to_owned())),
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    #[test]
    fn removes_unreadable_deep_trees_without_following_symlinks() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"x").unwrap();

        let top = tmp.path().join("build");
        let mut p = top.clone();
        for i in 0..300 {
            p.push(format!("d{i}"));
        }
        std::fs::create_dir_all(&p).unwrap();
        std::fs::write(p.join("f"), b"x").unwrap();
        symlink(&outside, top.join("link")).unwrap();
        let locked = top.join("x");
        std::fs::create_dir_all(locked.join("y")).unwrap();
        std::fs::write(locked.join("y/z"), b"z").unwrap();
        for d in [locked.join("y"), locked.clone(), top.join("d0")] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o000)).unwrap();
        }
        std::fs::set_permissions(&top, std::fs::Permissions::from_mode(0o555)).unwrap();

        remove_tree(&top).unwrap();
        assert!(!top.exists());
        assert!(outside.join("keep").exists());
        remove_tree(&top).unwrap();
    }

    #[test]
    fn removes_a_plain_file() {
        let tmp = tempfile::tempdir().unwrap();
        let f = tmp.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        remove_tree(&f).unwrap();
        assert!(!f.exists());
    }
}
