//! Bounded reads and writes of the protocol's primitives
//! (`docs/spec/worker-protocol.md` §2).
//!
//! Every length or count read from the peer is checked against a bound named at the
//! call site *before* anything is allocated, and buffers grow only as bytes actually
//! arrive, so an announced length of 2⁶³ fails at once and a slow sender cannot make
//! us reserve memory it never sends.

pub(crate) mod decoder;
mod framed;

pub(crate) use decoder::Decoder;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};

use unrooted_format::hash::{Hash, HashAlgo};
use unrooted_format::{StoreDir, StorePath, StorePathError};

pub use framed::{FramedReader, FramedWriter};

use crate::error::ProtocolError;
use crate::version::ProtocolVersion;

type Result<T> = std::result::Result<T, ProtocolError>;

/// Longest full store path we read: `PATH_MAX`, far above any real store path.
pub const MAX_PATH_LEN: u64 = 4096;
/// Longest short string (names, hashes, methods, ids, option names, signatures).
pub const MAX_SHORT_LEN: u64 = 4096;

/// Upper bounds for what a peer may send; one value per connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest long string: AddTextToStore contents, environment values, option
    /// values, log lines, error messages, realisation JSON.
    pub max_text: u64,
    /// Most elements in one list, set or map.
    pub max_count: u64,
    /// Largest frame in a framed stream.
    pub max_frame: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Derivation environments can hold whole files (structured attrs, `passAsFile`
            // fallbacks); 64 MiB admits those and still bounds one connection's memory.
            max_text: 64 << 20,
            // A closure of a million paths is far beyond any real system.
            max_count: 1 << 20,
            // Frames are streamed, never buffered whole, so this only rejects garbage.
            max_frame: 64 << 20,
        }
    }
}

/// What decoding and encoding depend on: the negotiated version, the store directory
/// paths are printed in, and the bounds.
#[derive(Debug, Clone)]
pub struct WireContext {
    /// The negotiated version V = min(client, server).
    pub version: ProtocolVersion,
    /// The store directory of every full path on the wire.
    pub store_dir: StoreDir,
    /// Bounds for reads.
    pub limits: Limits,
    /// The features negotiated (protocol ≥ 1.38; none before).
    pub features: crate::Features,
}

impl WireContext {
    /// A context with default limits.
    pub fn new(version: ProtocolVersion, store_dir: StoreDir) -> Self {
        Self {
            version,
            store_dir,
            limits: Limits::default(),
            features: crate::Features::default(),
        }
    }
}

fn read_err(field: &'static str) -> impl FnOnce(io::Error) -> ProtocolError {
    move |source| ProtocolError::Read { field, source }
}

fn truncated(field: &'static str) -> ProtocolError {
    ProtocolError::Read {
        field,
        source: io::ErrorKind::UnexpectedEof.into(),
    }
}

/// Reads a little-endian `u64`.
pub fn read_u64<R: Read + ?Sized>(r: &mut R, field: &'static str) -> Result<u64> {
    let mut b = [0u8; 8];
    r.read_exact(&mut b).map_err(read_err(field))?;
    Ok(u64::from_le_bytes(b))
}

/// Reads a `u64` unless the stream ends cleanly before its first byte (`Ok(None)`):
/// that is how a client ends a session between requests.
pub fn read_u64_or_eof<R: Read + ?Sized>(r: &mut R, field: &'static str) -> Result<Option<u64>> {
    let mut b = [0u8; 8];
    let mut got = 0;
    while got < 8 {
        match r.read(&mut b[got..]) {
            Ok(0) if got == 0 => return Ok(None),
            Ok(0) => return Err(truncated(field)),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(field)(e)),
        }
    }
    Ok(Some(u64::from_le_bytes(b)))
}

/// Reads an "Int" field, which Nix reads as `unsigned int`: values ≥ 2³² are refused.
pub fn read_u32<R: Read + ?Sized>(r: &mut R, field: &'static str) -> Result<u32> {
    let v = read_u64(r, field)?;
    u32::try_from(v).map_err(|_| ProtocolError::ValueOutOfRange { field, value: v })
}

/// Reads a `bool`; any non-zero word is true, as in Nix.
pub fn read_bool<R: Read + ?Sized>(r: &mut R, field: &'static str) -> Result<bool> {
    Ok(read_u64(r, field)? != 0)
}

/// Reads a collection count no larger than `max`.
pub fn read_count<R: Read + ?Sized>(r: &mut R, max: u64, field: &'static str) -> Result<usize> {
    let count = read_u64(r, field)?;
    if count > max {
        return Err(ProtocolError::TooManyElements { field, count, max });
    }
    usize::try_from(count).map_err(|_| ProtocolError::TooManyElements { field, count, max })
}

