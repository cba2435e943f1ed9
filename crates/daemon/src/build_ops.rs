//! The build operations (BuildPaths, BuildPathsWithResults, BuildDerivation,
//! QueryMissing) on top of the shared [`unrooted_builder::Scheduler`], and the log
//! messages Nix 2.8 clients expect while a build runs: one `build` activity (type 105,
//! `building '<drv>'`, fields drvPath, machine "", curRound 1, nrRounds 1) per
//! derivation, a `buildLogLine` result (101) per line of its log, and its stop.
//!
//! Around them, the activities of Nix's `Worker` that newer clients' progress bar is
//! drawn from (issue 19, checked against Debian 13's nix-daemon 2.26): `realise`
//! (102), `builds` (104) and `copyPaths` (103), all at level 0 with no text, with a
//! `progress` result (105: done, expected, running, failed) on `builds` and
//! `copyPaths` and two `setExpected` results (106: file transfers, copied paths) on
//! `realise` whenever a count changes, as `Worker::updateProgress` sends them; and the
//! debug-level "querying info about missing paths" activity of `queryMissing`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::BufWriter;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use unrooted_builder::{
    error_chain, BuildMode as Mode, BuildObserver, BuildOptions, BuildResult as Result_,
    BuilderConfig, Scheduler, Status, Target,
};
use unrooted_format::{Hash, StorePath};
use unrooted_protocol::reply::MissingInfo;
use unrooted_protocol::request::BuildMode;
use unrooted_protocol::stderr::{ActivityId, ActivityType, Field, ResultType, Verbosity};
use unrooted_protocol::{
    BuildResult, BuildStatus, DerivedPath, DrvOutput, OutputsSpec, Realisation, StderrWriter,
};
use unrooted_sandbox::{Sandbox, SandboxPath};

use crate::config::{Config, SandboxMode};
use crate::session::Session;
use crate::LayerSettings;

type Out = StderrWriter<BufWriter<UnixStream>>;

/// The hidden verb of the `unrooted` binary that runs the sandbox helper.
const HELPER_VERB: &str = "sandbox-helper";

