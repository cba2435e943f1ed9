//! Unpacking an archive onto disk: `nix-store --restore`.
//!
//! The destination must not exist. Everything is created relative to the handle of
//! the directory that holds it, with `O_EXCL`/`mkdirat`/`symlinkat` (which all refuse
//! an existing name) and `O_NOFOLLOW`, so no symlink in the archive or planted next to
//! the output can make the restore write outside `dest`. The parser already refuses
//! duplicate names, `..` and names containing `/`.
//!
//! Modes are those `nix-store --restore` gives, whatever the caller's umask: Nix sets
//! its umask to `022` at start-up, so files are `0644`, executables `0755`,
//! directories `0755`. We set them explicitly with `fchmod` instead of touching the
//! process-wide umask, which a library must not change under other threads.
//!
//! Contents are written as they arrive, except that a read of at least a block of
//! zeros is left as a hole, so a sparse file stays sparse (the bytes read back are the
//! same).
//!
//! On error the partial tree is left in place; removing it is the caller's decision.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, CWD};

use super::error::NarError;
use super::path::NarPath;
use super::reader::{read_nar, Contents, NarVisitor};

/// Copy buffer for file contents.
const COPY_BUFFER: usize = 256 * 1024;

/// Smallest read of zeros left as a hole instead of written (a file system block).
const MIN_HOLE: usize = 4096;

/// Mode of a restored non-executable file.
const FILE_MODE: u32 = 0o644;
/// Mode of a restored executable file.
const EXECUTABLE_MODE: u32 = 0o755;
/// Mode of a restored directory.
const DIRECTORY_MODE: u32 = 0o755;

/// Restores the archive read from `reader` at `dest`, which must not exist; returns
/// the archive's size in bytes. The result is what `nix-store --restore dest` makes,
/// modes included. Reads exactly the archive (see [`read_nar`]).
pub fn restore<R: Read>(reader: R, dest: &Path) -> Result<u64, NarError> {
    let mut restorer = Restorer {
        dest,
        dirs: Vec::new(),
        buf: Vec::new(),
    };
    read_nar(reader, &mut restorer)
}

struct Restorer<'p> {
    dest: &'p Path,
    /// Handles of the directories being filled, innermost last.
    dirs: Vec<OwnedFd>,
    buf: Vec<u8>,
}

impl Restorer<'_> {
    fn disk_path(&self, path: &NarPath) -> PathBuf {
        let mut p = self.dest.as_os_str().to_owned();
        p.push(OsStr::from_bytes(path.as_bytes()));
        PathBuf::from(p)
    }

    fn error(&self, path: &NarPath, e: impl Into<io::Error>) -> NarError {
        NarError::Restore {
            path: self.disk_path(path),
            source: e.into(),
        }
    }

    /// The directory that holds `path` and its name there; the root goes at `dest`
    /// relative to the current directory.
    fn locate<'a>(&'a self, path: &'a NarPath) -> (BorrowedFd<'a>, &'a [u8]) {
        match (path.name(), self.dirs.last()) {
            (Some(name), Some(dir)) => (dir.as_fd(), name),
            _ => (CWD, self.dest.as_os_str().as_bytes()),
        }
    }
}

impl NarVisitor for Restorer<'_> {
    fn regular(
        &mut self,
        path: &NarPath,
        executable: bool,
        contents: &mut Contents<'_>,
    ) -> Result<(), NarError> {
        let (dir, name) = self.locate(path);
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(FILE_MODE),
        )
        .map_err(|e| self.error(path, e))?;
        let mode = if executable {
            EXECUTABLE_MODE
        } else {
            FILE_MODE
        };
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| self.error(path, e))?;
        let file = File::from(fd);
        if self.buf.is_empty() && contents.size() > 0 {
            self.buf = vec![0; COPY_BUFFER];
        }
        let mut at = 0u64;
        loop {
            // A read error here is the archive's; the parser reports it in place of
            // whatever we return.
            let n = match contents.read(&mut self.buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(self.error(path, e)),
            };
            let data = &self.buf[..n];
            // A block of zeros becomes a hole: a sparse file in the archive (a
            // builder's terabyte of nothing) stays sparse on disk.
            let hole = n >= MIN_HOLE && data.iter().all(|&b| b == 0);
            if !hole {
                if let Err(e) = file.write_all_at(data, at) {
                    return Err(self.error(path, e));
                }
            }
            at += n as u64;
        }
        if file.metadata().map_err(|e| self.error(path, e))?.len() != at {
            file.set_len(at).map_err(|e| self.error(path, e))?;
        }
        Ok(())
    }

    fn symlink(&mut self, path: &NarPath, target: &[u8]) -> Result<(), NarError> {
        let (dir, name) = self.locate(path);
        rustix::fs::symlinkat(target, dir, name).map_err(|e| self.error(path, e))
    }

    fn directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        let (dir, name) = self.locate(path);
        rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(DIRECTORY_MODE))
            .map_err(|e| self.error(path, e))?;
        // O_NOFOLLOW: if something replaced the new directory with a symlink, fail
        // rather than fill the directory it points to.
        let fd = rustix::fs::openat(
            dir,
            name,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| self.error(path, e))?;
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(DIRECTORY_MODE))
            .map_err(|e| self.error(path, e))?;
        self.dirs.push(fd);
        Ok(())
    }

    fn end_directory(&mut self, _path: &NarPath) -> Result<(), NarError> {
        self.dirs.pop();
        Ok(())
    }
}
