//! `--keep-failed`: handing a failed build's directory to the client who asked.
//!
//! With `CAP_CHOWN` the tree is simply chowned to the client (after being made safe).
//! The tree is first made safe where nobody else can reach it (inside the daemon's
//! private 0700 directory): setuid, setgid and sticky bits and group/world write bits
//! are removed everywhere, FIFOs and sockets are left alone (chmod works on them and
//! they are harmless without write bits). Then the client is given read access. An
//! unprivileged daemon cannot `chown` (no `CAP_CHOWN`), so it adds a POSIX ACL entry
//! `user:<client>:r-x` (`r--` on files without execute bits) to every entry, and the
//! top directory stays 0700: nobody but the store owner and that client can enter it.
//! On a file system without ACLs the directory stays 0700, owned by the store owner,
//! and the note says so. Last, the tree is renamed into the temporary directory under
//! a fresh `nix-build-<name>.drv-<n>` name with `RENAME_NOREPLACE`: the reported path
//! appears complete and safe in one step, and an existing name (which another user
//! may have planted) is never reused.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, XattrFlags, CWD};

use crate::error::BuildError;

/// The most entries of a kept tree made safe; a larger tree is kept private.
const MAX_ENTRIES: usize = 1_000_000;

/// Makes `dir` safe, grants `client_uid` read access, moves it to a fresh name in
/// `tmp_dir`, and returns the note for the client.
pub(crate) fn keep_build_dir(
    dir: &Path,
    tmp_dir: &Path,
    client_uid: Option<u32>,
) -> Result<String, BuildError> {
    let mut entries = 0usize;
    // With CAP_CHOWN (an administrator's choice) the tree simply becomes the client's.
    let chowned = client_uid.is_some_and(|uid| chown(dir, uid).is_ok());
    let mut acl_ok = client_uid.is_some() && !chowned;
    walk(dir, &mut |p, meta| {
        entries += 1;
        if entries > MAX_ENTRIES {
            acl_ok = false;
            return Ok(());
        }
        if meta.file_type().is_symlink() {
            return Ok(());
        }
        let mode = meta.mode() & 0o7777;
        let safe = mode & !0o7000 & !0o022;
        if safe != mode {
            fs::set_permissions(p, fs::Permissions::from_mode(safe))
                .map_err(BuildError::io("making the kept build directory safe", p))?;
        }
        if let (true, Some(uid)) = (chowned, client_uid) {
            chown(p, uid).map_err(BuildError::io(
                "handing the kept build directory to the client",
                p,
            ))?;
        } else if let (true, Some(uid)) = (acl_ok, client_uid) {
            if set_acl(p, safe, uid).is_err() {
                acl_ok = false;
            }
        }
        Ok(())
    })?;
    if chowned {
        if let Some(uid) = client_uid {
            chown(dir, uid).map_err(BuildError::io(
                "handing the kept build directory to the client",
                dir,
            ))?;
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(BuildError::io(
        "making the kept build directory private",
        dir,
    ))?;
    if let (true, Some(uid)) = (acl_ok, client_uid) {
        // The top's ACL again, now that its mode is 0700.
        acl_ok = set_acl(dir, 0o700, uid).is_ok();
    }
    let base = dir
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit_once('-').map(|(b, _)| b.to_owned()))
        .unwrap_or_else(|| "nix-build".to_owned());
    let mut n = 0u32;
    let target = loop {
        let target = tmp_dir.join(format!("{base}-{n}"));
        match renameat_with(CWD, dir, CWD, &target, RenameFlags::NOREPLACE) {
            Ok(()) => break target,
            Err(e) if e == rustix::io::Errno::EXIST && n < 10_000 => n += 1,
            Err(e) => {
                return Err(BuildError::io("moving the kept build directory to", target)(e.into()))
            }
        }
    };
    Ok(note(&target, acl_ok || chowned))
}

fn chown(path: &Path, uid: u32) -> io::Result<()> {
    rustix::fs::chownat(
        rustix::fs::CWD,
        path,
        Some(rustix::fs::Uid::from_raw(uid)),
        None,
        rustix::fs::AtFlags::SYMLINK_NOFOLLOW,
    )
    .map_err(io::Error::from)
}

fn note(target: &Path, acl_ok: bool) -> String {
    if acl_ok {
        format!("note: keeping build directory '{}'", target.display())
    } else {
        format!(
            "note: keeping build directory '{}' (readable only by the store owner: the file system does not take ACLs and unrooted holds no CAP_CHOWN)",
            target.display()
        )
    }
}

/// Visits `root` and everything below it (children before their directory is
/// changed, so a directory made 0000 by the builder is opened first).
fn walk(
    root: &Path,
    f: &mut dyn FnMut(&Path, &fs::Metadata) -> Result<(), BuildError>,
) -> Result<(), BuildError> {
    let mut stack: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let meta = fs::symlink_metadata(&p).map_err(BuildError::io("reading", &p))?;
        if meta.is_dir() {
            // The builder may have left it unreadable; it is ours, so open it up for
            // the walk (the mode is recomputed from this below).
            if meta.mode() & 0o700 != 0o700 {
                fs::set_permissions(&p, fs::Permissions::from_mode(meta.mode() | 0o700))
                    .map_err(BuildError::io("reading", &p))?;
            }
            for entry in fs::read_dir(&p).map_err(BuildError::io("reading", &p))? {
                let entry = entry.map_err(BuildError::io("reading", &p))?;
                stack.push(entry.path());
            }
            let meta = fs::symlink_metadata(&p).map_err(BuildError::io("reading", &p))?;
            f(&p, &meta)?;
        } else {
            f(&p, &meta)?;
        }
    }
    Ok(())
}