/// The daemon's own executable, which runs the sandbox helper.
pub(crate) fn daemon_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// The scheduler for this configuration. Builders are sandboxed unless the
/// administrator set `sandbox = false`; the sandbox helper is this executable.
/// `exe` is the daemon's executable ([`daemon_exe`]; the in-process test harness names
/// another, its own being a test binary).
pub(crate) fn scheduler_for(
    config: &Config,
    exe: &std::path::Path,
) -> Result<Scheduler, unrooted_builder::BuildError> {
    let exe = exe.to_path_buf();
    let mut cfg = BuilderConfig::new(Sandbox::new(exe.clone(), vec![HELPER_VERB.into()]));
    cfg.exec_helper = Sandbox::beside(&exe);
    match &cfg.exec_helper {
        Some(h) => tracing::info!(
            "builders are started through {} (builtin builders through this executable)",
            h.program().display()
        ),
        None => tracing::info!(
            "builders are started through this executable (install unrooted-sandbox beside it for a faster start)"
        ),
    }
    let s = &config.settings;
    cfg.sandbox = s.sandbox != SandboxMode::Disabled;
    if cfg.sandbox {
        // The helper that starts builders keeps a spare waiting for the next build.
        match cfg.exec_helper.take() {
            Some(fast) => cfg.exec_helper = Some(fast.with_spare_helper()),
            None => cfg.helper = cfg.helper.clone().with_spare_helper(),
        }
    }
    cfg.sandbox_paths = s
        .sandbox_paths
        .iter()
        .filter_map(|e| match SandboxPath::parse(e.as_ref()) {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::warn!("ignoring sandbox-paths entry '{e}': {err}");
                None
            }
        })
        .collect();
    cfg.log_dir = Some(config.locations.log_dir.clone());
    cfg.max_jobs = usize::try_from(s.max_jobs).unwrap_or(usize::MAX);
    cfg.cores = u32::try_from(s.cores).unwrap_or(0);
    let raw = &config.raw;
    if let Some(v) = raw.get("max-build-log-size").and_then(|v| v.parse().ok()) {
        cfg.max_log_size = v;
    }
    if let Some(v) = raw.get("system").filter(|v| !v.is_empty()) {
        cfg.system = v.to_owned();
    }
    if let Some(v) = raw.get("hashed-mirrors") {
        cfg.hashed_mirrors = v.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(v) = raw.get("system-features") {
        cfg.system_features = v.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(v) = raw.get("extra-platforms") {
        cfg.extra_platforms = v.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(v) = raw.get("sandbox-build-dir").filter(|v| v.starts_with('/')) {
        cfg.sandbox_build_dir = PathBuf::from(v);
    }
    if cfg.sandbox {
        cfg.fixed_output_network = fixed_output_network(
            raw.get("fixed-output-network"),
            raw.get("pasta-path"),
            std::env::var_os("PATH").as_deref(),
        );
    }
    if cfg.sandbox {
        if let Err(e) = unrooted_sandbox::check_user_namespaces() {
            tracing::warn!("builds will fail until this is fixed: {e}");
        }
        cfg.ids = unrooted_builder::IdMode::detect(
            &config.id_settings(),
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
            &config.locations.state_dir,
            &cfg.helper,
        );
        // Before the store's and the build directories' sweeps: what a daemon killed
        // mid-build left owned by its slices is the store owner's again.
        if let unrooted_builder::IdMode::Ranges(pool) = &cfg.ids {
            if (pool.slices() as usize) < cfg.max_jobs {
                tracing::warn!(
                    "max-jobs = {} but the id pool holds {} slices: builds past those wait for one (give the store owner more subordinate ids, or see id-count)",
                    cfg.max_jobs,
                    pool.slices()
                );
            }
            pool.reclaim_leftovers(
                &cfg.helper,
                std::path::Path::new(config.locations.store_dir.as_str()),
                &cfg.tmp_dir,
            );
        }
    } else {
        tracing::warn!("sandbox = false: builders run unsandboxed as the store owner");
    }
    Scheduler::new(cfg)
}

/// `fixed-output-network` (`pasta`, the default, or `host`) and `pasta-path` (a path,
/// or a name looked up in `PATH`; default `pasta`), logged at start: the host's network
/// with a warning, as it must be asked for; a missing pasta (or an unusable
/// `/dev/net/tun`) with a warning saying what fails.
fn fixed_output_network(
    mode: Option<&str>,
    pasta_path: Option<&str>,
    path_var: Option<&std::ffi::OsStr>,
) -> unrooted_builder::FixedOutputNetwork {
    use unrooted_builder::FixedOutputNetwork as Net;
    match mode {
        Some("host") => {
            tracing::warn!(
                "fixed-output-network = host: fixed-output builds share the host's network namespace, so their builders can reach the host's abstract Unix sockets, loopback listeners and /proc/net (use pasta unless you must)"
            );
            return Net::Host;
        }
        None | Some("pasta") | Some("") => {}
        Some(other) => {
            tracing::warn!("fixed-output-network = {other} is not 'pasta' or 'host': using pasta")
        }
    }
    let wanted = pasta_path.filter(|p| !p.is_empty()).unwrap_or("pasta");
    let executable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    let found = if wanted.contains('/') {
        Some(PathBuf::from(wanted)).filter(|p| p.is_absolute() && executable(p))
    } else {
        path_var
            .into_iter()
            .flat_map(std::env::split_paths)
            .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
            .map(|d| d.join(wanted))
            .find(|p| executable(p))
    };
    match found {
        Some(p) => {
            // pasta runs as the builder's ids, so the device must be open to all, as
            // Debian's udev rule makes it (0666).
            let tun = std::fs::metadata("/dev/net/tun");
            let usable = tun.as_ref().is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o006 == 0o006
            });
            if usable {
                tracing::info!(
                    "fixed-output builds get a network namespace of their own, connected through {}",
                    p.display()
                );
            } else {
                tracing::warn!(
                    "fixed-output builds get their network through {}, which needs /dev/net/tun readable and writable by all (mode 0666, as udev makes it on Debian): they will fail until it is",
                    p.display()
                );
            }
            Net::Pasta(p)
        }
        None => {
            tracing::warn!(
                "pasta ({wanted}) is not installed: fixed-output builds that run a program will fail (install Debian's passt, set pasta-path, or set fixed-output-network = host); builtin:fetchurl shares the host's network meanwhile"
            );
            Net::Missing(PathBuf::from(wanted))
        }
    }
}

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

