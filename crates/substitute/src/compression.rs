//! Compressing NARs as they are served; decompressing them as they arrive and the
//! byte limits every network stream goes through are `unrooted-fetch`'s, re-exported
//! here.

use std::io::{self, Write};

use unrooted_format::narinfo::Compression;

pub use unrooted_fetch::{can_decompress, decompressor, is_over_limit, Bounded, OverLimit};

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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

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
}
