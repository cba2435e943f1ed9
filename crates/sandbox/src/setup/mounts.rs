//! The sandbox's file system: the plan's mount operations applied under the root.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{self, MountFlags};

use super::{at, at_io, fail, Setup};
use crate::error::Step;
use crate::plan::MountOp;

/// Creates each [`MountOp::DiskDir`] under the host root (on its own filesystem, the
/// root not yet covered), in plan order, and opens it (`O_PATH`, never following a
/// symlink) for [`bind_disk_dir`]. The root is a fresh directory of the daemon's, so
/// only what this creates is in it.
pub(super) fn disk_dirs(root: &Path, ops: &[MountOp]) -> Setup<Vec<OwnedFd>> {
    let mut out = Vec::new();
    for op in ops {
        let MountOp::DiskDir { path, .. } = op else {
            continue;
        };
        let shown = host(root, path);
        let open = |dir: &OwnedFd, name: &OsStr| {
            at(
                Step::CreatingDirectory,
                Some(&shown),
                rfs::openat(
                    dir,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
            )
        };
        let mut dir = at(
            Step::CreatingDirectory,
            Some(root),
            rfs::open(
                root,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ),
        )?;
        for name in path.components().filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        }) {
            match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(fail(
                        Step::CreatingDirectory,
                        Some(&shown),
                        e.raw_os_error(),
                    ))
                }
            }
            dir = open(&dir, name)?;
        }
        out.push(dir);
    }
    Ok(out)
}

/// Makes the mount point of a [`MountOp::DiskDir`] in the root's tmpfs, binds the
/// directory `fd` holds (covered by that tmpfs, so reached through the descriptor)
/// on it, and sets its mode.
pub(super) fn bind_disk_dir(root: &Path, path: &Path, mode: u32, fd: &OwnedFd) -> Setup<()> {
    use std::os::fd::AsRawFd;
    let p = host(root, path);
    match rfs::mkdir(&p, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(fail(Step::CreatingDirectory, Some(&p), e.raw_os_error())),
    }
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    at(
        Step::BindMounting,
        Some(&p),
        mount::mount_bind(source.as_str(), &p),
    )?;
    at(
        Step::Chmod,
        Some(&p),
        rfs::chmod(&p, Mode::from_raw_mode(mode)),
    )
}

