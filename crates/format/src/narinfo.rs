//! `.narinfo` files and `nix-cache-info`: a binary cache's description of a store path
//! and of the cache itself.
//!
//! A narinfo is `Key: value` lines, each ending in `\n`. Nix 2.8 (`nar-info.cc`) writes
//! them in this order:
//!
//! ```text
//! StorePath: /nix/store/<hash>-<name>       full path
//! URL: nar/<fileHash base32>.nar[.xz|.bz2|.zst|.lzip|.lz4|.br]
//! Compression: none|xz|bzip2|zstd|lzip|lz4|br
//! FileHash: sha256:<base32>                 of the compressed file
//! FileSize: <decimal>
//! NarHash: sha256:<base32>
//! NarSize: <decimal>
//! References: <basename> <basename>         sorted; "References: " when empty
//! Deriver: <basename>                       omitted when unknown
//! System: <system>                          omitted when empty
//! Sig: <keyName>:<base64>                   zero or more, sorted as strings
//! CA: <content address>                     omitted when not content-addressed
//! ```
//!
//! Parsing follows Nix 2.8: the value starts two bytes after the first `:` of a line;
//! unknown keys are ignored (so newer caches stay readable); a repeated key replaces
//! the earlier value, except a second non-empty `References` or a second `CA` after a
//! non-empty one, which Nix rejects; `Sig` lines accumulate; `Deriver: unknown-deriver`
//! means none; a missing or empty `Compression` means `bzip2`; `StorePath`, `NarHash`,
//! `URL` and a non-zero `NarSize` are required; hash fields take any prefixed form.
//!
//! Where Nix 2.8 is looser we are stricter, and say so here: the last line must end in
//! `\n` (as in Nix), every line must contain `:` followed by at least one byte before
//! the newline (Nix would silently merge such a line into the next key), the
//! compression must be one Nix can decompress, `Sig` lines must be well-formed
//! signatures, and the whole file is bounded by [`MAX_NARINFO_SIZE`] bytes and
//! [`MAX_NARINFO_LINES`] lines because it comes from a remote cache.

use std::collections::BTreeSet;
use std::fmt;
use std::num::ParseIntError;
use std::str::FromStr;

use thiserror::Error;

use crate::content_address::{ContentAddress, ContentAddressError};
use crate::hash::{Hash, HashError};
use crate::signature::{self, SecretKey, Signature, SignatureError, TrustedKeys};
use crate::store_path::{StoreDir, StorePath, StorePathError};

/// Largest narinfo or `nix-cache-info` accepted, in bytes. A path with thousands of
/// references stays far below it.
pub const MAX_NARINFO_SIZE: usize = 1 << 20;
/// Most lines accepted in a narinfo or `nix-cache-info`.
pub const MAX_NARINFO_LINES: usize = 4096;

/// The compression of a NAR file in a binary cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Stored as is.
    None,
    /// xz (the default of `nix copy`).
    Xz,
    /// bzip2 (what a narinfo without `Compression` means).
    Bzip2,
    /// Zstandard.
    Zstd,
    /// lzip.
    Lzip,
    /// LZ4.
    Lz4,
    /// Brotli.
    Br,
}

impl Compression {
    /// Every method, in the order of the table in the module doc.
    pub const ALL: [Compression; 7] = [
        Self::None,
        Self::Xz,
        Self::Bzip2,
        Self::Zstd,
        Self::Lzip,
        Self::Lz4,
        Self::Br,
    ];

