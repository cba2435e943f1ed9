//! The build operations (BuildPaths, BuildPathsWithResults, BuildDerivation,
//! QueryMissing) on top of the shared [`unrooted_builder::Scheduler`] (see [`run`]),
//! with the log messages Nix 2.8 clients expect while a build runs (see
//! [`observer`] and [`progress`]). In normal mode, what the caches have is
//! substituted first (see [`crate::ops::subst`]).

mod observer;
mod progress;
mod run;

pub(super) use progress::{start_query_missing, WorkerProgress};

use unrooted_protocol::request::BuildMode;
use unrooted_protocol::{
    BuildResult, BuildStatus, DerivedPath, KeyedBuildResult, OutputsSpec, Request,
};
use unrooted_store::LocalStore;

use super::{client, misrouted, reply, reply_u64, Out, Result};
use crate::ops::subst;
use crate::session::Session;

/// Performs a build request.
pub(super) fn perform(s: &mut Session<'_>, request: Request, out: &mut Out) -> Result {
    match request {
        Request::BuildPaths { paths, mode } => build_paths(s, &paths, mode, out),
        Request::BuildPathsWithResults { paths, mode } => {
            build_paths_with_results(s, paths, mode, out)
        }
        Request::BuildDerivation { drv_path, mode, .. } => build_derivation(s, drv_path, mode, out),
        Request::QueryMissing(targets) => query_missing(s, &targets, out),
        other => Err(misrouted("build", &other)),
    }
}

/// BuildPaths: substitutes what it can, builds the rest, and fails unless every
/// target is valid.
fn build_paths(s: &Session<'_>, paths: &[DerivedPath], mode: BuildMode, out: &mut Out) -> Result {
    check_build_mode(s, mode)?;
    let mut worker = start_worker(paths, out);
    let rest = match substitute_before_build(s, paths, mode, out, worker.as_mut()) {
        Ok(rest) => rest,
        Err(e) => {
            stop_worker(worker, out)?;
            return Err(e);
        }
    };
    if rest.is_empty() {
        stop_worker(worker, out)?;
    } else {
        run::build_paths(s, &rest, mode, out, worker).map_err(client)?;
    }
    // Every wanted output is valid now; keep them for this client.
    unsatisfied(s, paths)?;
    reply_u64(out, 1)
}

/// BuildPathsWithResults: one result per target, from substitution or the build.
fn build_paths_with_results(
    s: &Session<'_>,
    paths: Vec<DerivedPath>,
    mode: BuildMode,
    out: &mut Out,
) -> Result {
    check_build_mode(s, mode)?;
    let mut worker = start_worker(&paths, out);
    let settled = if mode == BuildMode::Normal {
        let outcomes = subst::substitute_targets(s, &paths, out, worker.as_mut());
        subst::settled_results(s, &paths, &outcomes)
    } else {
        query_missing_in(worker.as_ref(), out)?;
        paths.iter().map(|_| None).collect()
    };
    let rest: Vec<DerivedPath> = paths
        .iter()
        .zip(&settled)
        .filter(|(_, r)| r.is_none())
        .map(|(p, _)| p.clone())
        .collect();
    let mut built = run::build_paths_with_results(s, &rest, mode, out, worker).into_iter();
    let results: Vec<KeyedBuildResult> = paths
        .into_iter()
        .zip(settled)
        .map(|(path, r)| KeyedBuildResult {
            path,
            result: r
                .or_else(|| built.next())
                .unwrap_or_else(|| BuildResult::new(BuildStatus::MiscFailure, "no build result")),
        })
        .collect();
    reply(out, |w| KeyedBuildResult::write_list(w, &s.cx, &results))
}

/// BuildDerivation (trusted clients only): builds the derivation from its `.drv`
/// in the store.
fn build_derivation(
    s: &Session<'_>,
    drv_path: unrooted_format::StorePath,
    mode: BuildMode,
    out: &mut Out,
) -> Result {
    check_build_mode(s, mode)?;
    let store: &LocalStore = &s.state.store;
    let dir = &s.cx.store_dir;
    // Nix lets untrusted clients build only content-addressed derivations this
    // way, which unrooted does not support yet; trusted ones (remote-build
    // masters) get the derivation built from its `.drv` in the store.
    if !s.trusted {
        return Err(client(format!(
            "you are not privileged to build input-addressed derivation '{}'",
            dir.display(&drv_path)
        )));
    }
    if !store.is_valid_path(&drv_path)? {
        return Err(client(format!(
            "cannot build '{}': building a derivation that is not in the store is not supported by unrooted yet",
            dir.display(&drv_path)
        )));
    }
    let path = DerivedPath::Built {
        drv_path,
        outputs: OutputsSpec::All,
    };
    let worker = start_worker(std::slice::from_ref(&path), out);
    query_missing_in(worker.as_ref(), out)?;
    let result = run::build_paths_with_results(s, std::slice::from_ref(&path), mode, out, worker)
        .pop()
        .unwrap_or_else(|| BuildResult::new(BuildStatus::MiscFailure, "nothing was built"));
    reply(out, |w| result.write(w, &s.cx))
}

