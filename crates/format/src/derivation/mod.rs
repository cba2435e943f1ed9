//! Derivations: the `.drv` files Nix writes for every `derivation` call, and the hashes
//! and paths computed from them.
//!
//! A `.drv` file is one ATerm value, with no whitespace and no trailing newline:
//!
//! ```text
//! Derive([<outputs>],[<inputDrvs>],[<inputSrcs>],<system>,<builder>,[<args>],[<env>])
//! outputs   = ("<name>","<path>","<hashAlgo>","<hash>")   comma-separated, sorted by name
//! inputDrvs = ("<drv path>",["<outputName>",...])         sorted by path, names sorted
//! inputSrcs = "<path>"                                    sorted
//! args      = "<arg>"                                     in order
//! env       = ("<key>","<value>")                         sorted by key
//! ```
//!
//! Only `builder`, each arg, and env keys and values are escaped (`"` `\` LF CR TAB, as
//! `\"` `\\` `\n` `\r` `\t`); every other byte, in every field, is copied raw. The other
//! fields (output names, paths, hash algorithms and hashes, input output names and
//! `system`) are written unescaped: [`aterm`] reproduces that byte for byte.
//!
//! The output tuple says which kind of output it is ([`DerivationOutput`]):
//!
//! | tuple                                  | kind                          |
//! |----------------------------------------|-------------------------------|
//! | `(name, path, "", "")`                 | input-addressed               |
//! | `(name, path, "[r:]algo", "<hex>")`    | fixed-output                  |
//! | `(name, "", "[r:]algo", "")`           | floating content-addressed    |
//! | `(name, "", "", "")`                   | deferred (depends on floating)|
//! | `(name, "", "[r:]algo", "impure")`     | impure                        |
//!
//! The store directory is never assumed: parsing, printing and every path computation
//! take a [`StoreDir`]. [`hash_modulo`] computes `hashDerivationModulo` and the output
//! paths that follow from it; [`json`] prints the JSON of `nix show-derivation`.
//!
//! The free-text fields (`system`, `builder`, `args`, env keys and values) are byte
//! strings, because Nix copies them raw and a derivation may carry non-UTF-8 bytes
//! (an env value from `builtins.readFile` of a binary file, say).

pub mod aterm;
pub mod hash_modulo;
pub mod json;

use std::collections::{BTreeMap, BTreeSet};

use thiserror::Error;

use crate::content_address::FileIngestionMethod;
use crate::hash::{sha256, Hash, HashAlgo};
use crate::store_path::{StoreDir, StorePath, StorePathError, StorePathName};

pub use aterm::{Field, Limits, ParseError};
pub use hash_modulo::{
    downstream_placeholder, hash_placeholder, DrvHash, DrvHashKind, DrvHasher, HashModuloError,
    OutputMismatch,
};

/// The extension of derivation file names.
pub const DRV_EXTENSION: &str = ".drv";

/// One output of a derivation, in Nix's terms (`DerivationOutput::*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DerivationOutput {
    /// Path computed from the derivation's own hash (the usual case).
    InputAddressed(StorePath),
    /// A fixed-output derivation (fetchers): the content hash is known in advance, and
    /// the path follows from it alone.
    Fixed {
        /// The path written in the file; [`hash_modulo::DrvHasher::check_outputs`]
        /// checks it against the one the hash gives.
        path: StorePath,
        /// Flat (file bytes) or recursive (NAR).
        method: FileIngestionMethod,
        /// The expected content hash.
        hash: Hash,
    },
    /// A floating content-addressed output (`__contentAddressed`): the path is only
    /// known after the build.
    Floating {
        /// Flat or recursive.
        method: FileIngestionMethod,
        /// The algorithm the content will be hashed with.
        algo: HashAlgo,
    },
    /// An input-addressed output whose path cannot be known yet, because an input is
    /// floating content-addressed.
    Deferred,
    /// An impure output (experimental `impure-derivations`).
    Impure {
        /// Flat or recursive.
        method: FileIngestionMethod,
        /// The algorithm the content will be hashed with.
        algo: HashAlgo,
    },
}

impl DerivationOutput {
    /// The path written in the file, if this kind of output has one.
    pub fn path(&self) -> Option<&StorePath> {
        match self {
            Self::InputAddressed(p) | Self::Fixed { path: p, .. } => Some(p),
            _ => None,
        }
    }
}

/// A parsed derivation (Nix's `Derivation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Derivation {
    /// The name (the `.drv` file's name without `.drv`); not stored in the ATerm but
    /// part of every output path.
    pub name: String,
    /// Outputs by name.
    pub outputs: BTreeMap<String, DerivationOutput>,
    /// Input derivations and which of their outputs are used.
    pub input_drvs: BTreeMap<StorePath, BTreeSet<String>>,
    /// Input sources (plain store paths, not built).
    pub input_srcs: BTreeSet<StorePath>,
    /// The platform, e.g. `x86_64-linux`.
    pub system: Vec<u8>,
    /// The program to run.
    pub builder: Vec<u8>,
    /// Its arguments, in order.
    pub args: Vec<Vec<u8>>,
    /// The builder's environment (or, with structured attrs, `__json` and the outputs).
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// What kind of derivation this is, decided by its outputs (Nix's `DerivationType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DerivationType {
    /// Every output input-addressed.
    InputAddressed,
    /// Every output deferred.
    DeferredInputAddressed,
    /// A single fixed output named `out`.
    Fixed,
    /// Every output floating content-addressed, all with one hash algorithm.
    Floating,
    /// Every output impure.
    Impure,
}

