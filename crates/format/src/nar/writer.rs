//! The one NAR serialiser.
//!
//! [`NarWriter`] is driven call by call in archive order and checks that order as it
//! goes, including entry names and their sorting, so it can only produce archives
//! that [`read_nar`](super::read_nar) accepts. It coalesces tokens and small files
//! into one internal buffer before handing them to the sink: hashing a tree of many
//! small files then costs a few large hasher updates instead of one per token, and an
//! unbuffered sink (a file, a pipe) sees large writes. Large file contents bypass the
//! buffer. Call [`NarWriter::finish`]: bytes still buffered are lost on drop.

use std::io::{self, Write};

use super::error::NarError;
use super::path::{DisplayBytes, NarPath};
use super::{padding, token, MAX_CONTENTS_LEN, MAX_NAME_LEN, MAX_TARGET_LEN};

/// Size of the internal buffer; contents of at least this size are written directly.
const BUFFER: usize = 64 * 1024;

/// A sink that lends out its own buffer, so a file's contents can be read from disk
/// straight into it: the bytes then cross memory once (kernel to sink) instead of
/// being copied through a read buffer and the writer's buffer.
pub(crate) trait SpareSink: Write {
    /// Free space at the end of the sink's buffer, never empty; making room may hand
    /// on what the buffer holds.
    fn spare(&mut self) -> io::Result<&mut [u8]>;
    /// The first `n` bytes of the space last lent out now follow the earlier output.
    fn commit(&mut self, n: usize);
}

/// Where the writer is in the grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// A node is expected: the root, or the node of an entry just opened.
    Node,
    /// Inside a directory, between entries.
    Entries,
    /// Inside a regular file's contents.
    Contents { announced: u64, written: u64 },
    /// The root node is complete.
    Done,
}

/// Writes one archive to `W`, node by node.
///
/// ```
/// # use unrooted_format::nar::NarWriter;
/// let mut nar = NarWriter::new(Vec::new());
/// nar.directory()?;
/// nar.entry(b"hello")?;
/// nar.regular(false, b"hello\n")?;
/// nar.end_directory()?;
/// let (bytes, size) = nar.finish()?;
/// assert_eq!(bytes.len() as u64, size);
/// # Ok::<(), unrooted_format::nar::NarError>(())
/// ```
pub struct NarWriter<W: Write> {
    out: W,
    buf: Vec<u8>,
    written: u64,
    state: State,
    path: NarPath,
    /// For each open directory, the name of its last entry (reused buffers).
    previous: Vec<Option<Vec<u8>>>,
    /// Spare name buffers, so a deep walk allocates them once.
    spare: Vec<Vec<u8>>,
}

impl<W: Write> NarWriter<W> {
    /// Starts an archive (the magic is written at once into the buffer).
    pub fn new(out: W) -> Self {
        let mut buf = Vec::with_capacity(BUFFER);
        buf.extend_from_slice(token::MAGIC);
        Self {
            out,
            buf,
            written: 0,
            state: State::Node,
            path: NarPath::root(),
            previous: Vec::new(),
            spare: Vec::new(),
        }
    }

    /// Bytes of archive produced so far (written or buffered).
    pub fn position(&self) -> u64 {
        self.written + self.buf.len() as u64
    }

    /// The node being written.
    pub fn path(&self) -> &NarPath {
        &self.path
    }

    fn misuse(&self, operation: &'static str) -> NarError {
        NarError::WriterState {
            path: self.path.clone(),
            operation,
        }
    }

    fn flush_buf(&mut self) -> Result<(), NarError> {
        if !self.buf.is_empty() {
            if let Err(source) = self.out.write_all(&self.buf) {
                return Err(NarError::Write {
                    path: self.path.clone(),
                    source,
                });
            }
            self.written += self.buf.len() as u64;
            self.buf.clear();
        }
        Ok(())
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), NarError> {
        if self.buf.len() + bytes.len() > BUFFER {
            self.flush_buf()?;
        }
        if bytes.len() >= BUFFER {
            self.out
                .write_all(bytes)
                .map_err(|source| NarError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            self.written += bytes.len() as u64;
        } else {
            self.buf.extend_from_slice(bytes);
        }
        Ok(())
    }

    fn put_str(&mut self, s: &[u8]) -> Result<(), NarError> {
        let pad = padding(s.len() as u64);
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s)?;
        self.put(&[0; 8][..pad])
    }

    fn start_node(&mut self, operation: &'static str) -> Result<(), NarError> {
        if self.state != State::Node {
            return Err(self.misuse(operation));
        }
        self.put(token::OPEN)?;
        self.put(token::TYPE)
    }