/// Relays scheduler events to the client as Nix's activities and log lines.
struct ClientObserver<'s, 'o> {
    s: &'s Session<'s>,
    out: &'o mut Out,
    activities: HashMap<StorePath, ActivityId>,
    /// The running post-build hooks' activities.
    hooks: HashMap<StorePath, ActivityId>,
    top: BTreeSet<StorePath>,
    mode: Mode,
    progress: Option<WorkerProgress>,
}

/// The counts behind Nix's `Worker::updateProgress`, for the derivations this request
/// builds (`expected` are those not finished yet, as Nix counts its live goals).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct BuildCounts {
    expected: u64,
    done: u64,
    running: u64,
    failed: u64,
}

impl BuildCounts {
    /// The `progress` fields of the `builds` activity: done, done + expected, running,
    /// failed.
    fn fields(&self) -> Vec<Field> {
        vec![
            Field::Int(self.done),
            Field::Int(self.done + self.expected),
            Field::Int(self.running),
            Field::Int(self.failed),
        ]
    }

    /// A counted build started.
    fn started(&mut self) {
        self.running += 1;
    }

    /// A counted build ended with `status` (`was_running` when it had started).
    fn finished(&mut self, status: Status, was_running: bool) {
        self.expected = self.expected.saturating_sub(1);
        if was_running {
            self.running = self.running.saturating_sub(1);
        }
        if status == Status::Built {
            self.done += 1;
        } else if !status.is_success() && status != Status::DependencyFailed {
            self.failed += 1;
        }
    }
}

/// The `realise`, `builds` and `copyPaths` activities of one request.
struct WorkerProgress {
    realise: ActivityId,
    builds: ActivityId,
    copy_paths: ActivityId,
    counts: BuildCounts,
    /// The derivations counted (those the scheduler said it would build).
    counted: BTreeSet<StorePath>,
    running: BTreeSet<StorePath>,
}

impl WorkerProgress {
    /// Starts the three activities, as Nix's `Worker` constructor does, and sends the
    /// first counts.
    fn start(
        out: &mut Out,
        counted: BTreeSet<StorePath>,
    ) -> std::result::Result<Self, unrooted_protocol::ProtocolError> {
        let mut start = |kind| out.start_activity(Verbosity::Error, kind, "", Vec::new(), None);
        let realise = start(ActivityType::REALISE)?;
        let builds = start(ActivityType::BUILDS)?;
        let copy_paths = start(ActivityType::COPY_PATHS)?;
        let p = Self {
            realise,
            builds,
            copy_paths,
            counts: BuildCounts {
                expected: counted.len() as u64,
                ..BuildCounts::default()
            },
            counted,
            running: BTreeSet::new(),
        };
        p.update(out)?;
        Ok(p)
    }

    /// `Worker::updateProgress`: builds, substitutions (none here), expected
    /// downloads and copies (none).
    fn update(&self, out: &mut Out) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        out.result(self.builds, ResultType::PROGRESS, self.counts.fields())?;
        out.result(
            self.copy_paths,
            ResultType::PROGRESS,
            vec![Field::Int(0), Field::Int(0), Field::Int(0), Field::Int(0)],
        )?;
        for kind in [ActivityType::FILE_TRANSFER, ActivityType::COPY_PATH] {
            out.result(
                self.realise,
                ResultType::SET_EXPECTED,
                vec![Field::Int(kind.0), Field::Int(0)],
            )?;
        }
        Ok(())
    }

    fn started(
        &mut self,
        drv: &StorePath,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        if self.counted.contains(drv) && self.running.insert(drv.clone()) {
            self.counts.started();
            self.update(out)?;
        }
        Ok(())
    }

    fn finished(
        &mut self,
        drv: &StorePath,
        status: Status,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        if self.counted.remove(drv) {
            let was_running = self.running.remove(drv);
            self.counts.finished(status, was_running);
            self.update(out)?;
        }
        Ok(())
    }

    /// Stops the activities in the order Nix's `Worker` destructor does.
    fn stop(self, out: &mut Out) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        out.stop_activity(self.copy_paths)?;
        out.stop_activity(self.builds)?;
        out.stop_activity(self.realise)
    }
}