/// Why a derivation's outputs do not form one of Nix's derivation types.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DerivationError {
    /// No outputs at all.
    #[error("derivation must have at least one output")]
    NoOutputs,
    /// Outputs of different kinds.
    #[error("derivation mixes output types (outputs '{first}' and '{second}')")]
    MixedOutputTypes {
        /// An output of one kind.
        first: String,
        /// An output of another.
        second: String,
    },
    /// More than one fixed output.
    #[error("only one fixed output is allowed, found {count}")]
    MultipleFixedOutputs {
        /// How many.
        count: usize,
    },
    /// A fixed output not named `out`.
    #[error("the single fixed output must be named \"out\", not '{name}'")]
    FixedOutputName {
        /// Its name.
        name: String,
    },
    /// Floating outputs with different hash algorithms.
    #[error("all floating outputs must use the same hash algorithm")]
    FloatingAlgos,
    /// The name (with `.drv`, or of an output path) is not a valid store path name.
    #[error("derivation name '{name}' does not give a valid store path name")]
    Name {
        /// The offending name.
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
}

impl Derivation {
    /// Parses a `.drv` file's bytes; `name` is the derivation name (the file name
    /// without hash part and `.drv`). See [`aterm::parse`].
    pub fn parse(dir: &StoreDir, bytes: &[u8], name: &str) -> Result<Self, ParseError> {
        aterm::parse(dir, bytes, name, &Limits::default())
    }

    /// The exact bytes Nix writes for this derivation.
    pub fn to_aterm(&self, dir: &StoreDir) -> Vec<u8> {
        aterm::print(self, dir)
    }

    /// The derivation's type, or why its outputs do not form one (Nix's `type()`).
    pub fn derivation_type(&self) -> Result<DerivationType, DerivationError> {
        let kind = |o: &DerivationOutput| match o {
            DerivationOutput::InputAddressed(_) => DerivationType::InputAddressed,
            DerivationOutput::Fixed { .. } => DerivationType::Fixed,
            DerivationOutput::Floating { .. } => DerivationType::Floating,
            DerivationOutput::Deferred => DerivationType::DeferredInputAddressed,
            DerivationOutput::Impure { .. } => DerivationType::Impure,
        };
        let mut iter = self.outputs.iter();
        let (first_name, first) = iter.next().ok_or(DerivationError::NoOutputs)?;
        let ty = kind(first);
        for (name, o) in iter {
            if kind(o) != ty {
                return Err(DerivationError::MixedOutputTypes {
                    first: first_name.clone(),
                    second: name.clone(),
                });
            }
        }
        match ty {
            DerivationType::Fixed => {
                if self.outputs.len() > 1 {
                    return Err(DerivationError::MultipleFixedOutputs {
                        count: self.outputs.len(),
                    });
                }
                if first_name != "out" {
                    return Err(DerivationError::FixedOutputName {
                        name: first_name.clone(),
                    });
                }
            }
            DerivationType::Floating => {
                let algos: BTreeSet<HashAlgo> = self
                    .outputs
                    .values()
                    .filter_map(|o| match o {
                        DerivationOutput::Floating { algo, .. } => Some(*algo),
                        _ => None,
                    })
                    .collect();
                if algos.len() > 1 {
                    return Err(DerivationError::FloatingAlgos);
                }
            }
            _ => {}
        }
        Ok(ty)
    }

    /// The references of the `.drv` file: input sources and input derivations (output
    /// paths are not references).
    pub fn references(&self) -> BTreeSet<StorePath> {
        let mut refs = self.input_srcs.clone();
        refs.extend(self.input_drvs.keys().cloned());
        refs
    }

    /// The `.drv` file's own store path (`writeDerivation`): a text path named
    /// `<name>.drv` over the ATerm, with [`Self::references`] as references.
    pub fn drv_path(&self, dir: &StoreDir) -> Result<StorePath, DerivationError> {
        let file_name = format!("{}{DRV_EXTENSION}", self.name);
        let name = StorePathName::new(&file_name).map_err(|source| DerivationError::Name {
            name: file_name.clone(),
            source,
        })?;
        let contents = sha256(&self.to_aterm(dir));
        Ok(dir.make_text_path(&name, &contents, &self.references()))
    }

    /// The raw `__json` env entry when the derivation uses structured attributes
    /// (`__structuredAttrs = true`).
    pub fn structured_attrs(&self) -> Option<&[u8]> {
        self.env.get(b"__json".as_slice()).map(Vec::as_slice)
    }

    /// The structured attributes parsed as a JSON object, if there are any.
    pub fn structured_attrs_json(
        &self,
    ) -> Option<Result<serde_json::Map<String, serde_json::Value>, serde_json::Error>> {
        self.structured_attrs().map(serde_json::from_slice)
    }
}

/// The derivation name in a `.drv` store path's name (`hello-1.0.drv` → `hello-1.0`).
pub fn name_from_drv_path(path: &StorePath) -> Option<&str> {
    path.name().as_str().strip_suffix(DRV_EXTENSION)
}
