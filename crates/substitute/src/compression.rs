//! Decompressing NARs as they arrive and compressing them as they are served, plus
//! the byte limits every network stream goes through.

use std::io::{self, BufReader, Read, Write};

use unrooted_format::narinfo::Compression;

/// Whether NARs compressed with `c` can be read here (none, xz, bzip2, zstd).
pub fn can_decompress(c: Compression) -> bool {
    matches!(
        c,
        Compression::None | Compression::Xz | Compression::Bzip2 | Compression::Zstd
    )
}

/// Wraps `compressed` in a decompressor for `c`; `None` for a method not supported
/// (see [`can_decompress`]). Concatenated xz and bzip2 streams are read as one, as
/// Nix's decompressors do; data that is corrupt or ends early is an error
/// (`InvalidData` or `UnexpectedEof`), never a short stream passed off as complete.
pub fn decompressor<'a>(
    c: Compression,
    compressed: Box<dyn Read + Send + 'a>,
) -> Option<Box<dyn Read + Send + 'a>> {
    Some(match c {
        Compression::None => compressed,
        Compression::Xz => Box::new(liblzma::read::XzDecoder::new_multi_decoder(compressed)),
        Compression::Bzip2 => Box::new(bzip2::read::MultiBzDecoder::new(compressed)),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(1 << 16, compressed))
                .ok()?,
        ),
        _ => return None,
    })
}

/// Whether `unrooted serve` can compress with `c` (none, xz, bzip2, zstd).
pub fn can_compress(c: Compression) -> bool {
    can_decompress(c)
}

/// A writer that compresses into `out` with `c`; call [`Encoder::finish`] to write
/// the end of the stream.
pub struct Encoder<W: Write> {
    inner: EncoderInner<W>,
}

enum EncoderInner<W: Write> {
    None(W),
    Xz(liblzma::write::XzEncoder<W>),
    Bzip2(bzip2::write::BzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Encoder<W> {
    /// A compressor for `c` writing into `out`, at a level chosen for serving on the
    /// fly (fast rather than small): xz preset 1, zstd level 3, bzip2 level 6.
    /// `None` for a method not supported.
    pub fn new(c: Compression, out: W) -> Option<io::Result<Self>> {
        let inner = match c {
            Compression::None => Ok(EncoderInner::None(out)),
            Compression::Xz => Ok(EncoderInner::Xz(liblzma::write::XzEncoder::new(out, 1))),
            Compression::Bzip2 => Ok(EncoderInner::Bzip2(bzip2::write::BzEncoder::new(
                out,
                bzip2::Compression::new(6),
            ))),
            Compression::Zstd => zstd::stream::write::Encoder::new(out, 3).map(EncoderInner::Zstd),
            _ => return None,
        };
        Some(inner.map(|inner| Self { inner }))
    }

    /// Ends the compressed stream and returns the inner writer.
    pub fn finish(self) -> io::Result<W> {
        match self.inner {
            EncoderInner::None(w) => Ok(w),
            EncoderInner::Xz(e) => e.finish(),
            EncoderInner::Bzip2(e) => e.finish(),
            EncoderInner::Zstd(e) => e.finish(),
        }
    }
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match &mut self.inner {
            EncoderInner::None(w) => w.write(buf),
            EncoderInner::Xz(e) => e.write(buf),
            EncoderInner::Bzip2(e) => e.write(buf),
            EncoderInner::Zstd(e) => e.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.inner {
            EncoderInner::None(w) => w.flush(),
            EncoderInner::Xz(e) => e.flush(),
            EncoderInner::Bzip2(e) => e.flush(),
            EncoderInner::Zstd(e) => e.flush(),
        }
    }
}

/// A reader that fails (rather than silently stopping, as `Read::take` does) once
/// more than `max` bytes come out of `inner`: a cache that sends more than it
/// announced is broken or hostile.
pub struct Bounded<R> {
    inner: R,
    remaining: u64,
    what: &'static str,
}

impl<R: Read> Bounded<R> {
    /// Allows at most `max` bytes; `what` names the stream in the error.
    pub fn new(inner: R, max: u64, what: &'static str) -> Self {
        Self {
            inner,
            remaining: max,
            what,
        }
    }
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // Read one byte more than allowed so that an overlong stream is noticed.
        let want = buf
            .len()
            .min(usize::try_from(self.remaining.saturating_add(1)).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..want])?;
        if n as u64 > self.remaining {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is longer than announced", self.what),
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(c: Compression, data: &[u8]) -> Vec<u8> {
        let mut enc = Encoder::new(c, Vec::new()).unwrap().unwrap();
        enc.write_all(data).unwrap();
        let packed = enc.finish().unwrap();
        let mut out = Vec::new();
        decompressor(c, Box::new(io::Cursor::new(packed)))
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        out
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect()
    }

    #[test]
    fn every_supported_method_round_trips() {
        let data = sample();
        for c in Compression::ALL.into_iter().filter(|c| can_decompress(*c)) {
            assert_eq!(round_trip(c, &data), data, "{c}");
        }
    }

    #[test]
    fn unsupported_methods_are_refused() {
        for c in [Compression::Lzip, Compression::Lz4, Compression::Br] {
            assert!(!can_decompress(c));
            assert!(decompressor(c, Box::new(io::empty())).is_none());
            assert!(Encoder::new(c, Vec::new()).is_none());
        }
    }

    #[test]
    fn truncated_or_corrupt_streams_fail() {
        let data = sample();
        for c in [Compression::Xz, Compression::Bzip2, Compression::Zstd] {
            let mut enc = Encoder::new(c, Vec::new()).unwrap().unwrap();
            enc.write_all(&data).unwrap();
            let packed = enc.finish().unwrap();
            let half = packed[..packed.len() / 2].to_vec();
            let mut out = Vec::new();
            let r = decompressor(c, Box::new(io::Cursor::new(half)))
                .unwrap()
                .read_to_end(&mut out);
            assert!(r.is_err(), "{c}: truncated stream accepted");
            let mut corrupt = packed.clone();
            let mid = corrupt.len() / 2;
            corrupt[mid] ^= 0xff;
            corrupt[mid + 1] ^= 0x55;
            let mut out = Vec::new();
            let r = decompressor(c, Box::new(io::Cursor::new(corrupt)))
                .unwrap()
                .read_to_end(&mut out);
            assert!(r.is_err() || out != data, "{c}: corruption unnoticed");
        }
    }

    #[test]
    fn bounded_refuses_overlong_streams() {
        let mut out = Vec::new();
        Bounded::new(&[1u8; 10][..], 10, "x")
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len(), 10);
        let err = Bounded::new(&[1u8; 11][..], 10, "NAR")
            .read_to_end(&mut Vec::new())
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("NAR"));
    }
}