/// Reads a `bytes` of at most `max` bytes, checking that its padding is zero.
pub fn read_bytes<R: Read + ?Sized>(r: &mut R, max: u64, field: &'static str) -> Result<Vec<u8>> {
    let len = read_u64(r, field)?;
    if len > max {
        return Err(ProtocolError::StringTooLong { field, len, max });
    }
    // Start small and let the buffer follow the bytes that really arrive.
    let mut buf = Vec::with_capacity(len.min(64 << 10) as usize);
    (&mut *r)
        .take(len)
        .read_to_end(&mut buf)
        .map_err(read_err(field))?;
    if buf.len() as u64 != len {
        return Err(truncated(field));
    }
    read_padding(r, len, field)?;
    Ok(buf)
}

/// Reads and checks the zero padding that follows a string of `len` bytes.
pub fn read_padding<R: Read + ?Sized>(r: &mut R, len: u64, field: &'static str) -> Result<()> {
    let pad = padding(len);
    if pad > 0 {
        let mut b = [0u8; 8];
        r.read_exact(&mut b[..pad]).map_err(read_err(field))?;
        if b[..pad].iter().any(|&x| x != 0) {
            return Err(ProtocolError::BadPadding { field });
        }
    }
    Ok(())
}

/// The number of zero bytes after a string of `len` bytes.
pub const fn padding(len: u64) -> usize {
    ((8 - len % 8) % 8) as usize
}

/// Converts bytes to text, naming the field on failure.
pub fn utf8(bytes: Vec<u8>, field: &'static str) -> Result<String> {
    String::from_utf8(bytes).map_err(|_| ProtocolError::NotUtf8 { field })
}

/// Reads a UTF-8 `str` of at most `max` bytes.
pub fn read_string<R: Read + ?Sized>(r: &mut R, max: u64, field: &'static str) -> Result<String> {
    utf8(read_bytes(r, max, field)?, field)
}

/// Reads a `list<str>` of short strings.
pub fn read_strings<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    max_len: u64,
    field: &'static str,
) -> Result<Vec<String>> {
    let n = read_count(r, limits.max_count, field)?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        out.push(read_string(r, max_len, field)?);
    }
    Ok(out)
}

/// Reads a `set<str>`.
pub fn read_string_set<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    max_len: u64,
    field: &'static str,
) -> Result<BTreeSet<String>> {
    Ok(read_strings(r, limits, max_len, field)?
        .into_iter()
        .collect())
}

/// Reads a `map<str,str>` whose values may be up to `max_value` bytes.
pub fn read_string_map<R: Read + ?Sized>(
    r: &mut R,
    limits: &Limits,
    max_value: u64,
    field: &'static str,
) -> Result<BTreeMap<String, String>> {
    let n = read_count(r, limits.max_count, field)?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let k = read_string(r, MAX_SHORT_LEN, field)?;
        let v = read_string(r, max_value, field)?;
        out.insert(k, v);
    }
    Ok(out)
}

/// Parses a full store path in `dir`, with Nix's error for paths outside the store.
pub fn parse_path(dir: &StoreDir, text: &str) -> Result<StorePath> {
    dir.parse_path(text).map_err(|e| match e {
        StorePathError::NotInStore { .. } => ProtocolError::NotInStore {
            path: text.to_owned(),
        },
        source => ProtocolError::InvalidStorePath {
            path: text.to_owned(),
            source,
        },
    })
}

/// Parses a store path base name (`<hash>-<name>`), used where no directory is sent.
pub fn parse_base_name(text: &str) -> Result<StorePath> {
    StorePath::from_base_name(text).map_err(|source| ProtocolError::InvalidStorePath {
        path: text.to_owned(),
        source,
    })
}

/// Parses an optional path: "" is absent.
pub fn parse_opt_path(dir: &StoreDir, text: &str) -> Result<Option<StorePath>> {
    if text.is_empty() {
        Ok(None)
    } else {
        parse_path(dir, text).map(Some)
    }
}

/// Parses a narHash as clients send it: hex, Nix base-32 or base64, with or without
/// `sha256:`, or SRI
/// (`docs/spec/worker-protocol.md` §2.2). Only SHA-256 is accepted.
pub fn parse_nar_hash(text: &str) -> Result<Hash> {
    Hash::parse_any(text, Some(HashAlgo::Sha256)).map_err(|source| ProtocolError::InvalidHash {
        field: "narHash",
        source,
    })
}

