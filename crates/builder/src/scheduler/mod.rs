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

mod graph;
mod request;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

use unrooted_format::derivation::Derivation;
use unrooted_format::StorePath;
use unrooted_store::LocalStore;

use crate::config::BuilderConfig;
use crate::error::BuildError;
use crate::goal::{self, BuildDirs, GoalCx, GoalEvent};
use crate::{BuildMode, BuildOptions, BuildResult, Status};
use graph::RequestGraph;
use request::RequestLoop;

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
    impure_outputs: goal::ImpureOutputs,
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
            impure_outputs: Default::default(),
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
        let mut graph = RequestGraph::new(store, targets, opts);
        let (tx, rx) = sync_channel::<Msg>(CHANNEL_BOUND);
        std::thread::scope(|scope| {
            RequestLoop {
                scheduler: self,
                scope,
                store,
                opts,
                request,
                tx: &tx,
                rx: &rx,
                observer,
                stopping: false,
                gone: false,
            }
            .run(&mut graph.nodes);
        });
        graph.results()
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
            impure_outputs: &self.impure_outputs,
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
    // With `ca-derivations`, outputs without a path in the `.drv` may be realised.
    let by_name = goal::partial_output_paths(store, drv)?;
    for (name, path) in by_name {
        if wanted.is_some_and(|w| !w.contains(&name)) {
            continue;
        }
        match path {
            Some(p) if store.is_valid_path(&p)? => {}
            _ => return Ok(true),
        }
    }
    Ok(false)
}