    /// Closes the node just written, and the entry holding it.
    fn end_node(&mut self) -> Result<(), NarError> {
        self.put(token::CLOSE)?;
        if self.previous.is_empty() {
            self.state = State::Done;
        } else {
            self.put(token::CLOSE)?;
            self.path.pop();
            self.state = State::Entries;
        }
        Ok(())
    }

    /// Writes a whole regular file held in memory.
    pub fn regular(&mut self, executable: bool, data: &[u8]) -> Result<(), NarError> {
        self.begin_regular(executable, data.len() as u64)?;
        self.contents(data)?;
        self.end_regular()
    }

    /// Starts a regular file of `size` bytes; give the bytes with
    /// [`NarWriter::contents`], then call [`NarWriter::end_regular`].
    pub fn begin_regular(&mut self, executable: bool, size: u64) -> Result<(), NarError> {
        if size > MAX_CONTENTS_LEN {
            return Err(NarError::ContentsTooLong {
                path: self.path.clone(),
                len: size,
            });
        }
        self.start_node("a regular file")?;
        self.put(token::REGULAR)?;
        if executable {
            self.put(token::EXECUTABLE)?;
            self.put(token::EMPTY)?;
        }
        self.put(token::CONTENTS)?;
        self.put(&size.to_le_bytes())?;
        self.state = State::Contents {
            announced: size,
            written: 0,
        };
        Ok(())
    }

    /// Writes the next part of the current file's contents.
    pub fn contents(&mut self, data: &[u8]) -> Result<(), NarError> {
        let State::Contents { announced, written } = self.state else {
            return Err(self.misuse("file contents"));
        };
        let total = written + data.len() as u64;
        if total > announced {
            return Err(NarError::ContentsLength {
                path: self.path.clone(),
                announced,
                written: total,
            });
        }
        self.put(data)?;
        self.state = State::Contents {
            announced,
            written: total,
        };
        Ok(())
    }

    /// Ends the current file; its contents must have reached the announced size.
    pub fn end_regular(&mut self) -> Result<(), NarError> {
        let State::Contents { announced, written } = self.state else {
            return Err(self.misuse("the end of a file"));
        };
        if written != announced {
            return Err(NarError::ContentsLength {
                path: self.path.clone(),
                announced,
                written,
            });
        }
        self.put(&[0; 8][..padding(announced)])?;
        self.end_node()
    }

    /// Writes a symlink to `target` (non-empty, no NUL, at most
    /// [`MAX_TARGET_LEN`] bytes).
    pub fn symlink(&mut self, target: &[u8]) -> Result<(), NarError> {
        if target.len() > MAX_TARGET_LEN {
            return Err(NarError::TargetTooLong {
                path: self.path.clone(),
                len: target.len() as u64,
            });
        }
        if target.is_empty() || target.contains(&0) {
            return Err(NarError::InvalidTarget {
                path: self.path.clone(),
                target: DisplayBytes(target.to_vec()),
            });
        }
        self.start_node("a symlink")?;
        self.put(token::SYMLINK)?;
        self.put(token::TARGET)?;
        self.put_str(target)?;
        self.end_node()
    }

    /// Starts a directory; add entries with [`NarWriter::entry`] and end it with
    /// [`NarWriter::end_directory`].
    pub fn directory(&mut self) -> Result<(), NarError> {
        if self.previous.len() >= super::MAX_DEPTH {
            return Err(NarError::TooDeep {
                path: self.path.clone(),
            });
        }
        self.start_node("a directory")?;
        self.put(token::DIRECTORY)?;
        self.previous.push(None);
        self.state = State::Entries;
        Ok(())
    }

