//! The scheduler shared by all connections.
//!
//! A request ([`Scheduler::build`]) becomes a graph of the derivations that need
//! building: a requested derivation whose wanted outputs are all valid is not a node
//! (unless checked or repaired), and an input derivation is a node only when one of the
//! outputs it is used for is missing. The requesting thread then loops: a node whose
//! dependencies all succeeded is *claimed* — if some request is already building that
//! derivation (in the same mode), this one subscribes to its goal; otherwise it creates
//! the goal and runs it on a scoped thread, which waits for one of the `max-jobs` slots
//! shared by every request. A node with a failed dependency fails with the chain of
//! derivations named. Results are picked up by polling the goals; log lines reach
//! every subscriber through a bounded channel (a slow client loses lines, never
//! results, and never slows the build). A request that ends early — its client went
//! away, or a build failed without keep-going — unsubscribes; a goal left without
//! subscribers is cancelled, which kills its builder.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use unrooted_format::derivation::Derivation;
use unrooted_format::StorePath;
use unrooted_store::LocalStore;

use crate::config::BuilderConfig;
use crate::error::{error_chain, BuildError};
use crate::goal::{self, BuildDirs, GoalCx, GoalEvent};
use crate::{BuildMode, BuildOptions, BuildResult, Status};

/// How long the request loop sleeps between looks at its goals and its client.
const TICK: Duration = Duration::from_millis(50);

/// Log messages queued per subscriber before lines are dropped for it.
const CHANNEL_BOUND: usize = 4096;

/// The most derivations one request may involve.
const MAX_NODES: usize = 1_000_000;

/// What a client asked to have built.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// A store path that must be valid (nothing can substitute it here).
    Opaque(StorePath),
    /// Outputs of a derivation: `None` = all of them.
    Built {
        /// The `.drv` path.
        drv: StorePath,
        /// The wanted outputs.
        outputs: Option<BTreeSet<String>>,
    },
}

/// Receives what happens during a request, on the requesting thread. Each method
/// returns whether the client is still there; `false` cancels the request.
pub trait BuildObserver {
    /// A builder started for `drv`.
    fn started(&mut self, drv: &StorePath) -> bool;
    /// A line of `drv`'s log.
    fn log_line(&mut self, drv: &StorePath, line: &str) -> bool;
    /// A message about `drv` for the client (a kept build directory).
    fn note(&mut self, drv: &StorePath, text: &str) -> bool;
    /// `drv`'s post-build hook (`hook`, the command) starts.
    fn hook_started(&mut self, _drv: &StorePath, _hook: &str) -> bool {
        true
    }
    /// A line of the output of `drv`'s post-build hook.
    fn hook_line(&mut self, _drv: &StorePath, _line: &str) -> bool {
        true
    }
    /// `drv` finished (also for failures of dependencies).
    fn finished(&mut self, drv: &StorePath, result: &BuildResult) -> bool;
    /// Called every tick: whether the client is still connected.
    fn connected(&mut self) -> bool {
        true
    }
}

enum Msg {
    Started(StorePath),
    Line(StorePath, String),
    Note(StorePath, String),
    HookStarted(StorePath, String),
    HookLine(StorePath, String),
    /// A goal has its result: the request loop looks again at once instead of at its
    /// next tick.
    Finished,
}

#[derive(Default)]
struct GoalState {
    started: bool,
    result: Option<Arc<BuildResult>>,
    subscribers: Vec<(u64, SyncSender<Msg>)>,
}

/// A derivation being built, shared by every request that waits for it.
struct SharedGoal {
    drv: StorePath,
    state: Mutex<GoalState>,
    cancel: AtomicBool,
}

impl SharedGoal {
    fn lock(&self) -> std::sync::MutexGuard<'_, GoalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn subscribe(&self, id: u64, tx: SyncSender<Msg>) {
        let mut st = self.lock();
        if st.started {
            let _ = tx.try_send(Msg::Started(self.drv.clone()));
        }
        st.subscribers.push((id, tx));
    }

    fn unsubscribe(&self, id: u64) {
        let mut st = self.lock();
        st.subscribers.retain(|(i, _)| *i != id);
        if st.subscribers.is_empty() && st.result.is_none() {
            self.cancel.store(true, Ordering::SeqCst);
        }
    }

    fn broadcast(&self, make: impl Fn() -> Msg) {
        let st = self.lock();
        for (_, tx) in &st.subscribers {
            match tx.try_send(make()) {
                Ok(()) | Err(TrySendError::Disconnected(_)) => {}
                Err(TrySendError::Full(_)) => {}
            }
        }
    }

    fn result(&self) -> Option<Arc<BuildResult>> {
        self.lock().result.clone()
    }
}

