//! Store directories and store paths, and how Nix computes a path from a hash.
//!
//! A [`StorePath`] is only the base name (`<hash32>-<name>`); it is printed with an
//! explicit [`StoreDir`], because the store directory is configuration
//! (`NIX_STORE_DIR`), never a constant. A path's 20-byte hash part comes from the
//! fingerprint `<type>:sha256:<hex>:<storeDir>:<name>`, hashed with SHA-256 and
//! XOR-folded to 20 bytes ([`compress_hash`]).

use std::collections::BTreeSet;
use std::fmt;

use thiserror::Error;

use crate::base32;
use crate::content_address::FileIngestionMethod;
use crate::hash::{sha256, Hash, HashAlgo};

/// Characters in the hash part of a store path.
pub const HASH_PART_LEN: usize = 32;
/// Bytes behind the hash part.
pub const HASH_BYTES: usize = 20;
/// Longest name Nix 2.8 accepts.
pub const MAX_NAME_LEN: usize = 211;

/// Why a store directory, store path or name is not valid.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum StorePathError {
    /// The store directory is not an absolute, canonical path.
    #[error(
        "store directory '{dir}' must be an absolute path without '.', '..' or a trailing '/'"
    )]
    StoreDir {
        /// The offending directory.
        dir: String,
    },
    /// A name is empty.
    #[error("store path name is empty")]
    EmptyName,
    /// A name is longer than [`MAX_NAME_LEN`].
    #[error("store path name '{name}' is {len} bytes, longer than {MAX_NAME_LEN}")]
    NameTooLong {
        /// The name (possibly truncated for display).
        name: String,
        /// Its length in bytes.
        len: usize,
    },
    /// A name holds a byte outside `A-Za-z0-9+-._?=`.
    #[error("store path name '{name}' contains the forbidden character {byte:?}")]
    NameCharacter {
        /// The name.
        name: String,
        /// The first forbidden character.
        byte: char,
    },
    /// A base name has no `-` after a 32-character hash part.
    #[error("'{path}' is not a store path base name (<32-char hash>-<name>)")]
    BaseName {
        /// The offending text.
        path: String,
    },
    /// The hash part holds a character outside Nix base32.
    #[error("store path '{path}' has an invalid hash part")]
    HashPart {
        /// The offending text.
        path: String,
    },
    /// A full path does not lie directly inside the store directory.
    #[error("path '{path}' is not in the Nix store '{store_dir}'")]
    NotInStore {
        /// The offending path.
        path: String,
        /// The store directory it was checked against.
        store_dir: String,
    },
    /// A text path or a flat/non-sha256 fixed path with references.
    #[error("content-addressed path '{name}' of this kind cannot have references")]
    UnexpectedReferences {
        /// The path name.
        name: String,
    },
}

/// A validated store path name: 1..=211 bytes of `A-Za-z0-9+-._?=`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePathName(String);

impl StorePathName {
    /// Validates `name` as Nix 2.8 does (a leading `.` is accepted, as in 2.8).
    pub fn new(name: &str) -> Result<Self, StorePathError> {
        if name.is_empty() {
            return Err(StorePathError::EmptyName);
        }
        if name.len() > MAX_NAME_LEN {
            return Err(StorePathError::NameTooLong {
                name: name.chars().take(64).collect::<String>() + "…",
                len: name.len(),
            });
        }
        if let Some(c) = name.chars().find(|&c| !is_name_char(c)) {
            return Err(StorePathError::NameCharacter {
                name: name.to_owned(),
                byte: c,
            });
        }
        Ok(Self(name.to_owned()))
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StorePathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StorePathName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.' | '_' | '?' | '=')
}

/// A store path without its directory: a 32-character base32 hash part and a name.
///
/// Ordering is that of the base name as a string, which is the order Nix sorts
/// references, inputs and fingerprints in (the store directory is a common prefix).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StorePath {
    hash_part: [u8; HASH_PART_LEN],
    name: StorePathName,
}

impl StorePath {
    /// Builds a path from the 20 hash bytes and a name.
    pub fn from_digest(digest: &[u8; HASH_BYTES], name: StorePathName) -> Self {
        let text = base32::encode(digest);
        let mut hash_part = [0u8; HASH_PART_LEN];
        hash_part.copy_from_slice(text.as_bytes());
        Self { hash_part, name }
    }

