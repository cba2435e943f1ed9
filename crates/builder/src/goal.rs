//! One derivation goal: load the `.drv`, check its inputs, prepare a build directory
//! and environment, run the builder (sandboxed, or directly when the administrator
//! set `sandbox = false`), and turn what it left into registered outputs
//! (`docs/spec/store-formats.md` §5).
//!
//! Where things live: the host build directory is `nix-build-<name>.drv-<n>` (0700)
//! inside a daemon-private 0700 directory under the daemon's temporary directory, so a
//! builder's `chmod 777 /build` exposes nothing (CVE-2021-27851). The sandbox root is
//! a fresh directory in the store's private temporary area (0700), on the store's file
//! system. The outputs the builder creates in the sandbox's store directory are never
//! registered themselves: each is copied into new inodes next to it in that area, and
//! the copy is hashed, checked and renamed into the store (see [`finish_outputs`] and
//! the crate's documentation); the originals and everything else the builder left
//! there (stray entries) are removed with the root, never registered.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use unrooted_format::derivation::{name_from_drv_path, Derivation, DerivationOutput, DrvHasher};
use unrooted_format::refscan::RefScanner;
use unrooted_format::{
    nar, ContentAddress, FileIngestionMethod, Hash, HashAlgo, Hasher, StoreDir, StorePath,
};
use unrooted_sandbox::{empty_dir, remove_tree, Plan, Sandbox, SandboxPath, SandboxSpec};
use unrooted_store::{LocalStore, OutputLocks, ValidPathInfo};

use crate::builtins;
use crate::checks::{check_outputs, BuiltOutput, OutputCheckError};
use crate::env::{builder_env, rewrite, EnvParams};
use crate::error::{error_chain, BuildError};
use crate::export_graph::export_references_graph;
use crate::idpool::{IdLease, IdMode, IdPool};
use crate::keep;
use crate::log::{log_path, BuildLog, TAIL_LINES};
use crate::run::{self, Ended, Limits, Runner};
use crate::{BuildMode, BuildOptions, BuildResult, Status};

/// The daemon-wide settings of building.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Run builders in the user-namespace sandbox (`sandbox = true`, the default).
    /// Without it they run directly as the store owner.
    pub sandbox: bool,
    /// `sandbox-paths` and `extra-sandbox-paths`.
    pub sandbox_paths: Vec<SandboxPath>,
    /// How to start the sandbox helper.
    pub helper: Sandbox,
    /// A helper without the builtin builders that starts faster (see
    /// [`Sandbox::beside`]), for builds that execute a program; `None` uses `helper`.
    pub exec_helper: Option<Sandbox>,
    /// Where build directories are made (and kept ones are put): the daemon's
    /// `TMPDIR`.
    pub tmp_dir: PathBuf,
    /// Where build logs are stored (`<logDir>/drvs/…`); `None` keeps none.
    pub log_dir: Option<PathBuf>,
    /// `max-build-log-size` in bytes (0 = unlimited).
    pub max_log_size: u64,
    /// `NIX_BUILD_CORES` (`cores`; 0 means all CPUs).
    pub cores: u32,
    /// `max-jobs`: builds running at once, over all clients.
    pub max_jobs: usize,
    /// The platform builders run on (`x86_64-linux`).
    pub system: String,
    /// Other platforms accepted (`extra-platforms`).
    pub extra_platforms: Vec<String>,
    /// The build directory inside the sandbox (`sandbox-build-dir`, `/build`).
    pub sandbox_build_dir: PathBuf,
    /// Which ids sandboxed builders run as (see [`IdMode`]).
    pub ids: IdMode,
    /// `hashed-mirrors`: base URLs `builtin:fetchurl` tries first for a flat-hashed
    /// output, as `<mirror>/<algo>/<base16 hash>`.
    pub hashed_mirrors: Vec<String>,
    /// `system-features`: what a derivation's `requiredSystemFeatures` may ask for
    /// (Nix's default: `nixos-test`, `benchmark`, `big-parallel`, and `kvm` when
    /// `/dev/kvm` can be opened).
    pub system_features: BTreeSet<String>,
    /// How sandboxed fixed-output builds reach the network.
    pub fixed_output_network: FixedOutputNetwork,
}

/// Nix 2.8's default `system-features`.
pub fn default_system_features() -> BTreeSet<String> {
    let mut f: BTreeSet<String> = ["nixos-test", "benchmark", "big-parallel"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
    {
        f.insert("kvm".to_owned());
    }
    f
}

/// How sandboxed fixed-output builds reach the network (`fixed-output-network` and
/// `pasta-path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixedOutputNetwork {
    /// In a network namespace of the build's own, through this `pasta` (the default
    /// when it is found): no abstract socket, loopback listener or `/proc/net` of the
    /// host is in reach; the host's loopback is reached at
    /// [`unrooted_sandbox::PASTA_GATEWAY`].
    Pasta(PathBuf),
    /// `pasta` was wanted but is not there (the path looked for): a fixed-output build
    /// that executes a program fails, naming it (closed, not open); `builtin:fetchurl`,
    /// the daemon's own code run in the sandbox, which cannot be made to use an
    /// abstract socket, shares the host's network instead, with a warning.
    Missing(PathBuf),
    /// The host's network namespace, as in Nix 2.8 (`fixed-output-network = host`,
    /// which the administrator must ask for).
    Host,
}

impl BuilderConfig {
    /// Nix's defaults, with the sandbox started through `helper`.
    pub fn new(helper: Sandbox) -> Self {
        Self {
            sandbox: true,
            sandbox_paths: Vec::new(),
            helper,
            exec_helper: None,
            tmp_dir: std::env::temp_dir(),
            log_dir: None,
            max_log_size: 0,
            cores: 0,
            max_jobs: 1,
            system: default_system(),
            extra_platforms: Vec::new(),
            sandbox_build_dir: PathBuf::from("/build"),
            ids: IdMode::default(),
            hashed_mirrors: Vec::new(),
            system_features: default_system_features(),
            fixed_output_network: FixedOutputNetwork::Host,
        }
    }

    pub(crate) fn effective_cores(&self) -> u32 {
        if self.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            self.cores
        }
    }
}

/// `<arch>-linux` of this machine, as Nix names it.
pub fn default_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

/// Emptied directories kept for the next build's build directory or sandbox root,
/// which gets one by a rename instead of a `mkdir`, and gives it back instead of
/// removing it: on this kind of file system (ext4, mounted with `discard`) a new
/// directory costs an inode search that grows with recent deletions and a removed one
/// a discarded block, a millisecond or more per build between them. A directory is
/// kept only once empty, still a directory of ours, and mode 0700 again, so nothing of
/// one build reaches the next; anything else is removed as before.
///
/// Emptying happens on a thread of its own, after the build's result is out: a
/// sandbox root holds a few dozen mount points and generated files, and removing them
/// took half a millisecond of every build's latency. A directory handed over is
/// renamed to its spare name at once (so the build's own name is free) and becomes
/// takeable only once emptied; at most [`MAX_SPARES`] are kept or being emptied, and
/// past that, or if the thread cannot run, a directory is removed in place as before.
/// A daemon that dies meanwhile leaves them to the start-up sweeps of dead daemons'
/// temporary areas and build directories.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    shared: std::sync::Arc<SparesShared>,
    emptier: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<PathBuf>>>,
}

