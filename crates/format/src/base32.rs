//! Nix's base32: the alphabet and bit order Nix uses for hashes and store paths.
//!
//! This is not RFC 4648. The digest is read as one little-endian integer and printed
//! from its most significant 5-bit group down, using the alphabet
//! `0123456789abcdfghijklmnpqrsvwxyz` (no `e`, `o`, `u`, `t`). A digest of `n` bytes
//! takes `floor((8n - 1) / 5) + 1` characters.

use thiserror::Error;

/// The 32 characters Nix's base32 is written with, in value order.
pub const ALPHABET: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Sentinel in [`DECODE`] for bytes outside the alphabet.
const INVALID: u8 = 0xff;

/// Value of each byte in the alphabet, or [`INVALID`].
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut i = 0;
    while i < 32 {
        table[ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Why a base32 string could not be decoded.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum Base32Error {
    /// The string has the wrong length for the expected digest size.
    #[error("base-32 string has {actual} characters, expected {expected}")]
    Length {
        /// Characters expected for the digest size.
        expected: usize,
        /// Characters found.
        actual: usize,
    },
    /// A byte outside Nix's base32 alphabet.
    #[error("invalid character {byte:#04x} at position {position} in base-32 string")]
    Character {
        /// The offending byte.
        byte: u8,
        /// Its index in the string.
        position: usize,
    },
    /// The value has bits set beyond the digest size (e.g. a sha256 starting with `2`).
    #[error("invalid base-32 hash: value does not fit in {bytes} bytes")]
    Overflow {
        /// The digest size in bytes.
        bytes: usize,
    },
}

/// Number of base32 characters for a digest of `len` bytes.
pub const fn encoded_len(len: usize) -> usize {
    if len == 0 {
        0
    } else {
        (len * 8 - 1) / 5 + 1
    }
}

/// Whether `byte` is in Nix's base32 alphabet.
pub fn is_base32_char(byte: u8) -> bool {
    DECODE[byte as usize] != INVALID
}

/// Encodes `bytes` in Nix base32.
pub fn encode(bytes: &[u8]) -> String {
    let len = encoded_len(bytes.len());
    let mut out = Vec::with_capacity(len);
    for n in (0..len).rev() {
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        let low = bytes[i] >> j;
        let high = if i + 1 < bytes.len() {
            // Shift in u16 so j == 0 does not overflow the u8 shift.
            ((bytes[i + 1] as u16) << (8 - j)) as u8
        } else {
            0
        };
        out.push(ALPHABET[((low | high) & 0x1f) as usize]);
    }
    // The alphabet is ASCII, so this cannot fail.
    String::from_utf8(out).unwrap_or_default()
}

/// Decodes a Nix base32 string into exactly `size` bytes.
pub fn decode(text: &[u8], size: usize) -> Result<Vec<u8>, Base32Error> {
    let expected = encoded_len(size);
    if text.len() != expected {
        return Err(Base32Error::Length {
            expected,
            actual: text.len(),
        });
    }
    let mut out = vec![0u8; size];
    for (n, &c) in text.iter().rev().enumerate() {
        let digit = DECODE[c as usize];
        if digit == INVALID {
            return Err(Base32Error::Character {
                byte: c,
                position: text.len() - 1 - n,
            });
        }
        let bit = n * 5;
        let i = bit / 8;
        let j = bit % 8;
        out[i] |= digit << j;
        let carry = (digit as u16) >> (8 - j);
        if i + 1 < size {
            out[i + 1] |= carry as u8;
        } else if carry != 0 {
            return Err(Base32Error::Overflow { bytes: size });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_match_nix() {
        assert_eq!(encoded_len(16), 26);
        assert_eq!(encoded_len(20), 32);
        assert_eq!(encoded_len(32), 52);
        assert_eq!(encoded_len(64), 103);
    }

    #[test]
    fn rejects_out_of_range_leading_digit() {
        let ok = b"1mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert!(decode(ok, 32).is_ok());
        let bad = b"2mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73";
        assert_eq!(decode(bad, 32), Err(Base32Error::Overflow { bytes: 32 }));
    }

    #[test]
    fn rejects_letters_outside_alphabet() {
        let bad = b"0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c7e";
        assert!(matches!(
            decode(bad, 32),
            Err(Base32Error::Character {
                byte: b'e',
                position: 51
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..80)) {
            let text = encode(&bytes);
            proptest::prop_assert_eq!(decode(text.as_bytes(), bytes.len()).unwrap(), bytes);
        }
    }
}