/// `max-jobs` slots shared by every request.
struct Jobs {
    running: Mutex<usize>,
    freed: Condvar,
}

struct Slot<'a>(&'a Jobs);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        let mut n = self
            .0
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *n -= 1;
        self.0.freed.notify_one();
    }
}

impl Jobs {
    fn acquire(&self, max: usize, cancel: &AtomicBool) -> Option<Slot<'_>> {
        let mut n = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            if cancel.load(Ordering::SeqCst) {
                return None;
            }
            if *n < max {
                *n += 1;
                return Some(Slot(self));
            }
            n = self
                .freed
                .wait_timeout(n, TICK)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// Builds derivations for every connection of the daemon.
pub struct Scheduler {
    cfg: BuilderConfig,
    dirs: BuildDirs,
    goals: Mutex<HashMap<(StorePath, BuildMode), Arc<SharedGoal>>>,
    jobs: Jobs,
    next_request: AtomicU64,
    builds_started: AtomicU64,
}

enum NodeState {
    Pending,
    Running(Arc<SharedGoal>),
    Done(Arc<BuildResult>),
}

struct Node {
    drv_path: StorePath,
    drv: Option<Arc<Derivation>>,
    mode: BuildMode,
    dep_paths: Vec<StorePath>,
    deps: Vec<usize>,
    state: NodeState,
    /// For a dependency failure: the failed chain below this node, nearest first.
    chain: Vec<StorePath>,
}

impl Scheduler {
    /// A scheduler with these settings; creates the private build directory parent.
    pub fn new(cfg: BuilderConfig) -> Result<Self, BuildError> {
        let dirs = BuildDirs::create(&cfg.tmp_dir)?;
        Ok(Self {
            cfg,
            dirs,
            goals: Mutex::new(HashMap::new()),
            jobs: Jobs {
                running: Mutex::new(0),
                freed: Condvar::new(),
            },
            next_request: AtomicU64::new(1),
            builds_started: AtomicU64::new(0),
        })
    }

    /// The settings.
    pub fn config(&self) -> &BuilderConfig {
        &self.cfg
    }

    /// How many builders this scheduler has started (for tests and statistics).
    pub fn builds_started(&self) -> u64 {
        self.builds_started.load(Ordering::Relaxed)
    }

    /// The derivations among `targets` (and their inputs) that a build would run:
    /// QueryMissing's `willBuild`. Unknown paths are returned separately.
    pub fn will_build(
        &self,
        store: &LocalStore,
        targets: &[Target],
    ) -> Result<(BTreeSet<StorePath>, BTreeSet<StorePath>), BuildError> {
        let mut will = BTreeSet::new();
        let mut unknown = BTreeSet::new();
        let mut todo: Vec<(StorePath, Option<BTreeSet<String>>)> = Vec::new();
        for t in targets {
            match t {
                Target::Opaque(p) => {
                    if !store.is_valid_path(p)? {
                        unknown.insert(p.clone());
                    }
                }
                Target::Built { drv, outputs } => todo.push((drv.clone(), outputs.clone())),
            }
        }
        while let Some((drv_path, wanted)) = todo.pop() {
            if will.contains(&drv_path) || will.len() > MAX_NODES {
                continue;
            }
            if !store.is_valid_path(&drv_path)? {
                unknown.insert(drv_path);
                continue;
            }
            let drv = goal::load_derivation(store, &drv_path)?;
            if !missing_outputs(store, &drv, wanted.as_ref())? {
                continue;
            }
            for (input, outs) in &drv.input_drvs {
                todo.push((input.clone(), Some(outs.clone())));
            }
            will.insert(drv_path);
        }
        Ok((will, unknown))
    }

    /// Builds `targets` and returns one result per target, in order. Blocks until
    /// everything is done, the client goes away, or (without keep-going) something
    /// failed.
    pub fn build(
        &self,
        store: &LocalStore,
        targets: &[Target],
        opts: &BuildOptions,
        observer: &mut dyn BuildObserver,
    ) -> Vec<BuildResult> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut nodes: Vec<Node> = Vec::new();
        let mut index: HashMap<StorePath, usize> = HashMap::new();
        let mut results: Vec<Option<BuildResult>> = vec![None; targets.len()];
        let mut target_nodes: Vec<Option<usize>> = vec![None; targets.len()];