    /// Starts the entry `name` of the current directory; its node comes next. Names
    /// must be valid and given in strictly increasing byte order.
    pub fn entry(&mut self, name: &[u8]) -> Result<(), NarError> {
        if self.state != State::Entries {
            return Err(self.misuse("an entry"));
        }
        if name.len() > MAX_NAME_LEN {
            return Err(NarError::NameTooLong {
                path: self.path.clone(),
                len: name.len() as u64,
            });
        }
        if name.is_empty()
            || name == b"."
            || name == b".."
            || name.contains(&b'/')
            || name.contains(&0)
        {
            return Err(NarError::InvalidName {
                path: self.path.clone(),
                name: DisplayBytes(name.to_vec()),
            });
        }
        let Some(slot) = self.previous.last_mut() else {
            return Err(self.misuse("an entry"));
        };
        match slot {
            Some(prev) if name <= prev.as_slice() => {
                let err = if name == prev.as_slice() {
                    NarError::DuplicateEntry {
                        path: self.path.clone(),
                        name: DisplayBytes(name.to_vec()),
                    }
                } else {
                    NarError::UnsortedEntries {
                        path: self.path.clone(),
                        previous: DisplayBytes(prev.clone()),
                        name: DisplayBytes(name.to_vec()),
                    }
                };
                return Err(err);
            }
            Some(prev) => {
                prev.clear();
                prev.extend_from_slice(name);
            }
            None => {
                let mut prev = self.spare.pop().unwrap_or_default();
                prev.clear();
                prev.extend_from_slice(name);
                *slot = Some(prev);
            }
        }
        self.put(token::ENTRY)?;
        self.put(token::OPEN)?;
        self.put(token::NAME)?;
        self.put_str(name)?;
        self.put(token::NODE)?;
        self.path.push(name);
        self.state = State::Node;
        Ok(())
    }

    /// Ends the current directory.
    pub fn end_directory(&mut self) -> Result<(), NarError> {
        if self.state != State::Entries {
            return Err(self.misuse("the end of a directory"));
        }
        if let Some(Some(prev)) = self.previous.pop() {
            self.spare.push(prev);
        }
        self.end_node()
    }

    /// Ends the archive, which must be complete, and flushes it; returns the sink and
    /// the archive's size in bytes.
    pub fn finish(mut self) -> Result<(W, u64), NarError> {
        if self.state != State::Done {
            return Err(self.misuse("finishing the archive"));
        }
        self.flush_buf()?;
        self.out.flush().map_err(|source| NarError::Write {
            path: NarPath::root(),
            source,
        })?;
        Ok((self.out, self.written))
    }
}

// The bound is on each method, not the impl, so the crate-private trait does not
// appear in the public type's interface.
impl<W: Write> NarWriter<W> {
    /// Space for the next part of the current file's contents, at most the bytes still
    /// announced; fill a prefix of it, then call [`NarWriter::contents_filled`].
    pub(crate) fn contents_space(&mut self) -> Result<&mut [u8], NarError>
    where
        W: SpareSink,
    {
        let State::Contents { announced, written } = self.state else {
            return Err(self.misuse("file contents"));
        };
        // What the writer holds (the file's header) must precede the contents.
        self.flush_buf()?;
        let left = usize::try_from(announced - written).unwrap_or(usize::MAX);
        let space = self.out.spare().map_err(|source| NarError::Write {
            path: self.path.clone(),
            source,
        })?;
        let n = space.len().min(left);
        Ok(&mut space[..n])
    }

    /// Takes the first `n` bytes of the space [`NarWriter::contents_space`] lent as
    /// the next part of the current file's contents.
    pub(crate) fn contents_filled(&mut self, n: usize) -> Result<(), NarError>
    where
        W: SpareSink,
    {
        let State::Contents { announced, written } = self.state else {
            return Err(self.misuse("file contents"));
        };
        let total = written + n as u64;
        if total > announced {
            return Err(NarError::ContentsLength {
                path: self.path.clone(),
                announced,
                written: total,
            });
        }
        self.out.commit(n);
        self.written += n as u64;
        self.state = State::Contents {
            announced,
            written: total,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_out_of_order_calls() {
        let mut w = NarWriter::new(Vec::new());
        assert!(matches!(w.entry(b"a"), Err(NarError::WriterState { .. })));
        w.directory().unwrap();
        assert!(matches!(
            w.regular(false, b""),
            Err(NarError::WriterState { .. })
        ));
        w.entry(b"b").unwrap();
        w.symlink(b"x").unwrap();
        assert!(matches!(
            w.entry(b"a"),
            Err(NarError::UnsortedEntries { .. })
        ));
        assert!(matches!(
            w.entry(b"b"),
            Err(NarError::DuplicateEntry { .. })
        ));
        w.end_directory().unwrap();
        assert!(matches!(w.symlink(b"x"), Err(NarError::WriterState { .. })));
        w.finish().unwrap();
    }

    #[test]
    fn contents_must_match_the_announced_size() {
        let mut w = NarWriter::new(Vec::new());
        w.begin_regular(false, 3).unwrap();
        w.contents(b"ab").unwrap();
        assert!(matches!(
            w.end_regular(),
            Err(NarError::ContentsLength {
                announced: 3,
                written: 2,
                ..
            })
        ));
        assert!(matches!(
            w.contents(b"cd"),
            Err(NarError::ContentsLength { written: 4, .. })
        ));
    }
}
