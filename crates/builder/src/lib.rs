//! Building derivations: one [`Scheduler`] shared by all client connections turns
//! build requests into a graph of derivation goals (from `inputDrvs`), runs them in
//! dependency order with at most `max-jobs` at once, builds a derivation wanted by
//! several clients once and hands every waiter the result, cancels a build nobody
//! waits for any more, and for each goal loads the `.drv`, prepares the build
//! directory and the exact environment of Nix 2.8 (`docs/spec/sandbox.md` §3),
//! runs the builder in the rootless sandbox of `unrooted-sandbox` (or, only when the
//! administrator set `sandbox = false`, directly) — a builtin builder ([`builtins`])
//! too, called by the sandbox's init in place of a program, never in the daemon —
//! streams and stores its log, and
//! registers its outputs (`docs/spec/store-formats.md` §5): copied into fresh inodes,
//! canonicalised,
//! reference-scanned, fixed-output hashes checked, moved into the store with one
//! `rename` each and registered in one transaction. The crate is synchronous and uses plain threads: the daemon serves each
//! connection on a thread of its own, each build is a blocking wait on a child process
//! and its log pipe, and everything around a build (hashing, the database, file moves)
//! is blocking I/O, so a request's builds run on scoped threads that borrow the store,
//! and waiting for another client's build is a condition-free poll of a shared goal.
//!
//! # Outputs are copies (issue 15, Nix CVE-2024-27297)
//!
//! A builder can keep write access to what it wrote after the daemon checked it: a
//! fixed-output build shares the host's network namespace, so it can send a read-write
//! descriptor of `$out` over an abstract unix socket to a process of another local
//! user, which can write to it (or through a shared writable mapping of it) once the
//! path is registered; a hard link of an output file, or a descriptor held by a
//! process that outlives the build, would do the same. So no inode a builder ever had
//! becomes a store path. Once the sandbox and all of the build's processes are gone
//! (its PID namespace is empty when the helper reports the end), every output is copied
//! by the daemon through its NAR ([`unrooted_format::nar::copy_tree`]: the one dumper
//! feeding the one restorer, both relative to directory handles with `O_NOFOLLOW` and
//! within the archive's depth and length bounds) into a new tree in the store's private
//! temporary area (0700, the store owner's); the NAR hash, the reference scan and a
//! fixed output's hash are computed from the very bytes written to the copy, and the
//! copy is what is installed. The copy holds only what a NAR holds: no hard links (each
//! becomes a file of its own), no setuid, setgid or sticky bits, no owners, no extended
//! attributes or ACLs; `canonicalise` then gives it the store's modes and mtime. The
//! builder's originals are removed with the sandbox root (unsandboxed, before the copy
//! takes their place). Whoever still holds one writes to an inode nothing refers to.
//!
//! This is done for every output, not only fixed-output ones: a plain build cannot
//! reach another user over the network, but hard links and descriptors kept past the
//! sandbox are channels that need no network, and one rule is easier to trust than
//! two (Nix's own fix of the CVE, of March 2024, copies fixed outputs only). What it
//! costs: one more write of each output. For a small output the copy is a dump into
//! memory and one new file (measured per output, release build: the dump 6–8 µs; the copy as much as creating and writing one small file on
//! the store's file system, 25 µs on an idle ext4 up to about 1 ms while other builds
//! and tests ran). `./scripts/bench.sh --only build` (unrooted / nix-daemon, on the
//! shared 2-CPU development machine, load 0.1–2.5 from other work, so runs move by
//! more than the copy costs): without the copy, one trivial sandboxed build 0.42x,
//! 0.42x, 0.42x and 200 builds 0.27x, 0.34x, 0.35x; with it, one build 0.45x, 0.42x,
//! 0.45x, 0.46x, 0.42x, 0.41x and 200 builds 0.26x, 0.47x, 0.37x, 0.35x, 0.38x, 0.40x
//! (e.g. 0.026 s against 0.056 s, and 1.07 s against 3.04 s, at load 1.5). Both stay
//! within the goal (≤ 0.5x), so every output is copied.

pub mod builtins;
pub mod checks;
mod config;
mod env;
mod error;
mod export_graph;
mod goal;
mod hook;
mod idpool;
mod keep;
mod log;
mod run;
mod scheduler;

use std::collections::BTreeMap;

use unrooted_format::StorePath;

pub use config::{default_system, default_system_features, BuilderConfig, FixedOutputNetwork};
pub use env::{attrs_sh, builder_env, pass_as_file_name, BuilderEnv, EnvParams};
pub use error::{error_chain, BuildError};
pub use export_graph::ExportGraphError;
pub use goal::{load_derivation, output_hashes, output_paths, partial_output_paths};
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
    /// `post-build-hook`: run after every local build, as the store owner, with
    /// `DRV_PATH` and `OUT_PATHS` (the `hook` module).
    pub post_build_hook: Option<std::path::PathBuf>,
    /// The `NIX_CONFIG` the hook gets when the daemon's environment has none (the
    /// settings in effect, `name = value` lines).
    pub hook_config: String,
    /// `secret-key-files`: every locally built output is signed with each key.
    pub secret_key_files: Vec<std::path::PathBuf>,
    /// `auto-optimise-store`: new outputs are hard-linked through `.links`.
    pub auto_optimise: bool,
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
            post_build_hook: None,
            hook_config: String::new(),
            secret_key_files: Vec::new(),
            auto_optimise: false,
        }
    }
}
