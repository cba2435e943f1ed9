//! Substitution in the daemon: the substituters a request may use, the answers to
//! QuerySubstitutablePaths/PathInfos and the substitution part of QueryMissing, and
//! fetching what EnsurePath and BuildPaths need from the caches before anything is
//! built, with Nix's `copying path … from …` activities and download progress.
//!
//! As in Nix, what a request names (opaque paths, outputs of derivations) is
//! substituted with its closure when a cache has it; for a derivation no cache has,
//! the outputs of its input derivations and its input sources are substituted in
//! turn (recursively), so that only what no cache has is built. A path a cache has

mod progress;
mod substituter;
mod walk;

use std::collections::{BTreeMap, BTreeSet};

use unrooted_format::StorePath;
use unrooted_protocol::path_info::SubstitutablePathInfo;
use unrooted_protocol::reply::MissingInfo;
use unrooted_protocol::{wire, BuildResult, BuildStatus, DerivedPath, OutputsSpec, Request};
use unrooted_substitute::{error_chain, SubstituteError};

use self::progress::ClientObserver;
use self::substituter::{flag, substituter};
use self::walk::{invalid_outputs, walk};
use super::build::{start_query_missing, WorkerProgress};
use super::{client, misrouted, reply, reply_u64, Out, Result};
use crate::session::Session;

/// Performs a request about binary caches.
pub(super) fn perform(s: &mut Session<'_>, request: Request, out: &mut Out) -> Result {
    let dir = s.cx.store_dir.clone();
    match request {
        Request::HasSubstitutes(_) => reply(out, |w| Ok(wire::write_bool(w, false)?)),
        // The obsolete single-path query (protocol < 1.12) answers "none".
        Request::QuerySubstitutablePathInfo(_) => reply_u64(out, 0),
        Request::QuerySubstitutablePathInfos(paths) => {
            let paths: BTreeSet<StorePath> = paths.into_keys().collect();
            let infos = substitutable_infos(s, &paths, out);
            reply(out, |w| {
                SubstitutablePathInfo::write_map_reply(w, &s.cx, &infos)
            })
        }
        Request::QuerySubstitutablePaths(paths) => {
            let found = substitutable_paths(s, &paths, out);
            reply(out, |w| Ok(wire::write_paths(w, &dir, &found)?))
        }
        Request::EnsurePath(p) => {
            ensure_path(s, &p, out)?;
            reply_u64(out, 1)
        }
        other => Err(misrouted("substitution", &other)),
    }
}

/// EnsurePath: `p` is valid afterwards, fetched from the caches when it was not.
fn ensure_path(s: &Session<'_>, p: &StorePath, out: &mut Out) -> Result {
    let store = &s.state.store;
    // Rooted first, then checked: a collection cannot take it in between.
    s.add_temp_root(p);
    if store.is_valid_path(p)? {
        return Ok(());
    }
    let target = [DerivedPath::Opaque(p.clone())];
    // Nix's `ensurePath` runs a `Worker` for the path's substitution goal.
    let mut worker = WorkerProgress::start(out, 0).ok();
    let outcome = substitute_targets(s, &target, out, worker.as_mut());
    if let Some(w) = worker {
        w.stop(out)?;
    }
    if let Some(Outcome::Failed(why)) = outcome.first() {
        return Err(client(why.clone()));
    }
    if !store.is_valid_path(p)? {
        return Err(client(format!(
            "path '{}' does not exist and cannot be created",
            s.cx.store_dir.display(p)
        )));
    }
    Ok(())
}

/// Whether `p` (or what it waited for) is merely absent from the caches, as
/// opposed to a substitution that went wrong. A NAR the cache no longer has (its
/// narinfo still there) counts as absent: Nix's `SubstituteGone`, which "behaves the
/// same as the substitute never having existed in the first place" (the derivation
/// is built, `--fallback` or not).
fn only_missing(failed: &BTreeMap<StorePath, SubstituteError>, p: &StorePath) -> bool {
    let mut cur = p.clone();
    for _ in 0..failed.len() + 1 {
        match failed.get(&cur) {
            Some(SubstituteError::NotSubstitutable { .. }) => return true,
            Some(SubstituteError::Download {
                source: unrooted_substitute::TransportError::Status { status: 404 },
                ..
            }) => return true,
            Some(SubstituteError::DependencyFailed { reference, .. }) => {
                let Some(base) = reference.rsplit('/').next() else {
                    return false;
                };
                match StorePath::from_base_name(base) {
                    Ok(r) => cur = r,
                    Err(_) => return false,
                }
            }
            _ => return false,
        }
    }
    false
}

