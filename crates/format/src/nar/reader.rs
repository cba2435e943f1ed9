//! The one NAR parser: synchronous, streaming and strict.
//!
//! [`read_nar`] walks the archive once and reports each node to a [`NarVisitor`]; file
//! contents are handed over as a bounded [`Contents`] reader, never buffered. The
//! parser consumes exactly the archive's bytes from the reader it is given — it uses
//! `read_exact` for every token and never reads past the closing `)` of the root —
//! so the export format and the worker protocol can keep reading the same stream
//! afterwards. It does no buffering of its own: give it a `&mut BufReader` when the
//! source is a raw file or socket, and keep reading from that `BufReader` after.

use std::io::{self, Read, Write};

use super::error::NarError;
use super::path::{DisplayBytes, NarPath};
use super::{
    padding, token, MAX_CONTENTS_LEN, MAX_DEPTH, MAX_NAME_LEN, MAX_TAG_LEN, MAX_TARGET_LEN,
};

/// Receives the nodes of an archive from [`read_nar`], in archive order (a directory,
/// then its entries depth-first in name order, then its end).
///
/// Every method defaults to doing nothing, so a visitor implements only what it needs;
/// contents a visitor does not read are skipped by the parser. An error returned by a
/// visitor stops the parse and is returned by [`read_nar`].
pub trait NarVisitor {
    /// A regular file. `contents` yields its bytes; reading it is optional.
    fn regular(
        &mut self,
        path: &NarPath,
        executable: bool,
        contents: &mut Contents<'_>,
    ) -> Result<(), NarError> {
        let _ = (path, executable, contents);
        Ok(())
    }

    /// A symlink; `target` is non-empty, without NUL and at most
    /// [`MAX_TARGET_LEN`] bytes.
    fn symlink(&mut self, path: &NarPath, target: &[u8]) -> Result<(), NarError> {
        let _ = (path, target);
        Ok(())
    }

    /// A directory starts; its entries follow, then [`NarVisitor::end_directory`].
    fn directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        let _ = path;
        Ok(())
    }

    /// The directory at `path` has no more entries.
    fn end_directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        let _ = path;
        Ok(())
    }
}

/// The visitor that only checks the archive.
struct Validate;

impl NarVisitor for Validate {}

/// The bytes of one file inside an archive: a reader that ends exactly at the file's
/// end.
///
/// If the archive fails or ends while a visitor reads contents, the read returns an
/// error and [`read_nar`] reports the archive's error, not the visitor's.
pub struct Contents<'a> {
    src: &'a mut dyn Read,
    size: u64,
    remaining: u64,
    nar_offset: u64,
    failure: Option<io::Error>,
}

impl Contents<'_> {
    /// The file's size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Offset of the file's first byte from the start of the archive (what
    /// `nix nar ls --json` calls `narOffset`).
    pub fn nar_offset(&self) -> u64 {
        self.nar_offset
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> u64 {
        self.remaining
    }
}

impl Read for Contents<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.failure.is_some() {
            return Err(io::Error::other("the NAR input failed earlier"));
        }
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        match self.src.read(&mut buf[..want]) {
            Ok(0) => {
                self.failure = Some(io::ErrorKind::UnexpectedEof.into());
                Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "NAR ends inside a file",
                ))
            }
            Ok(n) => {
                self.remaining -= n as u64;
                Ok(n)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Err(e),
            Err(e) => {
                let kind = e.kind();
                self.failure = Some(e);
                Err(io::Error::new(kind, "reading NAR contents failed"))
            }
        }
    }
}

/// A reader that counts what it hands out, so errors and `narOffset` can say where in
/// the archive they are.
struct Counted<R> {
    inner: R,
    pos: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Which of the allowed tags was found.
type TagIndex = usize;

struct Parser<R> {
    src: Counted<R>,
    path: NarPath,
    /// One framed tag: length, up to [`MAX_TAG_LEN`] bytes, padding.
    tag: [u8; 8 + MAX_TAG_LEN],
    /// Symlink targets, reused across symlinks.
    target: Vec<u8>,
}

/// Parses one archive from `reader`, reporting each node to `visitor`; returns the
/// archive's size in bytes.
///
/// Reads exactly the archive and nothing after it (see the module documentation).
pub fn read_nar<R: Read, V: NarVisitor + ?Sized>(
    reader: R,
    visitor: &mut V,
) -> Result<u64, NarError> {
    let mut parser = Parser {
        src: Counted {
            inner: reader,
            pos: 0,
        },
        path: NarPath::root(),
        tag: [0; 8 + MAX_TAG_LEN],
        target: Vec::new(),
    };
    parser.magic()?;
    parser.node(visitor, 0)?;
    Ok(parser.src.pos)
}

/// Checks that `reader` holds one well-formed archive; returns its size in bytes.
pub fn validate<R: Read>(reader: R) -> Result<u64, NarError> {
    read_nar(reader, &mut Validate)
}

/// Checks the archive from `reader` while copying its bytes verbatim to `out`; returns
/// its size. Nothing after the archive is read or copied.
pub fn copy_nar<R: Read, W: Write + ?Sized>(reader: R, out: &mut W) -> Result<u64, NarError> {
    let mut tee = Tee {
        inner: reader,
        out,
        failure: None,
    };
    let result = read_nar(&mut tee, &mut Validate);
    match tee.failure {
        Some(source) => Err(NarError::Write {
            path: NarPath::root(),
            source,
        }),
        None => result,
    }
}

/// Copies everything read through it to `out`; a failed write to `out` is kept in
/// `failure` and ends the read with an error.
pub(crate) struct Tee<'w, R, W: ?Sized> {
    pub(crate) inner: R,
    pub(crate) out: &'w mut W,
    pub(crate) failure: Option<io::Error>,
}

