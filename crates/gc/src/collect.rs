//! The collection itself: roots, liveness, and deletion in a crash-safe order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};
use unrooted_format::StorePath;
use unrooted_roots::{Limits, Scan, Strictness};
use unrooted_store::{DeleteOutcome, GraphNode, LocalStore, StoreError};

use crate::error::GcError;
use crate::roots::{ask_helper, top_level, Framing, HelperAnswer, Unresolved, Walk};
use crate::temp_roots::{read_temp_roots_files, TempRoots};

/// Where the roots the daemon cannot read come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootsHelper {
    /// Our helper (`unrooted-find-roots`) at this socket: it resolves indirect,
    /// per-user and runtime roots as root, so roots the daemon cannot read count
    /// as resolved when it answers completely.
    Socket(PathBuf),
    /// Upstream Nix's roots daemon (`nix store roots-daemon`, Nix ≥ 2.34) at this
    /// socket: runtime roots only, so a root the daemon cannot read still refuses
    /// the collection.
    RuntimeOnlySocket(PathBuf),
    /// No helper, by the administrator's explicit choice (single-user setups): other
    /// users' runtime roots are not seen. Roots the daemon cannot read still refuse
    /// the collection.
    None,
}

/// The daemon's collector settings.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// `keep-outputs` (default false): a live `.drv` keeps its valid outputs.
    pub keep_outputs: bool,
    /// `keep-derivations` (default true): a live path keeps its valid deriver.
    pub keep_derivations: bool,
    /// The roots helper.
    pub roots_helper: RootsHelper,
    /// The `/proc` scanned for the daemon's own runtime roots (`/proc`).
    pub proc_dir: PathBuf,
    /// Longest the roots helper may take to answer (60 s); longer refuses the
    /// collection.
    pub helper_timeout: Duration,
}

impl GcConfig {
    /// Nix's defaults with this helper.
    pub fn new(roots_helper: RootsHelper) -> Self {
        Self {
            keep_outputs: false,
            keep_derivations: true,
            roots_helper,
            proc_dir: PathBuf::from("/proc"),
            helper_timeout: Duration::from_secs(60),
        }
    }

    /// The helper socket's default place, `<state>/gc-roots-socket/socket`.
    pub fn default_helper_socket(state_dir: &Path) -> PathBuf {
        state_dir.join("gc-roots-socket/socket")
    }
}

/// What CollectGarbage asks for (worker protocol action codes 0–3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcAction {
    /// `--print-live`: the live paths, nothing deleted.
    ReturnLive,
    /// `--print-dead`: the dead paths, nothing deleted.
    ReturnDead,
    /// `--gc`: delete every dead path.
    DeleteDead,
    /// `--delete`: delete these paths, which must be dead.
    DeleteSpecific(BTreeSet<StorePath>),
    /// `nix store delete --also-referrers` (Nix 2.35, protocol feature
    /// `delete-dead-specific-referrers`): these paths, which must be dead, and every
    /// path that refers to them, directly or not (all dead too: liveness follows
    /// references).
    DeleteSpecificWithReferrers(BTreeSet<StorePath>),
    /// `nix store delete --skip-alive` (Nix 2.35, same feature): of these paths, the
    /// dead ones; live ones are skipped without error. With `referrers`, the paths
    /// that refer to them go too; without, a path that a path outside the deleted
    /// set refers to is skipped.
    DeleteDeadWithin {
        /// The paths to consider.
        paths: BTreeSet<StorePath>,
        /// Whether their referrers go with them.
        referrers: bool,
    },
}

impl GcAction {
    /// Whether the action deletes anything.
    pub fn deletes(&self) -> bool {
        !matches!(self, Self::ReturnLive | Self::ReturnDead)
    }

    /// Whether a path that cannot be deleted stops the collection with an error.
    fn all_or_error(&self) -> bool {
        matches!(
            self,
            Self::DeleteSpecific(_) | Self::DeleteSpecificWithReferrers(_)
        )
    }
}