        // The graph.
        let mut todo: Vec<(StorePath, BuildMode)> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            match t {
                Target::Opaque(p) => {
                    results[i] = Some(match store.is_valid_path(p) {
                        Ok(true) => BuildResult::new(Status::AlreadyValid, ""),
                        Ok(false) => BuildResult::new(
                            Status::MiscFailure,
                            format!(
                                "path '{}' is required, but there is no substituter that can build it",
                                store.print_path(p)
                            ),
                        ),
                        Err(e) => BuildResult::new(Status::MiscFailure, error_chain(&e)),
                    });
                }
                Target::Built { drv, outputs } => {
                    let loaded = goal::load_derivation(store, drv).and_then(|d| {
                        let missing = missing_outputs(store, &d, outputs.as_ref())?;
                        Ok((d, missing))
                    });
                    match loaded {
                        Err(e) => {
                            results[i] =
                                Some(BuildResult::new(Status::MiscFailure, error_chain(&e)))
                        }
                        Ok((d, missing)) => {
                            if opts.mode == BuildMode::Normal && !missing {
                                let mut r = BuildResult::new(Status::AlreadyValid, "");
                                r.outputs = goal::output_paths(store, drv, &d).unwrap_or_default();
                                results[i] = Some(r);
                            } else {
                                todo.push((drv.clone(), opts.mode));
                                target_nodes[i] = Some(usize::MAX);
                            }
                        }
                    }
                }
            }
        }
        while let Some((drv_path, mode)) = todo.pop() {
            if let Some(&k) = index.get(&drv_path) {
                if mode != BuildMode::Normal {
                    nodes[k].mode = mode;
                }
                continue;
            }
            if nodes.len() >= MAX_NODES {
                break;
            }
            let k = nodes.len();
            index.insert(drv_path.clone(), k);
            let mut node = Node {
                drv_path: drv_path.clone(),
                drv: None,
                mode,
                dep_paths: Vec::new(),
                deps: Vec::new(),
                state: NodeState::Pending,
                chain: Vec::new(),
            };
            match goal::load_derivation(store, &drv_path) {
                Ok(d) => {
                    for (input, outs) in &d.input_drvs {
                        let needed = store
                            .is_valid_path(input)
                            .map_err(BuildError::from)
                            .and_then(|valid| {
                                if !valid {
                                    return Ok(true);
                                }
                                let di = goal::load_derivation(store, input)?;
                                missing_outputs(store, &di, Some(outs))
                            });
                        match needed {
                            Ok(false) => {}
                            Ok(true) | Err(_) => {
                                node.dep_paths.push(input.clone());
                                todo.push((input.clone(), BuildMode::Normal));
                            }
                        }
                    }
                    node.drv = Some(Arc::new(d));
                }
                Err(e) => {
                    node.state = NodeState::Done(Arc::new(BuildResult::new(
                        Status::MiscFailure,
                        error_chain(&e),
                    )));
                }
            }
            nodes.push(node);
        }
        for node in nodes.iter_mut() {
            node.deps = node
                .dep_paths
                .iter()
                .filter_map(|p| index.get(p).copied())
                .collect();
        }
        for (i, t) in targets.iter().enumerate() {
            if target_nodes[i].is_some() {
                if let Target::Built { drv, .. } = t {
                    target_nodes[i] = index.get(drv).copied();
                    if target_nodes[i].is_none() {
                        results[i] = Some(BuildResult::new(
                            Status::MiscFailure,
                            "too many derivations in one request",
                        ));
                    }
                }
            }
        }

        let (tx, rx) = sync_channel::<Msg>(CHANNEL_BOUND);
        std::thread::scope(|scope| {
            self.run_request(scope, store, opts, request, &mut nodes, &tx, &rx, observer);
        });