/// The Linux `system.posix_acl_access` value: owner, the client, group, mask, other.
/// The client may read, and enter/execute where the owner may; never write.
pub(crate) fn acl_bytes(mode: u32, uid: u32) -> Vec<u8> {
    let owner = ((mode >> 6) & 7) as u16;
    unrooted_store::acl::access_acl_granting(mode, uid, owner & 0o5)
}

fn set_acl(path: &Path, mode: u32, uid: u32) -> io::Result<()> {
    rustix::fs::lsetxattr(
        path,
        unrooted_store::acl::ACCESS_ACL,
        &acl_bytes(mode, uid),
        XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_layout_is_the_kernel_xattr_format() {
        let v = acl_bytes(0o750, 1234);
        assert_eq!(v.len(), 4 + 5 * 8);
        assert_eq!(&v[..4], &[2, 0, 0, 0]);
        // user:1234 gets r-x (owner rwx minus write).
        assert_eq!(&v[12..20], &[2, 0, 5, 0, 0xd2, 0x04, 0, 0]);
        // mask = group r-x | client r-x.
        assert_eq!(&v[28..32], &[0x10, 0, 5, 0]);
    }

    #[test]
    fn kept_tree_is_safe_private_and_renamed_to_a_fresh_name() {
        let tmp = tempfile::tempdir().unwrap();
        let private = tmp.path().join("private");
        fs::create_dir(&private).unwrap();
        let dir = private.join("nix-build-x.drv-7");
        fs::create_dir_all(dir.join("sub/locked")).unwrap();
        fs::write(dir.join("sub/f"), b"x").unwrap();
        fs::set_permissions(dir.join("sub/f"), fs::Permissions::from_mode(0o4777)).unwrap();
        fs::set_permissions(dir.join("sub/locked"), fs::Permissions::from_mode(0o000)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        // Someone already holds the first name.
        fs::create_dir(tmp.path().join("nix-build-x.drv-0")).unwrap();
        let note = keep_build_dir(&dir, tmp.path(), None).unwrap();
        let kept = tmp.path().join("nix-build-x.drv-1");
        assert!(note.contains(&kept.display().to_string()), "{note}");
        assert!(!dir.exists());
        let mode = |p: &Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&kept), 0o700);
        assert_eq!(mode(&kept.join("sub/f")), 0o755);
        assert_eq!(mode(&kept.join("sub/locked")), 0o700);
    }
}