/// A CollectGarbage request.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// What to do.
    pub action: GcAction,
    /// `ignore-liveness`: always refused.
    pub ignore_liveness: bool,
    /// Stop deleting once this many bytes are freed (`u64::MAX`: no limit).
    pub max_freed: u64,
}

/// What a collection returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcResult {
    /// Live, dead or deleted paths as the action says, printed, sorted.
    pub paths: BTreeSet<String>,
    /// Bytes freed (deleted paths, invalid leftovers, pruned `.links`).
    pub bytes_freed: u64,
}

/// A collector over one store, created per request.
pub struct Collector<'a> {
    store: &'a LocalStore,
    config: GcConfig,
    temp_roots: &'a TempRoots,
}

/// Every valid path with its references and deriver.
type Graph = BTreeMap<StorePath, GraphNode>;

/// All roots: store path → how it is rooted (link, `{temp:…}`, `{censored}`).
type Roots = BTreeMap<StorePath, BTreeSet<String>>;

/// The helper's second answer, on its way.
struct SecondAnswer {
    socket: PathBuf,
    thread: std::thread::JoinHandle<Result<HelperAnswer, GcError>>,
}

impl SecondAnswer {
    /// Waits for it and adds its roots to `roots`; returns those not there yet.
    fn merge_into(self, roots: &mut Roots) -> Result<Vec<StorePath>, GcError> {
        let answer = self
            .thread
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        merge_answer(roots, answer, true, &self.socket)
    }
}

/// Adds the roots of a helper answer to `roots` and returns those not there yet;
/// with `strict`, an incomplete or failed answer is the error.
fn merge_answer(
    roots: &mut Roots,
    answer: Result<HelperAnswer, GcError>,
    strict: bool,
    socket: &Path,
) -> Result<Vec<StorePath>, GcError> {
    let mut added = Vec::new();
    match answer {
        Ok(HelperAnswer::Roots(paths)) => {
            // A path the daemon found rooted already is listed as it found it; the
            // helper adds the roots only it could see.
            for p in paths {
                if let std::collections::btree_map::Entry::Vacant(v) = roots.entry(p) {
                    added.push(v.key().clone());
                    v.insert(BTreeSet::from(["{censored}".to_owned()]));
                }
            }
        }
        Ok(HelperAnswer::Incomplete(message)) if strict => {
            return Err(GcError::HelperIncomplete {
                socket: socket.to_owned(),
                message,
            })
        }
        Err(e) if strict => return Err(e),
        Ok(HelperAnswer::Incomplete(_)) | Err(_) => {}
    }
    Ok(added)
}

/// A batch checked and invalidated ([`Collector::begin_batch`]).
struct Begun {
    /// Pending in the registry.
    accepted: Vec<StorePath>,
    /// Invalid in the database now.
    invalidated: Vec<StorePath>,
    /// A path kept because a valid path outside the batch refers to it, and that
    /// referrer.
    blocker: Option<(StorePath, StorePath)>,
}

/// A thread deleting part of a batch: what became of the paths it did, and the
/// error that stopped it.
type DeletingThread<'scope> =
    std::thread::ScopedJoinHandle<'scope, (Vec<DeleteOutcome>, Option<StoreError>)>;

/// A batch being deleted from disk: the threads, each with its part of `paths`.
struct InFlight<'scope, 'env> {
    accepted: Vec<StorePath>,
    paths: Arc<[StorePath]>,
    parts: Vec<(std::ops::Range<usize>, DeletingThread<'scope>)>,
    _env: std::marker::PhantomData<&'env ()>,
}

/// Paths invalidated per database transaction when no `max_freed` is given. A
/// transaction writes every page it touched to the WAL once, and deleting paths
/// spread over the whole store touches most pages of `ValidPaths` and its index
/// whatever the batch size: 4096 rather than 256 made invalidating 10,000 paths
/// take a third of the time. Larger batches gain little more, and keep more paths
/// pending (a client asking for one of them waits for its batch).
const BATCH: usize = 4096;

/// Threads deleting an invalidated batch from disk, at most. Removing entries of
/// one directory is serialised by the kernel (the directory's lock), so more
/// threads only contend for it: measured on 10,000 single-file paths, one, two and
/// four threads took the same time. Two keep the file system busy while the other
/// thread prepares its next group, and leave room for the main thread
/// invalidating the next batch.
const DELETE_THREADS: usize = 2;

/// Paths per deleting thread, at least (a thread for a few paths costs more than it
/// saves).
const DELETE_THREAD_MIN: usize = 32;

impl<'a> Collector<'a> {
    /// A collector for `store` with the daemon's settings and temporary roots.
    pub fn new(store: &'a LocalStore, config: GcConfig, temp_roots: &'a TempRoots) -> Self {
        Self {
            store,
            config,
            temp_roots,
        }
    }