#[derive(Debug, Default)]
struct SparesShared {
    /// Emptied spares, ready to be taken.
    idle: std::sync::Mutex<Vec<PathBuf>>,
    /// Spares handed to the emptier and not yet idle or removed.
    pending: std::sync::atomic::AtomicUsize,
}

/// Spare directories kept in each place; a few more than builds run at once is
/// plenty.
const MAX_SPARES: usize = 8;

impl SparesShared {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Empties `spare` and keeps it if it is still a private directory of ours (the
    /// emptying leaves its mode 0700), or removes it.
    fn settle(&self, spare: PathBuf) -> Result<(), unrooted_sandbox::CleanupError> {
        let private = |p: &Path| {
            fs::symlink_metadata(p).is_ok_and(|m| {
                m.is_dir()
                    && m.uid() == rustix::process::geteuid().as_raw()
                    && m.mode() & 0o7777 == 0o700
            })
        };
        let kept = empty_dir(&spare).is_ok() && private(&spare) && {
            let mut idle = self.idle();
            let room = idle.len() < MAX_SPARES;
            if room {
                idle.push(spare.clone());
            }
            room
        };
        if kept {
            Ok(())
        } else {
            remove_tree(&spare)
        }
    }
}

impl Spares {
    /// Renames a spare to `dest` (which must not exist); false when there is none.
    fn take(&self, dest: &Path) -> bool {
        loop {
            let Some(spare) = self.shared.idle().pop() else {
                return false;
            };
            let renamed = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &spare,
                rustix::fs::CWD,
                dest,
                rustix::fs::RenameFlags::NOREPLACE,
            );
            if renamed.is_ok() {
                return true;
            }
            let _ = remove_tree(&spare);
        }
    }

    /// The emptying thread's queue, started on first use; `None` if it cannot start.
    fn emptier(&self) -> Option<&std::sync::mpsc::SyncSender<PathBuf>> {
        self.emptier
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(MAX_SPARES);
                let shared = std::sync::Arc::clone(&self.shared);
                std::thread::Builder::new()
                    .name("spares".into())
                    .stack_size(256 << 10)
                    .spawn(move || {
                        for spare in rx {
                            if let Err(e) = shared.settle(spare) {
                                tracing::warn!("removing a spare directory: {e}");
                            }
                            shared.pending.fetch_sub(1, Ordering::AcqRel);
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }

    /// Keeps `dir` under the unused name `spare` (in the same directory) once emptied,
    /// or removes it. Returns before the emptying when the emptier takes it.
    fn give(&self, dir: &Path, spare: PathBuf) -> Result<(), unrooted_sandbox::CleanupError> {
        let ours = fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw());
        let shared = &self.shared;
        let room = || shared.idle().len() + shared.pending.load(Ordering::Acquire) < MAX_SPARES;
        if !ours || !room() || fs::rename(dir, &spare).is_err() {
            return remove_tree(dir);
        }
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let handed = match self.emptier() {
            Some(tx) => tx.try_send(spare).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(p)
                | std::sync::mpsc::TrySendError::Disconnected(p) => p,
            }),
            None => Err(spare),
        };
        match handed {
            Ok(()) => Ok(()),
            Err(spare) => {
                let r = shared.settle(spare);
                shared.pending.fetch_sub(1, Ordering::AcqRel);
                r
            }
        }
    }
}

/// A daemon-private directory (0700) holding build directories while they are used.
#[derive(Debug)]
pub(crate) struct BuildDirs {
    parent: PathBuf,
    counter: AtomicU64,
    /// Emptied build directories, in `parent`.
    spare_dirs: Spares,
    /// Emptied sandbox roots, in the store's temporary area.
    pub(crate) spare_roots: Spares,
}

impl BuildDirs {
    pub(crate) fn create(tmp_dir: &Path) -> Result<Self, BuildError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        sweep_dead(tmp_dir);
        let parent = tmp_dir.join(format!("unrooted-builds-{}-{nanos:x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&parent)
            .map_err(BuildError::io(
                "creating the private build directory",
                &parent,
            ))?;
        Ok(Self {
            parent,
            counter: AtomicU64::new(0),
            spare_dirs: Spares::default(),
            spare_roots: Spares::default(),
        })
    }

    fn new_dir(&self, drv: &StorePath) -> Result<PathBuf, BuildError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .parent
            .join(format!("nix-build-{}-{n}", drv.name().as_str()));
        if self.spare_dirs.take(&dir) {
            return Ok(dir);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BuildError::io("creating the build directory", &dir))?;
        Ok(dir)
    }

    /// Empties a build directory that is no longer used and keeps it for the next
    /// build, or removes it.
    fn release(&self, dir: &Path) -> Result<(), unrooted_sandbox::CleanupError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.spare_dirs
            .give(dir, self.parent.join(format!("spare-{n}")))
    }
}

/// Removes the private build parents of daemons that died without cleaning up
/// (`unrooted-builds-<pid>-…` whose process is gone), as long as they are ours.
fn sweep_dead(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    let own_uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("unrooted-builds-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // A live process with that pid (ours or a reused one) keeps the directory.
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        let ours = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == own_uid);
        if ours {
            if let Err(e) = remove_tree(&path) {
                tracing::debug!(path = %path.display(), error = %e, "removing a dead daemon's build directories");
            }
        }
    }
}

impl Drop for BuildDirs {
    fn drop(&mut self) {
        let _ = remove_tree(&self.parent);
    }
}

