//! Substitution in the daemon: the substituters a request may use, the answers to
//! QuerySubstitutablePaths/PathInfos and the substitution part of QueryMissing, and
//! fetching what EnsurePath and BuildPaths need from the caches before anything is
//! built, with Nix's `copying path … from …` activities and download progress.
//!
//! As in Nix, what a request names (opaque paths, outputs of derivations) is
//! substituted with its closure when a cache has it; for a derivation no cache has,
//! the outputs of its input derivations and its input sources are substituted in
//! turn (recursively), so that only what no cache has is built. A path a cache has
//! but that fails to arrive is an error unless the client asked for `fallback`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufWriter;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use unrooted_format::derivation::Derivation;
use unrooted_format::signature::TrustedKeys;
use unrooted_format::{StoreDir, StorePath};
use unrooted_protocol::path_info::SubstitutablePathInfo;
use unrooted_protocol::reply::MissingInfo;
use unrooted_protocol::stderr::{ActivityId, ActivityType, Field, ResultType, Verbosity};
use unrooted_protocol::{BuildResult, BuildStatus, DerivedPath, OutputsSpec, StderrWriter};
use unrooted_substitute::{
    error_chain, NarInfoCache, Observer, Plan, RetryPolicy, SubstituteError, Substituter,
    SubstituterConfig,
};

use crate::connection::Session;

type Out = StderrWriter<BufWriter<UnixStream>>;

/// Opens the lookup cache of narinfos, `<state>/binary-cache/narinfo-cache-v1.sqlite`
/// (in memory when that fails: it is only a cache).
pub(crate) fn open_narinfo_cache(config: &crate::Config) -> Option<Arc<NarInfoCache>> {
    let raw = &config.raw;
    let ttl = |name: &str, default: Duration| {
        raw.get(name)
            .and_then(|v| v.parse().ok())
            .map_or(default, Duration::from_secs)
    };
    let neg = ttl(
        "narinfo-cache-negative-ttl",
        unrooted_substitute::DEFAULT_NEGATIVE_TTL,
    );
    let pos = ttl(
        "narinfo-cache-positive-ttl",
        unrooted_substitute::DEFAULT_POSITIVE_TTL,
    );
    let path = config
        .locations
        .state_dir
        .join("binary-cache/narinfo-cache-v1.sqlite");
    match NarInfoCache::open(&path, neg, pos) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!("narinfo lookup cache: {}", error_chain(&e));
            NarInfoCache::in_memory(neg, pos).ok().map(Arc::new)
        }
    }
}

/// A setting as this request sees it: the client's `--option` (already filtered by
/// trust in SetOptions), else the daemon's configuration.
fn setting<'s>(s: &'s Session<'_>, name: &str) -> Option<&'s str> {
    s.settings
        .overrides
        .get(name)
        .map(String::as_str)
        .or_else(|| s.state.config.raw.get(name))
}

fn flag(s: &Session<'_>, name: &str, default: bool) -> bool {
    match setting(s, name) {
        Some("true") => true,
        Some("false") => false,
        _ => default,
    }
}

