//! Hashes and their text forms: base16, Nix base32, base64, SRI and `algo:` prefixes.
//!
//! Nix accepts a hash in several spellings and picks the encoding of an unprefixed or
//! `algo:`-prefixed digest by its length alone; [`Hash::parse_any`] follows
//! `Hash::parseAny` of Nix 2.8 exactly, including the rule that an algorithm given both
//! by context and by the string must agree.

use std::fmt;
use std::io;
use std::str::FromStr;

use data_encoding::{BASE64, HEXLOWER_PERMISSIVE};
use sha2::Digest;
use thiserror::Error;

use crate::base32;

/// The hash algorithms Nix 2.8 knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum HashAlgo {
    /// MD5, 16 bytes.
    Md5,
    /// SHA-1, 20 bytes.
    Sha1,
    /// SHA-256, 32 bytes.
    Sha256,
    /// SHA-512, 64 bytes.
    Sha512,
}

impl HashAlgo {
    /// Every algorithm, in Nix's order.
    pub const ALL: [HashAlgo; 4] = [Self::Md5, Self::Sha1, Self::Sha256, Self::Sha512];

    /// Digest size in bytes.
    pub const fn size(self) -> usize {
        match self {
            Self::Md5 => 16,
            Self::Sha1 => 20,
            Self::Sha256 => 32,
            Self::Sha512 => 64,
        }
    }

    /// Nix's name for the algorithm (`sha256`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Md5 => "md5",
            Self::Sha1 => "sha1",
            Self::Sha256 => "sha256",
            Self::Sha512 => "sha512",
        }
    }

    /// Hashes `data` in one go.
    pub fn digest(self, data: &[u8]) -> Hash {
        let mut hasher = Hasher::new(self);
        hasher.update(data);
        hasher.finish()
    }
}

impl fmt::Display for HashAlgo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for HashAlgo {
    type Err = HashError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| HashError::UnknownAlgo { name: s.to_owned() })
    }
}

/// How a digest is written as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    /// Lowercase hexadecimal.
    Base16,
    /// Nix's base32 (see [`crate::base32`]).
    Base32,
    /// Standard base64 with padding.
    Base64,
    /// Subresource integrity: `algo-<base64>`.
    Sri,
}

/// Why a hash could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum HashError {
    /// An algorithm name Nix does not know.
    #[error("unknown hash algorithm '{name}'")]
    UnknownAlgo {
        /// The name found.
        name: String,
    },
    /// The string names one algorithm and the context expects another.
    #[error("hash '{text}' should have type '{expected}'")]
    AlgoMismatch {
        /// The hash text.
        text: String,
        /// The algorithm the context requires.
        expected: HashAlgo,
    },
    /// No algorithm in the string and none from the context.
    #[error("hash '{text}' does not include a type, nor is the type otherwise known from context")]
    MissingAlgo {
        /// The hash text.
        text: String,
    },
    /// The digest's length matches no encoding of the algorithm.
    #[error("hash '{text}' has wrong length for hash type '{algo}'")]
    Length {
        /// The hash text.
        text: String,
        /// The algorithm.
        algo: HashAlgo,
    },
    /// The digest has the right length but is not valid in its encoding.
    #[error("invalid {encoding} in hash '{text}'")]
    Encoding {
        /// The hash text.
        text: String,
        /// Which encoding was tried.
        encoding: &'static str,
    },
}

/// A digest together with its algorithm.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hash {
    algo: HashAlgo,
    bytes: [u8; 64],
}

impl Hash {
    /// Builds a hash from a digest, which must be exactly `algo.size()` bytes.
    pub fn from_digest(algo: HashAlgo, digest: &[u8]) -> Option<Self> {
        if digest.len() != algo.size() {
            return None;
        }
        let mut bytes = [0u8; 64];
        bytes[..digest.len()].copy_from_slice(digest);
        Some(Self { algo, bytes })
    }

    /// The all-zero hash of `algo` (Nix's placeholder for an empty `outputHash`).
    pub fn zero(algo: HashAlgo) -> Self {
        Self {
            algo,
            bytes: [0u8; 64],
        }
    }

