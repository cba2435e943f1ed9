//! Ed25519 signatures over store path info, and Nix's key files.
//!
//! Nix 2.8 (`crypto.cc`, `path-info.cc`) signs the *fingerprint* of a valid path:
//!
//! ```text
//! 1;<full store path>;<narHash as sha256:base32>;<narSize>;<full reference paths, sorted, comma-separated>
//! ```
//!
//! with a detached Ed25519 signature written `<keyName>:<base64 of 64 bytes>` (narinfo
//! `Sig:` lines, the database's space-separated `sigs` column). Key files hold
//! `<keyName>:<base64>`: 64 bytes (32-byte seed ‖ 32-byte public key, libsodium's
//! layout) for a secret key, 32 bytes for a public key, without trailing newline as
//! `nix-store --generate-binary-cache-key` writes them. A signature counts under
//! `trusted-public-keys` when a trusted key of the same name verifies it.
//!
//! All cryptography is ed25519-dalek's; verification uses its strict mode, which like
//! libsodium rejects small-order keys and non-canonical signatures.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use data_encoding::BASE64;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use thiserror::Error;

use crate::hash::Hash;
use crate::store_path::{StoreDir, StorePath};

/// Bytes of an Ed25519 signature.
pub const SIGNATURE_BYTES: usize = 64;
/// Bytes of a Nix secret key (seed ‖ public key).
pub const SECRET_KEY_BYTES: usize = 64;
/// Bytes of a public key.
pub const PUBLIC_KEY_BYTES: usize = 32;
/// Longest key file or signature text accepted; real ones are under 200 bytes, and the
/// bound keeps a hostile file from being decoded in full.
pub const MAX_KEY_TEXT_LEN: usize = 4096;

/// Why a key, signature or fingerprint could not be made.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SignatureError {
    /// The text has no `:` separating name and base64, or an empty side.
    #[error("{what} is not of the form <name>:<base64>")]
    MissingColon {
        /// What was parsed ("secret key", "public key", "signature").
        what: &'static str,
    },
    /// The text is longer than [`MAX_KEY_TEXT_LEN`].
    #[error("{what} is {len} bytes long, more than {MAX_KEY_TEXT_LEN}")]
    TooLong {
        /// What was parsed.
        what: &'static str,
        /// Its length.
        len: usize,
    },
    /// The part after the colon is not valid base64.
    #[error("{what} '{name}' has invalid base64")]
    Base64 {
        /// What was parsed.
        what: &'static str,
        /// The key name.
        name: String,
        /// The decoding failure.
        #[source]
        source: data_encoding::DecodeError,
    },
    /// The decoded bytes have the wrong length.
    #[error("{what} '{name}' is {actual} bytes, expected {expected}")]
    Length {
        /// What was parsed.
        what: &'static str,
        /// The key name.
        name: String,
        /// Bytes required.
        expected: usize,
        /// Bytes found.
        actual: usize,
    },
    /// A secret key whose second half is not the public key of its seed; libsodium
    /// would sign with the wrong public key and every signature would fail to verify.
    #[error("secret key '{name}' holds a public key that does not match its seed")]
    KeyPairMismatch {
        /// The key name.
        name: String,
    },
    /// A public key that is not a valid curve point.
    #[error("public key '{name}' is not a valid Ed25519 point")]
    PublicKeyPoint {
        /// The key name.
        name: String,
    },
    /// A fingerprint was requested for a path with NAR size 0, which Nix refuses.
    #[error("cannot compute the fingerprint of '{path}': NAR size is 0")]
    ZeroNarSize {
        /// The full store path.
        path: String,
    },
    /// The operating system's random source failed while generating a key.
    #[error("reading random bytes for a new key")]
    Random {
        /// The failure.
        #[source]
        source: getrandom::Error,
    },
}

