//! Argument types of requests.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use unrooted_format::hash::HashAlgo;
use unrooted_format::{FileIngestionMethod, StorePath};

use crate::error::ProtocolError;
use crate::path_info::ValidPathInfo;
use crate::stderr::Verbosity;

/// How AddToStore ingests its data (`docs/spec/worker-protocol.md` §2.2):
/// `text:sha256`, `fixed:<algo>`, `fixed:r:<algo>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ContentAddressMethod {
    /// The data is text, hashed with SHA-256; references allowed.
    Text,
    /// The data is a file's bytes (flat) or a NAR (recursive), hashed with `algo`.
    Fixed {
        /// Flat or recursive.
        method: FileIngestionMethod,
        /// The hash algorithm.
        algo: HashAlgo,
    },
}

impl ContentAddressMethod {
    /// Parses the method string of AddToStore ≥ 1.25.
    pub fn parse(text: &str) -> Result<Self, ProtocolError> {
        let bad = || ProtocolError::InvalidContentAddress {
            text: text.to_owned(),
            source: None,
        };
        if text == "text:sha256" {
            return Ok(Self::Text);
        }
        let rest = text.strip_prefix("fixed:").ok_or_else(bad)?;
        let (method, algo) = match rest.strip_prefix("r:") {
            Some(a) => (FileIngestionMethod::Recursive, a),
            None => (FileIngestionMethod::Flat, rest),
        };
        let algo = algo.parse::<HashAlgo>().map_err(|_| bad())?;
        Ok(Self::Fixed { method, algo })
    }
}

impl fmt::Display for ContentAddressMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Text => f.write_str("text:sha256"),
            Self::Fixed { method, algo } => write!(f, "fixed:{}{}", method.prefix(), algo.name()),
        }
    }
}

/// The build mode of BuildPaths, BuildPathsWithResults and BuildDerivation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// Build what is missing.
    Normal = 0,
    /// Rebuild and replace corrupted outputs (trusted clients only).
    Repair = 1,
    /// Rebuild and compare with the existing outputs.
    Check = 2,
}

impl BuildMode {
    pub(crate) fn from_wire(value: u64) -> Result<Self, ProtocolError> {
        match value {
            0 => Ok(Self::Normal),
            1 => Ok(Self::Repair),
            2 => Ok(Self::Check),
            value => Err(ProtocolError::ValueOutOfRange {
                field: "build mode",
                value,
            }),
        }
    }
}

/// The twelve words and overrides of SetOptions (`docs/spec/worker-protocol.md` §5.8),
/// as the client sent them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientSettings {
    /// Keep the build directory of failed builds.
    pub keep_failed: bool,
    /// Keep going after a failed build.
    pub keep_going: bool,
    /// Build from source when substitution fails.
    pub try_fallback: bool,
    /// The client's log level: NEXT messages above it are not sent.
    pub verbosity: Verbosity,
    /// `max-jobs`.
    pub max_build_jobs: u32,
    /// `max-silent-time`, seconds.
    pub max_silent_time: u64,
    /// Obsolete; clients send 1.
    pub use_build_hook: bool,
    /// Build-log verbosity: Nix treats `Error` (0) as "print build logs" and
    /// anything else (clients send 7) as quiet.
    pub verbose_build: Verbosity,
    /// Obsolete log type; clients send 0.
    pub log_type: u64,
    /// Obsolete; clients send 0.
    pub print_build_trace: u64,
    /// `cores`.
    pub build_cores: u32,
    /// `substitute`.
    pub use_substitutes: bool,
    /// `--option name value` pairs given on the client's command line; the server
    /// filters them by trust (`docs/spec/worker-protocol.md` §5.8).
    pub overrides: BTreeMap<String, String>,
}

impl Default for ClientSettings {
    /// What `nix-store` 2.8 sends with no options (`docs/spec/worker-protocol.md` A.2).
    fn default() -> Self {
        Self {
            keep_failed: false,
            keep_going: false,
            try_fallback: false,
            verbosity: Verbosity::Info,
            max_build_jobs: 1,
            max_silent_time: 0,
            use_build_hook: true,
            verbose_build: Verbosity::Error,
            log_type: 0,
            print_build_trace: 0,
            build_cores: 2,
            use_substitutes: true,
            overrides: BTreeMap::new(),
        }
    }
}

/// What CollectGarbage should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GcAction {
    /// List live paths.
    ReturnLive = 0,
    /// List dead paths.
    ReturnDead = 1,
    /// Delete dead paths.
    DeleteDead = 2,
    /// Delete the given paths if dead.
    DeleteSpecific = 3,
}

impl GcAction {
    pub(crate) fn from_wire(value: u64) -> Result<Self, ProtocolError> {
        match value {
            0 => Ok(Self::ReturnLive),
            1 => Ok(Self::ReturnDead),
            2 => Ok(Self::DeleteDead),
            3 => Ok(Self::DeleteSpecific),
            value => Err(ProtocolError::ValueOutOfRange {
                field: "gc action",
                value,
            }),
        }
    }
}

/// Which paths CollectGarbage is about (Nix 2.35's `GCOptions::GCPaths`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcPaths {
    /// Every path of the store.
    WholeStore,
    /// Only these, with (`delete_referrers`) or without the paths that refer to them.
    Specific {
        /// The paths.
        paths: BTreeSet<StorePath>,
        /// Whether their referrers go too (`nix store delete --also-referrers`).
        delete_referrers: bool,
    },
}

/// The arguments of CollectGarbage.
///
/// Without the `delete-dead-specific-referrers` feature the paths are a plain set,
/// read as Nix 2.35 reads it: empty and not DeleteSpecific is the whole store,
/// anything else specific paths without referrers. With it, a tag (0: specific, then
/// the set and the delete-referrers flag; 1: whole store) comes first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcOptions {
    /// What to do.
    pub action: GcAction,
    /// Which paths.
    pub paths: GcPaths,
    /// Refused for everyone ("you are not allowed to ignore liveness").
    pub ignore_liveness: bool,
    /// Stop after freeing this many bytes (`u64::MAX` = unlimited).
    pub max_freed: u64,
}

/// The arguments of AddToStoreNar; the NAR itself is the request's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddToStoreNar {
    /// The claimed path and metadata; check narHash/narSize against the NAR.
    pub info: ValidPathInfo,
    /// Replace the path if it exists.
    pub repair: bool,
    /// Skip signature checks (ignored for untrusted clients).
    pub dont_check_sigs: bool,
}

/// One output of a BasicDerivation as sent on the wire
/// (`docs/spec/worker-protocol.md` §2.6), uninterpreted: the
/// kind of output follows from which fields are empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DerivationOutputWire {
    /// The output path; absent for floating, deferred and impure outputs.
    pub path: Option<StorePath>,
    /// `<algo>` or `r:<algo>` for CA outputs, "" otherwise.
    pub hash_algo: String,
    /// Hex digest for fixed outputs, `impure` for impure ones, "" otherwise.
    pub hash: String,
}

/// A derivation without input derivations, as BuildDerivation sends it
/// (`docs/spec/worker-protocol.md` §2.6).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicDerivation {
    /// Outputs by name.
    pub outputs: BTreeMap<String, DerivationOutputWire>,
    /// Input sources.
    pub input_srcs: BTreeSet<StorePath>,
    /// The platform.
    pub platform: Vec<u8>,
    /// The builder.
    pub builder: Vec<u8>,
    /// Its arguments, in order.
    pub args: Vec<Vec<u8>>,
    /// Its environment.
    pub env: BTreeMap<Vec<u8>, Vec<u8>>,
}