    /// Parses a base name `<hash32>-<name>`.
    pub fn from_base_name(base: &str) -> Result<Self, StorePathError> {
        let bytes = base.as_bytes();
        if bytes.len() < HASH_PART_LEN + 2 || bytes[HASH_PART_LEN] != b'-' {
            return Err(StorePathError::BaseName {
                path: base.to_owned(),
            });
        }
        if !bytes[..HASH_PART_LEN]
            .iter()
            .all(|&b| base32::is_base32_char(b))
        {
            return Err(StorePathError::HashPart {
                path: base.to_owned(),
            });
        }
        let name = StorePathName::new(&base[HASH_PART_LEN + 1..])?;
        let mut hash_part = [0u8; HASH_PART_LEN];
        hash_part.copy_from_slice(&bytes[..HASH_PART_LEN]);
        Ok(Self { hash_part, name })
    }

    /// The 32-character hash part.
    pub fn hash_part(&self) -> &str {
        // Checked to be base32 (ASCII) on construction.
        std::str::from_utf8(&self.hash_part).unwrap_or_default()
    }

    /// The 20 bytes the hash part encodes.
    pub fn digest(&self) -> [u8; HASH_BYTES] {
        let mut out = [0u8; HASH_BYTES];
        // Every 32-char base32 string fits in 20 bytes (160 bits exactly).
        if let Ok(bytes) = base32::decode(&self.hash_part, HASH_BYTES) {
            out.copy_from_slice(&bytes);
        }
        out
    }

    /// The name after the hash part.
    pub fn name(&self) -> &StorePathName {
        &self.name
    }

    /// Whether this is a derivation (`.drv`) path.
    pub fn is_derivation(&self) -> bool {
        self.name.as_str().ends_with(".drv")
    }

    /// `<hash32>-<name>`.
    pub fn to_base_name(&self) -> String {
        format!("{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Display for StorePath {
    /// Displays the base name; use [`StoreDir::display`] for the full path.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.hash_part(), self.name)
    }
}

impl fmt::Debug for StorePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StorePath({self})")
    }
}

/// XOR-folds a digest to `size` bytes, as Nix's `compressHash` (not a truncation).
pub fn compress_hash(digest: &[u8], size: usize) -> Vec<u8> {
    let mut out = vec![0u8; size];
    for (i, b) in digest.iter().enumerate() {
        out[i % size] ^= b;
    }
    out
}

/// The directory a store lives in, e.g. `/nix/store`. Always absolute and canonical.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreDir(String);

impl StoreDir {
    /// Validates a store directory: absolute, no empty, `.` or `..` components, no
    /// trailing slash.
    pub fn new(dir: &str) -> Result<Self, StorePathError> {
        let bad = || StorePathError::StoreDir {
            dir: dir.to_owned(),
        };
        let rest = dir.strip_prefix('/').ok_or_else(bad)?;
        if rest.is_empty()
            || rest
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
            || dir.contains('\0')
        {
            return Err(bad());
        }
        Ok(Self(dir.to_owned()))
    }

    /// The directory as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The full path of `path` in this store.
    pub fn display(&self, path: &StorePath) -> String {
        format!("{}/{}", self.0, path)
    }

    /// Parses a full store path lying directly in this store.
    pub fn parse_path(&self, full: &str) -> Result<StorePath, StorePathError> {
        let (path, rest) = self.parse_path_prefix(full)?;
        if !rest.is_empty() {
            return Err(self.not_in_store(full));
        }
        Ok(path)
    }