/// Splits `<name>:<base64>` at the first colon and decodes the base64 into `N` bytes.
fn parse_named<const N: usize>(
    what: &'static str,
    text: &str,
) -> Result<(String, [u8; N]), SignatureError> {
    if text.len() > MAX_KEY_TEXT_LEN {
        return Err(SignatureError::TooLong {
            what,
            len: text.len(),
        });
    }
    // Nix's base64 decoder skips newlines, so a key file ending in one still loads.
    let text = text.trim_end_matches(['\n', '\r']);
    let (name, b64) = text
        .split_once(':')
        .filter(|(n, b)| !n.is_empty() && !b.is_empty())
        .ok_or(SignatureError::MissingColon { what })?;
    let bytes = BASE64
        .decode(b64.as_bytes())
        .map_err(|source| SignatureError::Base64 {
            what,
            name: name.to_owned(),
            source,
        })?;
    let array: [u8; N] = bytes
        .as_slice()
        .try_into()
        .map_err(|_| SignatureError::Length {
            what,
            name: name.to_owned(),
            expected: N,
            actual: bytes.len(),
        })?;
    Ok((name.to_owned(), array))
}

/// A detached signature with the name of the key that made it.
///
/// Ordered by its text form, as Nix keeps signatures in a set of strings (which fixes
/// the order of narinfo `Sig:` lines).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Signature {
    key_name: String,
    bytes: [u8; SIGNATURE_BYTES],
}

impl Signature {
    /// Parses `<keyName>:<base64 of 64 bytes>`.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let (key_name, bytes) = parse_named::<SIGNATURE_BYTES>("signature", text)?;
        Ok(Self { key_name, bytes })
    }

    /// Builds a signature from its parts.
    pub fn new(key_name: &str, bytes: [u8; SIGNATURE_BYTES]) -> Self {
        Self {
            key_name: key_name.to_owned(),
            bytes,
        }
    }

    /// The name of the key that made it.
    pub fn key_name(&self) -> &str {
        &self.key_name
    }

    /// The 64 signature bytes.
    pub fn bytes(&self) -> &[u8; SIGNATURE_BYTES] {
        &self.bytes
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.key_name, BASE64.encode(&self.bytes))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Ord for Signature {
    fn cmp(&self, other: &Self) -> Ordering {
        // Comparing name then bytes would disagree with string order when one name is
        // a prefix of another ("a" vs "a-b"), so compare the texts Nix compares.
        self.to_string().cmp(&other.to_string())
    }
}

impl PartialOrd for Signature {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// A named Ed25519 secret key, as in a `secret-key-files` entry.
///
/// Its `Debug` output shows only the name, so the key cannot leak into logs.
#[derive(Clone)]
pub struct SecretKey {
    name: String,
    key: SigningKey,
}

impl SecretKey {
    /// Parses a secret key file's contents `<name>:<base64 of seed ‖ public key>`.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let (name, bytes) = parse_named::<SECRET_KEY_BYTES>("secret key", text)?;
        let key = SigningKey::from_keypair_bytes(&bytes)
            .map_err(|_| SignatureError::KeyPairMismatch { name: name.clone() })?;
        Ok(Self { name, key })
    }