    /// The roots as FindRoots lists them: link (or `{temp:<owner>}`, `{censored}`)
    /// and valid store path. With `censor`, everything not under the state directory
    /// (temporary, runtime and helper roots) shows as `{censored}`.
    pub fn find_roots(&self, censor: bool) -> Result<Vec<(String, StorePath)>, GcError> {
        let (roots, _, _) = self.gather_roots(censor, &mut |_| {}, false, false)?;
        let mut out = Vec::new();
        for (path, links) in roots {
            if self.store.is_valid_path(&path)? {
                out.extend(links.into_iter().map(|l| (l, path.clone())));
            }
        }
        Ok(out)
    }

    /// Every root; with `strict`, fails when a root cannot be resolved. With
    /// `with_graph`, also the reference graph, read while the helper answers.
    fn gather_roots(
        &self,
        censor: bool,
        log: &mut dyn FnMut(&str),
        strict: bool,
        with_graph: bool,
    ) -> Result<(Roots, Option<Graph>, Option<SecondAnswer>), GcError> {
        let (socket, framing) = match &self.config.roots_helper {
            RootsHelper::Socket(s) => (Some(s), Framing::EndMarker),
            RootsHelper::RuntimeOnlySocket(s) => (Some(s), Framing::Eof),
            RootsHelper::None => (None, Framing::Eof),
        };
        // Our helper resolves the roots the daemon cannot read; upstream's reports
        // runtime roots only.
        let resolves_unreadable = framing == Framing::EndMarker;
        let timeout = self.config.helper_timeout;
        let store_dir = self.store.store_dir();
        // Our helper ends its answer with an end-of-answer item, so an answer cut
        // short (a helper refused, killed or crashed, which only closes the
        // connection) is an error, never a shorter list. Upstream's answer ends at
        // EOF, so one killed between two items looks like one with fewer roots:
        // before deleting, that helper is asked again once the first answer is
        // complete, and the union is used; a helper that died during the first
        // answer refuses (or resets) the second connection, which fails the
        // collection; a restarted one answers in full. Roots added between the two
        // asks only make the union larger.
        //
        // The second answer is not awaited here: the caller computes liveness and
        // the deletion order from the roots it has meanwhile, and adds the second
        // answer's roots (if it has any more) before deleting anything.
        // The helper's answers are awaited while the daemon finds the roots it can
        // read itself and reads the reference graph: they take about as long. A path
        // registered after the graph is read is not in it, so it is neither dead
        // nor missed: liveness asks the database about it.
        let (local, graph, first) = std::thread::scope(|scope| {
            let first =
                socket.map(|s| scope.spawn(move || ask_helper(s, store_dir, framing, timeout)));
            let local = self.local_roots(censor, log);
            let graph = match (&local, with_graph) {
                (Ok(_), true) => Some(self.store.query_reference_graph()),
                _ => None,
            };
            let first = first.map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)));
            (local, graph, first)
        });
        let (mut roots, unresolved) = local?;
        let graph = graph.transpose()?;
        let mut second = None;
        if let (Some(socket), Some(first)) = (socket, first) {
            let complete = matches!(first, Ok(HelperAnswer::Roots(_)));
            merge_answer(&mut roots, first, strict, socket)?;
            if strict && complete && framing == Framing::Eof {
                let (socket, store_dir) = (socket.clone(), store_dir.clone());
                second = Some(SecondAnswer {
                    socket: socket.clone(),
                    thread: std::thread::spawn(move || {
                        ask_helper(&socket, &store_dir, framing, timeout)
                    }),
                });
            }
        }
        if strict && !resolves_unreadable {
            if let Some(u) = unresolved.into_iter().next() {
                return Err(GcError::UnresolvedRoot {
                    link: u.link,
                    source: u.source,
                });
            }
        }
        Ok((roots, graph, second))
    }

    /// The roots the daemon finds itself: its walk of `gcroots` and `profiles`,
    /// temporary roots (its own and Nix's files) and its runtime roots; and the
    /// roots it could not read.
    fn local_roots(
        &self,
        censor: bool,
        log: &mut dyn FnMut(&str),
    ) -> Result<(Roots, Vec<Unresolved>), GcError> {
        let state = &self.store.config().state_dir;
        let store_dir = self.store.store_dir();
        let mut walk = Walk::new(store_dir, state, log);
        walk.walk(&state.join("gcroots"), 0)?;
        walk.walk(&state.join("profiles"), 0)?;
        let found = walk.found;
        let mut roots = found.roots;
        let hidden = |label: String| {
            if censor {
                "{censored}".to_owned()
            } else {
                label
            }
        };
        for (path, owners) in self.temp_roots.snapshot() {
            for o in owners {
                roots
                    .entry(path.clone())
                    .or_default()
                    .insert(hidden(format!("{{temp:{o}}}")));
            }
        }
        for path in read_temp_roots_files(state, store_dir)? {
            roots
                .entry(path)
                .or_default()
                .insert(hidden("{temp:nix}".to_owned()));
        }
        let mut scan = Scan::new(Path::new(store_dir.as_str()), Limits::default());
        scan.scan_runtime(&self.config.proc_dir, Strictness::Lenient);
        for item in &scan.roots {
            if let Some(p) = top_level(store_dir, item) {
                roots
                    .entry(p)
                    .or_default()
                    .insert(hidden("{runtime}".to_owned()));
            }
        }
        Ok((roots, found.unresolved))
    }

    /// The closure of `roots` under references, plus derivers (`keep_derivations`)
    /// and outputs of live derivations (`keep_outputs`), restricted to the valid
    /// paths of `graph` (the whole store, read at once).
    fn live_set(
        &self,
        graph: &Graph,
        roots: impl IntoIterator<Item = StorePath>,
    ) -> Result<BTreeSet<StorePath>, GcError> {
        let mut live = BTreeSet::new();
        let mut queue: VecDeque<StorePath> = roots.into_iter().collect();
        while let Some(p) = queue.pop_front() {
            if live.contains(&p) {
                continue;
            }
            // A path missing from the graph may have become valid since it was
            // read: the database is asked about it directly.
            let fresh;
            let node = match graph.get(&p) {
                Some(node) => node,
                None => match self.store.query_path_info(&p)? {
                    Some(info) => {
                        fresh = GraphNode {
                            references: info.references,
                            deriver: info.deriver,
                        };
                        &fresh
                    }
                    None => continue,
                },
            };
            live.insert(p.clone());
            queue.extend(
                node.references
                    .iter()
                    .filter(|r| !live.contains(*r))
                    .cloned(),
            );
            if self.config.keep_derivations {
                queue.extend(node.deriver.iter().filter(|d| !live.contains(*d)).cloned());
            }
            if self.config.keep_outputs && p.is_derivation() {
                let outputs = self.store.query_derivation_output_map(&p)?;
                queue.extend(outputs.into_values().filter(|o| !live.contains(o)));
            }
        }
        Ok(live)
    }

    /// Runs a CollectGarbage request; `log` receives Nix's progress lines.
    pub fn collect(
        &self,
        options: &GcOptions,
        log: &mut dyn FnMut(&str),
    ) -> Result<GcResult, GcError> {
        if options.ignore_liveness {
            return Err(GcError::IgnoreLiveness);
        }
        let state = self.store.config().state_dir.clone();
        let lock_path = state.join("gc.lock");
        let lock_err = |source| GcError::Lock {
            path: lock_path.clone(),
            source,
        };
        // Exclusive for the whole run: one collection at a time, ours or Nix's, and
        // Nix tools that add temporary roots wait for (or talk to) the running one.
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_err)?;
        flock(&lock, FlockOperation::LockExclusive).map_err(|e| lock_err(e.into()))?;

        let deleting = options.action.deletes();
        if deleting {
            self.store.remove_reserved_space()?;
        }
        log("finding garbage collector roots...");
        let strict = options.action != GcAction::ReturnLive;
        let (mut roots, graph, second) = self.gather_roots(false, log, strict, true)?;
        let graph = match graph {
            Some(g) => g,
            None => self.store.query_reference_graph()?,
        };
        // Liveness and the deletion order are computed while the helper's second
        // answer is on its way, and again only if it names roots not seen yet.
        let mut live = self.live_set(&graph, roots.keys().cloned())?;
        let mut order = self.deletion_order(&graph, &live, &options.action)?;
        if let Some(second) = second {
            let added = second.merge_into(&mut roots)?;
            if !added.is_empty() {
                live.extend(self.live_set(&graph, added)?);
                order = self.deletion_order(&graph, &live, &options.action)?;
            }
        }
        let mut result = GcResult::default();
        let print = |p: &StorePath| self.store.print_path(p);
        match &options.action {
            GcAction::ReturnLive => {
                result.paths = live.iter().map(print).collect();
                return Ok(result);
            }
            GcAction::ReturnDead => {
                // Nix (2.8 and 2.26, gc.cc) says this when it collects without deleting.
                log("determining live/dead paths...");
                result.paths = graph
                    .keys()
                    .filter(|p| !live.contains(*p))
                    .map(print)
                    .collect();
                return Ok(result);
            }
            GcAction::DeleteDead
            | GcAction::DeleteSpecific(_)
            | GcAction::DeleteSpecificWithReferrers(_)
            | GcAction::DeleteDeadWithin { .. } => {}
        }
        let specific = options.action.all_or_error();
        // Nix announces the sweep only when collecting all garbage, never for the
        // paths of `nix-store --delete` / `nix store delete` (gc.cc, 2.8 and 2.26);
        // the forms only Nix 2.35 sends are announced as 2.35 does.
        match options.action {
            GcAction::DeleteDead => log("deleting garbage..."),
            GcAction::DeleteSpecificWithReferrers(_) => log("deleting specified paths..."),
            GcAction::DeleteDeadWithin { .. } => log("deleting garbage within specified paths..."),
            _ => {}
        }
        let limit_reached =
            self.delete_in_batches(&order, specific, options.max_freed, log, &mut result)?;
        if options.action == GcAction::DeleteDead && !limit_reached {
            self.delete_leftovers(&roots, log, &mut result)?;
        }
        log("deleting unused links...");
        let links = self.store.prune_links()?;
        result.bytes_freed += links.bytes_freed;
        log(&format!(
            "note: currently hard linking saves {:.2} MiB",
            links.bytes_saved.max(0) as f64 / (1024.0 * 1024.0)
        ));
        drop(lock);
        Ok(result)
    }

    /// What a deleting action deletes, referrers first (empty for the others); a
    /// requested path that is alive is refused.
    fn deletion_order(
        &self,
        graph: &Graph,
        live: &BTreeSet<StorePath>,
        action: &GcAction,
    ) -> Result<Vec<StorePath>, GcError> {
        let dead: Vec<StorePath> = match action {
            GcAction::ReturnLive | GcAction::ReturnDead => return Ok(Vec::new()),
            GcAction::DeleteDead => graph
                .keys()
                .filter(|p| !live.contains(*p))
                .cloned()
                .collect(),
            GcAction::DeleteSpecific(paths) => {
                if let Some(p) = paths.iter().find(|p| live.contains(*p)) {
                    return Err(GcError::StillAlive {
                        path: self.store.print_path(p),
                    });
                }
                self.store.query_valid_paths(paths)?.into_iter().collect()
            }
            GcAction::DeleteSpecificWithReferrers(paths) => {
                if let Some(p) = paths.iter().find(|p| live.contains(*p)) {
                    return Err(GcError::StillAlive {
                        path: self.store.print_path(p),
                    });
                }
                let valid = self.store.query_valid_paths(paths)?;
                referrer_closure(graph, valid.into_iter().collect())
                    .into_iter()
                    .collect()
            }
            GcAction::DeleteDeadWithin { paths, referrers } => {
                let dead: BTreeSet<StorePath> = paths
                    .iter()
                    .filter(|p| graph.contains_key(*p) && !live.contains(*p))
                    .cloned()
                    .collect();
                let set = if *referrers {
                    referrer_closure(graph, dead)
                } else {
                    without_outside_referrers(graph, dead)
                };
                set.into_iter().collect()
            }
        };
        self.referrers_first(graph, &dead)
    }

    /// `paths` ordered so that every path comes before the paths it refers to.
    fn referrers_first(
        &self,
        graph: &Graph,
        paths: &[StorePath],
    ) -> Result<Vec<StorePath>, GcError> {
        let set: BTreeSet<&StorePath> = paths.iter().collect();
        let mut refs: BTreeMap<&StorePath, Vec<StorePath>> = BTreeMap::new();
        for p in paths {
            // A path missing from the graph (added since, which a requested
            // deletion can name) is asked for on its own.
            let r = match graph.get(p) {
                Some(node) => node.references.clone(),
                None => self.store.query_references(p)?,
            };
            refs.insert(
                p,
                r.into_iter()
                    .filter(|r| r != p && set.contains(r))
                    .collect(),
            );
        }
        // Iterative post-order over references: a path is emitted after all it
        // refers to; reversed, referrers come first.
        let mut done: BTreeSet<&StorePath> = BTreeSet::new();
        let mut post = Vec::with_capacity(paths.len());
        for start in paths {
            if done.contains(start) {
                continue;
            }
            let mut stack: Vec<(&StorePath, usize)> = vec![(start, 0)];
            done.insert(start);
            while let Some((node, i)) = stack.pop() {
                let children = &refs[node];
                if let Some(child) = children.get(i) {
                    stack.push((node, i + 1));
                    let child = set.get(child).copied().unwrap_or(node);
                    if done.insert(child) {
                        stack.push((child, 0));
                    }
                } else {
                    post.push(node.clone());
                }
            }
        }
        post.reverse();
        Ok(post)
    }

    /// Deletes `order` (referrers first) in batches; returns whether `max_freed` was
    /// reached.
    ///
    /// Without a limit, the batches form a pipeline: while one invalidated batch is
    /// deleted from disk by other threads, the next one is checked and invalidated
    /// (the database and the store directory are different bottlenecks). The order
    /// that matters for a crash, a batch invalid in the database before any of its
    /// files go, holds for every batch; the order in which invalid paths leave the
    /// disk does not matter. With a limit, each path is finished before the next
    /// one starts, as the bytes freed decide whether to go on.
    fn delete_in_batches(
        &self,
        order: &[StorePath],
        specific: bool,
        max_freed: u64,
        log: &mut dyn FnMut(&str),
        result: &mut GcResult,
    ) -> Result<bool, GcError> {
        let pipelined = max_freed == u64::MAX;
        let batch = if pipelined { BATCH } else { 1 };
        std::thread::scope(|scope| {
            let mut in_flight: Option<InFlight<'_, '_>> = None;
            let mut error = None;
            let mut limit_reached = false;
            for chunk in order.chunks(batch) {
                let begun = match self.begin_batch(chunk) {
                    Ok(b) => b,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                };
                // A requested path that is in use stops the deletion; the blocker
                // names who uses it.
                let stop = specific && begun.invalidated.len() < chunk.len();
                let blocker = begun.blocker.clone().filter(|_| specific);
                let flight = self.start_deletion(scope, begun);
                let previous = if pipelined {
                    in_flight.replace(flight)
                } else {
                    Some(flight)
                };
                if let Some(previous) = previous {
                    if let Err(e) = self.finish_deletion(previous, log, result) {
                        error = Some(e);
                        break;
                    }
                }
                if let Some((path, referrer)) = blocker {
                    error = Some(GcError::Referenced {
                        path: self.store.print_path(&path),
                        referrer: self.store.print_path(&referrer),
                    });
                    break;
                }
                if stop {
                    break;
                }
                if result.bytes_freed >= max_freed {
                    limit_reached = true;
                    break;
                }
            }
            // Whatever failed, the batch in flight finishes and leaves the pending
            // state.
            if let Some(flight) = in_flight.take() {
                let finished = self.finish_deletion(flight, log, result);
                if let (None, Err(e)) = (&error, finished) {
                    error = Some(e);
                }
            }
            match error {
                Some(e) => Err(e),
                None => Ok(limit_reached),
            }
        })
    }

    /// The final check and the invalidation of one batch. The paths accepted are
    /// pending in the registry until [`Collector::finish_deletion`].
    fn begin_batch(&self, chunk: &[StorePath]) -> Result<Begun, GcError> {
        let state_dir = &self.store.config().state_dir;
        let nix_temp = read_temp_roots_files(state_dir, self.store.store_dir())?;
        // A path is deleted only when nothing valid outside this batch refers to it:
        // a referrer that appeared since the liveness pass (a new path added by a
        // client) or that was kept keeps it alive. The referrers are read for the
        // whole batch before the registry is locked; one registered after this
        // read is still caught, by the database, which refuses to invalidate a
        // path a valid one refers to (see `invalidate`).
        let referrers = self.store.query_referrers_of_many(chunk)?;
        let mut blocker: Option<(StorePath, StorePath)> = None;
        let accepted = {
            let in_batch: BTreeSet<&StorePath> = chunk.iter().collect();
            self.temp_roots.begin_deletion(chunk, |c, _| {
                if nix_temp.contains(c) {
                    return true;
                }
                let outside = referrers
                    .get(c)
                    .and_then(|refs| refs.iter().find(|r| *r != c && !in_batch.contains(r)));
                match outside {
                    Some(r) => {
                        blocker.get_or_insert((c.clone(), r.clone()));
                        true
                    }
                    None => false,
                }
            })
        };
        let invalidated = self.invalidate(&accepted);
        Ok(Begun {
            accepted,
            invalidated,
            blocker,
        })
    }

    /// Invalidates `accepted` in one transaction; the paths invalidated.
    fn invalidate(&self, accepted: &[StorePath]) -> Vec<StorePath> {
        if accepted.is_empty() {
            Vec::new()
        } else if self.store.invalidate_paths(accepted).is_ok() {
            accepted.to_vec()
        } else {
            // A referrer appeared between the check and the transaction (the database
            // refuses to drop a referenced row): go one by one, keeping those.
            accepted
                .iter()
                .filter(|p| {
                    self.store
                        .invalidate_paths(std::slice::from_ref(*p))
                        .is_ok()
                })
                .cloned()
                .collect()
        }
    }

    /// Starts deleting an invalidated batch from disk: a few threads share it, as
    /// removing a file mostly waits for the file system.
    fn start_deletion<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        begun: Begun,
    ) -> InFlight<'scope, 'env> {
        let paths: Arc<[StorePath]> = begun.invalidated.into();
        let threads = DELETE_THREADS.min(paths.len().div_ceil(DELETE_THREAD_MIN));
        let share = paths.len().div_ceil(threads.max(1)).max(1);
        let parts = (0..paths.len())
            .step_by(share)
            .map(|start| {
                let range = start..(start + share).min(paths.len());
                let paths = Arc::clone(&paths);
                let part = range.clone();
                let handle = scope.spawn(move || {
                    let mut outcomes = Vec::with_capacity(part.len());
                    let r = self
                        .store
                        .deletion_lock()
                        .delete_invalid_paths(&paths[part], &mut outcomes);
                    (outcomes, r.err())
                });
                (range, handle)
            })
            .collect();
        InFlight {
            accepted: begun.accepted,
            paths,
            parts,
            _env: std::marker::PhantomData,
        }
    }

    /// Waits for a batch's deletion, reports it, and ends its pending state;
    /// returns how many paths were deleted.
    fn finish_deletion(
        &self,
        flight: InFlight<'_, '_>,
        log: &mut dyn FnMut(&str),
        result: &mut GcResult,
    ) -> Result<usize, GcError> {
        // Each thread's outcomes are those of the first paths of its part: what was
        // deleted before an error is still reported.
        let mut error = None;
        for (range, handle) in flight.parts {
            let (done, e) = handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (p, outcome) in flight.paths[range].iter().zip(&done) {
                let printed = self.store.print_path(p);
                log(&format!("deleting '{printed}'"));
                if let DeleteOutcome::Deleted { bytes } = outcome {
                    result.bytes_freed += bytes;
                }
                result.paths.insert(printed);
            }
            error = error.or(e);
        }
        self.temp_roots.finish_deletion(&flight.accepted);
        match error {
            Some(e) => Err(e.into()),
            None => Ok(flight.paths.len()),
        }
    }

    /// Deletes entries of the store directory that are not valid paths: leftovers
    /// of crashes (including collections killed between invalidation and deletion)
    /// and stale lock files. Rooted names and names whose lock is held are kept.
    fn delete_leftovers(
        &self,
        roots: &Roots,
        log: &mut dyn FnMut(&str),
        result: &mut GcResult,
    ) -> Result<(), GcError> {
        let store_dir = self.store.store_dir();
        let mut lock = self.store.deletion_lock();
        for name in self.store.store_entries()? {
            let Some(text) = name.to_str() else {
                continue;
            };
            let path = StorePath::from_base_name(text).ok();
            if let Some(p) = &path {
                if roots.contains_key(p) || self.store.is_valid_path(p)? {
                    continue;
                }
            }
            let pending: Vec<StorePath> = path.iter().cloned().collect();
            let accepted = self.temp_roots.begin_deletion(&pending, |_, _| false);
            if accepted.len() != pending.len() {
                continue;
            }
            let outcome = lock.delete_garbage_entry(&name);
            self.temp_roots.finish_deletion(&accepted);
            if let DeleteOutcome::Deleted { bytes } = outcome? {
                if path.is_some() {
                    log(&format!("deleting '{}/{text}'", store_dir.as_str()));
                }
                result.bytes_freed += bytes;
            }
        }
        Ok(())
    }
}