/// What substitution did for one target.
pub(crate) enum Outcome {
    /// Nothing to do, no substituter, or no cache has it: build as usual.
    NotSubstituted,
    /// Everything the target needs is now valid.
    Substituted,
    /// A cache has it, but fetching failed (the message); build only with fallback.
    Failed(String),
}

/// Whether a target may need anything at all: an invalid opaque path, or a valid
/// derivation with an output that is not valid (or has no path yet).
fn needs_work(s: &Session<'_>, p: &DerivedPath) -> bool {
    let store = &s.state.store;
    match p {
        DerivedPath::Opaque(path) => !store.is_valid_path(path).unwrap_or(true),
        DerivedPath::Built { drv_path, outputs } => {
            let Ok(d) = unrooted_builder::load_derivation(store, drv_path) else {
                return false;
            };
            let names: Option<BTreeSet<String>> = match outputs {
                OutputsSpec::All => None,
                OutputsSpec::Names(n) => Some(n.iter().cloned().collect()),
            };
            invalid_outputs(store, &d, names.as_ref()).is_none_or(|w| !w.is_empty())
        }
    }
}

/// Substitutes what `paths` need from the caches, before building: their wanted
/// paths when the caches have them, and otherwise (see [`walk::Walk`]) what the
/// derivations to build need, so that only what no cache has is built.
///
/// Inside a request's `worker` (Nix's `Worker::run`), the caches are asked under
/// the "querying info about missing paths" activity of Nix's `queryMissing`, and
/// each path to fetch is counted in the worker's progress before any is fetched.
pub(crate) fn substitute_targets(
    s: &Session<'_>,
    paths: &[DerivedPath],
    out: &mut Out,
    worker: Option<&mut WorkerProgress>,
) -> Vec<Outcome> {
    let none = || paths.iter().map(|_| Outcome::NotSubstituted).collect();
    let querying = match worker {
        Some(_) => start_query_missing(out).ok(),
        None => None,
    };
    let end_query = |out: &mut Out| {
        if let Some(id) = querying {
            let _ = out.stop_activity(id);
        }
    };
    if !paths.iter().any(|p| needs_work(s, p)) {
        end_query(out);
        return none();
    }
    let Some(sub) = substituter(s, out) else {
        end_query(out);
        return none();
    };
    s.state.auto_gc.poke();
    let observer = ClientObserver::with_worker(s, out, worker);
    let w = walk(s, &sub, paths, &observer);
    observer.with(|sink| end_query(sink.out));
    let w = match w {
        Ok(w) => w,
        Err(e) => {
            let msg = error_chain(&e);
            return paths.iter().map(|_| Outcome::Failed(msg.clone())).collect();
        }
    };
    // Rooted before the first byte is written, as every add.
    for p in w.plan.fetch.keys() {
        s.add_temp_root(p);
    }
    observer.with(|sink| {
        if let Some(worker) = sink.worker.as_deref_mut() {
            for p in announce_order(&w) {
                let info = &w.plan.fetch[&p].info;
                let _ = worker.substitution_expected(&p, info.file_size, info.nar_size, sink.out);
            }
        }
    });
    let report = sub.execute(&s.state.store, w.plan, &observer);
    observer.flush();
    let store = &s.state.store;
    w.own
        .iter()
        .zip(&w.inputs)
        .map(|(own, inputs)| {
            if own.is_empty() && inputs.is_empty() {
                return Outcome::NotSubstituted;
            }
            if !own.is_empty() && own.iter().all(|p| store.is_valid_path(p).unwrap_or(false)) {
                return Outcome::Substituted;
            }
            let broken = own
                .iter()
                .chain(inputs)
                .filter(|p| !only_missing(&report.failed, p))
                .find_map(|p| report.failed.get(p));
            match broken {
                Some(e) => Outcome::Failed(root_cause(&report.failed, e)),
                None => Outcome::NotSubstituted,
            }
        })
        .collect()
}

/// The paths to fetch in the order Nix's substitution goals learn of them: what
/// the targets want first, then the references of each path found, breadth first.
fn announce_order(w: &walk::Walk) -> Vec<StorePath> {
    let fetch = &w.plan.fetch;
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    let mut queue: std::collections::VecDeque<&StorePath> = w
        .own
        .iter()
        .zip(&w.inputs)
        .flat_map(|(own, inputs)| own.iter().chain(inputs))
        .filter(|p| fetch.contains_key(*p))
        .collect();
    while let Some(p) = queue.pop_front() {
        if !seen.insert(p) {
            continue;
        }
        order.push(p.clone());
        queue.extend(
            fetch[p]
                .info
                .references
                .iter()
                .filter(|r| *r != p && fetch.contains_key(*r) && !seen.contains(*r)),
        );
    }
    order.extend(fetch.keys().filter(|p| !seen.contains(*p)).cloned());
    order
}

