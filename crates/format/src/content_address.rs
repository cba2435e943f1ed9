//! Content addresses: the `ca` column of the store database and narinfo `CA:` field.
//!
//! Written `text:sha256:<base32>`, `fixed:<algo>:<base32>` (flat) or
//! `fixed:r:<algo>:<base32>` (recursive, i.e. over the NAR).

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::hash::{Hash, HashAlgo, HashError};
use crate::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

/// How file system content is turned into bytes to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileIngestionMethod {
    /// The bytes of one regular file.
    Flat,
    /// The NAR serialisation of a tree.
    Recursive,
}

impl FileIngestionMethod {
    /// `r:` for recursive, empty for flat, as in `fixed:r:sha256` and `.drv` outputs.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::Flat => "",
            Self::Recursive => "r:",
        }
    }
}

/// A content address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentAddress {
    /// A text file (`builtins.toFile`, `.drv` files); always SHA-256 of the bytes.
    Text(Hash),
    /// A fixed-output path: flat or recursive, any algorithm.
    Fixed {
        /// Flat or recursive.
        method: FileIngestionMethod,
        /// The content hash.
        hash: Hash,
    },
}

/// Why a content-address string could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ContentAddressError {
    /// Neither `text:` nor `fixed:`.
    #[error("content address '{text}' does not start with 'text:' or 'fixed:'")]
    Prefix {
        /// The offending string.
        text: String,
    },
    /// A text address with another algorithm than SHA-256.
    #[error("text content address '{text}' must use sha256")]
    TextAlgo {
        /// The offending string.
        text: String,
    },
    /// The hash inside is malformed.
    #[error("content address '{text}' has a bad hash")]
    Hash {
        /// The offending string.
        text: String,
        /// The parse failure.
        #[source]
        source: HashError,
    },
}

impl ContentAddress {
    /// Parses `text:sha256:…`, `fixed:…` or `fixed:r:…`.
    pub fn parse(text: &str) -> Result<Self, ContentAddressError> {
        let hash = |s: &str| {
            Hash::parse_prefixed(s).map_err(|source| ContentAddressError::Hash {
                text: text.to_owned(),
                source,
            })
        };
        if let Some(rest) = text.strip_prefix("text:") {
            let h = hash(rest)?;
            if h.algo() != HashAlgo::Sha256 {
                return Err(ContentAddressError::TextAlgo {
                    text: text.to_owned(),
                });
            }
            Ok(Self::Text(h))
        } else if let Some(rest) = text.strip_prefix("fixed:") {
            let (method, rest) = match rest.strip_prefix("r:") {
                Some(r) => (FileIngestionMethod::Recursive, r),
                None => (FileIngestionMethod::Flat, rest),
            };
            Ok(Self::Fixed {
                method,
                hash: hash(rest)?,
            })
        } else {
            Err(ContentAddressError::Prefix {
                text: text.to_owned(),
            })
        }
    }

    /// The content hash.
    pub fn hash(&self) -> &Hash {
        match self {
            Self::Text(h) | Self::Fixed { hash: h, .. } => h,
        }
    }

    /// The store path this content address gives `name` with `refs` in `dir`.
    pub fn store_path(
        &self,
        dir: &StoreDir,
        name: &StorePathName,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        match self {
            Self::Text(h) => {
                if self_ref {
                    return Err(StorePathError::UnexpectedReferences {
                        name: name.to_string(),
                    });
                }
                let mut inner = [0u8; 32];
                inner.copy_from_slice(h.digest());
                Ok(dir.make_text_path(name, &inner, refs))
            }
            Self::Fixed { method, hash } => {
                dir.make_fixed_output_path(*method, hash, name, refs, self_ref)
            }
        }
    }
}

impl fmt::Display for ContentAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text(h) => write!(f, "text:{}", h.to_prefixed_base32()),
            Self::Fixed { method, hash } => {
                write!(f, "fixed:{}{}", method.prefix(), hash.to_prefixed_base32())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_rejects() {
        for s in [
            "text:sha256:0nw4lmikvxh489n05lc09n33yrg1nil6hyav976zqvji42ig63nh",
            "fixed:r:sha256:04zwf782yjwnh3q6hz5izfd6jyip8kgw6g6yj43fiqhbyhdd0dqw",
            "fixed:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm",
        ] {
            assert_eq!(ContentAddress::parse(s).unwrap().to_string(), s);
        }
        assert!(matches!(
            ContentAddress::parse("text:sha1:iwjz551fyw0cxcjgf4l6c879zabd6wpm"),
            Err(ContentAddressError::TextAlgo { .. })
        ));
        assert!(matches!(
            ContentAddress::parse("nar:sha256:x"),
            Err(ContentAddressError::Prefix { .. })
        ));
    }
}
