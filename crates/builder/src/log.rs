//! A builder's output: split into lines for the client, kept as the last few lines for
//! the error message, and stored bzip2-compressed where `nix-store -l` and `nix log`
//! look (`<logDir>/drvs/<first 2 chars of the drv's base name>/<rest>.bz2`).
//!
//! Everything a builder writes is untrusted: a line longer than [`MAX_LINE`] is cut
//! (the stored log keeps every byte), and past `max-build-log-size` bytes the build is
//! stopped (the caller checks [`BuildLog::over_limit`]).

use std::collections::VecDeque;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use bzip2::write::BzEncoder;
use bzip2::Compression;
use unrooted_format::StorePath;

/// The longest line passed on to clients and kept for the error message; the rest of
/// a longer line is dropped there (not from the stored log).
pub const MAX_LINE: usize = 64 << 10;

/// How many lines the "last N log lines" of an error message shows (Nix's
/// `log-lines` default).
pub const TAIL_LINES: usize = 10;

/// Where the log of `drv` is stored.
pub fn log_path(log_dir: &Path, drv: &StorePath) -> PathBuf {
    let base = drv.to_base_name();
    log_dir
        .join("drvs")
        .join(&base[..2])
        .join(format!("{}.bz2", &base[2..]))
}

/// A bzip2 stream of no bytes (block size 6, the level the logs are written at), as
/// the encoder writes it. A build that prints nothing gets these bytes instead of an
/// encoder, whose set-up allocates and zeroes about 5 MiB (about a millisecond).
const EMPTY_BZIP2: [u8; 14] = [
    0x42, 0x5a, 0x68, 0x36, 0x17, 0x72, 0x45, 0x38, 0x50, 0x90, 0, 0, 0, 0,
];

/// Where a stored log is written: the file alone until the builder says anything.
enum Sink {
    Silent(File),
    Compressing(BzEncoder<BufWriter<File>>),
}

impl Sink {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        if let Sink::Silent(file) = self {
            let file = file.try_clone()?;
            *self = Sink::Compressing(BzEncoder::new(BufWriter::new(file), Compression::default()));
        }
        match self {
            Sink::Compressing(enc) => enc.write_all(data),
            Sink::Silent(_) => Ok(()),
        }
    }

    fn finish(self) -> io::Result<()> {
        match self {
            Sink::Silent(mut file) => file.write_all(&EMPTY_BZIP2),
            Sink::Compressing(enc) => enc.finish().and_then(|mut w| w.flush()),
        }
    }
}

/// The log of one running build.
pub struct BuildLog {
    file: Option<Sink>,
    path: Option<PathBuf>,
    line: Vec<u8>,
    pos: usize,
    tail: VecDeque<String>,
    size: u64,
    limit: u64,
}

impl BuildLog {
    /// A log stored at `path` (none when `None`), stopping at `limit` bytes (0 = no
    /// limit).
    pub fn create(path: Option<PathBuf>, limit: u64) -> io::Result<Self> {
        let file = match &path {
            Some(p) => {
                if let Some(dir) = p.parent() {
                    fs::DirBuilder::new()
                        .recursive(true)
                        .mode(0o755)
                        .create(dir)?;
                }
                Some(Sink::Silent(File::create(p)?))
            }
            None => None,
        };
        Ok(Self {
            file,
            path,
            line: Vec::new(),
            pos: 0,
            tail: VecDeque::with_capacity(TAIL_LINES),
            size: 0,
            limit,
        })
    }

    /// Takes the next bytes of output; `on_line` gets each completed line.
    pub fn push(&mut self, data: &[u8], on_line: &mut dyn FnMut(&str)) {
        self.size += data.len() as u64;
        if let Some(f) = &mut self.file {
            if let Err(e) = f.write_all(data) {
                tracing::warn!("writing a build log: {e}; the rest is not stored");
                self.file = None;
            }
        }
        // Like Nix: `\r` returns to the start of the line and later bytes overwrite it.
        for &b in data {
            match b {
                b'\n' => self.end_line(on_line),
                b'\r' => self.pos = 0,
                _ => {
                    if self.pos < self.line.len() {
                        self.line[self.pos] = b;
                        self.pos += 1;
                    } else if self.line.len() < MAX_LINE {
                        self.line.push(b);
                        self.pos += 1;
                    }
                }
            }
        }
    }