/// The host path of a sandbox path under the new root (plan paths are validated as
/// absolute with normal components only).
fn host(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

/// Applies one mount operation under `root` (all but [`MountOp::DiskDir`]).
pub(super) fn apply(root: &Path, op: &MountOp) -> Setup<()> {
    match op {
        MountOp::Mkdir { path, mode } => make_dir(&host(root, path), *mode),
        MountOp::WriteFile {
            path,
            contents,
            mode,
        } => write_file(&host(root, path), contents, *mode),
        MountOp::DiskDir { path, .. } => {
            // Handled with their descriptors by `prepare_and_exec`.
            Err(fail(Step::BindMounting, Some(path), libc::EPROTO))
        }
        MountOp::Symlink { target, link } => {
            let p = host(root, link);
            at(Step::CreatingSymlink, Some(&p), rfs::symlink(target, &p))
        }
        MountOp::Bind {
            source,
            target,
            read_only,
            optional,
        } => bind(root, source, target, *read_only, *optional),
        MountOp::Proc { target } => mount_fs(
            Step::MountingProc,
            "proc",
            &host(root, target),
            MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
            None,
        ),
        MountOp::Tmpfs { target, options } => mount_fs(
            Step::MountingTmpfs,
            "tmpfs",
            &host(root, target),
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(c_string(options.as_bytes())?.as_c_str()),
        ),
        MountOp::Chown { path, uid, gid } => {
            let p = host(root, path);
            at(
                Step::Chown,
                Some(&p),
                rfs::chownat(
                    rfs::CWD,
                    &p,
                    Some(rfs::Uid::from_raw(*uid)),
                    Some(rfs::Gid::from_raw(*gid)),
                    rfs::AtFlags::SYMLINK_NOFOLLOW,
                ),
            )
        }
        MountOp::Devpts { target } => mount_fs(
            Step::MountingDevpts,
            "devpts",
            &host(root, target),
            MountFlags::NOSUID | MountFlags::NOEXEC,
            Some(c"newinstance,ptmxmode=0666,mode=0620"),
        ),
    }
}

/// Makes the directory `p` (it may exist) with exactly `mode`.
fn make_dir(p: &Path, mode: u32) -> Setup<()> {
    match rfs::mkdir(p, Mode::from_raw_mode(mode)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(fail(Step::CreatingDirectory, Some(p), e.raw_os_error())),
    }
    // mkdir honours the umask; the plan's mode is exact.
    at(
        Step::Chmod,
        Some(p),
        rfs::chmod(p, Mode::from_raw_mode(mode)),
    )
}

/// Creates the file `p` (which must not exist, nor be a symlink) with `contents` and
/// `mode`.
fn write_file(p: &Path, contents: &[u8], mode: u32) -> Setup<()> {
    let fd = at(
        Step::WritingFile,
        Some(p),
        rfs::open(
            p,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        ),
    )?;
    let mut f = std::fs::File::from(fd);
    at_io(Step::WritingFile, Some(p), f.write_all(contents))?;
    at(
        Step::Chmod,
        Some(p),
        rfs::fchmod(&f, Mode::from_raw_mode(mode)),
    )
}

/// Mounts a file system of type `fs` (also its source) at `p`.
fn mount_fs(
    step: Step,
    fs: &str,
    p: &Path,
    flags: MountFlags,
    data: Option<&std::ffi::CStr>,
) -> Setup<()> {
    at(step, Some(p), mount::mount(fs, p, fs, flags, data))
}

pub(super) fn c_string(bytes: &[u8]) -> Setup<std::ffi::CString> {
    std::ffi::CString::new(bytes).map_err(|_| fail(Step::MountingTmpfs, None, libc::EINVAL))
}

fn bind(root: &Path, source: &Path, target: &Path, read_only: bool, optional: bool) -> Setup<()> {
    let dst = host(root, target);
    let st = match rfs::lstat(source) {
        Ok(st) => st,
        Err(Errno::NOENT) if optional => return Ok(()),
        Err(e) => {
            return Err(fail(
                Step::InspectingBindSource,
                Some(source),
                e.raw_os_error(),
            ))
        }
    };
    let kind = rfs::FileType::from_raw_mode(st.st_mode);
    if kind == rfs::FileType::Symlink {
        // A symlink input is recreated, not bound: binding would follow it.
        let link = at(
            Step::InspectingBindSource,
            Some(source),
            rfs::readlink(source, Vec::new()),
        )?;
        let link = PathBuf::from(OsString::from_vec(link.into_bytes()));
        return at(Step::CreatingSymlink, Some(&dst), rfs::symlink(&link, &dst));
    }
    if kind == rfs::FileType::Directory {
        match rfs::mkdir(&dst, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(fail(Step::CreatingMountPoint, Some(&dst), e.raw_os_error())),
        }
        at(
            Step::BindMounting,
            Some(source),
            mount::mount_bind_recursive(source, &dst),
        )?;
    } else {
        match rfs::open(
            &dst,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o444),
        ) {
            Ok(_) => {}
            Err(e) => return Err(fail(Step::CreatingMountPoint, Some(&dst), e.raw_os_error())),
        }
        at(
            Step::BindMounting,
            Some(source),
            mount::mount_bind(source, &dst),
        )?;
    }
    if read_only {
        remount_read_only(&dst)?;
        if kind == rfs::FileType::Directory {
            let info = at_io(
                Step::ReadingMountinfo,
                None,
                read_bounded("/proc/self/mountinfo", 16 << 20),
            )?;
            for sub in submounts_under(&info, &dst) {
                remount_read_only(&sub)?;
            }
        }
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping the flags it has: clearing a flag that is
/// locked (nosuid, nodev, noexec and the atime ones, inherited from the host) gives
/// EPERM.
fn remount_read_only(path: &Path) -> Setup<()> {
    let vfs = at(Step::ReadingMountFlags, Some(path), rfs::statvfs(path))?;
    let have = vfs.f_flag;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (st, ms) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    at(
        Step::RemountingReadOnly,
        Some(path),
        mount::mount_remount(path, flags, ""),
    )
}

fn read_bounded(path: &str, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Mount points strictly below `dir` in a `/proc/self/mountinfo` text, in order
/// (field 5, with the kernel's octal escapes undone).
pub(crate) fn submounts_under(mountinfo: &[u8], dir: &Path) -> Vec<PathBuf> {
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(&prefix))
        .map(|p| PathBuf::from(OsStr::from_bytes(&p)))
        .collect()
}

fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_submounts_with_escapes() {
        let info = b"22 1 0:21 / / rw - ext4 /dev/sda rw\n\
            30 22 0:30 / /r/nix/store/a rw - ext4 x rw\n\
            31 30 0:31 / /r/nix/store/a/sub\\040dir rw - tmpfs t rw\n\
            32 22 0:32 / /r/nix/store/ab rw - tmpfs t rw\n";
        assert_eq!(
            submounts_under(info, Path::new("/r/nix/store/a")),
            [PathBuf::from("/r/nix/store/a/sub dir")]
        );
        assert!(submounts_under(info, Path::new("/r/nix/store/ab")).is_empty());
    }

    #[test]
    fn unescape_leaves_odd_backslashes() {
        assert_eq!(unescape_mountinfo(b"a\\134b"), b"a\\b");
        assert_eq!(unescape_mountinfo(b"a\\9"), b"a\\9");
        assert_eq!(unescape_mountinfo(b"end\\"), b"end\\");
    }
}