    /// Nix's name (`none`, `xz`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
            Self::Zstd => "zstd",
            Self::Lzip => "lzip",
            Self::Lz4 => "lz4",
            Self::Br => "br",
        }
    }

    /// The suffix after `.nar` in the NAR file name (`.xz`, `.bz2`, ...; empty for none),
    /// as in `BinaryCacheStore::addToStoreCommon`.
    pub const fn extension(self) -> &'static str {
        match self {
            Self::None => "",
            Self::Xz => ".xz",
            Self::Bzip2 => ".bz2",
            Self::Zstd => ".zst",
            Self::Lzip => ".lzip",
            Self::Lz4 => ".lz4",
            Self::Br => ".br",
        }
    }

    /// The URL Nix gives a NAR file: `nar/<fileHash base32>.nar<extension>`.
    pub fn nar_url(self, file_hash: &Hash) -> String {
        format!("nar/{}.nar{}", file_hash.to_base32(), self.extension())
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Compression {
    type Err = NarInfoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or_else(|| NarInfoError::Compression {
                value: s.to_owned(),
            })
    }
}

/// Why a narinfo could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum NarInfoError {
    /// The text is longer than [`MAX_NARINFO_SIZE`].
    #[error("narinfo is {size} bytes, more than {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_NARINFO_LINES`] lines.
    #[error("narinfo has more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
    /// The last line does not end in a newline.
    #[error("narinfo line {line} does not end in a newline")]
    MissingNewline {
        /// 1-based line number.
        line: usize,
    },
    /// A line without `:` or without a value after `: `.
    #[error("narinfo line {line} is not of the form 'Key: value'")]
    MalformedLine {
        /// 1-based line number.
        line: usize,
    },
    /// A required field is missing (or, for `URL`, empty).
    #[error("narinfo has no {field} field")]
    MissingField {
        /// The field name.
        field: &'static str,
    },
    /// `NarSize: 0`.
    #[error("narinfo has NarSize 0")]
    ZeroNarSize,
    /// A field Nix allows only once (`References` non-empty, `CA`) appears twice.
    #[error("narinfo has a second {field} field")]
    DuplicateField {
        /// The field name.
        field: &'static str,
    },
    /// A store path field (`StorePath`, `References`, `Deriver`) is not a valid path.
    #[error("narinfo field {field} has an invalid store path '{value}'")]
    StorePath {
        /// The field name.
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: StorePathError,
    },
    /// A hash field (`FileHash`, `NarHash`) is not a valid prefixed hash.
    #[error("narinfo field {field} has an invalid hash '{value}'")]
    Hash {
        /// The field name.
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: HashError,
    },
    /// A size field (`FileSize`, `NarSize`) is not a decimal unsigned integer.
    #[error("narinfo field {field} has an invalid number '{value}'")]
    Integer {
        /// The field name.
        field: &'static str,
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: ParseIntError,
    },
    /// `Compression` names a method Nix does not know.
    #[error("narinfo field Compression has unknown method '{value}'")]
    Compression {
        /// The offending value.
        value: String,
    },
    /// `CA` is not a content address.
    #[error("narinfo field CA has an invalid content address '{value}'")]
    ContentAddress {
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: ContentAddressError,
    },
    /// A `Sig` line is not `<keyName>:<base64 of 64 bytes>`.
    #[error("narinfo field Sig has an invalid signature '{value}'")]
    Signature {
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: SignatureError,
    },
}

/// A parsed narinfo: what a binary cache says about one store path.
///
/// The store directory is not part of the value: parsing checks `StorePath` against an
/// explicit [`StoreDir`] and printing takes one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NarInfo {
    /// The path described.
    pub store_path: StorePath,
    /// Where the (compressed) NAR is, relative to the cache; never empty.
    pub url: String,
    /// How the NAR file is compressed.
    pub compression: Compression,
    /// Hash of the compressed file. Nix always writes one; a narinfo without it is
    /// printed without the line.
    pub file_hash: Option<Hash>,
    /// Size of the compressed file; 0 when unknown (and then printed as 0, as Nix does).
    pub file_size: u64,
    /// Hash of the uncompressed NAR.
    pub nar_hash: Hash,
    /// Size of the uncompressed NAR; never 0.
    pub nar_size: u64,
    /// The path's references, sorted.
    pub references: BTreeSet<StorePath>,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// The system it was built for, if given and non-empty.
    pub system: Option<String>,
    /// Signatures of [`NarInfo::fingerprint`], sorted as strings.
    pub signatures: BTreeSet<Signature>,
    /// The content address, for content-addressed paths.
    pub ca: Option<ContentAddress>,
}