    /// Generates a new key named `name` from the operating system's random source, as
    /// `nix-store --generate-binary-cache-key` does.
    pub fn generate(name: &str) -> Result<Self, SignatureError> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|source| SignatureError::Random { source })?;
        Ok(Self::from_seed(name, &seed))
    }

    /// The key for a 32-byte Ed25519 seed.
    pub fn from_seed(name: &str, seed: &[u8; 32]) -> Self {
        Self {
            name: name.to_owned(),
            key: SigningKey::from_bytes(seed),
        }
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The matching public key.
    pub fn to_public(&self) -> PublicKey {
        PublicKey {
            name: self.name.clone(),
            key: self.key.verifying_key(),
        }
    }

    /// Signs `fingerprint` (see [`fingerprint`]).
    pub fn sign(&self, fingerprint: &str) -> Signature {
        Signature {
            key_name: self.name.clone(),
            bytes: self.key.sign(fingerprint.as_bytes()).to_bytes(),
        }
    }

    /// The key file text `<name>:<base64>`, without trailing newline as Nix writes it.
    pub fn to_file_text(&self) -> String {
        format!(
            "{}:{}",
            self.name,
            BASE64.encode(&self.key.to_keypair_bytes())
        )
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecretKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// A named Ed25519 public key, as in `trusted-public-keys`.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    name: String,
    key: VerifyingKey,
}

impl PublicKey {
    /// Parses `<name>:<base64 of 32 bytes>` (a public key file or config entry).
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let (name, bytes) = parse_named::<PUBLIC_KEY_BYTES>("public key", text)?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| SignatureError::PublicKeyPoint { name: name.clone() })?;
        Ok(Self { name, key })
    }

    /// The key name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether `signature` is this key's signature of `fingerprint`. A signature made
    /// under another key name never verifies.
    pub fn verify(&self, fingerprint: &str, signature: &Signature) -> bool {
        if signature.key_name != self.name {
            return false;
        }
        let sig = ed25519_dalek::Signature::from_bytes(&signature.bytes);
        self.key.verify_strict(fingerprint.as_bytes(), &sig).is_ok()
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.name, BASE64.encode(self.key.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = SignatureError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// The keys named in `trusted-public-keys`, by name.
///
/// As in Nix, a later key with the same name replaces an earlier one.
#[derive(Clone, Debug, Default)]
pub struct TrustedKeys {
    keys: BTreeMap<String, PublicKey>,
}

impl TrustedKeys {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key`, replacing a key of the same name.
    pub fn insert(&mut self, key: PublicKey) {
        self.keys.insert(key.name.clone(), key);
    }

    /// Parses a whitespace-separated `trusted-public-keys` value.
    pub fn parse(text: &str) -> Result<Self, SignatureError> {
        let mut keys = Self::new();
        for word in text.split_ascii_whitespace() {
            keys.insert(PublicKey::parse(word)?);
        }
        Ok(keys)
    }

    /// The key called `name`, if trusted.
    pub fn get(&self, name: &str) -> Option<&PublicKey> {
        self.keys.get(name)
    }

    /// Whether no key is trusted.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `signature` is by a trusted key and verifies over `fingerprint`.
    pub fn verify(&self, fingerprint: &str, signature: &Signature) -> bool {
        self.get(&signature.key_name)
            .is_some_and(|key| key.verify(fingerprint, signature))
    }

    /// How many of `signatures` are valid signatures of `fingerprint` by trusted keys
    /// (Nix's `checkSignatures`; signatures under unknown names are ignored).
    pub fn count_valid<'a>(
        &self,
        fingerprint: &str,
        signatures: impl IntoIterator<Item = &'a Signature>,
    ) -> usize {
        signatures
            .into_iter()
            .filter(|sig| self.verify(fingerprint, sig))
            .count()
    }
}

/// The fingerprint Nix signs for a valid path (`ValidPathInfo::fingerprint`):
/// `1;<path>;<narHash algo:base32>;<narSize>;<refs>` (the NAR hash is SHA-256 in
/// practice; like Nix, another algorithm is printed as it is rather than refused). References are printed as full
/// paths in `dir`, sorted (the set's order is Nix's), comma-separated.
pub fn fingerprint(
    dir: &StoreDir,
    path: &StorePath,
    nar_hash: &Hash,
    nar_size: u64,
    references: &BTreeSet<StorePath>,
) -> Result<String, SignatureError> {
    if nar_size == 0 {
        return Err(SignatureError::ZeroNarSize {
            path: dir.display(path),
        });
    }
    let refs: Vec<String> = references.iter().map(|r| dir.display(r)).collect();
    Ok(format!(
        "1;{};{};{};{}",
        dir.display(path),
        nar_hash.to_prefixed_base32(),
        nar_size,
        refs.join(",")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_order_is_string_order() {
        let a = Signature::new("a", [0; 64]);
        let ab = Signature::new("a-b", [0; 64]);
        assert!(ab < a, "'a-b:' sorts before 'a:' as strings");
    }

    #[test]
    fn secret_debug_hides_key() {
        let key = SecretKey::from_seed("k", &[7; 32]);
        let text = key.to_file_text();
        let b64 = text.split_once(':').unwrap().1;
        let debug = format!("{key:?}");
        assert!(!debug.contains(b64) && !debug.contains("[7"), "{debug}");
    }
}
