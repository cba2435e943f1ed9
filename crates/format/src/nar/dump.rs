//! Serialising a file tree on disk: `nix-store --dump`.
//!
//! The walk goes through directory handles: each entry is opened relative to its
//! parent's descriptor with `O_NOFOLLOW`, so a symlink is always recorded as a symlink
//! and never followed, and renaming a directory above the one being read cannot
//! redirect the walk. The file type comes from `getdents` where the filesystem
//! provides it and is confirmed by `fstat` on the opened descriptor, which is also
//! where size and the executable bit are read.
//!
//! This is the hot path of NAR hashing, so the walk reuses its buffers: one `getdents`
//! buffer and one name arena per directory depth. File contents are read straight
//! into the outgoing buffer (a chunk handed to the consumer, or a write buffer), so
//! they are copied once, by the kernel; tokens are coalesced by [`NarWriter`].

use std::ffi::{CStr, OsStr};
use std::io::{self, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use rustix::fs::{FileType, Mode, OFlags, RawDir, CWD};

use super::error::NarError;
use super::path::NarPath;
use super::writer::{NarWriter, SpareSink};
use super::MAX_DEPTH;

/// Write buffer when the walk runs on the caller's thread: large enough that a hasher
/// sees big updates and a large file takes few `read` calls, small enough to stay in
/// the L2 cache.
const WRITE_BUFFER: usize = 256 * 1024;

/// Buffer for `getdents`.
const DIRENT_BUFFER: usize = 64 * 1024;

/// Writes the NAR serialisation of `path` to `out`, exactly as `nix-store --dump path`
/// does; returns the archive's size in bytes.
///
/// `path` itself is not followed if it is a symlink. Directory entries are sorted by
/// their raw bytes; a file is executable in the archive iff its owner-execute bit is
/// set. Devices, fifos and sockets are refused with an error naming them, and so is a
/// tree nested deeper than [`MAX_DEPTH`], which no reader accepts.
///
/// For a directory or a large file the walk runs on a second thread and hands the
/// archive to this one in chunks, so reading the tree (system calls, copies) overlaps
/// with whatever `out` does with the bytes, typically hashing; `out` itself never
/// leaves the calling thread.
pub fn dump_path<W: Write>(path: &Path, out: &mut W) -> Result<u64, NarError> {
    let st = rustix::fs::statat(CWD, path, rustix::fs::AtFlags::SYMLINK_NOFOLLOW).map_err(|e| {
        NarError::Dump {
            path: path.to_path_buf(),
            source: e.into(),
        }
    })?;
    let kind = FileType::from_raw_mode(st.st_mode);
    let pipelined = match kind {
        FileType::Directory => true,
        FileType::RegularFile => st.st_size as u64 >= PIPELINE_MIN_FILE,
        _ => false,
    };
    if !pipelined {
        let sink = BufferedSink {
            out,
            buf: vec![0; WRITE_BUFFER],
            used: 0,
        };
        return Dumper::new(NarWriter::new(sink), path).run(kind);
    }
    let (chunks, received) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let walker = scope.spawn(move || {
            let sink = ChunkSink {
                chunks,
                recycled,
                chunk: vec![0; CHUNK],
                used: 0,
            };
            Dumper::new(NarWriter::new(sink), path).run(kind)
        });
        let mut failure = None;
        for chunk in received {
            if let Err(source) = out.write_all(&chunk) {
                // Dropping the receiver (by leaving the loop) stops the walker at
                // its next chunk.
                failure = Some(source);
                break;
            }
            // Not cleared: the walker only re-zeroes the tail a short chunk lacks. The
            // walker may have finished already; then the chunk is simply freed.
            let _ = recycle.send(chunk);
        }
        let walked = match walker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        match failure {
            Some(source) => Err(NarError::Write {
                path: NarPath::root(),
                source,
            }),
            None => walked,
        }
    })
}

/// Smallest single file worth a second thread.
const PIPELINE_MIN_FILE: u64 = 4 * 1024 * 1024;

/// Size of the chunks the walker hands over.
const CHUNK: usize = 256 * 1024;

/// Chunks queued between walker and consumer; bounds memory to a few MiB.
const CHUNKS_IN_FLIGHT: usize = 8;

/// The walker's end of the pipeline: fills chunks and sends them when full, reusing
/// the chunks the consumer sends back.
///
/// A chunk is kept at its full length (initialised, so file contents can be read into
/// it without `unsafe`), with `used` bytes filled; it is cut to `used` when sent.
struct ChunkSink {
    chunks: mpsc::SyncSender<Vec<u8>>,
    recycled: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
    used: usize,
}