/// The substituters this request may use, or `None` when substitution is off
/// (`substitute = false`, or the client's `--no-substitute`) or none is configured.
/// Caches that cannot be reached are reported as warnings to the client.
pub(crate) fn substituter(s: &Session<'_>, out: &mut Out) -> Option<Substituter> {
    if !s.settings.use_substitutes || !flag(s, "substitute", true) {
        return None;
    }
    let settings = &s.state.config.settings;
    let mut urls: Vec<String> = match s.settings.overrides.get("substituters") {
        Some(v) => v.split_whitespace().map(str::to_owned).collect(),
        None => settings.substituters.clone(),
    };
    if let Some(v) = s.settings.overrides.get("extra-substituters") {
        urls.extend(v.split_whitespace().map(str::to_owned));
    }
    if urls.is_empty() {
        return None;
    }
    let mut keys_text = settings.trusted_public_keys.join(" ");
    if s.trusted {
        for name in ["trusted-public-keys", "extra-trusted-public-keys"] {
            if let Some(v) = s.settings.overrides.get(name) {
                if name == "trusted-public-keys" {
                    keys_text.clear();
                }
                keys_text.push(' ');
                keys_text.push_str(v);
            }
        }
    }
    let keys = TrustedKeys::parse(&keys_text).unwrap_or_else(|e| {
        tracing::warn!("ignoring trusted-public-keys: {e}");
        TrustedKeys::new()
    });
    let number = |name: &str, default: u64| {
        setting(s, name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let mut config = SubstituterConfig::new(urls, keys);
    config.require_sigs = if s.trusted {
        flag(s, "require-sigs", settings.require_sigs)
    } else {
        settings.require_sigs
    };
    let connections = match number("http-connections", 25) {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    // Nix 2.8 ran substitutions as jobs under `max-jobs`; `max-substitution-jobs`
    // (later Nix) sets their number directly. By default: max-jobs or twice the
    // number of CPUs, whichever is larger, at most 16. Lookups and imports are
    // partly CPU work and partly waiting for the server, so two per CPU keep both
    // busy (2,000 paths from a loopback nginx on 2 CPUs: 1.21 s with 2 jobs, 1.01 s
    // with 4); more mostly contend: 16 at once against a loopback
    // `python3 -m http.server` overflow its accept backlog (5), and dropped SYNs
    // cost 1 s each (2,000 paths: 12 s with 16 jobs, 4 s with 2).
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let max_jobs = match setting(s, "max-jobs") {
        Some("auto") => cpus,
        Some(v) => v.parse().unwrap_or(1),
        None => usize::try_from(settings.max_jobs).unwrap_or(usize::MAX),
    };
    let default_jobs = max_jobs.max(cpus * 2).min(16);
    let jobs = setting(s, "max-substitution-jobs")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default_jobs);
    config.jobs = jobs.min(connections).max(1);
    config.transport.connections = connections.min(1024);
    config.transport.connect_timeout = Duration::from_secs(number("connect-timeout", 10));
    config.transport.stall_timeout = Duration::from_secs(number("stalled-download-timeout", 300));
    config.retry = RetryPolicy {
        attempts: u32::try_from(number("download-attempts", 5)).unwrap_or(5),
        ..RetryPolicy::default()
    };
    let observer = ClientObserver::new(s, out);
    let sub = Substituter::new(
        s.cx.store_dir.clone(),
        config,
        s.state.narinfo_cache.clone(),
        &observer,
    );
    observer.flush();
    (!sub.caches().is_empty()).then_some(sub)
}

/// Relays substitution events as Nix 2.8 shows them: a `copyPath` activity
/// (`copying path '<p>' from '<cache>'`) with a `fileTransfer` child whose progress
/// results carry bytes done and expected; warnings as log lines.
struct ClientObserver<'o> {
    store_dir: StoreDir,
    out: Mutex<&'o mut Out>,
    activities: Mutex<HashMap<u64, (ActivityId, ActivityId)>>,
    next: std::sync::atomic::AtomicU64,
}

impl<'o> ClientObserver<'o> {
    fn new(s: &Session<'_>, out: &'o mut Out) -> Self {
        Self {
            store_dir: s.cx.store_dir.clone(),
            out: Mutex::new(out),
            activities: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, &'o mut Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn flush(&self) {
        let _ = self.out().flush();
    }
}

impl Observer for ClientObserver<'_> {
    fn warn(&self, message: &str) {
        let _ = self.out().log(Verbosity::Warn, message);
        self.flush();
    }

    fn download_started(&self, path: &StorePath, cache: &str, nar_url: &str, expected: u64) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = self.out();
        let shown = self.store_dir.display(path);
        let copy = out.start_activity(
            Verbosity::Info,
            ActivityType::COPY_PATH,
            &format!("copying path '{shown}' from '{cache}'"),
            vec![
                Field::String(shown.into_bytes()),
                Field::String(cache.as_bytes().to_vec()),
                Field::String(b"local".to_vec()),
            ],
            None,
        );
        let transfer = copy.as_ref().ok().and_then(|c| {
            out.start_activity(
                Verbosity::Talkative,
                ActivityType::FILE_TRANSFER,
                &format!("downloading '{nar_url}'"),
                vec![Field::String(nar_url.as_bytes().to_vec())],
                Some(*c),
            )
            .ok()
        });
        if let (Ok(c), Some(t)) = (copy, transfer) {
            let _ = out.result(
                t,
                ResultType::PROGRESS,
                vec![
                    Field::Int(0),
                    Field::Int(expected),
                    Field::Int(1),
                    Field::Int(0),
                ],
            );
            self.activities
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, (c, t));
        }
        let _ = out.flush();
        id
    }

    fn download_progress(&self, id: u64, done: u64, expected: u64) {
        let Some((_, t)) = self
            .activities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
        else {
            return;
        };
        let mut out = self.out();
        let _ = out.result(
            t,
            ResultType::PROGRESS,
            vec![
                Field::Int(done),
                Field::Int(expected),
                Field::Int(1),
                Field::Int(0),
            ],
        );
        let _ = out.flush();
    }

    fn download_finished(&self, id: u64, _ok: bool) {
        let Some((c, t)) = self
            .activities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
        else {
            return;
        };
        let mut out = self.out();
        let _ = out.stop_activity(t);
        let _ = out.stop_activity(c);
        let _ = out.flush();
    }
}

