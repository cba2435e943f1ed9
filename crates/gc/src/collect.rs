//! The collection itself: roots, liveness, and deletion in a crash-safe order.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rustix::fs::{flock, FlockOperation};
use unrooted_format::StorePath;
use unrooted_roots::{Limits, Scan, Strictness};
use unrooted_store::{GraphNode, LocalStore};

use crate::config::{GcAction, GcConfig, GcOptions, GcResult, RootsHelper};
use crate::error::GcError;
use crate::roots::{ask_helper, top_level, Framing, HelperAnswer, Unresolved, Walk};
use crate::temp_roots::{read_temp_roots_files, TempRoots};

/// A collector over one store, created per request.
pub struct Collector<'a> {
    pub(crate) store: &'a LocalStore,
    pub(crate) config: GcConfig,
    pub(crate) temp_roots: &'a TempRoots,
}

/// Every valid path with its references and deriver.
type Graph = BTreeMap<StorePath, GraphNode>;

/// All roots: store path → how it is rooted (link, `{temp:…}`, `{censored}`).
pub(crate) type Roots = BTreeMap<StorePath, BTreeSet<String>>;

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
        let lock = self.lock()?;
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
        if let Some(listed) = self.listing(&options.action, &graph, &live, log) {
            return Ok(listed);
        }
        let mut result = GcResult::default();
        let specific = options.action.all_or_error();
        announce_sweep(&options.action, log);
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

    /// Takes `gc.lock`, exclusive for the whole run: one collection at a time, ours
    /// or Nix's, and Nix tools that add temporary roots wait for (or talk to) the
    /// running one.
    fn lock(&self) -> Result<std::fs::File, GcError> {
        let state = self.store.config().state_dir.clone();
        let lock_path = state.join("gc.lock");
        let lock_err = |source| GcError::Lock {
            path: lock_path.clone(),
            source,
        };
        let lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(lock_err)?;
        flock(&lock, FlockOperation::LockExclusive).map_err(|e| lock_err(e.into()))?;
        Ok(lock)
    }

    /// The answer of a listing action (ReturnLive, ReturnDead); `None` for the
    /// deleting ones.
    fn listing(
        &self,
        action: &GcAction,
        graph: &Graph,
        live: &BTreeSet<StorePath>,
        log: &mut dyn FnMut(&str),
    ) -> Option<GcResult> {
        let print = |p: &StorePath| self.store.print_path(p);
        let paths = match action {
            GcAction::ReturnLive => live.iter().map(print).collect(),
            GcAction::ReturnDead => {
                // Nix (2.8 and 2.26, gc.cc) says this when it collects without deleting.
                log("determining live/dead paths...");
                graph
                    .keys()
                    .filter(|p| !live.contains(*p))
                    .map(print)
                    .collect()
            }
            GcAction::DeleteDead
            | GcAction::DeleteSpecific(_)
            | GcAction::DeleteSpecificWithReferrers(_)
            | GcAction::DeleteDeadWithin { .. } => return None,
        };
        Some(GcResult {
            paths,
            ..GcResult::default()
        })
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
}

/// Nix announces the sweep only when collecting all garbage, never for the paths of
/// `nix-store --delete` / `nix store delete` (gc.cc, 2.8 and 2.26); the forms only
/// Nix 2.35 sends are announced as 2.35 does.
fn announce_sweep(action: &GcAction, log: &mut dyn FnMut(&str)) {
    match action {
        GcAction::DeleteDead => log("deleting garbage..."),
        GcAction::DeleteSpecificWithReferrers(_) => log("deleting specified paths..."),
        GcAction::DeleteDeadWithin { .. } => log("deleting garbage within specified paths..."),
        _ => {}
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