/// Fields seen while parsing, before the required ones are checked.
#[derive(Default)]
struct Partial {
    store_path: Option<StorePath>,
    url: String,
    compression: String,
    file_hash: Option<Hash>,
    file_size: u64,
    nar_hash: Option<Hash>,
    nar_size: Option<u64>,
    references: BTreeSet<StorePath>,
    deriver: Option<StorePath>,
    system: String,
    signatures: BTreeSet<Signature>,
    ca: Option<ContentAddress>,
}

/// Splits bounded text into `(line number, key, value)`, enforcing the size, line and
/// newline rules shared by narinfo and (loosely) `nix-cache-info`.
fn lines(text: &str) -> Result<Vec<(usize, &str)>, NarInfoError> {
    if text.len() > MAX_NARINFO_SIZE {
        return Err(NarInfoError::TooLarge {
            size: text.len(),
            max: MAX_NARINFO_SIZE,
        });
    }
    let mut out = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let number = out.len() + 1;
        if number > MAX_NARINFO_LINES {
            return Err(NarInfoError::TooManyLines {
                max: MAX_NARINFO_LINES,
            });
        }
        let (line, after) = rest
            .split_once('\n')
            .ok_or(NarInfoError::MissingNewline { line: number })?;
        out.push((number, line));
        rest = after;
    }
    Ok(out)
}

impl NarInfo {
    /// Parses narinfo text for a store in `dir` (see the module doc for the rules).
    pub fn parse(dir: &StoreDir, text: &str) -> Result<Self, NarInfoError> {
        let mut p = Partial::default();
        for (number, line) in lines(text)? {
            let colon = line
                .find(':')
                .ok_or(NarInfoError::MalformedLine { line: number })?;
            // Nix skips the byte after the colon without looking at it.
            let value = line
                .get(colon + 2..)
                .ok_or(NarInfoError::MalformedLine { line: number })?;
            p.field(dir, &line[..colon], value)?;
        }
        p.finish()
    }

    /// The narinfo text, byte for byte as Nix 2.8 writes it.
    pub fn to_text(&self, dir: &StoreDir) -> String {
        let mut out = String::with_capacity(512);
        let mut line = |key: &str, value: &str| {
            out.push_str(key);
            out.push_str(": ");
            out.push_str(value);
            out.push('\n');
        };
        line("StorePath", &dir.display(&self.store_path));
        line("URL", &self.url);
        line("Compression", self.compression.name());
        if let Some(h) = &self.file_hash {
            line("FileHash", &h.to_prefixed_base32());
        }
        line("FileSize", &self.file_size.to_string());
        line("NarHash", &self.nar_hash.to_prefixed_base32());
        line("NarSize", &self.nar_size.to_string());
        let refs: Vec<String> = self
            .references
            .iter()
            .map(StorePath::to_base_name)
            .collect();
        line("References", &refs.join(" "));
        if let Some(d) = &self.deriver {
            line("Deriver", &d.to_base_name());
        }
        if let Some(s) = self.system.as_deref().filter(|s| !s.is_empty()) {
            line("System", s);
        }
        for sig in &self.signatures {
            line("Sig", &sig.to_string());
        }
        if let Some(ca) = &self.ca {
            line("CA", &ca.to_string());
        }
        out
    }

