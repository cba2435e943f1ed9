//! Copying a file tree through its NAR serialisation: [`dump_path`] of the source
//! feeds [`restore`] of the copy, and every byte of the archive also goes to an
//! observer (a hasher, a reference scanner), so what the observer saw is exactly what
//! the copy holds.
//!
//! The copy is made of new inodes only: hard links become separate files, only the
//! executable bit of a mode survives (no setuid, setgid or sticky bit, no owner, no
//! extended attribute, no ACL), symlinks are recreated, never followed, and the bounds
//! of the archive (depth, name and target lengths) hold for the tree. Both ends work
//! relative to directory handles with `O_NOFOLLOW` (see [`dump`](mod@super::dump) and
//! [`restore`](mod@super::restore)), so a source tree that a hostile process prepared
//! cannot make the copy read or write anything outside the two trees. Its contents are
//! read once: a file that changes meanwhile makes the copy fail or holds whatever was
//! read, and the observer saw that same version.

use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use super::dump::dump_path;
use super::error::NarError;
use super::reader::Tee;
use super::restore::restore;

/// Size of the chunks the dumping thread hands to the restoring one.
const CHUNK: usize = 256 * 1024;

/// Chunks in flight between the two; bounds the memory a copy holds.
const CHUNKS_IN_FLIGHT: usize = 4;

/// Copies the tree at `src` to `dest` (which must not exist) through its archive,
/// which is also written to `observer`; returns the archive's size.
///
/// An archive of up to a MiB is dumped into memory and then restored; a larger one is
/// dumped on a second thread while this one restores the copy and feeds `observer`.
/// On error the partial copy is left in place; removing it is the caller's decision.
pub fn copy_tree<W: Write + ?Sized>(
    src: &Path,
    dest: &Path,
    observer: &mut W,
) -> Result<u64, NarError> {
    let mut small = Bounded {
        buf: Vec::new(),
        over: false,
    };
    match dump_path(src, &mut small) {
        Ok(_) => copy_from_memory(&small.buf, dest, observer),
        // Too large to hold: dumped again, streaming.
        Err(_) if small.over => copy_streaming(src, dest, observer),
        Err(e) => Err(e),
    }
}

/// Largest archive a copy holds in memory instead of streaming it between two
/// threads: most outputs are small, and handing a chunk to another thread costs a
/// wake-up, hundreds of microseconds on a busy machine, more than copying them.
const IN_MEMORY: usize = 1024 * 1024;

/// A `Write` into memory that refuses to grow past [`IN_MEMORY`].
struct Bounded {
    buf: Vec<u8>,
    over: bool,
}

impl Write for Bounded {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.buf.len() + buf.len() > IN_MEMORY {
            self.over = true;
            return Err(io::Error::other("the archive is too large to hold"));
        }
        self.buf.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Restores the archive `nar` at `dest`, writing it to `observer` as it is read.
fn copy_from_memory<W: Write + ?Sized>(
    nar: &[u8],
    dest: &Path,
    observer: &mut W,
) -> Result<u64, NarError> {
    let mut tee = Tee {
        inner: nar,
        out: observer,
        failure: None,
    };
    let restored = restore(&mut tee, dest);
    match tee.failure {
        Some(source) => Err(NarError::Write {
            path: super::NarPath::root(),
            source,
        }),
        None => restored,
    }
}

/// Dumps `src` on a second thread while this one restores it at `dest` and feeds
/// `observer`.
fn copy_streaming<W: Write + ?Sized>(
    src: &Path,
    dest: &Path,
    observer: &mut W,
) -> Result<u64, NarError> {
    let (chunks, received) = mpsc::sync_channel::<Vec<u8>>(CHUNKS_IN_FLIGHT);
    let (recycle, recycled) = mpsc::channel::<Vec<u8>>();
    std::thread::scope(|scope| {
        let dumper = scope.spawn(move || {
            let mut sender = ChunkSender {
                chunks,
                recycled,
                chunk: Vec::with_capacity(CHUNK),
            };
            let size = dump_path(src, &mut sender)?;
            sender.send().map_err(|source| NarError::Write {
                path: super::NarPath::root(),
                source,
            })?;
            Ok(size)
        });
        let receiver = ChunkReceiver {
            received,
            recycle,
            chunk: Vec::new(),
            pos: 0,
        };
        let mut tee = Tee {
            inner: receiver,
            out: observer,
            failure: None,
        };
        let restored = restore(&mut tee, dest);
        let observed = tee.failure.take();
        // Stops a dumper still sending: its next chunk finds no receiver.
        drop(tee);
        let dumped = match dumper.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        if let Some(source) = observed {
            return Err(NarError::Write {
                path: super::NarPath::root(),
                source,
            });
        }
        match (dumped, restored) {
            (Ok(_), Ok(size)) => Ok(size),
            // The restore stopped first; the dumper only found the channel closed.
            (Err(NarError::Write { .. }), Err(e)) => Err(e),
            // The dump failed (an unsupported file, a read error, too deep), so the
            // archive ended early for the restore.
            (Err(e), _) => Err(e),
            (Ok(_), Err(e)) => Err(e),
        }
    })
}

/// The dumping end: fills a chunk and sends it when full.
struct ChunkSender {
    chunks: mpsc::SyncSender<Vec<u8>>,
    recycled: mpsc::Receiver<Vec<u8>>,
    chunk: Vec<u8>,
}

impl ChunkSender {
    /// Sends the chunk being filled (if any) and takes an empty one.
    fn send(&mut self) -> io::Result<()> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        let next = match self.recycled.try_recv() {
            Ok(mut c) => {
                c.clear();
                c
            }
            Err(_) => Vec::with_capacity(CHUNK),
        };
        let full = std::mem::replace(&mut self.chunk, next);
        self.chunks
            .send(full)
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the copy stopped"))
    }
}

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.chunk.len() >= CHUNK {
            self.send()?;
        }
        let n = buf.len().min(CHUNK - self.chunk.len());
        self.chunk.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The restoring end: reads the chunks in order, handing used ones back.
