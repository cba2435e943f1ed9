//! Building derivations: one [`Scheduler`] shared by all client connections turns
//! build requests into a graph of derivation goals (from `inputDrvs`), runs them in
//! dependency order with at most `max-jobs` at once, builds a derivation wanted by
//! several clients once and hands every waiter the result, cancels a build nobody
//! waits for any more, and for each goal loads the `.drv`, prepares the build
//! directory and the exact environment of Nix 2.8 (§4.8–§4.9 of `store-formats.md`),
//! runs the builder in the rootless sandbox of `unrooted-sandbox` (or, only when the
//! administrator set `sandbox = false`, directly) — a builtin builder ([`builtins`])
//! too, called by the sandbox's init in place of a program, never in the daemon —
//! streams and stores its log, and
//! registers its outputs (§5): canonicalised, reference-scanned, fixed-output hashes
//! checked, moved into the store with one `rename` each and registered in one
//! transaction. The crate is synchronous and uses plain threads: the daemon serves each
//! connection on a thread of its own, each build is a blocking wait on a child process
//! and its log pipe, and everything around a build (hashing, the database, file moves)
//! is blocking I/O, so a request's builds run on scoped threads that borrow the store,
//! and waiting for another client's build is a condition-free poll of a shared goal.

pub mod builtins;
mod env;
mod error;
mod goal;
mod idpool;
mod keep;
mod log;
mod run;
mod scheduler;

use std::collections::BTreeMap;

use unrooted_format::StorePath;

pub use env::{attrs_sh, builder_env, pass_as_file_name, BuilderEnv, EnvParams};
pub use error::{error_chain, BuildError};
pub use goal::{default_system, load_derivation, output_hashes, output_paths, BuilderConfig};
pub use idpool::{IdLease, IdMode, IdPool, IdSettings, MIN_IDS_PER_BUILD};
pub use log::{log_path, BuildLog, MAX_LINE, TAIL_LINES};
pub use scheduler::{BuildObserver, Scheduler, Target};

/// How to build (BuildPaths' mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BuildMode {
    /// Build what is missing.
    Normal,
    /// Rebuild the requested derivations and replace their outputs (trusted only).
    Repair,
    /// Rebuild the requested derivations and compare with the valid outputs.
    Check,
}

/// How a goal ended, in the terms of Nix's `BuildResult::Status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Built now.
    Built,
    /// Nothing to do.
    AlreadyValid,
    /// The builder failed.
    PermanentFailure,
    /// The derivation cannot be built here (wrong platform, unsupported kind).
    InputRejected,
    /// The outputs were refused (hash mismatch, forbidden references, bad modes).
    OutputRejected,
    /// A failure that may go away.
    TransientFailure,
    /// `timeout` or `max-silent-time` passed.
    TimedOut,
    /// Anything else.
    MiscFailure,
    /// A dependency failed.
    DependencyFailed,
    /// `max-build-log-size` was exceeded.
    LogLimitExceeded,
    /// `--check` found different outputs.
    NotDeterministic,
    /// Not started or stopped because the request ended (another build failed
    /// without keep-going, or the client went away).
    Cancelled,
}

impl Status {
    /// Whether the wanted outputs are valid.
    pub fn is_success(self) -> bool {
        matches!(self, Status::Built | Status::AlreadyValid)
    }
}

/// The result of one goal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// How it ended.
    pub status: Status,
    /// The error as the client should print it ("" on success).
    pub error: String,
    /// How many times the builder ran (0 or 1).
    pub times_built: u32,
    /// Unix seconds when the build started (0 if it did not run).
    pub start_time: i64,
    /// Unix seconds when it ended.
    pub stop_time: i64,
    /// The output paths by name, on success.
    pub outputs: BTreeMap<String, StorePath>,
    /// `--check` found a difference.
    pub non_deterministic: bool,
}

impl BuildResult {
    /// A result that did not involve running a builder.
    pub fn new(status: Status, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            times_built: 0,
            start_time: 0,
            stop_time: 0,
            outputs: BTreeMap::new(),
            non_deterministic: false,
        }
    }
}

/// Per-request options (from the client's SetOptions and the request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOptions {
    /// Normal, repair or check.
    pub mode: BuildMode,
    /// Keep the build directory of a failed build for the client.
    pub keep_failed: bool,
    /// Go on with other goals after a failure.
    pub keep_going: bool,
    /// `max-silent-time` in seconds (0 = none).
    pub max_silent_time: u64,
    /// `timeout` in seconds (0 = none).
    pub timeout: u64,
    /// `NIX_BUILD_CORES` for this request's builds, if the client set it.
    pub cores: Option<u32>,
    /// The client's uid, who gets read access to kept build directories.
    pub client_uid: Option<u32>,
}

impl Default for BuildOptions {
    fn default() -> Self {
        Self {
            mode: BuildMode::Normal,
            keep_failed: false,
            keep_going: false,
            max_silent_time: 0,
            timeout: 0,
            cores: None,
            client_uid: None,
        }
    }
}