/// The message of the failure behind `e` (following "its reference failed").
fn root_cause(failed: &BTreeMap<StorePath, SubstituteError>, e: &SubstituteError) -> String {
    let mut cur = e;
    for _ in 0..failed.len() + 1 {
        let SubstituteError::DependencyFailed { reference, .. } = cur else {
            break;
        };
        let next = reference
            .rsplit('/')
            .next()
            .and_then(|b| StorePath::from_base_name(b).ok())
            .and_then(|r| failed.get(&r));
        match next {
            Some(n) => cur = n,
            None => break,
        }
    }
    error_chain(cur)
}

/// The message Nix 2.8 gives when substitution failed and `fallback` is off.
pub(crate) fn no_fallback_message(s: &Session<'_>, p: &DerivedPath, why: &str) -> String {
    match p {
        DerivedPath::Built { drv_path, .. } => format!(
            "{why}\nsome substitutes for the outputs of derivation '{}' failed (usually happens due to networking issues); try '--fallback' to build derivation from source ",
            s.cx.store_dir.display(drv_path)
        ),
        DerivedPath::Opaque(_) => why.to_owned(),
    }
}

/// Whether the client asked to build when substitution fails.
pub(crate) fn fallback(s: &Session<'_>) -> bool {
    s.settings.try_fallback || flag(s, "fallback", false)
}

/// BuildPathsWithResults' results for targets settled by substitution (`None`:
/// still to be built).
pub(crate) fn settled_results(
    s: &Session<'_>,
    paths: &[DerivedPath],
    outcomes: &[Outcome],
) -> Vec<Option<BuildResult>> {
    let fallback = fallback(s);
    paths
        .iter()
        .zip(outcomes)
        .map(|(p, o)| match o {
            Outcome::NotSubstituted => None,
            Outcome::Substituted => match p {
                // The scheduler fills in the built outputs of a derivation (it finds
                // them valid).
                DerivedPath::Built { .. } => None,
                DerivedPath::Opaque(_) => Some(BuildResult::new(BuildStatus::Substituted, "")),
            },
            Outcome::Failed(_) if fallback => None,
            Outcome::Failed(why) => Some(BuildResult::new(
                BuildStatus::TransientFailure,
                no_fallback_message(s, p, why),
            )),
        })
        .collect()
}

/// For QueryMissing, when a cache may be used: the derivations that would be
/// built, the paths that would be fetched (with download and NAR sizes) and the
/// unknown paths. `None` when substitution is off or nothing is missing.
pub(crate) fn query_missing(
    s: &Session<'_>,
    targets: &[DerivedPath],
    out: &mut Out,
) -> Option<MissingInfo> {
    if !targets.iter().any(|p| needs_work(s, p)) {
        return None;
    }
    let sub = substituter(s, out)?;
    let observer = ClientObserver::new(s, out);
    let w = walk(s, &sub, targets, &observer).ok();
    observer.flush();
    let w = w?;
    Some(MissingInfo {
        download_size: w.plan.download_size(),
        nar_size: w.plan.nar_size(),
        will_build: w.build,
        will_substitute: w.plan.fetch.into_keys().collect(),
        unknown: w.unknown,
    })
}

/// QuerySubstitutablePaths: which of `paths` some cache that invites mass queries
/// (`WantMassQuery: 1`) has, as Nix 2.8's `LocalStore::querySubstitutablePaths`.
fn substitutable_paths(
    s: &Session<'_>,
    paths: &BTreeSet<StorePath>,
    out: &mut Out,
) -> BTreeSet<StorePath> {
    let Some(sub) = substituter(s, out) else {
        return BTreeSet::new();
    };
    let observer = ClientObserver::new(s, out);
    let found = sub.query_mass(paths, &observer);
    observer.flush();
    found
}

/// QuerySubstitutablePathInfos: what the caches say of `paths`.
fn substitutable_infos(
    s: &Session<'_>,
    paths: &BTreeSet<StorePath>,
    out: &mut Out,
) -> BTreeMap<StorePath, SubstitutablePathInfo> {
    let Some(sub) = substituter(s, out) else {
        return BTreeMap::new();
    };
    let observer = ClientObserver::new(s, out);
    let found = sub.query_many(paths, &observer);
    observer.flush();
    found
        .into_iter()
        .map(|(p, f)| {
            let i = f.info;
            let info = SubstitutablePathInfo {
                deriver: i.deriver,
                references: i.references,
                download_size: if i.file_size == 0 {
                    i.nar_size
                } else {
                    i.file_size
                },
                nar_size: i.nar_size,
            };
            (p, info)
        })
        .collect()
}
