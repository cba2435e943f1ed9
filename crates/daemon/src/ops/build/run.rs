//! Builds on the shared [`unrooted_builder::Scheduler`]: what a request's targets
//! are to the scheduler, the options it builds them with, rooting what a build reads
//! and writes, and the results in the protocol's shape.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;

use unrooted_builder::{
    error_chain, BuildMode as Mode, BuildOptions, BuildResult as Result_, Status, Target,
};
use unrooted_format::{Hash, StorePath};
use unrooted_protocol::reply::MissingInfo;
use unrooted_protocol::request::BuildMode;
use unrooted_protocol::stderr::Verbosity;
use unrooted_protocol::{
    BuildResult, BuildStatus, DerivedPath, DrvOutput, OutputsSpec, Realisation,
};

use super::observer::ClientObserver;
use super::progress::WorkerProgress;
use crate::ops::Out;
use crate::session::Session;

/// A target of the scheduler for a DerivedPath.
fn target(p: &DerivedPath) -> Target {
    match p {
        DerivedPath::Opaque(path) => Target::Opaque(path.clone()),
        DerivedPath::Built { drv_path, outputs } => Target::Built {
            drv: drv_path.clone(),
            outputs: match outputs {
                OutputsSpec::All => None,
                OutputsSpec::Names(n) => Some(n.iter().cloned().collect()),
            },
        },
    }
}