struct ChunkReceiver {
    received: mpsc::Receiver<Vec<u8>>,
    recycle: mpsc::Sender<Vec<u8>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReceiver {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos == self.chunk.len() {
            // A closed channel is the end of the archive (or of a failed dump, which
            // the caller reports).
            let Ok(next) = self.received.recv() else {
                return Ok(0);
            };
            let used = std::mem::replace(&mut self.chunk, next);
            let _ = self.recycle.send(used);
            self.pos = 0;
        }
        let n = buf.len().min(self.chunk.len() - self.pos);
        buf[..n].copy_from_slice(&self.chunk[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    fn nar_of(path: &Path) -> Vec<u8> {
        let mut v = Vec::new();
        dump_path(path, &mut v).unwrap();
        v
    }

    #[test]
    fn copies_are_new_files_with_the_same_archive() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir_all(src.join("d/e")).unwrap();
        fs::write(src.join("a"), b"shared").unwrap();
        fs::hard_link(src.join("a"), src.join("d/b")).unwrap();
        fs::write(src.join("d/e/x"), vec![7u8; IN_MEMORY + 5]).unwrap();
        fs::set_permissions(src.join("d/e/x"), fs::Permissions::from_mode(0o6755)).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let dest = tmp.path().join("dest");
        let mut seen = Vec::new();
        let size = copy_tree(&src, &dest, &mut seen).unwrap();
        let want = nar_of(&src);
        assert_eq!(seen, want, "the observer saw the archive");
        assert_eq!(size, want.len() as u64);
        assert_eq!(nar_of(&dest), want, "the copy has the same archive");
        for f in ["a", "d/b", "d/e/x"] {
            let m = fs::symlink_metadata(dest.join(f)).unwrap();
            assert_eq!(m.nlink(), 1, "{f}");
            assert_ne!(m.ino(), fs::symlink_metadata(src.join(f)).unwrap().ino());
        }
        assert_eq!(
            fs::symlink_metadata(dest.join("d/e/x")).unwrap().mode() & 0o7777,
            0o755,
            "no setuid or setgid bit"
        );
        assert_eq!(
            fs::read_link(dest.join("link")).unwrap(),
            Path::new("/etc/passwd")
        );
        // Small enough to go through memory.
        let small = tmp.path().join("small");
        fs::remove_file(src.join("d/e/x")).unwrap();
        let mut seen = Vec::new();
        copy_tree(&src, &small, &mut seen).unwrap();
        assert_eq!(seen, nar_of(&src));
        assert_eq!(nar_of(&small), seen);
        assert_eq!(fs::symlink_metadata(small.join("d/b")).unwrap().nlink(), 1);
        // A single file, and a symlink as the root.
        let one = tmp.path().join("one");
        copy_tree(&src.join("a"), &one, &mut io::sink()).unwrap();
        assert_eq!(fs::read(&one).unwrap(), b"shared");
        let l = tmp.path().join("l");
        copy_tree(&src.join("link"), &l, &mut io::sink()).unwrap();
        assert!(fs::symlink_metadata(&l).unwrap().file_type().is_symlink());
    }

    #[test]
    fn a_sparse_file_stays_sparse() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("sparse");
        let f = fs::File::create(&src).unwrap();
        f.set_len(64 << 20).unwrap();
        std::os::unix::fs::FileExt::write_all_at(&f, b"end", (64 << 20) - 3).unwrap();
        let dest = tmp.path().join("copy");
        copy_tree(&src, &dest, &mut io::sink()).unwrap();
        let m = fs::symlink_metadata(&dest).unwrap();
        assert_eq!(m.len(), 64 << 20);
        assert!(
            m.blocks() * 512 < 1 << 20,
            "{} bytes allocated",
            m.blocks() * 512
        );
        assert_eq!(nar_of(&dest), nar_of(&src));
    }

    #[test]
    fn a_failed_dump_or_restore_names_its_cause() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("src");
        fs::create_dir(&src).unwrap();
        let fifo = src.join("p");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
        let err = copy_tree(&src, &tmp.path().join("d1"), &mut io::sink()).unwrap_err();
        assert!(
            matches!(err, NarError::UnsupportedFileType { .. }),
            "{err:?}"
        );
        fs::remove_file(&fifo).unwrap();
        // Deeper than any archive may be.
        let mut deep = src.clone();
        for _ in 0..=crate::nar::MAX_DEPTH {
            deep.push("d");
        }
        fs::create_dir_all(&deep).unwrap();
        let err = copy_tree(&src, &tmp.path().join("d2"), &mut io::sink()).unwrap_err();
        assert!(matches!(err, NarError::TooDeep { .. }), "{err:?}");
        // The destination exists: the restore fails, and says where.
        fs::write(tmp.path().join("f"), b"x").unwrap();
        let err = copy_tree(&tmp.path().join("f"), &src, &mut io::sink()).unwrap_err();
        assert!(matches!(err, NarError::Restore { .. }), "{err:?}");
    }
}