/// What a running goal reports.
pub(crate) enum GoalEvent<'a> {
    /// A line of the builder's output.
    Line(&'a str),
    /// A message for the client (kept build directory, …).
    Note(&'a str),
    /// The post-build hook starts (its command).
    HookStarted(&'a str),
    /// A line of the post-build hook's output.
    HookLine(&'a str),
}

/// Everything one goal needs.
pub(crate) struct GoalCx<'a> {
    pub store: &'a LocalStore,
    pub cfg: &'a BuilderConfig,
    pub dirs: &'a BuildDirs,
    pub opts: &'a BuildOptions,
    pub mode: BuildMode,
    pub events: &'a (dyn Fn(GoalEvent<'_>) + Sync),
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

/// Reads and parses a `.drv` from the store.
pub fn load_derivation(store: &LocalStore, drv_path: &StorePath) -> Result<Derivation, BuildError> {
    let err = |source: Box<dyn std::error::Error + Send + Sync>| BuildError::LoadDerivation {
        drv: store.print_path(drv_path),
        source,
    };
    if !store.is_valid_path(drv_path)? {
        return Err(err(format!(
            "path '{}' is not valid",
            store.print_path(drv_path)
        )
        .into()));
    }
    let name = name_from_drv_path(drv_path).ok_or_else(|| err("not a .drv path".into()))?;
    // Derivation::parse bounds sizes and counts itself; the read is bounded too.
    let mut bytes = Vec::new();
    fs::File::open(store.real_path(drv_path))
        .and_then(|f| f.take(MAX_DRV_SIZE + 1).read_to_end(&mut bytes))
        .map_err(|e| err(Box::new(e)))?;
    if bytes.len() as u64 > MAX_DRV_SIZE {
        return Err(err("the .drv file is too large".into()));
    }
    Derivation::parse(store.store_dir(), &bytes, name).map_err(|e| err(Box::new(e)))
}

/// The largest `.drv` file read.
const MAX_DRV_SIZE: u64 = 64 << 20;

/// The output paths of a derivation this daemon can build (input-addressed or fixed).
pub fn output_paths(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Result<BTreeMap<String, StorePath>, BuildError> {
    let mut out = BTreeMap::new();
    for (name, o) in &drv.outputs {
        match o.path() {
            Some(p) => {
                out.insert(name.clone(), p.clone());
            }
            None => {
                return Err(BuildError::Unsupported {
                    drv: store.print_path(drv_path),
                    reason: "content-addressed, deferred and impure derivations are not supported by unrooted yet".into(),
                })
            }
        }
    }
    Ok(out)
}

/// The derivation's hash modulo its outputs, per output (the `sha256:<hex>` of its
/// realisation ids, `DrvOutput`).
pub fn output_hashes(
    store: &LocalStore,
    drv: &Derivation,
) -> Result<BTreeMap<String, [u8; 32]>, BuildError> {
    let dir = store.store_dir().clone();
    let load = |p: &StorePath| load_derivation(store, p);
    let mut hasher = DrvHasher::new(dir, load);
    hasher
        .hash_modulo(drv, true)
        .map(|h| h.hashes)
        .map_err(|e| BuildError::Hash {
            drv: drv.name.clone(),
            source: Box::new(e),
        })
}

/// A failure with its status, as it will be reported.
pub(crate) struct Failure {
    pub status: Status,
    pub msg: String,
}

/// Gives a sandboxed fixed-output build its network: `pasta`'s, with the host's
/// `/etc/services` and `/etc/hosts` and a resolver file naming pasta's gateway, or
/// the host's network with its three files.
fn fixed_output_network(
    spec: &mut SandboxSpec,
    how: &FixedOutputNetwork,
    builtin: Option<&str>,
) -> Result<(), Failure> {
    let host_files = unrooted_sandbox::host_network_files();
    match how {
        FixedOutputNetwork::Pasta(pasta) => {
            spec.pasta = Some(unrooted_sandbox::Pasta::new(pasta.clone()));
            spec.network_files = host_files
                .into_iter()
                .filter(|f| f.target != Path::new("/etc/resolv.conf"))
                .collect();
            let host = fs::read("/etc/resolv.conf").unwrap_or_default();
            spec.resolv_conf = Some(unrooted_sandbox::pasta_resolv_conf(&host));
        }
        FixedOutputNetwork::Host => spec.network_files = host_files,
        FixedOutputNetwork::Missing(pasta) if builtin == Some("fetchurl") => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "{} is missing: builtin:fetchurl shares the host's network (the daemon's own fetcher, which cannot reach abstract sockets); fixed-output builds that run a program fail until passt is installed",
                    pasta.display()
                )
            });
            spec.network_files = host_files;
        }
        FixedOutputNetwork::Missing(pasta) => {
            return Err(fail(
                Status::MiscFailure,
                format!(
                    "fixed-output builds get their network through pasta, and {} is not there: install pasta (Debian's package passt), set pasta-path to it, or let fixed-output builds share the host's network with fixed-output-network = host",
                    pasta.display()
                ),
            ))
        }
    }
    Ok(())
}

fn fail(status: Status, msg: impl Into<String>) -> Failure {
    Failure {
        status,
        msg: msg.into(),
    }
}

