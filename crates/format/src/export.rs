//! The export format: what `nix-store --export` writes and `nix-store --import` reads.
//!
//! ```text
//! stream      = { u64(1) path-record } u64(0)
//! path-record = <NAR> u64(0x4558494e)             # "NIXE\0\0\0\0"
//!               str(<full store path>)
//!               u64(nrefs) { str(<full reference path>) }
//!               str(<full deriver path> | "")
//!               u64(0) | u64(1) str(<legacy signature>)
//! ```
//!
//! Integers are `u64` little-endian and strings use the NAR framing. Each record's NAR
//! comes *before* the metadata naming it, so a reader must deal with the archive
//! before it knows the path: [`ExportReader::next_record`] copies it to a sink of the
//! caller's choice (a temporary file, a hasher) and [`ExportReader::next_record_with`]
//! hands it to any [`NarVisitor`]. Both go through the one NAR parser and read
//! exactly the stream's bytes, no further. Store paths are full paths in the
//! [`StoreDir`] given; every count and length is bounded before anything is
//! allocated.

use std::io::{self, Read, Write};
use std::path::Path;

use thiserror::Error;

use crate::nar::{self, NarError, NarVisitor};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// The marker between a record's NAR and its metadata: the bytes `NIXE` as a `u64`.
pub const EXPORT_MAGIC: u64 = 0x4558_494e;

/// Most references one record may list; far above any real path, small enough that a
/// hostile count cannot make us allocate much.
pub const MAX_REFERENCES: u64 = 1 << 16;

/// Longest store path string accepted (store dir, `/`, hash, `-`, name).
pub const MAX_PATH_LEN: u64 = 4096;

/// Longest legacy signature accepted.
pub const MAX_SIGNATURE_LEN: u64 = 4096;

/// The metadata of one exported path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRecord {
    /// The path exported.
    pub path: StorePath,
    /// Its references, in the stream's order (Nix writes them sorted).
    pub references: Vec<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// The legacy signature of Nix before 1.0, if present; Nix 2.8 ignores it on
    /// import and never writes one.
    pub legacy_signature: Option<Vec<u8>>,
}