    /// A SHA-256 hash from its 32 bytes.
    pub fn sha256(digest: [u8; 32]) -> Self {
        let mut bytes = [0u8; 64];
        bytes[..32].copy_from_slice(&digest);
        Self {
            algo: HashAlgo::Sha256,
            bytes,
        }
    }

    /// The algorithm.
    pub fn algo(&self) -> HashAlgo {
        self.algo
    }

    /// The raw digest.
    pub fn digest(&self) -> &[u8] {
        &self.bytes[..self.algo.size()]
    }

    /// Lowercase hex of the digest, without prefix.
    pub fn to_base16(&self) -> String {
        data_encoding::HEXLOWER.encode(self.digest())
    }

    /// Nix base32 of the digest, without prefix.
    pub fn to_base32(&self) -> String {
        base32::encode(self.digest())
    }

    /// Base64 of the digest, without prefix.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.digest())
    }

    /// The SRI form `algo-<base64>`.
    pub fn to_sri(&self) -> String {
        format!("{}-{}", self.algo, self.to_base64())
    }

    /// The digest in `encoding`; with `prefix`, base16/32/64 get an `algo:` prefix
    /// (SRI always carries its algorithm).
    pub fn encode(&self, encoding: Encoding, prefix: bool) -> String {
        let body = match encoding {
            Encoding::Base16 => self.to_base16(),
            Encoding::Base32 => self.to_base32(),
            Encoding::Base64 => self.to_base64(),
            Encoding::Sri => return self.to_sri(),
        };
        if prefix {
            format!("{}:{}", self.algo, body)
        } else {
            body
        }
    }

    /// `algo:<base32>`, the form of narinfo files and content addresses.
    pub fn to_prefixed_base32(&self) -> String {
        self.encode(Encoding::Base32, true)
    }

    /// `algo:<base16>`, the form of the store database's `hash` column.
    pub fn to_prefixed_base16(&self) -> String {
        self.encode(Encoding::Base16, true)
    }

    /// Parses any spelling Nix 2.8 accepts: `algo:digest`, SRI, or a bare digest whose
    /// algorithm comes from `context`. When both name an algorithm they must agree.
    pub fn parse_any(text: &str, context: Option<HashAlgo>) -> Result<Self, HashError> {
        let (algo, digest, sri) = if let Some((name, rest)) = text.split_once(':') {
            (name.parse::<HashAlgo>()?, rest, false)
        } else if let Some((name, rest)) = text.split_once('-') {
            (name.parse::<HashAlgo>()?, rest, true)
        } else {
            let algo = context.ok_or_else(|| HashError::MissingAlgo {
                text: text.to_owned(),
            })?;
            (algo, text, false)
        };
        if let Some(expected) = context {
            if expected != algo {
                return Err(HashError::AlgoMismatch {
                    text: text.to_owned(),
                    expected,
                });
            }
        }
        if sri {
            Self::decode_base64(text, digest, algo)
        } else {
            Self::decode_by_length(text, digest, algo)
        }
    }

    /// Parses a hash that must carry its algorithm (`algo:digest` or SRI).
    pub fn parse_prefixed(text: &str) -> Result<Self, HashError> {
        Self::parse_any(text, None)
    }

    /// Parses a bare digest of a known algorithm, choosing the encoding by length.
    pub fn parse_bare(text: &str, algo: HashAlgo) -> Result<Self, HashError> {
        Self::decode_by_length(text, text, algo)
    }

    fn decode_by_length(whole: &str, digest: &str, algo: HashAlgo) -> Result<Self, HashError> {
        let size = algo.size();
        let bad = |encoding| HashError::Encoding {
            text: whole.to_owned(),
            encoding,
        };
        if digest.len() == size * 2 {
            let bytes = HEXLOWER_PERMISSIVE
                .decode(digest.as_bytes())
                .map_err(|_| bad("base-16"))?;
            Ok(Self::from_digest(algo, &bytes).ok_or_else(|| bad("base-16"))?)
        } else if digest.len() == base32::encoded_len(size) {
            let bytes = base32::decode(digest.as_bytes(), size).map_err(|_| bad("base-32"))?;
            Ok(Self::from_digest(algo, &bytes).ok_or_else(|| bad("base-32"))?)
        } else if digest.len() == size.div_ceil(3) * 4 {
            Self::decode_base64(whole, digest, algo)
        } else {
            Err(HashError::Length {
                text: whole.to_owned(),
                algo,
            })
        }
    }

    fn decode_base64(whole: &str, digest: &str, algo: HashAlgo) -> Result<Self, HashError> {
        let bytes = BASE64
            .decode(digest.as_bytes())
            .map_err(|_| HashError::Encoding {
                text: whole.to_owned(),
                encoding: "base-64",
            })?;
        Self::from_digest(algo, &bytes).ok_or_else(|| HashError::Length {
            text: whole.to_owned(),
            algo,
        })
    }
}