    fn end_line(&mut self, on_line: &mut dyn FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.line).into_owned();
        self.line.clear();
        self.pos = 0;
        on_line(&text);
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(text);
    }

    /// Whether more than `max-build-log-size` bytes were written.
    pub fn over_limit(&self) -> bool {
        self.limit != 0 && self.size > self.limit
    }

    /// Flushes an unterminated last line and finishes the stored file.
    pub fn finish(&mut self, on_line: &mut dyn FnMut(&str)) {
        if !self.line.is_empty() {
            self.end_line(on_line);
        }
        if let Some(f) = self.file.take() {
            if let Err(e) = f.finish() {
                tracing::warn!("finishing a build log: {e}");
            }
        }
    }

    /// The last lines, oldest first.
    pub fn tail(&self) -> impl Iterator<Item = &str> {
        self.tail.iter().map(String::as_str)
    }

    /// Where it is stored.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn lines_tail_carriage_return_and_storage() {
        let dir = tempfile::tempdir().unwrap();
        let drv = StorePath::from_base_name("gxc0q731db674jf8lkv348l3pvv8csx4-simple.drv").unwrap();
        let path = log_path(dir.path(), &drv);
        assert!(path.ends_with("drvs/gx/c0q731db674jf8lkv348l3pvv8csx4-simple.drv.bz2"));
        let mut log = BuildLog::create(Some(path.clone()), 0).unwrap();
        let mut lines = Vec::new();
        let mut sink = |l: &str| lines.push(l.to_owned());
        log.push(b"one\ntw", &mut sink);
        log.push(b"o\n10%\r20%\n", &mut sink);
        for i in 0..12 {
            log.push(format!("l{i}\n").as_bytes(), &mut sink);
        }
        log.push(b"last", &mut sink);
        log.finish(&mut sink);
        assert_eq!(&lines[..3], ["one", "two", "20%"]);
        assert_eq!(lines.last().unwrap(), "last");
        let tail: Vec<&str> = log.tail().collect();
        assert_eq!(tail.len(), TAIL_LINES);
        assert_eq!(tail[0], "l3");
        let mut text = String::new();
        bzip2::read::BzDecoder::new(File::open(&path).unwrap())
            .read_to_string(&mut text)
            .unwrap();
        assert!(text.starts_with("one\ntwo\n10%\r20%\nl0\n"));
        assert!(text.ends_with("l11\nlast"));
    }

    #[test]
    fn a_silent_build_stores_the_empty_bzip2_stream() {
        let mut enc = BzEncoder::new(Vec::new(), Compression::default());
        enc.write_all(b"").unwrap();
        assert_eq!(enc.finish().unwrap(), EMPTY_BZIP2);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.bz2");
        let mut log = BuildLog::create(Some(path.clone()), 0).unwrap();
        log.push(b"", &mut |_: &str| {});
        log.finish(&mut |_: &str| {});
        let mut text = Vec::new();
        bzip2::read::BzDecoder::new(File::open(&path).unwrap())
            .read_to_end(&mut text)
            .unwrap();
        assert!(text.is_empty());
        assert_eq!(fs::read(&path).unwrap(), EMPTY_BZIP2);
    }

    #[test]
    fn long_lines_are_cut_and_limit_is_noticed() {
        let mut log = BuildLog::create(None, 100).unwrap();
        let mut lens = Vec::new();
        let big = vec![b'x'; MAX_LINE + 10];
        log.push(&big, &mut |l: &str| lens.push(l.len()));
        log.push(b"\n", &mut |l: &str| lens.push(l.len()));
        assert_eq!(lens, [MAX_LINE]);
        assert!(log.over_limit());
    }
}