/// QueryMissing: what a build of `targets` would build, fetch, and not find.
fn query_missing(s: &Session<'_>, targets: &[DerivedPath], out: &mut Out) -> Result {
    // As nix-daemon, in its debug-level activity (the client shows it with -vvvv),
    // with the caches' `query-path-info` activities inside.
    let querying = start_query_missing(out)?;
    // With a cache, inputs of derivations to build may be substituted.
    let found = subst::query_missing(s, targets, out);
    out.stop_activity(querying)?;
    let missing = match found {
        Some(m) => m,
        None => run::query_missing(s, targets).map_err(client)?,
    };
    reply(out, |w| missing.write(w, &s.cx))
}

/// Starts the activities of Nix's `Worker` for a request of `paths`: its first
/// count is one derivation goal per derivation named.
fn start_worker(paths: &[DerivedPath], out: &mut Out) -> Option<WorkerProgress> {
    let drvs: std::collections::BTreeSet<&unrooted_format::StorePath> = paths
        .iter()
        .filter_map(|p| match p {
            DerivedPath::Built { drv_path, .. } => Some(drv_path),
            DerivedPath::Opaque(_) => None,
        })
        .collect();
    WorkerProgress::start(out, drvs.len() as u64).ok()
}

/// Stops the activities of [`start_worker`].
fn stop_worker(worker: Option<WorkerProgress>, out: &mut Out) -> Result {
    if let Some(w) = worker {
        w.stop(out)?;
    }
    Ok(())
}

/// The "querying info about missing paths" activity of `Worker::run`, when no cache
/// is asked (a worker that does not substitute).
fn query_missing_in(worker: Option<&WorkerProgress>, out: &mut Out) -> Result {
    if worker.is_some() {
        let id = start_query_missing(out)?;
        out.stop_activity(id)?;
    }
    Ok(())
}

/// Refuses a repair asked for by an untrusted client.
fn check_build_mode(s: &Session<'_>, mode: BuildMode) -> Result {
    if mode == BuildMode::Repair && !s.trusted {
        return Err(client(
            "repairing is not allowed because you are not in 'trusted-users'",
        ));
    }
    Ok(())
}

/// The requested paths that are not valid yet (an empty list means nothing to do).
fn unsatisfied(s: &Session<'_>, paths: &[DerivedPath]) -> Result<Vec<String>> {
    let store = &s.state.store;
    let dir = &s.cx.store_dir;
    let mut missing = Vec::new();
    for p in paths {
        match p {
            DerivedPath::Opaque(path) => {
                s.add_temp_root(path);
                if !store.is_valid_path(path)? {
                    missing.push(dir.display(path));
                }
            }
            DerivedPath::Built { drv_path, outputs } => {
                if !store.is_valid_path(drv_path)? {
                    missing.push(dir.display(drv_path));
                    continue;
                }
                let map = crate::ops::realisations::partial_output_map(store, drv_path)?;
                for (name, out_path) in &map {
                    let wanted = match outputs {
                        OutputsSpec::All => true,
                        OutputsSpec::Names(names) => names.contains(name),
                    };
                    if !wanted {
                        continue;
                    }
                    let Some(out_path) = out_path else {
                        missing.push(dir.display(drv_path));
                        break;
                    };
                    s.add_temp_root(out_path);
                    if !store.is_valid_path(out_path)? {
                        missing.push(dir.display(drv_path));
                        break;
                    }
                }
            }
        }
    }
    Ok(missing)
}

/// Substitutes what a BuildPaths needs (in normal mode) and returns the targets
/// still to build; fails when a cache had a path that could not be fetched and the
/// client did not ask for `fallback`.
fn substitute_before_build(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
    worker: Option<&mut WorkerProgress>,
) -> Result<Vec<DerivedPath>> {
    if mode != BuildMode::Normal {
        query_missing_in(worker.as_deref(), out)?;
        return Ok(paths.to_vec());
    }
    let outcomes = subst::substitute_targets(s, paths, out, worker);
    let fallback = subst::fallback(s);
    let mut rest = Vec::new();
    for (p, o) in paths.iter().zip(outcomes) {
        match o {
            subst::Outcome::Substituted => {
                // A derivation's outputs are valid now; the scheduler finds them so.
                if matches!(p, DerivedPath::Built { .. }) {
                    rest.push(p.clone());
                }
            }
            subst::Outcome::Failed(why) if !fallback => {
                return Err(client(subst::no_fallback_message(s, p, &why)));
            }
            _ => rest.push(p.clone()),
        }
    }
    Ok(rest)
}