impl fmt::Debug for Hash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algo, self.to_base16())
    }
}

/// Incremental hashing with any of Nix's algorithms; also an [`io::Write`] sink.
#[derive(Clone)]
pub enum Hasher {
    /// MD5 state.
    Md5(md5::Md5),
    /// SHA-1 state.
    Sha1(sha1::Sha1),
    /// SHA-256 state.
    Sha256(sha2::Sha256),
    /// SHA-512 state.
    Sha512(sha2::Sha512),
}

impl Hasher {
    /// A fresh hasher for `algo`.
    pub fn new(algo: HashAlgo) -> Self {
        match algo {
            HashAlgo::Md5 => Self::Md5(md5::Md5::new()),
            HashAlgo::Sha1 => Self::Sha1(sha1::Sha1::new()),
            HashAlgo::Sha256 => Self::Sha256(sha2::Sha256::new()),
            HashAlgo::Sha512 => Self::Sha512(sha2::Sha512::new()),
        }
    }

    /// Feeds bytes.
    pub fn update(&mut self, data: &[u8]) {
        match self {
            Self::Md5(h) => h.update(data),
            Self::Sha1(h) => h.update(data),
            Self::Sha256(h) => h.update(data),
            Self::Sha512(h) => h.update(data),
        }
    }

    /// The final digest.
    pub fn finish(self) -> Hash {
        let (algo, bytes): (HashAlgo, Vec<u8>) = match self {
            Self::Md5(h) => (HashAlgo::Md5, h.finalize().to_vec()),
            Self::Sha1(h) => (HashAlgo::Sha1, h.finalize().to_vec()),
            Self::Sha256(h) => (HashAlgo::Sha256, h.finalize().to_vec()),
            Self::Sha512(h) => (HashAlgo::Sha512, h.finalize().to_vec()),
        };
        let mut out = [0u8; 64];
        out[..bytes.len()].copy_from_slice(&bytes);
        Hash { algo, bytes: out }
    }
}

impl io::Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// SHA-256 of `data` as 32 bytes; the hash behind every store path.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(data).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_any_follows_nix_rules() {
        let sri = "sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=";
        let h = Hash::parse_any(sri, None).unwrap();
        assert_eq!(
            h.to_base16(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(Hash::parse_any(&h.to_prefixed_base32(), None).unwrap(), h);
        assert_eq!(
            Hash::parse_any(&h.to_base16(), Some(HashAlgo::Sha256)).unwrap(),
            h
        );
        assert_eq!(
            Hash::parse_any(&h.to_base64(), Some(HashAlgo::Sha256)).unwrap(),
            h
        );
        assert!(matches!(
            Hash::parse_any(sri, Some(HashAlgo::Sha1)),
            Err(HashError::AlgoMismatch { .. })
        ));
        assert!(matches!(
            Hash::parse_any(&h.to_base16(), None),
            Err(HashError::MissingAlgo { .. })
        ));
        assert!(matches!(
            Hash::parse_any("sha256:abc", None),
            Err(HashError::Length { .. })
        ));
        assert!(matches!(
            Hash::parse_any("blake3:abc", None),
            Err(HashError::UnknownAlgo { .. })
        ));
    }
}