/// One thing the walk of [`walk`] looks at: the wanted outputs of a derivation
/// (`None`: all), or an opaque path; for target number `target`, which it is
/// itself (`top`) or an input of.
enum Node {
    Drv {
        drv: StorePath,
        outputs: Option<BTreeSet<String>>,
        target: usize,
        top: bool,
    },
    Path {
        path: StorePath,
        target: usize,
        top: bool,
    },
}

/// What a request needs from the caches and what must be built, as Nix's goals
/// decide it: a derivation whose wanted outputs the caches have (with their
/// closures) is substituted; one they lack is built, and then the outputs of its
/// input derivations and its input sources are looked at in the same way,
/// recursively.
#[derive(Default)]
struct Walk {
    /// Per target: its own invalid wanted paths (an opaque path, or outputs).
    own: Vec<BTreeSet<StorePath>>,
    /// Per target: the invalid inputs (of the derivations it builds) the caches have.
    inputs: Vec<BTreeSet<StorePath>>,
    /// Derivations to build.
    build: BTreeSet<StorePath>,
    /// Invalid paths that neither the caches have nor anything builds: opaque
    /// targets, and derivations that are not valid.
    unknown: BTreeSet<StorePath>,
    /// What to fetch: the closures of the wanted paths the caches have in full.
    plan: Plan,
}

/// The invalid wanted outputs of derivation `drv`, `None` when it has to be built
/// whatever the caches have (a floating output, which has no path before it is
/// built), or when it cannot be read (the scheduler reports that).
fn invalid_outputs(
    store: &unrooted_store::LocalStore,
    d: &unrooted_format::derivation::Derivation,
    outputs: Option<&BTreeSet<String>>,
) -> Option<BTreeSet<StorePath>> {
    let mut wanted = BTreeSet::new();
    for (name, out) in &d.outputs {
        if outputs.is_some_and(|o| !o.contains(name)) {
            continue;
        }
        let path = out.path()?;
        if !store.is_valid_path(path).unwrap_or(true) {
            wanted.insert(path.clone());
        }
    }
    Some(wanted)
}

/// The paths of `fetch` whose closure (through `fetch`) reaches none of `missing`.
fn complete(
    fetch: &BTreeMap<StorePath, unrooted_substitute::Substitutable>,
    missing: &BTreeSet<StorePath>,
) -> BTreeSet<StorePath> {
    let mut referrers: HashMap<&StorePath, Vec<&StorePath>> = HashMap::new();
    for (p, sub) in fetch {
        for r in &sub.info.references {
            if r != p {
                referrers.entry(r).or_default().push(p);
            }
        }
    }
    let mut bad: BTreeSet<&StorePath> = BTreeSet::new();
    let mut stack: Vec<&StorePath> = missing.iter().collect();
    while let Some(q) = stack.pop() {
        for &d in referrers.get(q).map(Vec::as_slice).unwrap_or_default() {
            if bad.insert(d) {
                stack.push(d);
            }
        }
    }
    fetch
        .keys()
        .filter(|p| !bad.contains(p) && !missing.contains(*p))
        .cloned()
        .collect()
}