/// Reads a `path`.
pub fn read_path<R: Read + ?Sized>(
    r: &mut R,
    dir: &StoreDir,
    field: &'static str,
) -> Result<StorePath> {
    parse_path(dir, &read_string(r, MAX_PATH_LEN, field)?)
}

/// Reads an `opt-path`.
pub fn read_opt_path<R: Read + ?Sized>(
    r: &mut R,
    dir: &StoreDir,
    field: &'static str,
) -> Result<Option<StorePath>> {
    parse_opt_path(dir, &read_string(r, MAX_PATH_LEN, field)?)
}

/// Reads a `paths` set.
pub fn read_paths<R: Read + ?Sized>(
    r: &mut R,
    cx: &WireContext,
    field: &'static str,
) -> Result<BTreeSet<StorePath>> {
    let n = read_count(r, cx.limits.max_count, field)?;
    let mut out = BTreeSet::new();
    for _ in 0..n {
        out.insert(read_path(r, &cx.store_dir, field)?);
    }
    Ok(out)
}

/// Writes a `u64`.
pub fn write_u64<W: Write + ?Sized>(w: &mut W, v: u64) -> io::Result<()> {
    w.write_all(&v.to_le_bytes())
}

/// Writes a `bool` as 0 or 1.
pub fn write_bool<W: Write + ?Sized>(w: &mut W, v: bool) -> io::Result<()> {
    write_u64(w, u64::from(v))
}

/// Writes a `bytes`/`str` with its zero padding.
pub fn write_bytes<W: Write + ?Sized>(w: &mut W, b: &[u8]) -> io::Result<()> {
    write_u64(w, b.len() as u64)?;
    w.write_all(b)?;
    w.write_all(&[0u8; 8][..padding(b.len() as u64)])
}

/// Writes a list of strings, in the iterator's order.
pub fn write_strings<W, I, S>(w: &mut W, items: I) -> io::Result<()>
where
    W: Write + ?Sized,
    I: IntoIterator<Item = S>,
    I::IntoIter: ExactSizeIterator,
    S: AsRef<[u8]>,
{
    let it = items.into_iter();
    write_u64(w, it.len() as u64)?;
    for s in it {
        write_bytes(w, s.as_ref())?;
    }
    Ok(())
}

/// Writes a `map<str,str>`, sorted by key.
pub fn write_string_map<W: Write + ?Sized>(
    w: &mut W,
    map: &BTreeMap<String, String>,
) -> io::Result<()> {
    write_u64(w, map.len() as u64)?;
    for (k, v) in map {
        write_bytes(w, k.as_bytes())?;
        write_bytes(w, v.as_bytes())?;
    }
    Ok(())
}

/// Writes a `path`.
pub fn write_path<W: Write + ?Sized>(w: &mut W, dir: &StoreDir, p: &StorePath) -> io::Result<()> {
    write_bytes(w, dir.display(p).as_bytes())
}

/// Writes an `opt-path` ("" when absent).
pub fn write_opt_path<W: Write + ?Sized>(
    w: &mut W,
    dir: &StoreDir,
    p: Option<&StorePath>,
) -> io::Result<()> {
    match p {
        Some(p) => write_path(w, dir, p),
        None => write_bytes(w, b""),
    }
}

/// Writes a `paths` set (a `BTreeSet` is already sorted as Nix sorts).
pub fn write_paths<'a, W, I>(w: &mut W, dir: &StoreDir, paths: I) -> io::Result<()>
where
    W: Write + ?Sized,
    I: IntoIterator<Item = &'a StorePath>,
    I::IntoIter: ExactSizeIterator,
{
    let it = paths.into_iter();
    write_u64(w, it.len() as u64)?;
    for p in it {
        write_path(w, dir, p)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn string_round_trip_and_padding() {
        for len in 0..20 {
            let s = vec![b'x'; len];
            let mut out = Vec::new();
            write_bytes(&mut out, &s).unwrap();
            assert_eq!(out.len() % 8, 0);
            assert_eq!(read_bytes(&mut &out[..], 100, "s").unwrap(), s);
        }
    }

    #[test]
    fn huge_length_is_refused_before_reading() {
        let mut data = (1u64 << 63).to_le_bytes().to_vec();
        data.extend_from_slice(b"abc");
        let e = read_bytes(&mut &data[..], 10, "name").unwrap_err();
        assert!(
            matches!(e, ProtocolError::StringTooLong { len, max: 10, field: "name" } if len == 1 << 63)
        );
    }

    #[test]
    fn clean_eof_is_not_an_error() {
        assert!(read_u64_or_eof(&mut &b""[..], "op").unwrap().is_none());
        assert!(read_u64_or_eof(&mut &b"\x01\x00"[..], "op").is_err());
    }
}