impl From<BuildError> for Failure {
    fn from(e: BuildError) -> Self {
        fail(Status::MiscFailure, error_chain(&e))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Builds `drv` (loaded from `drv_path`), whose input derivations are built.
pub(crate) fn build(cx: &GoalCx<'_>, drv_path: &StorePath, drv: &Derivation) -> BuildResult {
    let start = now();
    let built = build_inner(cx, drv_path, drv).and_then(|outputs| {
        post_build_hook(cx, drv_path, &outputs)?;
        Ok(outputs)
    });
    let mut result = match built {
        Ok(outputs) => BuildResult {
            status: Status::Built,
            error: String::new(),
            times_built: 1,
            start_time: start,
            stop_time: 0,
            outputs,
            non_deterministic: false,
        },
        Err(f) => BuildResult {
            non_deterministic: f.status == Status::NotDeterministic,
            status: f.status,
            error: f.msg,
            times_built: 1,
            start_time: start,
            stop_time: 0,
            outputs: BTreeMap::new(),
        },
    };
    result.stop_time = now();
    result
}

/// Runs `post-build-hook`, if set, for a local build that produced `outputs`
/// ([`crate::hook`]); its failure fails the request, the outputs stay valid.
fn post_build_hook(
    cx: &GoalCx<'_>,
    drv_path: &StorePath,
    outputs: &BTreeMap<String, StorePath>,
) -> Result<(), Failure> {
    let Some(hook) = cx.opts.post_build_hook.as_deref() else {
        return Ok(());
    };
    let store = cx.store;
    let paths: BTreeSet<&StorePath> = outputs.values().collect();
    let printed: Vec<String> = paths.iter().map(|p| store.print_path(p)).collect();
    let events = cx.events;
    events(GoalEvent::HookStarted(&hook.to_string_lossy()));
    let mut on_line = |l: &str| events(GoalEvent::HookLine(l));
    crate::hook::run_post_build_hook(
        hook,
        &store.print_path(drv_path),
        &printed,
        &cx.opts.hook_config,
        &mut on_line,
    )
    .map_err(|e| fail(Status::MiscFailure, error_chain(&e)))
}

fn build_inner(
    cx: &GoalCx<'_>,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let store = cx.store;
    let shown = store.print_path(drv_path);
    let outputs = output_paths(store, drv_path, drv)?;
    let fixed = matches!(drv.outputs.get("out"), Some(DerivationOutput::Fixed { .. }))
        && drv.outputs.len() == 1;

    // Inputs: every used output of every input derivation, and the sources.
    let mut inputs: BTreeSet<StorePath> = drv.input_srcs.clone();
    for (input, wanted) in &drv.input_drvs {
        let map = store
            .query_derivation_output_map(input)
            .map_err(BuildError::from)?;
        for name in wanted {
            match map.get(name) {
                Some(p) => {
                    inputs.insert(p.clone());
                }
                None => {
                    return Err(fail(
                        Status::MiscFailure,
                        format!(
                            "derivation '{}' has no output '{name}' needed by '{shown}'",
                            store.print_path(input)
                        ),
                    ))
                }
            }
        }
    }
    for p in &inputs {
        if !store.is_valid_path(p).map_err(BuildError::from)? {
            return Err(fail(
                Status::DependencyFailed,
                format!("input '{}' of '{shown}' is not valid", store.print_path(p)),
            ));
        }
    }
    let closure = store.query_closure(&inputs).map_err(BuildError::from)?;

    if cx.mode == BuildMode::Check {
        for p in outputs.values() {
            if !store.is_valid_path(p).map_err(BuildError::from)? {
                return Err(fail(
                    Status::MiscFailure,
                    format!("some outputs of '{shown}' are not valid, so checking is not possible"),
                ));
            }
        }
    }

    // Builtin builders run where any builder runs (in the sandbox), never here.
    let builder = drv.builder.as_slice();
    let builtin = match builder.strip_prefix(b"builtin:") {
        None => None,
        Some(name) => Some(builtins::builtin_name(builder).ok_or_else(|| {
            fail(
                Status::MiscFailure,
                format!(
                    "cannot build '{shown}': unsupported builtin builder '{}'",
                    String::from_utf8_lossy(name)
                ),
            )
        })?),
    };
    // Only a checked hash makes the network that comes with fixed outputs harmless.
    if builtin == Some("fetchurl") && !fixed {
        return Err(fail(
            Status::MiscFailure,
            format!("cannot build '{shown}': 'builtin:fetchurl' must be a fixed-output derivation"),
        ));
    }
    // Nix's `canBuildLocally`: the platform, and every required feature among
    // `system-features` (`uid-range` is checked against the id pool below).
    let system = String::from_utf8_lossy(&drv.system);
    let required: BTreeSet<String> = required_features(drv).into_iter().collect();
    let platform_ok = builtin.is_some()
        || system == cx.cfg.system
        || cx.cfg.extra_platforms.iter().any(|p| *p == system);
    let features_ok = required
        .iter()
        .all(|f| f == "uid-range" || cx.cfg.system_features.contains(f));
    if !platform_ok || !features_ok {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        return Err(fail(
            Status::MiscFailure,
            format!(
                "a '{system}' with features {{{}}} is required to build '{shown}', but I am a '{}' with features {{{}}}",
                join(&required),
                cx.cfg.system,
                join(&cx.cfg.system_features)
            ),
        ));
    }
    if cx.mode == BuildMode::Check && !cx.cfg.sandbox {
        return Err(fail(
            Status::MiscFailure,
            format!("checking '{shown}' needs the sandbox (sandbox = true) in unrooted"),
        ));
    }

    // The `uid-range` feature: root inside with 65,536 ids, from a whole slice.
    let uid_range = required_features(drv).iter().any(|f| f == "uid-range");
    let pool = match &cx.cfg.ids {
        IdMode::Ranges(pool) if cx.cfg.sandbox => Some(pool),
        _ => None,
    };
    if uid_range && pool.is_none_or(|p| p.ids_per_build() < unrooted_sandbox::UID_RANGE_IDS) {
        return Err(fail(
            Status::MiscFailure,
            format!(
                "a '{}' with features {{uid-range}} is required to build '{shown}', but I am a '{}' without it (it needs subordinate ids and slices of 65536 ids)",
                String::from_utf8_lossy(&drv.system),
                cx.cfg.system
            ),
        ));
    }
    // The build's slice is held until its files are the store owner's again.
    let lease = match pool {
        Some(pool) => match pool.acquire(cx.cancelled)? {
            Some(lease) => Some((pool, lease)),
            None => {
                return Err(fail(
                    Status::Cancelled,
                    format!("building of '{shown}' was cancelled while waiting for free build ids"),
                ))
            }
        },
        None => None,
    };
    let ids = lease.as_ref().map(|(p, l)| (*p, l, uid_range));

    // The outputs' locks, held until they are registered, as Nix holds them.
    let held = store
        .lock_outputs(&outputs.values().cloned().collect())
        .map_err(BuildError::from)?;
    let host_build_dir = cx.dirs.new_dir(drv_path)?;
    let result = run_builder(
        cx,
        drv_path,
        drv,
        &outputs,
        &closure,
        fixed,
        builtin,
        &host_build_dir,
        ids,
        &held,
    );
    drop(held);
    if let Some((pool, lease)) = &lease {
        // A sandbox that failed during its setup may have handed the build directory
        // to the builder's ids already.
        let owner = pool.owner().0;
        if fs::symlink_metadata(&host_build_dir).is_ok_and(|m| m.uid() != owner) {
            if let Err(e) = cx.cfg.helper.reclaim(
                &pool.reclaim_maps(lease.slice()),
                std::slice::from_ref(&host_build_dir),
            ) {
                tracing::warn!(
                    "reclaiming {}: {}",
                    host_build_dir.display(),
                    error_chain(&e)
                );
            }
        }
    }
    let failed = result.is_err();
    if failed && cx.opts.keep_failed {
        match keep::keep_build_dir(&host_build_dir, &cx.cfg.tmp_dir, cx.opts.client_uid) {
            Ok(note) => (cx.events)(GoalEvent::Note(&note)),
            Err(e) => {
                tracing::warn!("keeping {}: {}", host_build_dir.display(), error_chain(&e));
                let _ = remove_tree(&host_build_dir);
            }
        }
    } else if let Err(e) = cx.dirs.release(&host_build_dir) {
        tracing::warn!("removing {}: {e}", host_build_dir.display());
    }
    result
}

/// The derivation's `requiredSystemFeatures`.
fn required_features(drv: &Derivation) -> Vec<String> {
    if let Some(attrs) = drv.structured_attrs_json() {
        if let Some(list) = attrs
            .ok()
            .as_ref()
            .and_then(|a| a.get("requiredSystemFeatures"))
            .and_then(|v| v.as_array())
        {
            return list
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect();
        }
        return Vec::new();
    }
    drv.env
        .get(b"requiredSystemFeatures".as_slice())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// A build's slice of ids: the pool, the held slice, and whether the builder gets the
/// whole of it as root (`uid-range`).
type Ids<'a> = Option<(&'a IdPool, &'a IdLease, bool)>;

/// Runs the builder in `host_build_dir` and registers the outputs.
#[allow(clippy::too_many_arguments)]
fn run_builder(
    cx: &GoalCx<'_>,
    drv_path: &StorePath,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
    closure: &BTreeSet<StorePath>,
    fixed: bool,
    builtin: Option<&'static str>,
    host_build_dir: &Path,
    ids: Ids<'_>,
    held: &OutputLocks<'_>,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let store = cx.store;
    let dir = store.store_dir();
    let shown = store.print_path(drv_path);
    let sandboxed = cx.cfg.sandbox;
    let inner_build_dir = if sandboxed {
        cx.cfg.sandbox_build_dir.clone()
    } else {
        host_build_dir.to_path_buf()
    };
    let impure = |k: &str| std::env::var(k).ok();
    let graph = export_references_graph(store, drv, closure)
        .map_err(|e| fail(Status::MiscFailure, error_chain(&e)))?;
    // Unsandboxed, a builder cannot be handed the path of an output that is valid
    // already (it is in use, and in its way): as Nix does, such outputs are built at a
    // scratch path and the hash parts are rewritten, in the builder's environment now
    // and in what it wrote afterwards.
    let scratch: BTreeMap<String, StorePath> = if sandboxed {
        BTreeMap::new()
    } else {
        let mut m = BTreeMap::new();
        for (name, p) in outputs {
            if store.is_valid_path(p).map_err(BuildError::from)? {
                m.insert(name.clone(), fallback_path(dir, drv_path, p));
            }
        }
        m
    };
    let _scratch_guard = ScratchGuard(scratch.values().map(|p| store.real_path(p)).collect());
    let to_scratch: Vec<(Vec<u8>, Vec<u8>)> = scratch
        .iter()
        .map(|(name, s)| {
            (
                outputs[name].hash_part().as_bytes().to_vec(),
                s.hash_part().as_bytes().to_vec(),
            )
        })
        .collect();
    let mut benv = builder_env(
        drv,
        &EnvParams {
            store_dir: dir,
            build_dir: &inner_build_dir,
            cores: cx
                .opts
                .cores
                .filter(|c| *c > 0)
                .unwrap_or_else(|| cx.cfg.effective_cores()),
            outputs,
            impure_env: &impure,
            extra_attrs: &graph.attrs,
        },
    )?;
    if !to_scratch.is_empty() {
        for (_, v) in benv.env.iter_mut() {
            *v = OsString::from_vec(rewrite(v.as_bytes(), &to_scratch));
        }
        for a in benv.args.iter_mut() {
            *a = OsString::from_vec(rewrite(a.as_bytes(), &to_scratch));
        }
        for (_, contents) in benv.files.iter_mut() {
            *contents = rewrite(contents, &to_scratch);
        }
    }
    for (name, contents) in benv.files.iter().chain(&graph.files) {
        let p = host_build_dir.join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .and_then(|mut f| f.write_all(contents))
            .map_err(BuildError::io("writing", &p))?;
    }
    let builder = PathBuf::from(OsStr::from_bytes(&drv.builder));
    // What the daemon's settings give a builtin, in place of anything the derivation
    // named so.
    let mut env = benv.env.clone();
    if builtin == Some("fetchurl") {
        env.retain(|(k, _)| k != crate::builtins::HASHED_MIRRORS_VAR);
        if !cx.cfg.hashed_mirrors.is_empty() {
            env.push((
                crate::builtins::HASHED_MIRRORS_VAR.into(),
                cx.cfg.hashed_mirrors.join(" ").into(),
            ));
        }
    }

    let log_file = cx.cfg.log_dir.as_ref().map(|d| log_path(d, drv_path));
    let mut log =
        BuildLog::create(log_file.clone(), cx.cfg.max_log_size).map_err(BuildError::io(
            "creating the build log",
            log_file.clone().unwrap_or_default(),
        ))?;
    let (read, write) = run::log_pipe()?;

    // The sandbox root (and with it every stray entry) goes away on every path out.
    let root = if sandboxed {
        let root = store.new_temp_path("chroot");
        if !cx.dirs.spare_roots.take(&root) {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&root)
                .map_err(BuildError::io("creating the sandbox root", &root))?;
        }
        Some(RootGuard {
            path: root,
            spare: store.new_temp_path("spare"),
            spares: &cx.dirs.spare_roots,
        })
    } else {
        None
    };

    let mut extra = BTreeSet::new();
    // Store paths among the sandbox paths bring their closure along, as in Nix (bound,
    // not reference-scan candidates).
    for sp in &cx.cfg.sandbox_paths {
        let Some(text) = sp.source.to_str() else {
            continue;
        };
        let Some(rest) = text.strip_prefix(store.store_dir().as_str()) else {
            continue;
        };
        let base = rest.trim_start_matches('/').split('/').next().unwrap_or("");
        if let Ok(p) = StorePath::from_base_name(base) {
            if store.is_valid_path(&p).map_err(BuildError::from)? {
                extra.insert(p);
            }
        }
    }
    let extra = store.query_closure(&extra).map_err(BuildError::from)?;
    let mut runner = match &root {
        Some(root) => {
            if dir.as_str() != store.config().real_store_dir.as_os_str().to_string_lossy() {
                return Err(fail(
                    Status::MiscFailure,
                    "building in a store whose directory is not where it is on disk is not supported by unrooted yet",
                ));
            }
            let mut spec = SandboxSpec::new(
                root.path.clone(),
                PathBuf::from(dir.as_str()),
                host_build_dir.to_path_buf(),
                builder.clone(),
            );
            spec.sandbox_build_dir = cx.cfg.sandbox_build_dir.clone();
            spec.inputs = closure
                .iter()
                .chain(&extra)
                .map(|p| store.real_path(p))
                .collect();
            spec.sandbox_paths = cx.cfg.sandbox_paths.clone();
            spec.network = fixed;
            if fixed {
                fixed_output_network(&mut spec, &cx.cfg.fixed_output_network, builtin)?;
            }
            spec.builtin = builtin.map(str::to_owned);
            spec.args = benv.args.clone();
            spec.env = env;
            if let Some((pool, lease, uid_range)) = ids {
                (spec.host_uid, spec.host_gid) = pool.owner();
                spec.id_slice = Some(lease.slice().clone());
                spec.uid_range = uid_range;
                spec.reclaim = vec![root.path.clone(), host_build_dir.to_path_buf()];
            }
            let plan = Plan::new(&spec).map_err(|e| BuildError::Sandbox(e.into()))?;
            let helper = match (&cx.cfg.exec_helper, builtin) {
                (Some(fast), None) => fast,
                _ => &cx.cfg.helper,
            };
            let child = helper
                .spawn(&plan, std::os::fd::AsFd::as_fd(&write))
                .map_err(BuildError::from)?;
            Runner::Sandboxed(child)
        }
        None => {
            // Unsandboxed builders write the real output paths; leftovers of an
            // earlier failed build would be in the way.
            for p in outputs.values() {
                if !store.is_valid_path(p).map_err(BuildError::from)? {
                    let _ = remove_tree(&store.real_path(p));
                }
            }
            for p in scratch.values() {
                let _ = remove_tree(&store.real_path(p));
            }
            // `sandbox = false`: a builtin runs in a process of its own too (the
            // helper's binary, which has the builtins), never in the daemon.
            let (program, args) = match builtin {
                Some(name) => {
                    let helper = &cx.cfg.helper;
                    let mut args = helper.args().to_vec();
                    args.extend(["--builtin".into(), name.into()]);
                    (helper.program().to_path_buf(), args)
                }
                None => (builder.clone(), benv.args.clone()),
            };
            Runner::Direct(run::spawn_direct(
                &program,
                &args,
                &env,
                host_build_dir,
                &write,
            )?)
        }
    };
    drop(write);
    let limits = Limits {
        timeout: cx.opts.timeout,
        max_silent: cx.opts.max_silent_time,
        max_log: cx.cfg.max_log_size,
    };
    let events = cx.events;
    let mut on_line = |l: &str| events(GoalEvent::Line(l));
    let ended = run::watch(
        &mut runner,
        read,
        &mut log,
        limits,
        cx.cancelled,
        &mut on_line,
    );
    log.finish(&mut on_line);
    let reclaimed = matches!(&runner, Runner::Sandboxed(c) if c.reclaimed());
    drop(runner);
    // The sandbox is gone (its PID namespace with it), so nothing runs as the slice's
    // ids: everything the build left (outputs, stray entries, the build directory,
    // however it set their modes) goes back to the store owner, whose files the output
    // handling and the removal below then deal with as in the single-id mode. The
    // helper did so from inside the build's namespace as it ended; a helper that did
    // not get that far (killed, failed) leaves it to a reclaiming helper of its own.
    if let (Some((pool, lease, _)), Some(root), false) = (ids, &root, reclaimed) {
        cx.cfg
            .helper
            .reclaim(
                &pool.reclaim_maps(lease.slice()),
                &[root.path.clone(), host_build_dir.to_path_buf()],
            )
            .map_err(BuildError::from)?;
    }
    let ended = ended?;

    let tail = || {
        let lines: Vec<&str> = log.tail().collect();
        if lines.is_empty() {
            return String::new();
        }
        let mut s = format!(";\nlast {} log lines:\n", lines.len().min(TAIL_LINES));
        for l in lines {
            s.push_str("> ");
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!("For full logs, run 'nix log {shown}'."));
        s
    };
    match ended {
        Ended::Exited(0) => {}
        Ended::Exited(code) => {
            return Err(fail(
                Status::PermanentFailure,
                format!(
                    "builder for '{shown}' failed with exit code {code}{}",
                    tail()
                ),
            ))
        }
        Ended::Signaled(sig) => {
            return Err(fail(
                Status::PermanentFailure,
                format!("builder for '{shown}' failed due to signal {sig}{}", tail()),
            ))
        }
        Ended::TimedOut(secs) => {
            return Err(fail(
                Status::TimedOut,
                format!("building of '{shown}' timed out after {secs} seconds"),
            ))
        }
        Ended::Silent(secs) => {
            return Err(fail(
                Status::TimedOut,
                format!("building of '{shown}' timed out after {secs} seconds of silence"),
            ))
        }
        Ended::LogLimit(max) => {
            return Err(fail(
                Status::LogLimitExceeded,
                format!(
                "building of '{shown}' killed after writing more than {max} bytes of log output"
            ),
            ))
        }
        Ended::Cancelled => {
            return Err(fail(
                Status::MiscFailure,
                format!("building of '{shown}' was cancelled: no client waits for it any more"),
            ))
        }
    }

    let locations: BTreeMap<String, PathBuf> = outputs
        .iter()
        .map(|(name, p)| {
            let at = match &root {
                Some(r) => r
                    .path
                    .join(dir.as_str().trim_start_matches('/'))
                    .join(p.to_base_name()),
                None => store.real_path(scratch.get(name).unwrap_or(p)),
            };
            (name.clone(), at)
        })
        .collect();
    if scratch.is_empty() {
        return finish_outputs(cx, drv_path, drv, outputs, &locations, closure, held);
    }
    // Scratch hash parts back to the real ones, in every output; the valid outputs
    // built again are then dropped (not when repairing: they replace the old ones).
    let back: Vec<(Vec<u8>, Vec<u8>)> = to_scratch.into_iter().map(|(f, t)| (t, f)).collect();
    for at in locations.values() {
        if fs::symlink_metadata(at).is_ok() {
            rewrite_tree(at, &back).map_err(|e| {
                fail(
                    Status::OutputRejected,
                    format!(
                        "rewriting hashes in '{}': {}",
                        at.display(),
                        error_chain(&e)
                    ),
                )
            })?;
        }
    }
    let keep = |name: &String| cx.mode == BuildMode::Repair || !scratch.contains_key(name);
    let wanted: BTreeMap<String, StorePath> = outputs
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    let wanted_at: BTreeMap<String, PathBuf> =
        locations.into_iter().filter(|(n, _)| keep(n)).collect();
    // The dropped outputs can still be referred to.
    let mut candidates = closure.clone();
    candidates.extend(outputs.values().cloned());
    finish_outputs(cx, drv_path, drv, &wanted, &wanted_at, &candidates, held)?;
    Ok(outputs.clone())
}

/// Nix's `makeFallbackPath` for a valid output `path` of `drv_path`: where an
/// unsandboxed builder builds it instead.
fn fallback_path(dir: &StoreDir, drv_path: &StorePath, path: &StorePath) -> StorePath {
    dir.make_store_path(
        &format!(
            "rewrite:{}:{}",
            drv_path.to_base_name(),
            path.to_base_name()
        ),
        &[0u8; 32],
        path.name(),
    )
}

/// The scratch trees of a build, removed on every way out.
struct ScratchGuard(Vec<PathBuf>);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            if fs::symlink_metadata(p).is_ok() {
                if let Err(e) = remove_tree(p) {
                    tracing::warn!("removing the scratch output {}: {e}", p.display());
                }
            }
        }
    }
}