/// The debug-level activity Nix's `queryMissing` runs in, started and stopped.
pub(crate) fn query_missing_activity(
    out: &mut Out,
) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
    let id = out.start_activity(
        Verbosity::Debug,
        ActivityType::UNKNOWN,
        "querying info about missing paths",
        Vec::new(),
        None,
    )?;
    out.stop_activity(id)
}

/// The text of a derivation's `build` activity, as Nix's `DerivationGoal` words it:
/// a requested derivation rebuilt by `--check`/`--rebuild` is "checking outputs of",
/// by `--repair` "repairing outputs of"; everything else (dependencies included,
/// which Nix builds normally) is "building".
fn build_activity_text(mode: Mode, requested: bool, shown: &str) -> String {
    match (mode, requested) {
        (Mode::Check, true) => format!("checking outputs of '{shown}'"),
        (Mode::Repair, true) => format!("repairing outputs of '{shown}'"),
        _ => format!("building '{shown}'"),
    }
}

impl ClientObserver<'_, '_> {
    fn sent(&mut self, r: Result<(), unrooted_protocol::ProtocolError>) -> bool {
        r.is_ok()
    }
}

impl BuildObserver for ClientObserver<'_, '_> {
    fn started(&mut self, drv: &StorePath) -> bool {
        // Temp roots: the derivation and its outputs stay alive while they are built.
        self.s.add_temp_root(drv);
        if let Ok(map) = self.s.state.store.query_derivation_output_map(drv) {
            for p in map.values() {
                self.s.add_temp_root(p);
            }
        }
        let shown = self.s.cx.store_dir.display(drv);
        let text = build_activity_text(self.mode, self.top.contains(drv), &shown);
        let mut progress_sent = Ok(());
        let r = self.out.start_activity(
            Verbosity::Info,
            ActivityType::BUILD,
            &text,
            vec![
                Field::String(shown.into_bytes()),
                Field::String(Vec::new()),
                Field::Int(1),
                Field::Int(1),
            ],
            None,
        );
        if let Some(p) = self.progress.as_mut() {
            if r.is_ok() {
                progress_sent = p.started(drv, self.out);
            }
        }
        match r {
            Ok(id) if progress_sent.is_ok() => {
                self.activities.insert(drv.clone(), id);
                self.out.flush().is_ok()
            }
            _ => false,
        }
    }

    fn log_line(&mut self, drv: &StorePath, line: &str) -> bool {
        let Some(&id) = self.activities.get(drv) else {
            return true;
        };
        let r = self.out.result(
            id,
            ResultType::BUILD_LOG_LINE,
            vec![Field::String(line.as_bytes().to_vec())],
        );
        self.sent(r)
    }

    fn note(&mut self, _drv: &StorePath, text: &str) -> bool {
        let r = self.out.log(Verbosity::Error, text).map(|_| ());
        self.sent(r)
    }

    fn hook_started(&mut self, drv: &StorePath, hook: &str) -> bool {
        let shown = self.s.cx.store_dir.display(drv);
        let parent = self.activities.get(drv).copied();
        let r = self.out.start_activity(
            Verbosity::Info,
            ActivityType::POST_BUILD_HOOK,
            &format!("running post-build-hook '{hook}'"),
            vec![Field::String(shown.into_bytes())],
            parent,
        );
        match r {
            Ok(id) => {
                self.hooks.insert(drv.clone(), id);
                true
            }
            Err(_) => false,
        }
    }

    fn hook_line(&mut self, drv: &StorePath, line: &str) -> bool {
        let Some(&id) = self.hooks.get(drv) else {
            return true;
        };
        let r = self.out.result(
            id,
            ResultType::POST_BUILD_LOG_LINE,
            vec![Field::String(line.as_bytes().to_vec())],
        );
        self.sent(r)
    }