    /// Splits a path inside the store into its store path and the rest
    /// (`/nix/store/<h>-bash/bin/sh` → the bash path and `/bin/sh`).
    pub fn parse_path_prefix<'a>(
        &self,
        full: &'a str,
    ) -> Result<(StorePath, &'a str), StorePathError> {
        let inner = full
            .strip_prefix(self.0.as_str())
            .and_then(|s| s.strip_prefix('/'))
            .ok_or_else(|| self.not_in_store(full))?;
        let (base, rest) = match inner.find('/') {
            Some(i) => inner.split_at(i),
            None => (inner, ""),
        };
        Ok((StorePath::from_base_name(base)?, rest))
    }

    fn not_in_store(&self, full: &str) -> StorePathError {
        StorePathError::NotInStore {
            path: full.to_owned(),
            store_dir: self.0.clone(),
        }
    }

    /// The fingerprint `<kind>:sha256:<hex inner>:<storeDir>:<name>`.
    pub fn fingerprint(&self, kind: &str, inner: &[u8; 32], name: &StorePathName) -> String {
        format!(
            "{kind}:sha256:{}:{}:{name}",
            data_encoding::HEXLOWER.encode(inner),
            self.0
        )
    }

    /// `makeStorePath`: the path for a type string, an inner SHA-256 and a name.
    pub fn make_store_path(&self, kind: &str, inner: &[u8; 32], name: &StorePathName) -> StorePath {
        let digest = sha256(self.fingerprint(kind, inner, name).as_bytes());
        let folded = compress_hash(&digest, HASH_BYTES);
        let mut bytes = [0u8; HASH_BYTES];
        bytes.copy_from_slice(&folded);
        StorePath::from_digest(&bytes, name.clone())
    }

    fn kind_with_refs(&self, base: &str, refs: &BTreeSet<StorePath>, self_ref: bool) -> String {
        let mut kind = base.to_owned();
        for r in refs {
            kind.push(':');
            kind.push_str(&self.display(r));
        }
        if self_ref {
            kind.push_str(":self");
        }
        kind
    }

    /// `makeTextPath`: a text file (or `.drv`) with contents hashing to `content`.
    pub fn make_text_path(
        &self,
        name: &StorePathName,
        content: &[u8; 32],
        refs: &BTreeSet<StorePath>,
    ) -> StorePath {
        self.make_store_path(&self.kind_with_refs("text", refs, false), content, name)
    }

    /// `makeFixedOutputPath`: recursive SHA-256 gives a `source` path (references
    /// allowed); every other method/algorithm a reference-free `output:out` path.
    pub fn make_fixed_output_path(
        &self,
        method: FileIngestionMethod,
        hash: &Hash,
        name: &StorePathName,
        refs: &BTreeSet<StorePath>,
        self_ref: bool,
    ) -> Result<StorePath, StorePathError> {
        if method == FileIngestionMethod::Recursive && hash.algo() == HashAlgo::Sha256 {
            let mut inner = [0u8; 32];
            inner.copy_from_slice(hash.digest());
            let kind = self.kind_with_refs("source", refs, self_ref);
            return Ok(self.make_store_path(&kind, &inner, name));
        }
        if !refs.is_empty() || self_ref {
            return Err(StorePathError::UnexpectedReferences {
                name: name.to_string(),
            });
        }
        let inner = sha256(fixed_output_inner(method, hash).as_bytes());
        Ok(self.make_store_path("output:out", &inner, name))
    }

    /// The path of output `output` of an input-addressed derivation named `drv_name`
    /// whose masked hashDerivationModulo is `hdm`.
    pub fn make_output_path(
        &self,
        output: &str,
        hdm: &[u8; 32],
        drv_name: &str,
    ) -> Result<StorePath, StorePathError> {
        let name = StorePathName::new(&output_path_name(drv_name, output))?;
        Ok(self.make_store_path(&format!("output:{output}"), hdm, &name))
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreDir({:?})", self.0)
    }
}

/// `fixed:out:[r:]<algo>:<hex>:`, hashed for non-`source` fixed-output paths.
pub fn fixed_output_inner(method: FileIngestionMethod, hash: &Hash) -> String {
    format!(
        "fixed:out:{}{}:{}:",
        method.prefix(),
        hash.algo(),
        hash.to_base16()
    )
}

/// `outputPathName`: `name` for `out`, `name-<output>` otherwise.
pub fn output_path_name(drv_name: &str, output: &str) -> String {
    if output == "out" {
        drv_name.to_owned()
    } else {
        format!("{drv_name}-{output}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nix_2_8() {
        assert!(StorePathName::new(".hidden").is_ok());
        assert!(StorePathName::new("a+b-c.d_e?f=g").is_ok());
        assert_eq!(StorePathName::new(""), Err(StorePathError::EmptyName));
        assert!(matches!(
            StorePathName::new("a/b"),
            Err(StorePathError::NameCharacter { byte: '/', .. })
        ));
        assert!(StorePathName::new(&"x".repeat(211)).is_ok());
        assert!(matches!(
            StorePathName::new(&"x".repeat(212)),
            Err(StorePathError::NameTooLong { len: 212, .. })
        ));
    }

    #[test]
    fn store_dir_is_canonical() {
        assert!(StoreDir::new("/nix/store").is_ok());
        for bad in [
            "nix/store",
            "/",
            "/nix/store/",
            "/nix//store",
            "/nix/../store",
        ] {
            assert!(StoreDir::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parse_rejects_outside_and_nested() {
        let dir = StoreDir::new("/nix/store").unwrap();
        let p = "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt";
        assert_eq!(dir.display(&dir.parse_path(p).unwrap()), p);
        assert!(dir
            .parse_path("/nix/storex/i9pmrzmpshapij2kin22pff6fc2adavx-a")
            .is_err());
        assert!(dir.parse_path(&format!("{p}/bin")).is_err());
        let inside = format!("{p}/bin/sh");
        let (sp, rest) = dir.parse_path_prefix(&inside).unwrap();
        assert_eq!((sp.name().as_str(), rest), ("hello.txt", "/bin/sh"));
        assert!(matches!(
            dir.parse_path("/nix/store/e9pmrzmpshapij2kin22pff6fc2adavx-a"),
            Err(StorePathError::HashPart { .. })
        ));
    }
}