impl ChunkSink {
    fn send(&mut self) -> io::Result<()> {
        let mut next = self.recycled.try_recv().unwrap_or_else(|_| vec![0; CHUNK]);
        // A full chunk comes back full; only the last one sent may be short.
        next.resize(CHUNK, 0);
        let mut full = std::mem::replace(&mut self.chunk, next);
        full.truncate(self.used);
        self.used = 0;
        self.chunks
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the NAR consumer stopped"))
    }
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut rest = data;
        while !rest.is_empty() {
            let space = self.spare()?;
            let n = space.len().min(rest.len());
            space[..n].copy_from_slice(&rest[..n]);
            self.commit(n);
            rest = &rest[n..];
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.used == 0 {
            Ok(())
        } else {
            self.send()
        }
    }
}

impl SpareSink for ChunkSink {
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        // Sent only when more room is needed, so a chunk always leaves full.
        if self.used == CHUNK {
            self.send()?;
        }
        Ok(&mut self.chunk[self.used..])
    }

    fn commit(&mut self, n: usize) {
        self.used += n;
    }
}

/// The sink when the walk runs on the caller's thread: a write buffer in front of
/// `out` that lends its free space for file contents.
struct BufferedSink<'o, W: Write> {
    out: &'o mut W,
    buf: Vec<u8>,
    used: usize,
}

impl<W: Write> BufferedSink<'_, W> {
    fn drain(&mut self) -> io::Result<()> {
        self.out.write_all(&self.buf[..self.used])?;
        self.used = 0;
        Ok(())
    }
}

impl<W: Write> Write for BufferedSink<'_, W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        if self.used + data.len() > self.buf.len() {
            self.drain()?;
        }
        if data.len() >= self.buf.len() {
            self.out.write_all(data)?;
        } else {
            self.buf[self.used..self.used + data.len()].copy_from_slice(data);
            self.used += data.len();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.drain()?;
        self.out.flush()
    }
}

impl<W: Write> SpareSink for BufferedSink<'_, W> {
    fn spare(&mut self) -> io::Result<&mut [u8]> {
        if self.used == self.buf.len() {
            self.drain()?;
        }
        Ok(&mut self.buf[self.used..])
    }

    fn commit(&mut self, n: usize) {
        self.used += n;
    }
}

/// One directory's entries: names in an arena (each NUL-terminated, so they can be
/// passed to `openat` without copying) and their types.
#[derive(Default)]
struct Listing {
    names: Vec<u8>,
    entries: Vec<(usize, usize, FileType)>,
}

impl Listing {
    /// The name of entry `i` without its NUL.
    fn name(&self, i: usize) -> &[u8] {
        let (start, len, _) = self.entries[i];
        &self.names[start..start + len]
    }
}

struct Dumper<'p, W: SpareSink> {
    writer: NarWriter<W>,
    root: &'p Path,
    /// The path of the current entry relative to `root` (`/a/b`), for error messages.
    rel: Vec<u8>,
    dirent_buf: Vec<u8>,
    /// Listings by depth, reused from one directory to the next.
    scratch: Vec<Listing>,
}

/// Where a node is: a directory handle and a name in it, or (for the root) the
/// current directory and the path given.
trait NameArg: rustix::path::Arg + Copy {}
impl NameArg for &CStr {}
impl NameArg for &OsStr {}

impl<'p, W: SpareSink> Dumper<'p, W> {
    fn new(writer: NarWriter<W>, root: &'p Path) -> Self {
        Self {
            writer,
            root,
            rel: Vec::new(),
            dirent_buf: Vec::with_capacity(DIRENT_BUFFER),
            scratch: Vec::new(),
        }
    }

    /// Dumps the root, of type `kind`, and finishes the archive.
    fn run(mut self, kind: FileType) -> Result<u64, NarError> {
        self.node(CWD, self.root.as_os_str(), kind, 0)?;
        let (_, size) = self.writer.finish()?;
        Ok(size)
    }

    /// The on-disk path of the current entry.
    fn current_path(&self) -> PathBuf {
        let mut p = self.root.as_os_str().to_owned();
        p.push(OsStr::from_bytes(&self.rel));
        PathBuf::from(p)
    }

    fn error(&self, e: impl Into<io::Error>) -> NarError {
        NarError::Dump {
            path: self.current_path(),
            source: e.into(),
        }
    }