/// The largest output whose hashes are rewritten (in memory, as Nix does).
const MAX_REWRITE: u64 = 1 << 30;

/// Why an output's hashes could not be rewritten.
#[derive(Debug, thiserror::Error)]
enum RewriteError {
    #[error("serialising")]
    Dump(#[source] nar::NarError),
    #[error("the output is larger than {MAX_REWRITE} bytes")]
    TooLarge,
    #[error("removing the original")]
    Remove(#[source] unrooted_sandbox::CleanupError),
    #[error("restoring")]
    Restore(#[source] nar::NarError),
}

/// Replaces hash parts in the tree at `at` (names, contents and link targets: its
/// NAR), in place.
fn rewrite_tree(at: &Path, rewrites: &[(Vec<u8>, Vec<u8>)]) -> Result<(), RewriteError> {
    struct Bounded(Vec<u8>);
    impl Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0.len() as u64 + buf.len() as u64 > MAX_REWRITE {
                return Err(io::Error::other("too large"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Bounded(Vec::new());
    if let Err(e) = nar::dump_path(at, &mut sink) {
        return Err(if sink.0.len() as u64 + (64 << 10) > MAX_REWRITE {
            RewriteError::TooLarge
        } else {
            RewriteError::Dump(e)
        });
    }
    let rewritten = rewrite(&sink.0, rewrites);
    drop(sink);
    remove_tree(at).map_err(RewriteError::Remove)?;
    nar::restore(rewritten.as_slice(), at).map_err(RewriteError::Restore)?;
    Ok(())
}

/// Empties a sandbox root when dropped, keeping it as a spare (named `spare`) or
/// removing it.
struct RootGuard<'a> {
    path: PathBuf,
    spare: PathBuf,
    spares: &'a Spares,
}

impl Drop for RootGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .spares
            .give(&self.path, std::mem::take(&mut self.spare))
        {
            tracing::warn!("removing the sandbox root {}: {e}", self.path.display());
        }
    }
}

/// A `Write` computing the NAR hash, size, references and an optional second hash.
struct OutputSink {
    nar: Hasher,
    size: u64,
    refs: RefScanner,
    extra: Option<Hasher>,
}

impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.nar.update(buf);
        self.size += buf.len() as u64;
        self.refs.update(buf);
        if let Some(h) = &mut self.extra {
            h.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Fresh copies of a build's outputs in the store's private temporary area; whatever
/// of them was not installed (renamed into the store) is removed when this is dropped.
#[derive(Default)]
struct Copies(Vec<PathBuf>);

impl Copies {
    /// A new name for the next copy (nothing exists there yet).
    fn add(&mut self, store: &LocalStore) -> &Path {
        self.0.push(store.new_temp_path("output"));
        self.0.last().map_or(Path::new(""), PathBuf::as_path)
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = remove_tree(p) {
                tracing::warn!("removing the output copy {}: {e}", p.display());
            }
        }
    }
}

/// Checks, scans and registers the outputs found at `locations`
/// (`docs/spec/store-formats.md` §5).
///
/// What a builder left is never registered itself: each output is first copied into
/// new inodes in the store's private temporary area ([`nar::copy_tree`]), and the
/// copy is what is hashed, scanned, checked and installed (issue 15, Nix
/// CVE-2024-27297). This runs once the sandbox and all of the build's processes are
/// gone, but a descriptor or a shared mapping of an output that a builder handed
/// out (to another user's process, over an abstract socket of the host network that
/// fixed-output builds share), or a hard link of it, outlives the build; none of them
/// reaches the copy. The copy has no hard links, setuid or setgid bits, owners or
/// extended attributes of the builder's (only a NAR's contents), and the original is
/// removed with the sandbox root (or, unsandboxed, here, before the copy takes its
/// place). Copying costs one more write of each output: see the crate's
/// documentation for what that costs a build.
fn finish_outputs(
    cx: &GoalCx<'_>,
    drv_path: &StorePath,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
    locations: &BTreeMap<String, PathBuf>,
    closure: &BTreeSet<StorePath>,
    held: &OutputLocks<'_>,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let store = cx.store;
    let shown = store.print_path(drv_path);
    let mut candidates: BTreeSet<StorePath> = closure.clone();
    candidates.extend(outputs.values().cloned());
    let mut infos: Vec<(PathBuf, ValidPathInfo)> = Vec::new();
    let mut copies = Copies::default();
    for (name, path) in outputs {
        let at = &locations[name];
        let printed = store.print_path(path);
        let meta = fs::symlink_metadata(at).map_err(|_| {
            fail(
                Status::PermanentFailure,
                format!("builder for '{shown}' failed to produce output path for output '{name}' at '{printed}'"),
            )
        })?;
        if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
            return Err(fail(
                Status::OutputRejected,
                format!("suspicious ownership or permission on '{printed}' for output '{name}'; rejecting this build output"),
            ));
        }
        unrooted_store::canonicalise::canonicalise_path_metadata(at).map_err(|e| {
            fail(
                Status::OutputRejected,
                format!("output '{printed}' of '{shown}': {}", error_chain(&e)),
            )
        })?;
        let fixed = match drv.outputs.get(name) {
            Some(DerivationOutput::Fixed { method, hash, .. }) => Some((*method, *hash)),
            _ => None,
        };
        let extra = match fixed {
            Some((FileIngestionMethod::Recursive, h)) if h.algo() != HashAlgo::Sha256 => {
                Some(Hasher::new(h.algo()))
            }
            _ => None,
        };
        let mut sink = OutputSink {
            nar: Hasher::new(HashAlgo::Sha256),
            size: 0,
            refs: RefScanner::for_paths(candidates.iter()),
            extra,
        };
        // Everything below looks at the fresh copy only, which no builder process
        // ever had, and the copy is what gets installed.
        let copy = copies.add(store);
        nar::copy_tree(at, copy, &mut sink).map_err(|e| {
            fail(
                Status::OutputRejected,
                format!("output '{printed}' of '{shown}': {}", error_chain(&e)),
            )
        })?;
        let copied = fs::symlink_metadata(copy).map_err(BuildError::io("reading", copy))?;
        let nar_hash = sink.nar.finish();
        let references = sink.refs.found_paths(candidates.iter());
        let mut info = ValidPathInfo::new(path.clone(), nar_hash);
        info.nar_size = sink.size;
        info.references = references;
        info.deriver = Some(drv_path.clone());
        info.ultimate = true;
        if let Some((method, wanted)) = fixed {
            let got = match method {
                FileIngestionMethod::Recursive => match sink.extra {
                    Some(h) => h.finish(),
                    None => nar_hash,
                },
                FileIngestionMethod::Flat => {
                    if !copied.is_file() || copied.mode() & 0o100 != 0 {
                        return Err(fail(
                            Status::OutputRejected,
                            format!("output path '{printed}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)"),
                        ));
                    }
                    hash_file(copy, wanted.algo())?
                }
            };
            if got != wanted {
                let ca = ContentAddress::Fixed { method, hash: got };
                register_what_it_got(store, copy, &info, ca);
                return Err(fail(
                    Status::OutputRejected,
                    format!(
                        "hash mismatch in fixed-output derivation '{shown}':\n  specified: {}\n     got:    {}",
                        wanted.to_sri(),
                        got.to_sri()
                    ),
                ));
            }
            if !info.references.is_empty() {
                let refs: Vec<String> = info
                    .references
                    .iter()
                    .map(|r| store.print_path(r))
                    .collect();
                return Err(fail(
                    Status::OutputRejected,
                    format!(
                        "the fixed-output derivation '{shown}' must not refer to store paths, but '{printed}' refers to {}",
                        refs.join(", ")
                    ),
                ));
            }
            info.ca = Some(ContentAddress::Fixed { method, hash: got });
        }
        infos.push((copy.to_path_buf(), info));
    }
    check_reference_constraints(store, drv, outputs, &infos, &shown)?;
    // An unsandboxed builder wrote the store paths themselves; the copies go there.
    for (name, path) in outputs {
        let at = &locations[name];
        if *at == store.real_path(path) {
            remove_tree(at).map_err(|source| BuildError::Remove {
                path: at.clone(),
                source,
            })?;
        }
    }

    if cx.mode == BuildMode::Check {
        for (_, info) in &infos {
            let old = store
                .query_path_info(&info.path)
                .map_err(BuildError::from)?
                .ok_or_else(|| {
                    fail(
                        Status::MiscFailure,
                        format!(
                            "some outputs of '{shown}' are not valid, so checking is not possible"
                        ),
                    )
                })?;
            if old.nar_hash != info.nar_hash {
                return Err(fail(
                    Status::NotDeterministic,
                    format!(
                        "derivation '{shown}' may not be deterministic: output '{}' differs",
                        store.print_path(&info.path)
                    ),
                ));
            }
        }
        return Ok(outputs.clone());
    }
    sign_outputs(store, &cx.opts.secret_key_files, &mut infos)?;
    store
        .install_built_outputs_held(&infos, cx.mode == BuildMode::Repair, Some(held))
        .map_err(BuildError::from)?;
    if cx.opts.auto_optimise {
        for (_, info) in &infos {
            if let Err(e) = store.optimise_path(&info.path, Some(held)) {
                tracing::warn!(
                    "optimising {}: {}",
                    store.print_path(&info.path),
                    error_chain(&e)
                );
            }
        }
    }
    Ok(outputs.clone())
}

/// The largest secret key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Signs each output with every key of `secret-key-files`, as Nix 2.8's
/// `LocalStore::signPathInfo` does for what it builds; a key that cannot be read or
/// parsed fails the build.
fn sign_outputs(
    store: &LocalStore,
    key_files: &[PathBuf],
    infos: &mut [(PathBuf, ValidPathInfo)],
) -> Result<(), Failure> {
    if key_files.is_empty() {
        return Ok(());
    }
    let mut keys = Vec::with_capacity(key_files.len());
    for file in key_files {
        let mut text = String::new();
        fs::File::open(file)
            .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
            .map_err(BuildError::io("reading the secret key file", file))?;
        let key = unrooted_format::signature::SecretKey::parse(text.trim()).map_err(|e| {
            fail(
                Status::MiscFailure,
                format!("secret key file '{}': {}", file.display(), error_chain(&e)),
            )
        })?;
        keys.push(key);
    }
    for (_, info) in infos.iter_mut() {
        let fingerprint = info.fingerprint(store.store_dir()).map_err(|e| {
            fail(
                Status::MiscFailure,
                format!(
                    "signing '{}': {}",
                    store.print_path(&info.path),
                    error_chain(&e)
                ),
            )
        })?;
        for key in &keys {
            info.sigs.insert(key.sign(&fingerprint).to_string());
        }
    }
    Ok(())
}

/// After a fixed-output hash mismatch, registers the checked copy at `copy` under the
/// path of the hash it actually has, as Nix 2.8 does (the path then matches its
/// content, so it is as good as any content-addressed path; a later build with the
/// right hash finds it). Only outputs without references; failures are logged, the
/// build fails for the mismatch either way.
fn register_what_it_got(
    store: &LocalStore,
    copy: &Path,
    built: &ValidPathInfo,
    ca: ContentAddress,
) {
    if !built.references.is_empty() {
        return;
    }
    let none = BTreeSet::new();
    let path = match ca.store_path(store.store_dir(), built.path.name(), &none, false) {
        Ok(p) => p,
        Err(e) => return tracing::warn!("the path of the hash a fixed-output build got: {e}"),
    };
    let mut info = ValidPathInfo::new(path, built.nar_hash);
    info.nar_size = built.nar_size;
    info.ultimate = true;
    info.ca = Some(ca);
    if let Err(e) = store.install_built_outputs(&[(copy.to_path_buf(), info)], false) {
        tracing::warn!(
            "registering a mismatched fixed output under the hash it got: {}",
            error_chain(&e)
        );
    }
}

fn hash_file(path: &Path, algo: HashAlgo) -> Result<Hash, Failure> {
    let mut h = Hasher::new(algo);
    let mut f = fs::File::open(path).map_err(BuildError::io("reading", path))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(BuildError::io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// The derivation's own checks of its outputs ([`crate::checks`]), as Nix 2.8 makes
/// them; a refusal rejects the outputs.
fn check_reference_constraints(
    store: &LocalStore,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
    infos: &[(PathBuf, ValidPathInfo)],
    shown: &str,
) -> Result<(), Failure> {
    let built: BTreeMap<String, BuiltOutput> = outputs
        .iter()
        .filter_map(|(name, path)| {
            let (_, info) = infos.iter().find(|(_, i)| i.path == *path)?;
            Some((
                name.clone(),
                BuiltOutput {
                    path: path.clone(),
                    nar_size: info.nar_size,
                    references: info.references.clone(),
                },
            ))
        })
        .collect();
    let query = |p: &StorePath| -> Result<(u64, BTreeSet<StorePath>), OutputCheckError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| OutputCheckError::Query {
            path: store.print_path(p),
            source,
        };
        match store.query_path_info(p) {
            Ok(Some(info)) => Ok((info.nar_size, info.references)),
            Ok(None) => Err(err("path is not valid".into())),
            Err(e) => Err(err(Box::new(e))),
        }
    };
    check_outputs(store.store_dir(), shown, drv, &built, &query)
        .map_err(|e| fail(Status::OutputRejected, error_chain(&e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Waits until the emptier has dealt with everything handed to it.
    fn settled(spares: &Spares) {
        let t0 = std::time::Instant::now();
        while spares.shared.pending.load(Ordering::Acquire) > 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "emptier stuck"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn spares_come_back_empty_and_private_and_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let spares = Spares::default();
        // Nothing kept yet: the caller makes its own directory.
        assert!(!spares.take(&tmp.path().join("a")));

        // A used directory, with what a builder may leave: files, a read-only and an
        // unreadable subdirectory, a symlink out, an odd mode on the top.
        let used = tmp.path().join("used");
        fs::create_dir(&used).unwrap();
        fs::write(used.join("f"), b"x").unwrap();
        fs::create_dir_all(used.join("ro/deep")).unwrap();
        fs::write(used.join("ro/deep/g"), b"y").unwrap();
        fs::set_permissions(used.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::create_dir(used.join("locked")).unwrap();
        fs::set_permissions(used.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"kept").unwrap();
        std::os::unix::fs::symlink(&outside, used.join("link")).unwrap();
        fs::set_permissions(&used, fs::Permissions::from_mode(0o755)).unwrap();

        spares.give(&used, tmp.path().join("spare-1")).unwrap();
        assert!(!used.exists());
        settled(&spares);
        assert_eq!(fs::read(&outside).unwrap(), b"kept");
        let next = tmp.path().join("next");
        assert!(spares.take(&next));
        assert_eq!(fs::read_dir(&next).unwrap().count(), 0, "handed out empty");
        let mode = fs::symlink_metadata(&next).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert!(!tmp.path().join("spare-1").exists());

        // At most MAX_SPARES are kept; the rest are removed.
        for i in 0..MAX_SPARES + 2 {
            let d = tmp.path().join(format!("d{i}"));
            fs::create_dir(&d).unwrap();
            spares.give(&d, tmp.path().join(format!("s{i}"))).unwrap();
            assert!(!d.exists());
        }
        settled(&spares);
        let kept = (0..MAX_SPARES + 2)
            .filter(|i| tmp.path().join(format!("s{i}")).exists())
            .count();
        assert_eq!(kept, MAX_SPARES);

        // A path that is not a directory is removed, not kept.
        let file = tmp.path().join("file");
        fs::write(&file, b"z").unwrap();
        let taken = (0..MAX_SPARES)
            .filter(|i| spares.take(&tmp.path().join(format!("t{i}"))))
            .count();
        assert_eq!(taken, MAX_SPARES);
        spares.give(&file, tmp.path().join("s-file")).unwrap();
        assert!(!file.exists() && !tmp.path().join("s-file").exists());
    }
}