/// Who refers to each path of `graph` (self-references left out).
fn referrers_of(graph: &Graph) -> BTreeMap<&StorePath, Vec<&StorePath>> {
    let mut referrers: BTreeMap<&StorePath, Vec<&StorePath>> = BTreeMap::new();
    for (p, node) in graph {
        for r in &node.references {
            if r != p {
                referrers.entry(r).or_default().push(p);
            }
        }
    }
    referrers
}

/// Every path of `graph` that refers to `start`, directly or not, and `start`.
fn referrer_closure(graph: &Graph, start: BTreeSet<StorePath>) -> BTreeSet<StorePath> {
    let referrers = referrers_of(graph);
    let mut out = start;
    let mut queue: Vec<StorePath> = out.iter().cloned().collect();
    while let Some(p) = queue.pop() {
        for r in referrers.get(&p).into_iter().flatten() {
            if out.insert((*r).clone()) {
                queue.push((*r).clone());
            }
        }
    }
    out
}

/// The largest part of `set` in which every path's referrers (in `graph`) are in the
/// part too: a path something outside refers to cannot go, nor then what it refers to.
fn without_outside_referrers(graph: &Graph, mut set: BTreeSet<StorePath>) -> BTreeSet<StorePath> {
    let referrers = referrers_of(graph);
    loop {
        let blocked: Vec<StorePath> = set
            .iter()
            .filter(|p| {
                referrers
                    .get(p)
                    .is_some_and(|rs| rs.iter().any(|r| !set.contains(*r)))
            })
            .cloned()
            .collect();
        if blocked.is_empty() {
            return set;
        }
        for p in blocked {
            set.remove(&p);
        }
    }
}