    /// The fingerprint signatures are made over (see [`signature::fingerprint`]).
    pub fn fingerprint(&self, dir: &StoreDir) -> Result<String, SignatureError> {
        signature::fingerprint(
            dir,
            &self.store_path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// Adds `key`'s signature of this path.
    pub fn sign(&mut self, dir: &StoreDir, key: &SecretKey) -> Result<(), SignatureError> {
        let sig = key.sign(&self.fingerprint(dir)?);
        self.signatures.insert(sig);
        Ok(())
    }

    /// How many signatures are valid and by trusted keys.
    pub fn count_valid_signatures(
        &self,
        dir: &StoreDir,
        trusted: &TrustedKeys,
    ) -> Result<usize, SignatureError> {
        Ok(trusted.count_valid(&self.fingerprint(dir)?, &self.signatures))
    }
}

impl Partial {
    fn field(&mut self, dir: &StoreDir, key: &str, value: &str) -> Result<(), NarInfoError> {
        let base_name = |field: &'static str, v: &str| {
            StorePath::from_base_name(v).map_err(|source| NarInfoError::StorePath {
                field,
                value: v.to_owned(),
                source,
            })
        };
        let hash = |field: &'static str| {
            Hash::parse_prefixed(value).map_err(|source| NarInfoError::Hash {
                field,
                value: value.to_owned(),
                source,
            })
        };
        let int = |field: &'static str| {
            value
                .parse::<u64>()
                .map_err(|source| NarInfoError::Integer {
                    field,
                    value: value.to_owned(),
                    source,
                })
        };
        match key {
            "StorePath" => {
                let path = dir
                    .parse_path(value)
                    .map_err(|source| NarInfoError::StorePath {
                        field: "StorePath",
                        value: value.to_owned(),
                        source,
                    })?;
                self.store_path = Some(path);
            }
            "URL" => self.url = value.to_owned(),
            "Compression" => self.compression = value.to_owned(),
            "FileHash" => self.file_hash = Some(hash("FileHash")?),
            "FileSize" => self.file_size = int("FileSize")?,
            "NarHash" => self.nar_hash = Some(hash("NarHash")?),
            "NarSize" => self.nar_size = Some(int("NarSize")?),
            "References" => {
                if !self.references.is_empty() {
                    return Err(NarInfoError::DuplicateField {
                        field: "References",
                    });
                }
                // Nix tokenises on spaces, so runs of spaces give no empty names.
                for r in value.split(' ').filter(|r| !r.is_empty()) {
                    self.references.insert(base_name("References", r)?);
                }
            }
            // `unknown-deriver` (written by old Nix) means none: it falls to `_`.
            "Deriver" if value != "unknown-deriver" => {
                self.deriver = Some(base_name("Deriver", value)?);
            }
            "System" => self.system = value.to_owned(),
            "Sig" => {
                let sig = Signature::parse(value).map_err(|source| NarInfoError::Signature {
                    value: value.to_owned(),
                    source,
                })?;
                self.signatures.insert(sig);
            }
            "CA" => {
                if self.ca.is_some() {
                    return Err(NarInfoError::DuplicateField { field: "CA" });
                }
                // Nix's parseContentAddressOpt reads an empty value as "no CA".
                if !value.is_empty() {
                    let ca = ContentAddress::parse(value).map_err(|source| {
                        NarInfoError::ContentAddress {
                            value: value.to_owned(),
                            source,
                        }
                    })?;
                    self.ca = Some(ca);
                }
            }
            // Ignored, as by Nix, so fields added by newer versions do not break us.
            _ => {}
        }
        Ok(())
    }

    fn finish(self) -> Result<NarInfo, NarInfoError> {
        let store_path = self
            .store_path
            .ok_or(NarInfoError::MissingField { field: "StorePath" })?;
        let nar_hash = self
            .nar_hash
            .ok_or(NarInfoError::MissingField { field: "NarHash" })?;
        if self.url.is_empty() {
            return Err(NarInfoError::MissingField { field: "URL" });
        }
        let nar_size = match self.nar_size {
            None => return Err(NarInfoError::MissingField { field: "NarSize" }),
            Some(0) => return Err(NarInfoError::ZeroNarSize),
            Some(n) => n,
        };
        let compression = if self.compression.is_empty() {
            Compression::Bzip2
        } else {
            self.compression.parse()?
        };
        Ok(NarInfo {
            store_path,
            url: self.url,
            compression,
            file_hash: self.file_hash,
            file_size: self.file_size,
            nar_hash,
            nar_size,
            references: self.references,
            deriver: self.deriver,
            system: Some(self.system).filter(|s| !s.is_empty()),
            signatures: self.signatures,
            ca: self.ca,
        })
    }
}