        for (i, k) in target_nodes.iter().enumerate() {
            if let Some(k) = *k {
                let r = match &nodes[k].state {
                    NodeState::Done(r) => (**r).clone(),
                    _ => BuildResult::new(Status::Cancelled, "the build was cancelled"),
                };
                results[i] = Some(r);
            }
        }
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| BuildResult::new(Status::Cancelled, "not built")))
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn run_request<'scope, 'env: 'scope>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        store: &'env LocalStore,
        opts: &'env BuildOptions,
        request: u64,
        nodes: &mut [Node],
        tx: &SyncSender<Msg>,
        rx: &Receiver<Msg>,
        observer: &mut dyn BuildObserver,
    ) {
        let mut stopping = false;
        let mut gone = false;
        loop {
            // Start what can start; fail what cannot.
            for k in 0..nodes.len() {
                if !matches!(nodes[k].state, NodeState::Pending) {
                    continue;
                }
                let mut failed_dep = None;
                let mut all_done = true;
                for &d in &nodes[k].deps {
                    match &nodes[d].state {
                        NodeState::Done(r) if !r.status.is_success() => {
                            failed_dep.get_or_insert(d);
                        }
                        NodeState::Done(_) => {}
                        _ => all_done = false,
                    }
                }
                if let Some(d) = failed_dep {
                    let mut chain = vec![nodes[d].drv_path.clone()];
                    chain.extend(nodes[d].chain.iter().cloned());
                    let failed = nodes[k]
                        .deps
                        .iter()
                        .filter(|&&d| matches!(&nodes[d].state, NodeState::Done(r) if !r.status.is_success()))
                        .count();
                    let shown: Vec<String> = chain
                        .iter()
                        .map(|p| format!("'{}'", store.print_path(p)))
                        .collect();
                    let r = BuildResult::new(
                        Status::DependencyFailed,
                        format!(
                            "{failed} dependencies of derivation '{}' failed to build (failed: {})",
                            store.print_path(&nodes[k].drv_path),
                            shown.join(" <- ")
                        ),
                    );
                    nodes[k].chain = chain;
                    if !observer.finished(&nodes[k].drv_path, &r) {
                        gone = true;
                    }
                    nodes[k].state = NodeState::Done(Arc::new(r));
                    continue;
                }
                if !all_done || stopping || gone {
                    continue;
                }
                let goal = self.claim(scope, store, opts, &nodes[k], request, tx.clone());
                nodes[k].state = NodeState::Running(goal);
            }
            // Collect finished goals.
            for node in nodes.iter_mut() {
                let NodeState::Running(g) = &node.state else {
                    continue;
                };
                let Some(r) = g.result() else { continue };
                g.unsubscribe(request);
                if !observer.finished(&node.drv_path, &r) {
                    gone = true;
                }
                if !r.status.is_success() && !opts.keep_going {
                    stopping = true;
                }
                node.state = NodeState::Done(r);
            }
            if stopping || gone {
                // Nothing new starts; pending nodes end as cancelled, and goals only this
                // request waits for are cancelled.
                for node in nodes.iter_mut() {
                    match &node.state {
                        NodeState::Pending => {
                            node.state = NodeState::Done(Arc::new(BuildResult::new(
                                Status::Cancelled,
                                format!(
                                    "build of '{}' was not started because another build failed",
                                    store.print_path(&node.drv_path)
                                ),
                            )))
                        }
                        NodeState::Running(g) if gone => {
                            g.unsubscribe(request);
                            node.state = NodeState::Done(Arc::new(BuildResult::new(
                                Status::Cancelled,
                                "the client went away",
                            )));
                        }
                        _ => {}
                    }
                }
            }
            if nodes.iter().all(|n| matches!(n.state, NodeState::Done(_))) {
                break;
            }
            // Relay log messages until the next look.
            let mut first = true;
            loop {
                let msg = if first {
                    first = false;
                    match rx.recv_timeout(TICK) {
                        Ok(m) => m,
                        Err(RecvTimeoutError::Timeout) => break,
                        Err(RecvTimeoutError::Disconnected) => break,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(m) => m,
                        Err(_) => break,
                    }
                };
                let ok = match &msg {
                    Msg::Started(d) => observer.started(d),
                    Msg::Line(d, l) => observer.log_line(d, l),
                    Msg::Note(d, t) => observer.note(d, t),
                    Msg::HookStarted(d, h) => observer.hook_started(d, h),
                    Msg::HookLine(d, l) => observer.hook_line(d, l),
                    Msg::Finished => true,
                };
                if !ok {
                    gone = true;
                    break;
                }
            }
            if !gone && !observer.connected() {
                gone = true;
            }
        }
        // Lines still queued belong to builds that just ended; pass them on.
        while let Ok(msg) = rx.try_recv() {
            let _ = match &msg {
                Msg::Started(d) => observer.started(d),
                Msg::Line(d, l) => observer.log_line(d, l),
                Msg::Note(d, t) => observer.note(d, t),
                Msg::HookStarted(d, h) => observer.hook_started(d, h),
                Msg::HookLine(d, l) => observer.hook_line(d, l),
                Msg::Finished => true,
            };
        }
    }

    /// Subscribes to the goal building `node`, starting it if nobody is.
    fn claim<'scope, 'env: 'scope>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        store: &'env LocalStore,
        opts: &'env BuildOptions,
        node: &Node,
        request: u64,
        tx: SyncSender<Msg>,
    ) -> Arc<SharedGoal> {
        let key = (node.drv_path.clone(), node.mode);
        let mut goals = self.goals.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(g) = goals.get(&key) {
            if !g.cancel.load(Ordering::SeqCst) {
                g.subscribe(request, tx);
                return Arc::clone(g);
            }
        }
        let goal = Arc::new(SharedGoal {
            drv: node.drv_path.clone(),
            state: Mutex::new(GoalState::default()),
            cancel: AtomicBool::new(false),
        });
        goal.subscribe(request, tx);
        goals.insert(key.clone(), Arc::clone(&goal));
        drop(goals);
        let drv = node.drv.clone();
        let mode = node.mode;
        let g = Arc::clone(&goal);
        scope.spawn(move || {
            let result = match drv {
                Some(drv) => self.run_goal(store, opts, mode, &g, &drv),
                None => BuildResult::new(Status::MiscFailure, "the derivation could not be loaded"),
            };
            g.lock().result = Some(Arc::new(result));
            g.broadcast(|| Msg::Finished);
            let mut goals = self.goals.lock().unwrap_or_else(PoisonError::into_inner);
            if goals.get(&key).is_some_and(|x| Arc::ptr_eq(x, &g)) {
                goals.remove(&key);
            }
        });
        goal
    }

    fn run_goal(
        &self,
        store: &LocalStore,
        opts: &BuildOptions,
        mode: BuildMode,
        g: &SharedGoal,
        drv: &Derivation,
    ) -> BuildResult {
        let max = self.cfg.max_jobs;
        if max == 0 {
            return BuildResult::new(
                Status::MiscFailure,
                "unable to start any build; either increase '--max-jobs' or enable remote builds",
            );
        }
        let Some(_slot) = self.jobs.acquire(max, &g.cancel) else {
            return BuildResult::new(Status::Cancelled, "the build was cancelled");
        };
        // Outputs may have become valid while waiting (another store process).
        if mode == BuildMode::Normal && !missing_outputs(store, drv, None).unwrap_or(true) {
            let mut r = BuildResult::new(Status::AlreadyValid, "");
            r.outputs = goal::output_paths(store, &g.drv, drv).unwrap_or_default();
            return r;
        }
        self.builds_started.fetch_add(1, Ordering::Relaxed);
        tracing::info!("building '{}'", store.print_path(&g.drv));
        g.lock().started = true;
        g.broadcast(|| Msg::Started(g.drv.clone()));
        let events = |e: GoalEvent<'_>| match e {
            GoalEvent::Line(l) => g.broadcast(|| Msg::Line(g.drv.clone(), l.to_owned())),
            GoalEvent::Note(t) => g.broadcast(|| Msg::Note(g.drv.clone(), t.to_owned())),
            GoalEvent::HookStarted(h) => {
                g.broadcast(|| Msg::HookStarted(g.drv.clone(), h.to_owned()))
            }
            GoalEvent::HookLine(l) => g.broadcast(|| Msg::HookLine(g.drv.clone(), l.to_owned())),
        };
        let cancelled = || g.cancel.load(Ordering::SeqCst);
        let cx = GoalCx {
            store,
            cfg: &self.cfg,
            dirs: &self.dirs,
            opts,
            mode,
            events: &events,
            cancelled: &cancelled,
        };
        goal::build(&cx, &g.drv, drv)
    }
}

/// Whether any wanted output (all if `wanted` is `None`) is not valid.
fn missing_outputs(
    store: &LocalStore,
    drv: &Derivation,
    wanted: Option<&BTreeSet<String>>,
) -> Result<bool, BuildError> {
    let mut by_name: BTreeMap<&String, Option<&StorePath>> = BTreeMap::new();
    for (name, o) in &drv.outputs {
        by_name.insert(name, o.path());
    }
    for (name, path) in by_name {
        if wanted.is_some_and(|w| !w.contains(name)) {
            continue;
        }
        match path {
            Some(p) if store.is_valid_path(p)? => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}