    fn node<Fd: AsFd, N: NameArg>(
        &mut self,
        dir: Fd,
        name: N,
        kind: FileType,
        depth: usize,
    ) -> Result<(), NarError> {
        match kind {
            FileType::RegularFile => {
                // O_NONBLOCK: if the file was swapped for a fifo since it was listed,
                // opening must not hang; fstat below then refuses it.
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
                    Mode::empty(),
                )
                .map_err(|e| self.error(e))?;
                self.regular(fd)
            }
            FileType::Directory => {
                let fd = rustix::fs::openat(
                    dir,
                    name,
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(|e| self.error(e))?;
                self.directory(fd, depth)
            }
            FileType::Symlink => {
                let target =
                    rustix::fs::readlinkat(dir, name, Vec::new()).map_err(|e| self.error(e))?;
                self.writer.symlink(target.as_bytes())
            }
            FileType::Unknown => {
                let st = rustix::fs::statat(&dir, name, rustix::fs::AtFlags::SYMLINK_NOFOLLOW)
                    .map_err(|e| self.error(e))?;
                match FileType::from_raw_mode(st.st_mode) {
                    FileType::Unknown => Err(self.unsupported(FileType::Unknown)),
                    known => self.node(dir, name, known, depth),
                }
            }
            other => Err(self.unsupported(other)),
        }
    }

    fn unsupported(&self, kind: FileType) -> NarError {
        NarError::UnsupportedFileType {
            path: self.current_path(),
            kind: match kind {
                FileType::Fifo => "fifo",
                FileType::Socket => "socket",
                FileType::CharacterDevice => "character device",
                FileType::BlockDevice => "block device",
                _ => "unknown",
            },
        }
    }

    fn regular(&mut self, fd: OwnedFd) -> Result<(), NarError> {
        let st = rustix::fs::fstat(&fd).map_err(|e| self.error(e))?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            return Err(self.unsupported(kind));
        }
        let executable = st.st_mode & 0o100 != 0;
        let size = st.st_size as u64;
        self.writer.begin_regular(executable, size)?;
        let mut left = size;
        while left > 0 {
            let space = self.writer.contents_space()?;
            let n = match rustix::io::read(&fd, space) {
                Ok(0) => {
                    return Err(NarError::FileChanged {
                        path: self.current_path(),
                    })
                }
                Ok(n) => n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(self.error(e)),
            };
            self.writer.contents_filled(n)?;
            left -= n as u64;
        }
        self.writer.end_regular()
    }

    fn directory(&mut self, fd: OwnedFd, depth: usize) -> Result<(), NarError> {
        if self.scratch.len() <= depth {
            self.scratch.resize_with(depth + 1, Listing::default);
        }
        let mut listing = std::mem::take(&mut self.scratch[depth]);
        listing.names.clear();
        listing.entries.clear();
        self.list(&fd, &mut listing)?;
        let names = &listing.names;
        listing
            .entries
            .sort_unstable_by(|a, b| names[a.0..a.0 + a.1].cmp(&names[b.0..b.0 + b.1]));

        // The parser refuses what is nested deeper, so a dump stops there too, before
        // a hostile tree costs a descriptor and a stack frame per level.
        if depth >= MAX_DEPTH && !listing.entries.is_empty() {
            return Err(NarError::TooDeep {
                path: NarPath::from_raw(self.rel.clone()),
            });
        }
        self.writer.directory()?;
        for i in 0..listing.entries.len() {
            let (start, len, kind) = listing.entries[i];
            let name = listing.name(i);
            let rel_len = self.rel.len();
            self.rel.push(b'/');
            self.rel.extend_from_slice(name);
            self.writer.entry(name)?;
            let cname = CStr::from_bytes_with_nul(&listing.names[start..start + len + 1])
                .map_err(|_| self.error(io::Error::from(io::ErrorKind::InvalidData)))?;
            self.node(&fd, cname, kind, depth + 1)?;
            self.rel.truncate(rel_len);
        }
        self.writer.end_directory()?;
        self.scratch[depth] = listing;
        Ok(())
    }

    /// Reads all entries of `fd` except `.` and `..` into `listing`.
    fn list(&mut self, fd: &OwnedFd, listing: &mut Listing) -> Result<(), NarError> {
        let mut buf = std::mem::take(&mut self.dirent_buf);
        buf.clear();
        let mut dir = RawDir::new(fd, buf.spare_capacity_mut());
        let mut failure = None;
        while let Some(entry) = dir.next() {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            };
            let name = entry.file_name().to_bytes_with_nul();
            if name == b".\0" || name == b"..\0" {
                continue;
            }
            listing
                .entries
                .push((listing.names.len(), name.len() - 1, entry.file_type()));
            listing.names.extend_from_slice(name);
        }
        self.dirent_buf = buf;
        if let Some(e) = failure {
            return Err(self.error(e));
        }
        Ok(())
    }
}