impl<R: Read, W: Write + ?Sized> Read for Tee<'_, R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            self.failure = Some(e);
            return Err(io::Error::other("copying the NAR failed"));
        }
        Ok(n)
    }
}

impl<R: Read> Parser<R> {
    fn io_error(&self, e: io::Error) -> NarError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            NarError::Truncated {
                path: self.path.clone(),
                offset: self.src.pos,
            }
        } else {
            NarError::Read {
                offset: self.src.pos,
                source: e,
            }
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NarError> {
        self.src.read_exact(buf).map_err(|e| self.io_error(e))
    }

    fn read_u64(&mut self) -> Result<u64, NarError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// Reads and checks the padding after a string of `len` bytes.
    fn padding(&mut self, len: u64) -> Result<(), NarError> {
        let n = padding(len);
        let mut pad = [0u8; 8];
        let offset = self.src.pos;
        self.read_exact(&mut pad[..n])?;
        if pad.iter().any(|&b| b != 0) {
            return Err(NarError::NonZeroPadding {
                path: self.path.clone(),
                offset,
            });
        }
        Ok(())
    }

    /// Reads a tag and returns the index of the token in `allowed` it equals.
    fn tag(&mut self, expected: &'static str, allowed: &[&[u8]]) -> Result<TagIndex, NarError> {
        let len = self.read_u64()?;
        if len > MAX_TAG_LEN as u64 {
            return Err(NarError::TagTooLong {
                path: self.path.clone(),
                expected,
                len,
            });
        }
        let len = len as usize;
        let end = 8 + len + padding(len as u64);
        let mut tag = self.tag;
        tag[..8].copy_from_slice(&(len as u64).to_le_bytes());
        self.read_exact(&mut tag[8..8 + len])?;
        self.padding(len as u64)?;
        tag[8 + len..end].fill(0);
        self.tag = tag;
        let frame = &self.tag[..end];
        allowed
            .iter()
            .position(|t| *t == frame)
            .ok_or_else(|| NarError::UnexpectedTag {
                path: self.path.clone(),
                expected,
                found: DisplayBytes(self.tag[8..8 + len].to_vec()),
            })
    }

    fn expect(&mut self, token: &[u8], expected: &'static str) -> Result<(), NarError> {
        self.tag(expected, &[token]).map(|_| ())
    }

    fn magic(&mut self) -> Result<(), NarError> {
        let mut magic = [0u8; token::MAGIC.len()];
        self.read_exact(&mut magic[..8])?;
        if magic[..8] != token::MAGIC[..8] {
            return Err(NarError::BadMagic);
        }
        self.read_exact(&mut magic[8..])?;
        if magic != token::MAGIC {
            return Err(NarError::BadMagic);
        }
        Ok(())
    }

    fn node<V: NarVisitor + ?Sized>(&mut self, v: &mut V, depth: usize) -> Result<(), NarError> {
        self.expect(token::OPEN, "'('")?;
        self.expect(token::TYPE, "'type'")?;
        let kind = self.tag(
            "'regular', 'symlink' or 'directory'",
            &[token::REGULAR, token::SYMLINK, token::DIRECTORY],
        )?;
        match kind {
            0 => self.regular(v)?,
            1 => self.symlink(v)?,
            // A directory's entry list ends with the `)` that closes the node.
            _ => return self.directory(v, depth),
        }
        self.expect(token::CLOSE, "')' closing the node")
    }

    fn regular<V: NarVisitor + ?Sized>(&mut self, v: &mut V) -> Result<(), NarError> {
        let first = self.tag(
            "'executable' or 'contents'",
            &[token::EXECUTABLE, token::CONTENTS],
        )?;
        let executable = first == 0;
        if executable {
            // The value must be the empty string; refuse anything else before
            // reading it.
            if self.read_u64()? != 0 {
                return Err(NarError::ExecutableValue {
                    path: self.path.clone(),
                });
            }
            self.expect(token::CONTENTS, "'contents'")?;
        }
        let size = self.read_u64()?;
        if size > MAX_CONTENTS_LEN {
            return Err(NarError::ContentsTooLong {
                path: self.path.clone(),
                len: size,
            });
        }
        let mut contents = Contents {
            nar_offset: self.src.pos,
            src: &mut self.src,
            size,
            remaining: size,
            failure: None,
        };
        let visited = v.regular(&self.path, executable, &mut contents);
        let (failure, remaining) = (contents.failure.take(), contents.remaining);
        if let Some(e) = failure {
            return Err(self.io_error(e));
        }
        visited?;
        if remaining > 0 {
            let skipped = io::copy(&mut (&mut self.src).take(remaining), &mut io::sink())
                .map_err(|e| self.io_error(e))?;
            if skipped != remaining {
                return Err(self.io_error(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        self.padding(size)
    }

    fn symlink<V: NarVisitor + ?Sized>(&mut self, v: &mut V) -> Result<(), NarError> {
        self.expect(token::TARGET, "'target'")?;
        let len = self.read_u64()?;
        if len > MAX_TARGET_LEN as u64 {
            return Err(NarError::TargetTooLong {
                path: self.path.clone(),
                len,
            });
        }
        let mut target = std::mem::take(&mut self.target);
        target.resize(len as usize, 0);
        let read = self
            .read_exact(&mut target)
            .and_then(|()| self.padding(len));
        let checked = read.and_then(|()| {
            if target.is_empty() || target.contains(&0) {
                Err(NarError::InvalidTarget {
                    path: self.path.clone(),
                    target: DisplayBytes(target.clone()),
                })
            } else {
                v.symlink(&self.path, &target)
            }
        });
        self.target = target;
        checked
    }

    fn directory<V: NarVisitor + ?Sized>(
        &mut self,
        v: &mut V,
        depth: usize,
    ) -> Result<(), NarError> {
        v.directory(&self.path)?;
        // The previous entry's name, for the ordering check; one allocation per
        // directory, reused across its entries.
        let mut previous: Option<Vec<u8>> = None;
        loop {
            let tag = self.tag("'entry' or ')'", &[token::ENTRY, token::CLOSE])?;
            if tag == 1 {
                break;
            }
            self.expect(token::OPEN, "'(' opening the entry")?;
            self.expect(token::NAME, "'name'")?;
            let len = self.read_u64()?;
            if len > MAX_NAME_LEN as u64 {
                return Err(NarError::NameTooLong {
                    path: self.path.clone(),
                    len,
                });
            }
            let mut name = [0u8; MAX_NAME_LEN];
            let name = &mut name[..len as usize];
            self.read_exact(name)?;
            self.padding(len)?;
            let name = &*name;
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
            if let Some(prev) = &previous {
                match name.cmp(prev.as_slice()) {
                    std::cmp::Ordering::Greater => {}
                    std::cmp::Ordering::Equal => {
                        return Err(NarError::DuplicateEntry {
                            path: self.path.clone(),
                            name: DisplayBytes(name.to_vec()),
                        })
                    }
                    std::cmp::Ordering::Less => {
                        return Err(NarError::UnsortedEntries {
                            path: self.path.clone(),
                            previous: DisplayBytes(prev.clone()),
                            name: DisplayBytes(name.to_vec()),
                        })
                    }
                }
            }
            let prev = previous.get_or_insert_with(Vec::new);
            prev.clear();
            prev.extend_from_slice(name);
            if depth >= MAX_DEPTH {
                return Err(NarError::TooDeep {
                    path: self.path.clone(),
                });
            }
            self.expect(token::NODE, "'node'")?;
            self.path.push(name);
            self.node(v, depth + 1)?;
            self.path.pop();
            self.expect(token::CLOSE, "')' closing the entry")?;
        }
        v.end_directory(&self.path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The NAR of the 6-byte file `hello\n` (vector V7).
    const HELLO: &[u8] = b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0\
\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0\x04\0\0\0\0\0\0\0type\0\0\0\0\
\x07\0\0\0\0\0\0\0regular\0\x08\0\0\0\0\0\0\0contents\
\x06\0\0\0\0\0\0\0hello\n\0\0\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0";

    #[test]
    fn stops_at_the_end_of_the_root() {
        let mut input = HELLO.to_vec();
        input.extend_from_slice(b"after");
        let mut reader = &input[..];
        assert_eq!(validate(&mut reader).unwrap(), 120);
        assert_eq!(reader, b"after");
    }

    #[test]
    fn huge_tag_length_is_refused_without_reading() {
        let mut input = token::MAGIC.to_vec();
        input.extend_from_slice(&(1u64 << 63).to_le_bytes());
        assert!(matches!(
            validate(&input[..]),
            Err(NarError::TagTooLong { len, .. }) if len == 1 << 63
        ));
    }
}
