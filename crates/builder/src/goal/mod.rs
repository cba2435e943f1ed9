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
//! the copy is hashed, checked and renamed into the store (see [`outputs::finish_outputs`]
//! and the crate's documentation); the originals and everything else the builder left
//! there (stray entries) are removed with the root, never registered.

//!
//! The parts: [`spares`] (the pool of spare directories), [`start`] (starting the
//! builder and waiting for it), [`scratch`] (unsandboxed rebuilds of valid outputs),
//! [`outputs`] (finishing outputs: copy, hash, scan, register), and, with the
//! experimental `ca-derivations`, [`floating`] (content-addressing floating and
//! impure outputs after the build) and [`resolve`] (derivations resolved against
//! their inputs' realisations, and the realisations recorded).

mod floating;
mod outputs;
mod resolve;
mod scratch;
mod spares;
mod start;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use unrooted_format::derivation::{name_from_drv_path, Derivation, DerivationOutput, DrvHasher};
use unrooted_format::StorePath;
use unrooted_sandbox::remove_tree;
use unrooted_store::LocalStore;

use crate::builtins;
use crate::config::BuilderConfig;
use crate::error::{error_chain, BuildError};
use crate::idpool::{IdLease, IdMode, IdPool};
use crate::keep;
use crate::{BuildMode, BuildOptions, BuildResult, Status};

pub use resolve::partial_output_paths;
pub(crate) use spares::BuildDirs;
use start::{BuildIds, BuildJob};

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
    /// The outputs of the impure derivations built last, by `.drv`: what their
    /// dependents are resolved against (impure outputs have no realisations).
    pub impure_outputs: &'a ImpureOutputs,
    pub cancelled: &'a (dyn Fn() -> bool + Sync),
}

/// The outputs of the impure derivations built last, by `.drv` (at most
/// [`MAX_IMPURE_OUTPUTS`] derivations; the map starts afresh beyond).
pub(crate) type ImpureOutputs =
    std::sync::Mutex<std::collections::HashMap<StorePath, BTreeMap<String, StorePath>>>;

/// The most impure derivations whose outputs are remembered.
const MAX_IMPURE_OUTPUTS: usize = 4096;

