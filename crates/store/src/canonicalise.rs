//! Resetting the metadata of a new store path (Nix's `canonicalisePathMetaData`).
//!
//! A store path's NAR records only file types, contents and the executable bit, so
//! everything else is reset to one value: mode `0444` or `0555` (no write, setuid,
//! setgid or sticky bits), mtime 1 (1970-01-01T00:00:01, so build tools that compare
//! times see inputs as old), and no extended attributes or ACLs except the two Nix
//! tolerates because they cannot be removed on the systems that add them. Devices,
//! fifos and sockets are refused.
//!
//! The walk works on paths, not directory handles: it runs only on trees inside this
//! store's private temporary area or on paths in the store directory, which nobody
//! but the store's owner can write.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use rustix::fs::{AtFlags, Timespec, Timestamps, CWD, UTIME_OMIT};

use crate::error::StoreError;

/// The mtime of every file in the store, in seconds since the epoch.
pub const MTIME_STORE: i64 = 1;

/// Extended attributes left in place (Nix's default `ignored-acls`).
pub const IGNORED_XATTRS: &[&str] = &["security.selinux", "system.nfs4_acl"];

/// Canonicalises the tree at `path`: every file, directory and symlink in it.
pub fn canonicalise_path_metadata(path: &Path) -> Result<(), StoreError> {
    let mut stack = vec![path.to_path_buf()];
    while let Some(p) = stack.pop() {
        if canonicalise_entry(&p)? {
            let read = fs::read_dir(&p).map_err(|source| StoreError::Read {
                path: p.clone(),
                source,
            })?;
            for entry in read {
                let entry = entry.map_err(|source| StoreError::Read {
                    path: p.clone(),
                    source,
                })?;
                stack.push(entry.path());
            }
        }
    }
    Ok(())
}

/// Canonicalises one file (not its children); returns whether it is a directory.
pub(crate) fn canonicalise_entry(path: &Path) -> Result<bool, StoreError> {
    let err = |source| StoreError::Canonicalise {
        path: path.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(path).map_err(err)?;
    let ft = meta.file_type();
    if !(ft.is_file() || ft.is_dir() || ft.is_symlink()) {
        return Err(StoreError::UnsupportedFileType {
            path: path.to_owned(),
        });
    }
    remove_xattrs(path).map_err(err)?;
    if !ft.is_symlink() {
        let mode = meta.mode() & 0o7777;
        if mode != 0o444 && mode != 0o555 {
            let new = 0o444 | if mode & 0o100 != 0 { 0o111 } else { 0 };
            fs::set_permissions(path, fs::Permissions::from_mode(new)).map_err(err)?;
        }
    }
    if meta.mtime() != MTIME_STORE || meta.mtime_nsec() != 0 {
        set_store_mtime(path).map_err(err)?;
    }
    Ok(ft.is_dir())
}

/// Sets mtime to [`MTIME_STORE`] without following a symlink, leaving atime alone.
pub(crate) fn set_store_mtime(path: &Path) -> io::Result<()> {
    let times = Timestamps {
        last_access: Timespec {
            tv_sec: 0,
            tv_nsec: UTIME_OMIT,
        },
        last_modification: Timespec {
            tv_sec: MTIME_STORE,
            tv_nsec: 0,
        },
    };
    rustix::fs::utimensat(CWD, path, &times, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

fn remove_xattrs(path: &Path) -> io::Result<()> {
    let size = match rustix::fs::llistxattr_query(path) {
        Ok(0) => return Ok(()),
        Ok(n) => n,
        // No xattr support on this file system (or for this file type): nothing to do.
        Err(e) if e == rustix::io::Errno::NOTSUP => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut buf = vec![0u8; size];
    let n = match rustix::fs::llistxattr(path, &mut buf[..]) {
        Ok(n) => n,
        // The list grew between the two calls; take the slow path once more.
        Err(e) if e == rustix::io::Errno::RANGE => return remove_xattrs(path),
        Err(e) => return Err(e.into()),
    };
    for name in buf[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        if IGNORED_XATTRS.iter().any(|i| i.as_bytes() == name) {
            continue;
        }
        match rustix::fs::lremovexattr(path, name) {
            Ok(()) => {}
            // Gone in between: fine.
            Err(e) if e == rustix::io::Errno::NODATA => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}