/// Why a `nix-cache-info` file could not be parsed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CacheInfoError {
    /// The text is longer than [`MAX_NARINFO_SIZE`].
    #[error("nix-cache-info is {size} bytes, more than {max}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// More than [`MAX_NARINFO_LINES`] lines.
    #[error("nix-cache-info has more than {max} lines")]
    TooManyLines {
        /// The limit.
        max: usize,
    },
    /// `StoreDir` is not a valid store directory.
    #[error("nix-cache-info field StoreDir has an invalid directory '{value}'")]
    StoreDir {
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: StorePathError,
    },
    /// `Priority` is not an integer.
    #[error("nix-cache-info field Priority has an invalid number '{value}'")]
    Priority {
        /// The offending value.
        value: String,
        /// Why it is invalid.
        #[source]
        source: ParseIntError,
    },
}

/// A binary cache's `nix-cache-info`.
///
/// Parsed as `BinaryCacheStore::init` in Nix 2.8 does: lines without `:` and unknown
/// keys are skipped, values are trimmed, `WantMassQuery` is true only for `1`. Whether
/// the cache's store directory matches ours is the caller's check (Nix refuses a
/// mismatch; a file without `StoreDir` is accepted for any store).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheInfo {
    /// The store directory the cache's paths live in.
    pub store_dir: Option<StoreDir>,
    /// Whether clients may query many paths at once.
    pub want_mass_query: bool,
    /// Substituter priority (lower is preferred), if the cache states one.
    pub priority: Option<i32>,
}

impl CacheInfo {
    /// The file Nix writes into a new cache: only `StoreDir`.
    pub fn new(store_dir: StoreDir) -> Self {
        Self {
            store_dir: Some(store_dir),
            want_mass_query: false,
            priority: None,
        }
    }

    /// Parses `nix-cache-info` text.
    pub fn parse(text: &str) -> Result<Self, CacheInfoError> {
        if text.len() > MAX_NARINFO_SIZE {
            return Err(CacheInfoError::TooLarge {
                size: text.len(),
                max: MAX_NARINFO_SIZE,
            });
        }
        let mut info = Self {
            store_dir: None,
            want_mass_query: false,
            priority: None,
        };
        for (number, line) in text.split('\n').filter(|l| !l.is_empty()).enumerate() {
            if number >= MAX_NARINFO_LINES {
                return Err(CacheInfoError::TooManyLines {
                    max: MAX_NARINFO_LINES,
                });
            }
            let Some((key, value)) = line.split_once(':') else {
                continue;
            };
            let value = value.trim_matches([' ', '\t', '\n', '\r']);
            match key {
                "StoreDir" => {
                    let dir = StoreDir::new(value).map_err(|source| CacheInfoError::StoreDir {
                        value: value.to_owned(),
                        source,
                    })?;
                    info.store_dir = Some(dir);
                }
                "WantMassQuery" => info.want_mass_query = value == "1",
                "Priority" => {
                    let n = value.parse().map_err(|source| CacheInfoError::Priority {
                        value: value.to_owned(),
                        source,
                    })?;
                    info.priority = Some(n);
                }
                _ => {}
            }
        }
        Ok(info)
    }

    /// The file text: `StoreDir: …\n`, then `WantMassQuery: 1\n` and `Priority: n\n`
    /// when set (the order `nix-serve` and cache.nixos.org use).
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        if let Some(dir) = &self.store_dir {
            out.push_str(&format!("StoreDir: {dir}\n"));
        }
        if self.want_mass_query {
            out.push_str("WantMassQuery: 1\n");
        }
        if let Some(p) = self.priority {
            out.push_str(&format!("Priority: {p}\n"));
        }
        out
    }
}