/// Remembers the outputs an impure derivation was just built to.
fn remember_impure(cx: &GoalCx<'_>, drv_path: &StorePath, outputs: &BTreeMap<String, StorePath>) {
    let mut map = cx
        .impure_outputs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if map.len() >= MAX_IMPURE_OUTPUTS {
        map.clear();
    }
    map.insert(drv_path.clone(), outputs.clone());
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

/// The output paths of a derivation this daemon can build (input-addressed or
/// fixed; with `ca-derivations`, content-addressed and deferred ones once realised).
pub fn output_paths(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Result<BTreeMap<String, StorePath>, BuildError> {
    let known = if store.ca_derivations() {
        partial_output_paths(store, drv)?
    } else {
        drv.outputs
            .iter()
            .map(|(name, o)| (name.clone(), o.path().cloned()))
            .collect()
    };
    let mut out = BTreeMap::new();
    for (name, path) in known {
        match path {
            Some(p) => {
                out.insert(name, p);
            }
            // An impure derivation's outputs are never known before it is built.
            None if store.ca_derivations() && !floating::is_impure(drv) => {
                return Err(BuildError::Unsupported {
                    drv: store.print_path(drv_path),
                    reason: format!("output '{name}' is not realised yet"),
                })
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
        if floating::is_impure(drv) {
            remember_impure(cx, drv_path, &outputs);
        }
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
    // Without ca-derivations an impure derivation fails in output_paths, as before.
    if floating::is_impure(drv) && store.ca_derivations() && !cx.cfg.impure_derivations {
        return Err(fail(
            Status::MiscFailure,
            format!("cannot build '{shown}': impure derivations need the experimental features 'impure-derivations' and 'ca-derivations' in the daemon's experimental-features"),
        ));
    }
    if resolve::needs_resolving(store, drv) {
        return build_resolved(cx, drv, &shown);
    }
    let impure = impure_enabled(cx) && floating::is_impure(drv);
    let floating = impure || (store.ca_derivations() && floating::is_floating(drv));
    let outputs = if floating {
        if cx.mode == BuildMode::Check {
            return Err(fail(
                Status::MiscFailure,
                format!("checking the content-addressed derivation '{shown}' is not supported by unrooted yet"),
            ));
        }
        floating::scratch_paths(store, drv_path, drv)?
    } else {
        output_paths(store, drv_path, drv)?
    };
    let fixed_output = matches!(drv.outputs.get("out"), Some(DerivationOutput::Fixed { .. }))
        && drv.outputs.len() == 1;
    // Impure derivations are not sandboxed either: the network of fixed outputs.
    let networked = fixed_output || impure;
    let closure = input_closure(store, drv, &shown)?;
    if cx.mode == BuildMode::Check {
        check_outputs_valid(store, &outputs, &shown)?;
    }
    let builtin = builtin_of(drv, fixed_output, &shown)?;
    check_can_build(cx, drv, builtin.is_some(), &shown)?;

    // The `uid-range` feature: root inside with 65,536 ids, from a whole slice.
    let uid_range = required_features(drv).iter().any(|f| f == "uid-range");
    let lease = lease_ids(cx, drv, uid_range, &shown)?;
    let ids = lease.as_ref().map(|(pool, lease)| BuildIds {
        pool,
        lease,
        uid_range,
    });

    // The outputs' locks, held until they are registered, as Nix holds them.
    let held = store
        .lock_outputs(&outputs.values().cloned().collect())
        .map_err(BuildError::from)?;
    let host_build_dir = cx.dirs.new_dir(drv_path)?;
    let result = start::run_builder(
        cx,
        &BuildJob {
            drv_path,
            drv,
            outputs: &outputs,
            closure: &closure,
            fixed_output: networked,
            builtin,
            host_build_dir: &host_build_dir,
            ids,
            held: &held,
        },
    );
    drop(held);
    if let Some((pool, lease)) = &lease {
        reclaim_build_dir(cx, pool, lease, &host_build_dir);
    }
    keep_or_release_build_dir(cx, &host_build_dir, result.is_err());
    let built = result?;
    // Impure outputs are never recorded as realisations (Nix 2.8: pure ones only).
    if cx.mode != BuildMode::Check && !impure {
        resolve::register_realisations(
            store,
            drv,
            &built,
            &cx.opts.secret_key_files,
            resolve::Dependents::None,
        )?;
    }
    Ok(built)
}

/// Why `drv` may not be built: a pure derivation other than a fixed-output one that
/// depends on an impure derivation (Nix 2.8's "pure derivation '…' depends on impure
/// derivation '…'"); `None` when it may, and always without `ca-derivations`.
pub(crate) fn impure_input_refusal(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Option<String> {
    if !store.ca_derivations()
        || floating::is_impure(drv)
        || matches!(
            drv.derivation_type(),
            Ok(unrooted_format::derivation::DerivationType::Fixed)
        )
    {
        return None;
    }
    drv.input_drvs.keys().find_map(|input| {
        let input_drv = load_derivation(store, input).ok()?;
        floating::is_impure(&input_drv).then(|| {
            format!(
                "pure derivation '{}' depends on impure derivation '{}'",
                store.print_path(drv_path),
                store.print_path(input)
            )
        })
    })
}

/// Whether impure derivations are built: `impure-derivations` and `ca-derivations`.
fn impure_enabled(cx: &GoalCx<'_>) -> bool {
    cx.cfg.impure_derivations && cx.store.ca_derivations()
}

/// Builds a derivation through its resolved form (`ca-derivations`): the resolved
/// derivation is built unless its outputs are realised already (so an input rebuilt
/// to the same content rebuilds nothing), and its outputs are recorded as this
/// derivation's realisations too.
fn build_resolved(
    cx: &GoalCx<'_>,
    drv: &Derivation,
    shown: &str,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let store = cx.store;
    let (resolved_path, resolved) = resolve::resolve(store, drv, shown, cx.impure_outputs)?;
    (cx.events)(GoalEvent::Note(&format!(
        "resolved derivation: '{shown}' -> '{}'",
        store.print_path(&resolved_path)
    )));
    let mut valid = BTreeMap::new();
    for (name, path) in partial_output_paths(store, &resolved)? {
        if let Some(p) = path {
            if store.is_valid_path(&p).map_err(BuildError::from)? {
                valid.insert(name, p);
            }
        }
    }
    let impure = floating::is_impure(&resolved);
    let outputs =
        if cx.mode == BuildMode::Normal && !impure && valid.len() == resolved.outputs.len() {
            valid
        } else {
            build_inner(cx, &resolved_path, &resolved)?
        };
    if cx.mode != BuildMode::Check && !impure {
        resolve::register_realisations(
            store,
            drv,
            &outputs,
            &cx.opts.secret_key_files,
            resolve::Dependents::FromInputs,
        )?;
    }
    Ok(outputs)
}

/// The closure of the derivation's inputs: every used output of every input
/// derivation, and the sources, all of which must be valid.
fn input_closure(
    store: &LocalStore,
    drv: &Derivation,
    shown: &str,
) -> Result<BTreeSet<StorePath>, Failure> {
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
    Ok(store.query_closure(&inputs).map_err(BuildError::from)?)
}

/// Checking (`--check`) compares with outputs that must be valid already.
fn check_outputs_valid(
    store: &LocalStore,
    outputs: &BTreeMap<String, StorePath>,
    shown: &str,
) -> Result<(), Failure> {
    for p in outputs.values() {
        if !store.is_valid_path(p).map_err(BuildError::from)? {
            return Err(fail(
                Status::MiscFailure,
                format!("some outputs of '{shown}' are not valid, so checking is not possible"),
            ));
        }
    }
    Ok(())
}

/// The builtin builder the derivation names (`builtin:<name>`), if any.
fn builtin_of(
    drv: &Derivation,
    fixed_output: bool,
    shown: &str,
) -> Result<Option<&'static str>, Failure> {
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
    if builtin == Some("fetchurl") && !fixed_output {
        return Err(fail(
            Status::MiscFailure,
            format!("cannot build '{shown}': 'builtin:fetchurl' must be a fixed-output derivation"),
        ));
    }
    Ok(builtin)
}

/// Nix's `canBuildLocally`: the platform, and every required feature among
/// `system-features` (`uid-range` is checked against the id pool in [`lease_ids`]);
/// and checking needs the sandbox.
fn check_can_build(
    cx: &GoalCx<'_>,
    drv: &Derivation,
    is_builtin: bool,
    shown: &str,
) -> Result<(), Failure> {
    let system = String::from_utf8_lossy(&drv.system);
    let required: BTreeSet<String> = required_features(drv).into_iter().collect();
    let platform_ok = is_builtin
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
    Ok(())
}

/// The build's slice of ids from the pool, when sandboxed builds get slices; held
/// until its files are the store owner's again. A `uid-range` build needs a whole
/// slice of [`unrooted_sandbox::UID_RANGE_IDS`].
fn lease_ids<'a>(
    cx: &GoalCx<'a>,
    drv: &Derivation,
    uid_range: bool,
    shown: &str,
) -> Result<Option<(&'a IdPool, IdLease)>, Failure> {
    let cfg: &'a BuilderConfig = cx.cfg;
    let pool = match &cfg.ids {
        IdMode::Ranges(pool) if cfg.sandbox => Some(pool),
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
    let Some(pool) = pool else {
        return Ok(None);
    };
    match pool.acquire(cx.cancelled)? {
        Some(lease) => Ok(Some((pool, lease))),
        None => Err(fail(
            Status::Cancelled,
            format!("building of '{shown}' was cancelled while waiting for free build ids"),
        )),
    }
}

/// Gives the build directory back to the store owner: a sandbox that failed during
/// its setup may have handed it to the builder's ids already.
fn reclaim_build_dir(cx: &GoalCx<'_>, pool: &IdPool, lease: &IdLease, host_build_dir: &Path) {
    let owner = pool.owner().0;
    if fs::symlink_metadata(host_build_dir).is_ok_and(|m| m.uid() != owner) {
        if let Err(e) = cx.cfg.helper.reclaim(
            &pool.reclaim_maps(lease.slice()),
            &[host_build_dir.to_path_buf()],
        ) {
            tracing::warn!(
                "reclaiming {}: {}",
                host_build_dir.display(),
                error_chain(&e)
            );
        }
    }
}

/// Keeps the build directory of a failed build for the client when asked to
/// (`--keep-failed`), or empties it for the next build.
fn keep_or_release_build_dir(cx: &GoalCx<'_>, host_build_dir: &Path, failed: bool) {
    if failed && cx.opts.keep_failed {
        match keep::keep_build_dir(host_build_dir, &cx.cfg.tmp_dir, cx.opts.client_uid) {
            Ok(note) => (cx.events)(GoalEvent::Note(&note)),
            Err(e) => {
                tracing::warn!("keeping {}: {}", host_build_dir.display(), error_chain(&e));
                let _ = remove_tree(host_build_dir);
            }
        }
    } else if let Err(e) = cx.dirs.release(host_build_dir) {
        tracing::warn!("removing {}: {e}", host_build_dir.display());
    }
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