/// The scheduler's options for a build of this session: the client's settings over
/// the daemon's.
fn options(s: &Session<'_>, mode: BuildMode) -> BuildOptions {
    // The client's `--option` wins over the daemon's configuration, as in Nix.
    let secs = |name: &str| -> Option<u64> {
        s.settings
            .overrides
            .get(name)
            .and_then(|v| v.parse().ok())
            .or_else(|| s.state.config.raw.get(name).and_then(|v| v.parse().ok()))
    };
    // Settings a trusted client may set for its requests (SetOptions keeps only what
    // it may), else the daemon's.
    let setting = |name: &str| -> Option<&str> {
        s.settings
            .overrides
            .get(name)
            .map(String::as_str)
            .or_else(|| s.state.config.raw.get(name))
    };
    let post_build_hook = setting("post-build-hook")
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    // What `NIX_CONFIG` tells the hook's Nix commands: the daemon's settings with the
    // client's over them (Nix's `globalConfig.toKeyValue()`).
    let mut config: BTreeMap<&str, &str> = s.state.config.raw.iter().collect();
    config.extend(
        s.settings
            .overrides
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    let hook_config: String = config.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
    BuildOptions {
        post_build_hook,
        hook_config,
        secret_key_files: setting("secret-key-files")
            .unwrap_or_default()
            .split_whitespace()
            .map(PathBuf::from)
            .collect(),
        auto_optimise: setting("auto-optimise-store") == Some("true"),
        mode: match mode {
            BuildMode::Normal => Mode::Normal,
            BuildMode::Repair => Mode::Repair,
            BuildMode::Check => Mode::Check,
        },
        keep_failed: s.settings.keep_failed,
        keep_going: s.settings.keep_going,
        max_silent_time: secs("max-silent-time").unwrap_or(s.settings.max_silent_time),
        timeout: secs("timeout").unwrap_or(0),
        cores: (s.settings.build_cores > 0).then_some(s.settings.build_cores),
        client_uid: Some(s.peer.uid),
    }
}

/// Roots everything a build of `targets` reads or writes, before it starts: every
/// derivation of the closure, their input sources and every output path (built or
/// still to be built). A path valid now stays valid for the connection's lifetime,
/// and a path to be built is rooted by name before any builder writes it, which
/// matters for unsandboxed builders that write straight to their final paths. An
/// output that is not valid yet is built; nothing here waits for the collector
/// except a path it is deleting at this very moment.
fn root_build_closure(s: &Session<'_>, targets: &[Target]) {
    let store = &s.state.store;
    let mut seen: BTreeSet<StorePath> = BTreeSet::new();
    let mut queue: Vec<StorePath> = Vec::new();
    for t in targets {
        match t {
            Target::Opaque(p) => s.add_temp_root(p),
            Target::Built { drv, .. } => queue.push(drv.clone()),
        }
    }
    while let Some(drv) = queue.pop() {
        if !seen.insert(drv.clone()) {
            continue;
        }
        s.add_temp_root(&drv);
        // A derivation that is missing or unreadable fails in the scheduler with
        // its usual error; there is nothing more to root for it.
        let Ok(d) = unrooted_builder::load_derivation(store, &drv) else {
            continue;
        };
        for out in d.outputs.values() {
            if let Some(p) = out.path() {
                s.add_temp_root(p);
            }
        }
        for src in &d.input_srcs {
            s.add_temp_root(src);
        }
        queue.extend(d.input_drvs.into_keys().filter(|p| !seen.contains(p)));
    }
}

/// Runs the scheduler for `paths` with activities on `out`, counting its builds in
/// the request's `progress` (stopped at the end).
fn run(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
    mut progress: Option<WorkerProgress>,
) -> Vec<Result_> {
    let targets: Vec<Target> = paths.iter().map(target).collect();
    let top = targets
        .iter()
        .filter_map(|t| match t {
            Target::Built { drv, .. } => Some(drv.clone()),
            Target::Opaque(_) => None,
        })
        .collect();
    s.state.auto_gc.poke();
    root_build_closure(s, &targets);
    let opts = options(s, mode);
    // What will be built (the scheduler's plan, as QueryMissing answers it), counted
    // in the progress the client's bar shows; unknown when the plan cannot be made
    // (the build then fails with its own error).
    let counted = s
        .state
        .scheduler
        .will_build(&s.state.store, &targets)
        .map(|(will, _)| will)
        .unwrap_or_default();
    if let Some(p) = progress.as_mut() {
        let _ = p.plan_builds(counted, out);
    }
    // A client that went away is noticed by the scheduler through `connected`.
    let mut observer = ClientObserver {
        s,
        out,
        activities: HashMap::new(),
        hooks: HashMap::new(),
        builder_activities: HashMap::new(),
        top,
        mode: opts.mode,
        progress,
    };
    let results = s
        .state
        .scheduler
        .build(&s.state.store, &targets, &opts, &mut observer);
    if let Some(p) = observer.progress.take() {
        let _ = p.stop(observer.out);
    }
    for r in &results {
        for p in r.outputs.values() {
            s.add_temp_root(p);
        }
    }
    results
}

/// BuildPaths: `Ok(())` when everything is valid, else the error Nix 2.8 reports.
pub(super) fn build_paths(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
    progress: Option<WorkerProgress>,
) -> std::result::Result<(), String> {
    let results = run(s, paths, mode, out, progress);
    let failed: Vec<(usize, &Result_)> = results
        .iter()
        .enumerate()
        .filter(|(_, r)| !r.status.is_success())
        .collect();
    let real: Vec<&(usize, &Result_)> = failed
        .iter()
        .filter(|(_, r)| r.status != Status::Cancelled)
        .collect();
    match (real.len(), failed.len()) {
        (_, 0) => Ok(()),
        // A missing opaque path has no error of its own in Nix 2.8.
        (1, _) if matches!(paths[real[0].0], DerivedPath::Opaque(_)) => Err(format!(
            "build of '{}' failed",
            match &paths[real[0].0] {
                DerivedPath::Opaque(p) | DerivedPath::Built { drv_path: p, .. } =>
                    s.cx.store_dir.display(p),
            }
        )),
        (1, _) => Err(real[0].1.error.clone()),
        (0, _) => Err(failed[0].1.error.clone()),
        _ => {
            for (_, r) in &real {
                let _ = out.log(Verbosity::Error, &format!("error: {}", r.error));
            }
            let names: Vec<String> = real
                .iter()
                .map(|(i, _)| match &paths[*i] {
                    DerivedPath::Opaque(p) | DerivedPath::Built { drv_path: p, .. } => {
                        format!("'{}'", s.cx.store_dir.display(p))
                    }
                })
                .collect();
            Err(format!("build of {} failed", names.join(", ")))
        }
    }
}

/// BuildPathsWithResults (and BuildDerivation): one protocol result per path.
pub(super) fn build_paths_with_results(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
    progress: Option<WorkerProgress>,
) -> Vec<BuildResult> {
    let results = run(s, paths, mode, out, progress);
    paths
        .iter()
        .zip(results)
        .map(|(p, r)| to_wire(s, p, &r))
        .collect()
}

/// The protocol's result for a build of `p`.
fn to_wire(s: &Session<'_>, p: &DerivedPath, r: &Result_) -> BuildResult {
    let status = match r.status {
        Status::Built => BuildStatus::Built,
        Status::AlreadyValid => BuildStatus::AlreadyValid,
        Status::PermanentFailure => BuildStatus::PermanentFailure,
        Status::InputRejected => BuildStatus::InputRejected,
        Status::OutputRejected => BuildStatus::OutputRejected,
        Status::TransientFailure => BuildStatus::TransientFailure,
        Status::TimedOut => BuildStatus::TimedOut,
        Status::MiscFailure | Status::Cancelled => BuildStatus::MiscFailure,
        Status::DependencyFailed => BuildStatus::DependencyFailed,
        Status::LogLimitExceeded => BuildStatus::LogLimitExceeded,
        Status::NotDeterministic => BuildStatus::NotDeterministic,
    };
    let mut w = BuildResult::new(status, r.error.clone());
    w.times_built = r.times_built;
    w.is_non_deterministic = r.non_deterministic;
    w.start_time = r.start_time;
    w.stop_time = r.stop_time;
    if let (true, DerivedPath::Built { drv_path, outputs }) = (r.status.is_success(), p) {
        w.built_outputs = realisations(s, drv_path, outputs, &r.outputs);
    }
    w
}

/// The builtOutputs of a successful derivation build: DrvOutput ids from the
/// derivation's hash modulo and the wanted outputs' paths.
fn realisations(
    s: &Session<'_>,
    drv_path: &StorePath,
    wanted: &OutputsSpec,
    outputs: &BTreeMap<String, StorePath>,
) -> BTreeMap<DrvOutput, Realisation> {
    let store = &s.state.store;
    let hashes = unrooted_builder::load_derivation(store, drv_path)
        .and_then(|d| unrooted_builder::output_hashes(store, &d))
        .unwrap_or_else(|e| {
            tracing::warn!(
                "hashing {}: {}",
                store.print_path(drv_path),
                error_chain(&e)
            );
            BTreeMap::new()
        });
    let mut map = BTreeMap::new();
    for (name, path) in outputs {
        if let OutputsSpec::Names(n) = wanted {
            if !n.contains(name) {
                continue;
            }
        }
        let drv_hash = hashes
            .get(name)
            .map(|h| Hash::sha256(*h))
            .unwrap_or_else(unrooted_protocol::build_result::dummy_drv_hash);
        let id = DrvOutput {
            drv_hash,
            output_name: name.clone(),
        };
        map.insert(
            id.clone(),
            Realisation {
                id,
                out_path: path.clone(),
                signatures: BTreeSet::new(),
                dependent_realisations: BTreeMap::new(),
            },
        );
    }
    map
}

/// QueryMissing: what a build of `targets` would build, and what is unknown.
pub(super) fn query_missing(
    s: &Session<'_>,
    targets: &[DerivedPath],
) -> std::result::Result<MissingInfo, String> {
    let t: Vec<Target> = targets.iter().map(target).collect();
    let (will_build, unknown) = s
        .state
        .scheduler
        .will_build(&s.state.store, &t)
        .map_err(|e| error_chain(&e))?;
    Ok(MissingInfo {
        will_build,
        unknown,
        ..MissingInfo::default()
    })
}