/// Walks what `targets` need (see [`Walk`]), asking the caches one level of the
/// derivation graph at a time.
fn walk(
    s: &Session<'_>,
    sub: &Substituter,
    targets: &[DerivedPath],
    observer: &dyn Observer,
) -> Result<Walk, SubstituteError> {
    let store = &s.state.store;
    let mut w = Walk {
        own: vec![BTreeSet::new(); targets.len()],
        inputs: vec![BTreeSet::new(); targets.len()],
        ..Walk::default()
    };
    let mut level: Vec<Node> = targets
        .iter()
        .enumerate()
        .map(|(target, p)| match p {
            DerivedPath::Opaque(path) => Node::Path {
                path: path.clone(),
                target,
                top: true,
            },
            DerivedPath::Built { drv_path, outputs } => Node::Drv {
                drv: drv_path.clone(),
                outputs: match outputs {
                    OutputsSpec::All => None,
                    OutputsSpec::Names(n) => Some(n.iter().cloned().collect()),
                },
                target,
                top: true,
            },
        })
        .collect();
    let mut seen_drvs: BTreeSet<StorePath> = BTreeSet::new();
    let mut seen_paths: BTreeSet<StorePath> = BTreeSet::new();
    let mut fetch = BTreeMap::new();
    let mut missing = BTreeSet::new();
    let mut roots: BTreeSet<StorePath> = BTreeSet::new();
    while !level.is_empty() {
        // What each node wants (`None`: built whatever the caches have).
        let mut wants: Vec<(Node, Option<BTreeSet<StorePath>>, Option<Derivation>)> = Vec::new();
        for node in level {
            match &node {
                Node::Path { path, top, .. } => {
                    if !*top && !seen_paths.insert(path.clone()) {
                        continue;
                    }
                    if store.is_valid_path(path).unwrap_or(true) {
                        continue;
                    }
                    let want = BTreeSet::from([path.clone()]);
                    wants.push((node, Some(want), None));
                }
                Node::Drv {
                    drv, outputs, top, ..
                } => {
                    if !*top && !seen_drvs.insert(drv.clone()) {
                        continue;
                    }
                    if !store.is_valid_path(drv).unwrap_or(true) {
                        w.unknown.insert(drv.clone());
                        continue;
                    }
                    let Ok(d) = unrooted_builder::load_derivation(store, drv) else {
                        continue;
                    };
                    // Fixed outputs can come from caches of other store directories.
                    for out in d.outputs.values() {
                        if let unrooted_format::derivation::DerivationOutput::Fixed {
                            method,
                            hash,
                            path,
                        } = out
                        {
                            sub.hint_content_address(
                                path.clone(),
                                unrooted_format::ContentAddress::Fixed {
                                    method: *method,
                                    hash: *hash,
                                },
                            );
                        }
                    }
                    let want = invalid_outputs(store, &d, outputs.as_ref());
                    if want.as_ref().is_some_and(BTreeSet::is_empty) {
                        continue;
                    }
                    wants.push((node, want, Some(d)));
                }
            }
        }
        let asked: BTreeSet<StorePath> = wants
            .iter()
            .filter_map(|(_, want, _)| want.as_ref())
            .flatten()
            .filter(|p| !fetch.contains_key(*p) && !missing.contains(*p))
            .cloned()
            .collect();
        if !asked.is_empty() {
            let plan = sub.plan(store, &asked, observer)?;
            fetch.extend(plan.fetch);
            missing.extend(plan.missing);
        }
        let ok = complete(&fetch, &missing);
        let mut next = Vec::new();
        for (node, want, d) in wants {
            let cached = want.as_ref().is_some_and(|ps| ps.is_subset(&ok));
            match node {
                Node::Path { path, target, top } => {
                    if top {
                        w.own[target].insert(path.clone());
                    }
                    if cached {
                        if !top {
                            w.inputs[target].insert(path.clone());
                        }
                        roots.insert(path);
                    } else if top {
                        w.unknown.insert(path);
                    }
                }
                Node::Drv {
                    drv, target, top, ..
                } => {
                    let want = want.unwrap_or_default();
                    if top {
                        w.own[target].extend(want.iter().cloned());
                    }
                    if cached {
                        if !top {
                            w.inputs[target].extend(want.iter().cloned());
                        }
                        roots.extend(want);
                        continue;
                    }
                    w.build.insert(drv);
                    let Some(d) = d else { continue };
                    for (input, outs) in d.input_drvs {
                        next.push(Node::Drv {
                            drv: input,
                            outputs: Some(outs),
                            target,
                            top: false,
                        });
                    }
                    for path in d.input_srcs {
                        next.push(Node::Path {
                            path,
                            target,
                            top: false,
                        });
                    }
                }
            }
        }
        level = next;
    }
    // The closures of the roots.
    let mut stack: Vec<StorePath> = roots.into_iter().collect();
    while let Some(p) = stack.pop() {
        if w.plan.fetch.contains_key(&p) {
            continue;
        }
        let Some(found) = fetch.remove(&p) else {
            continue;
        };
        stack.extend(found.info.references.iter().cloned());
        w.plan.fetch.insert(p, found);
    }
    Ok(w)
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
/// paths when the caches have them, and otherwise (see [`Walk`]) what the
/// derivations to build need, so that only what no cache has is built.
pub(crate) fn substitute_targets(
    s: &Session<'_>,
    paths: &[DerivedPath],
    out: &mut Out,
) -> Vec<Outcome> {
    let none = || paths.iter().map(|_| Outcome::NotSubstituted).collect();
    if !paths.iter().any(|p| needs_work(s, p)) {
        return none();
    }
    let Some(sub) = substituter(s, out) else {
        return none();
    };
    s.state.auto_gc.poke();
    let observer = ClientObserver::new(s, out);
    let w = match walk(s, &sub, paths, &observer) {
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
pub(crate) fn substitutable_paths(
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
pub(crate) fn substitutable_infos(
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