    fn finished(&mut self, drv: &StorePath, result: &Result_) -> bool {
        if let Some(id) = self.hooks.remove(drv) {
            if self.out.stop_activity(id).is_err() {
                return false;
            }
        }
        if let Some(p) = self.progress.as_mut() {
            if p.finished(drv, result.status, self.out).is_err() {
                return false;
            }
        }
        // Built here (not substituted, not already valid): to the upload caches,
        // without waiting for them.
        if result.status == Status::Built {
            if let Some(u) = &self.s.state.uploader {
                u.enqueue(result.outputs.values().cloned().collect());
            }
        }
        if let Some(id) = self.activities.remove(drv) {
            if self.out.stop_activity(id).is_err() {
                return false;
            }
        }
        // Failures of dependencies are shown as Nix shows them; the requested
        // derivations' own errors end the request.
        if !result.status.is_success()
            && result.status != Status::Cancelled
            && !self.top.contains(drv)
        {
            let r = self
                .out
                .log(Verbosity::Error, &format!("error: {}", result.error))
                .map(|_| ());
            if r.is_err() {
                return false;
            }
        }
        self.out.flush().is_ok()
    }

    fn connected(&mut self) -> bool {
        if self.out.flush().is_err() {
            return false;
        }
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let sock = self.out.get_mut().get_ref();
        let mut fds = [PollFd::new(sock, PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) => true,
            Ok(_) => !fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => true,
        }
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

/// Runs the scheduler for `paths` with activities on `out`.
fn run(s: &Session<'_>, paths: &[DerivedPath], mode: BuildMode, out: &mut Out) -> Vec<Result_> {
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
    // A client that went away is noticed by the scheduler through `connected`.
    let progress = WorkerProgress::start(out, counted).ok();
    if progress.is_some() {
        let _ = query_missing_activity(out);
    }
    let mut observer = ClientObserver {
        s,
        out,
        activities: HashMap::new(),
        hooks: HashMap::new(),
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
pub(crate) fn build_paths(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
) -> std::result::Result<(), String> {
    let results = run(s, paths, mode, out);
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
pub(crate) fn build_paths_with_results(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
) -> Vec<BuildResult> {
    let results = run(s, paths, mode, out);
    paths
        .iter()
        .zip(results)
        .map(|(p, r)| to_wire(s, p, &r))
        .collect()
}

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
pub(crate) fn query_missing(
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

#[cfg(test)]
mod activity_text_tests {
    use super::{build_activity_text, Mode};

    /// Issue 19: `nix build --rebuild` printed "building" where Nix (2.8 and 2.26)
    /// prints "checking outputs of" (derivation-goal.cc).
    #[test]
    fn check_and_repair_are_worded_as_in_nix() {
        let p = "/nix/store/x-a.drv";
        assert_eq!(
            build_activity_text(Mode::Normal, true, p),
            "building '/nix/store/x-a.drv'"
        );
        assert_eq!(
            build_activity_text(Mode::Check, true, p),
            "checking outputs of '/nix/store/x-a.drv'"
        );
        assert_eq!(
            build_activity_text(Mode::Repair, true, p),
            "repairing outputs of '/nix/store/x-a.drv'"
        );
        // A dependency built on the way is built normally.
        assert_eq!(
            build_activity_text(Mode::Check, false, p),
            "building '/nix/store/x-a.drv'"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::fixed_output_network;
    use std::os::unix::fs::PermissionsExt;
    use unrooted_builder::FixedOutputNetwork as Net;

    #[test]
    fn fixed_output_network_is_pasta_when_found_and_host_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let pasta = dir.path().join("pasta");
        std::fs::write(&pasta, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&pasta, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().as_os_str();
        // Found in PATH by name (the default), or at the configured path.
        assert_eq!(
            fixed_output_network(None, None, Some(path)),
            Net::Pasta(pasta.clone())
        );
        let p = pasta.to_str().unwrap();
        assert_eq!(
            fixed_output_network(Some("pasta"), Some(p), None),
            Net::Pasta(pasta.clone())
        );
        // Not there: missing, never the host's network on its own.
        assert_eq!(
            fixed_output_network(None, Some("/nonexistent/pasta"), Some(path)),
            Net::Missing("/nonexistent/pasta".into())
        );
        // A relative path is not looked up relative to anything.
        assert!(matches!(
            fixed_output_network(None, Some("bin/pasta"), Some(path)),
            Net::Missing(_)
        ));
        // The host's network only when asked for.
        assert_eq!(
            fixed_output_network(Some("host"), Some(p), Some(path)),
            Net::Host
        );
    }
}