/// An export stream could not be read or written.
#[derive(Debug, Error)]
pub enum ExportError {
    /// Reading the stream failed.
    #[error("reading export stream at byte {offset}")]
    Read {
        /// Bytes of the stream consumed before the failure.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The stream ended in the middle of a record.
    #[error("export stream ends early at byte {offset}")]
    Truncated {
        /// Bytes of the stream consumed before its end.
        offset: u64,
    },
    /// The flag before a record is neither 0 (end) nor 1 (a record follows).
    #[error("export stream: record flag {value} at byte {offset} is neither 0 nor 1")]
    RecordFlag {
        /// The value read.
        value: u64,
        /// Where it was read.
        offset: u64,
    },
    /// The record's NAR is invalid.
    #[error("export stream: NAR of record {record}")]
    Nar {
        /// Index of the record (from 0).
        record: u64,
        /// What was wrong with the NAR.
        #[source]
        source: NarError,
    },
    /// The `NIXE` marker after a NAR is missing.
    #[error("export stream: record {record} has {value:#x} where the 'NIXE' marker belongs")]
    Magic {
        /// Index of the record.
        record: u64,
        /// The value read.
        value: u64,
    },
    /// A string is longer than its bound.
    #[error("export stream: {what} of record {record} is {len} bytes, more than {max}")]
    StringTooLong {
        /// Index of the record.
        record: u64,
        /// Which field.
        what: &'static str,
        /// The announced length.
        len: u64,
        /// The bound.
        max: u64,
    },
    /// A string's padding holds non-zero bytes.
    #[error("export stream: non-zero padding at byte {offset}")]
    NonZeroPadding {
        /// Offset of the padding.
        offset: u64,
    },
    /// More references than [`MAX_REFERENCES`].
    #[error(
        "export stream: record {record} announces {count} references, more than {MAX_REFERENCES}"
    )]
    TooManyReferences {
        /// Index of the record.
        record: u64,
        /// The announced count.
        count: u64,
    },
    /// A path field is not UTF-8.
    #[error("export stream: {what} of record {record} is not UTF-8")]
    NotUtf8 {
        /// Index of the record.
        record: u64,
        /// Which field.
        what: &'static str,
    },
    /// A path field is not a store path in the store directory.
    #[error("export stream: {what} of record {record}")]
    StorePath {
        /// Index of the record.
        record: u64,
        /// Which field.
        what: &'static str,
        /// Why the path is not valid.
        #[source]
        source: StorePathError,
    },
    /// The signature flag is neither 0 nor 1.
    #[error("export stream: record {record} has signature flag {value}, neither 0 nor 1")]
    SignatureFlag {
        /// Index of the record.
        record: u64,
        /// The value read.
        value: u64,
    },
    /// Writing the stream failed.
    #[error("writing export stream")]
    Write {
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Counts bytes consumed, for error offsets.
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

/// Reads the records of an export stream one by one.
pub struct ExportReader<R> {
    src: Counted<R>,
    store_dir: StoreDir,
    record: u64,
    done: bool,
}

impl<R: Read> ExportReader<R> {
    /// A reader of the stream `reader`, whose paths lie in `store_dir`.
    pub fn new(reader: R, store_dir: StoreDir) -> Self {
        Self {
            src: Counted {
                inner: reader,
                pos: 0,
            },
            store_dir,
            record: 0,
            done: false,
        }
    }

    /// Bytes of the stream consumed so far.
    pub fn position(&self) -> u64 {
        self.src.pos
    }

    /// The underlying reader, positioned after what was consumed.
    pub fn into_inner(self) -> R {
        self.src.inner
    }

    /// Reads the next record, copying its NAR verbatim to `nar`; `None` after the end
    /// marker.
    pub fn next_record<W: Write + ?Sized>(
        &mut self,
        nar: &mut W,
    ) -> Result<Option<ExportRecord>, ExportError> {
        self.next_with(|src| nar::copy_nar(src, nar))
    }

    /// Reads the next record, giving its NAR to `visitor` (for example to restore it);
    /// `None` after the end marker.
    pub fn next_record_with<V: NarVisitor + ?Sized>(
        &mut self,
        visitor: &mut V,
    ) -> Result<Option<ExportRecord>, ExportError> {
        self.next_with(|src| nar::read_nar(src, visitor))
    }

    fn next_with(
        &mut self,
        read_nar: impl FnOnce(&mut Counted<R>) -> Result<u64, NarError>,
    ) -> Result<Option<ExportRecord>, ExportError> {
        if self.done {
            return Ok(None);
        }
        let offset = self.src.pos;
        match self.read_u64()? {
            0 => {
                self.done = true;
                return Ok(None);
            }
            1 => {}
            value => return Err(ExportError::RecordFlag { value, offset }),
        }
        let record = self.record;
        read_nar(&mut self.src).map_err(|source| ExportError::Nar { record, source })?;
        let value = self.read_u64()?;
        if value != EXPORT_MAGIC {
            return Err(ExportError::Magic { record, value });
        }
        let path = self.read_path("path")?;
        let count = self.read_u64()?;
        if count > MAX_REFERENCES {
            return Err(ExportError::TooManyReferences { record, count });
        }
        let mut references = Vec::with_capacity(count as usize);
        for _ in 0..count {
            references.push(self.read_path("reference")?);
        }
        let deriver = self.read_string("deriver", MAX_PATH_LEN)?;
        let deriver = if deriver.is_empty() {
            None
        } else {
            Some(self.parse_path("deriver", deriver)?)
        };
        let legacy_signature = match self.read_u64()? {
            0 => None,
            1 => Some(self.read_string("signature", MAX_SIGNATURE_LEN)?),
            value => return Err(ExportError::SignatureFlag { record, value }),
        };
        self.record += 1;
        Ok(Some(ExportRecord {
            path,
            references,
            deriver,
            legacy_signature,
        }))
    }

    fn io_error(&self, e: io::Error) -> ExportError {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            ExportError::Truncated {
                offset: self.src.pos,
            }
        } else {
            ExportError::Read {
                offset: self.src.pos,
                source: e,
            }
        }
    }

    fn read_u64(&mut self) -> Result<u64, ExportError> {
        let mut b = [0u8; 8];
        self.src.read_exact(&mut b).map_err(|e| self.io_error(e))?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_string(&mut self, what: &'static str, max: u64) -> Result<Vec<u8>, ExportError> {
        let len = self.read_u64()?;
        if len > max {
            return Err(ExportError::StringTooLong {
                record: self.record,
                what,
                len,
                max,
            });
        }
        let padded = (len as usize).next_multiple_of(8);
        let mut s = vec![0u8; padded];
        self.src.read_exact(&mut s).map_err(|e| self.io_error(e))?;
        if s[len as usize..].iter().any(|&b| b != 0) {
            return Err(ExportError::NonZeroPadding {
                offset: self.src.pos - (padded as u64 - len),
            });
        }
        s.truncate(len as usize);
        Ok(s)
    }

    fn parse_path(&self, what: &'static str, bytes: Vec<u8>) -> Result<StorePath, ExportError> {
        let record = self.record;
        let text = String::from_utf8(bytes).map_err(|_| ExportError::NotUtf8 { record, what })?;
        self.store_dir
            .parse_path(&text)
            .map_err(|source| ExportError::StorePath {
                record,
                what,
                source,
            })
    }

    fn read_path(&mut self, what: &'static str) -> Result<StorePath, ExportError> {
        let bytes = self.read_string(what, MAX_PATH_LEN)?;
        self.parse_path(what, bytes)
    }
}

/// Writes an export stream record by record; [`ExportWriter::finish`] writes the end
/// marker.
pub struct ExportWriter<W: Write> {
    out: W,
    store_dir: StoreDir,
    records: u64,
}

impl<W: Write> ExportWriter<W> {
    /// A writer of paths in `store_dir` to `out`.
    pub fn new(out: W, store_dir: StoreDir) -> Self {
        Self {
            out,
            store_dir,
            records: 0,
        }
    }

    /// Writes a record whose NAR is read from `nar`; the NAR is checked and copied
    /// verbatim, and nothing after it is read.
    pub fn write_nar_record<R: Read>(
        &mut self,
        record: &ExportRecord,
        nar: R,
    ) -> Result<(), ExportError> {
        self.put_u64(1)?;
        nar::copy_nar(nar, &mut self.out).map_err(|source| ExportError::Nar {
            record: self.records,
            source,
        })?;
        self.put_metadata(record)
    }

    /// Writes a record whose NAR is the serialisation of `fs_path` on disk (the path's
    /// copy in the store, typically).
    pub fn write_path_record(
        &mut self,
        record: &ExportRecord,
        fs_path: &Path,
    ) -> Result<(), ExportError> {
        self.put_u64(1)?;
        nar::dump_path(fs_path, &mut self.out).map_err(|source| ExportError::Nar {
            record: self.records,
            source,
        })?;
        self.put_metadata(record)
    }

    /// Writes the end marker and returns the sink.
    pub fn finish(mut self) -> Result<W, ExportError> {
        self.put_u64(0)?;
        self.out
            .flush()
            .map_err(|source| ExportError::Write { source })?;
        Ok(self.out)
    }

    fn put(&mut self, bytes: &[u8]) -> Result<(), ExportError> {
        self.out
            .write_all(bytes)
            .map_err(|source| ExportError::Write { source })
    }

    fn put_u64(&mut self, n: u64) -> Result<(), ExportError> {
        self.put(&n.to_le_bytes())
    }

    fn put_str(&mut self, s: &[u8]) -> Result<(), ExportError> {
        self.put_u64(s.len() as u64)?;
        self.put(s)?;
        let pad = s.len().next_multiple_of(8) - s.len();
        self.put(&[0; 8][..pad])
    }

    fn put_metadata(&mut self, record: &ExportRecord) -> Result<(), ExportError> {
        self.records += 1;
        self.put_u64(EXPORT_MAGIC)?;
        let path = self.store_dir.display(&record.path);
        self.put_str(path.as_bytes())?;
        self.put_u64(record.references.len() as u64)?;
        for r in &record.references {
            let r = self.store_dir.display(r);
            self.put_str(r.as_bytes())?;
        }
        let deriver = match &record.deriver {
            Some(d) => self.store_dir.display(d),
            None => String::new(),
        };
        self.put_str(deriver.as_bytes())?;
        match &record.legacy_signature {
            None => self.put_u64(0),
            Some(sig) => {
                self.put_u64(1)?;
                self.put_str(sig)
            }
        }
    }
}
