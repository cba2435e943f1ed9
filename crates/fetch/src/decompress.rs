//! The one decompressor dispatch: a compressed stream and its method in, the plain
//! bytes out. The method comes from wherever the caller learns it (a narinfo's
//! `Compression:`, a URL's suffix, an archive's first bytes).

use std::io::{BufReader, Read};

use unrooted_format::narinfo::Compression;

/// Whether streams compressed with `c` can be read here (none, xz, bzip2, zstd).
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{self, Write};

    fn packed(c: Compression, data: &[u8]) -> Vec<u8> {
        match c {
            Compression::Xz => {
                let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Bzip2 => {
                let mut e = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::fast());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            Compression::Zstd => zstd::stream::encode_all(data, 3).unwrap(),
            _ => data.to_vec(),
        }
    }

    fn unpacked(c: Compression, bytes: Vec<u8>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decompressor(c, Box::new(io::Cursor::new(bytes)))
            .unwrap()
            .read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn every_supported_method_reads_back_and_concatenations_are_one_stream() {
        let data: Vec<u8> = (0..50_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in Compression::ALL.into_iter().filter(|c| can_decompress(*c)) {
            assert_eq!(unpacked(c, packed(c, &data)).unwrap(), data, "{c}");
            let mut twice = packed(c, &data);
            twice.extend(packed(c, &data));
            assert_eq!(unpacked(c, twice).unwrap().len(), 2 * data.len(), "{c}");
        }
    }

    #[test]
    fn truncated_streams_fail_and_unsupported_methods_are_refused() {
        let data = vec![7u8; 100_000];
        for c in [Compression::Xz, Compression::Bzip2, Compression::Zstd] {
            let mut bytes = packed(c, &data);
            bytes.truncate(bytes.len() / 2);
            assert!(unpacked(c, bytes).is_err(), "{c}");
        }
        for c in [Compression::Lzip, Compression::Lz4, Compression::Br] {
            assert!(!can_decompress(c));
            assert!(decompressor(c, Box::new(io::empty())).is_none());
        }
    }
}
