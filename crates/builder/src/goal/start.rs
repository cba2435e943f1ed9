//! Starting the builder: its environment and files, the sandbox (or, with
//! `sandbox = false`, a process of its own), waiting for it to end, and where it left
//! its outputs.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::io::Write;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use unrooted_format::derivation::Derivation;
use unrooted_format::StorePath;
use unrooted_sandbox::{remove_tree, Plan, SandboxSpec};
use unrooted_store::{LocalStore, OutputLocks};

use super::outputs::finish_outputs;
use super::scratch::Scratch;
use super::{fail, Failure, GoalCx, GoalEvent};
use crate::config::FixedOutputNetwork;
use crate::env::{builder_env, EnvParams};
use crate::error::{error_chain, BuildError};
use crate::export_graph::export_references_graph;
use crate::idpool::{IdLease, IdPool};
use crate::log::{log_path, BuildLog, TAIL_LINES};
use crate::run::{self, Ended, Limits, Runner};
use crate::{BuildMode, Status};

/// What one run of a builder works on: the derivation, its outputs and inputs, and
/// what the goal holds for it.
pub(super) struct BuildJob<'a> {
    /// The derivation's store path.
    pub drv_path: &'a StorePath,
    /// The derivation.
    pub drv: &'a Derivation,
    /// Its output paths, by output name.
    pub outputs: &'a BTreeMap<String, StorePath>,
    /// The closure of its inputs: bound into the sandbox, and what outputs may refer
    /// to (besides the outputs).
    pub closure: &'a BTreeSet<StorePath>,
    /// Whether it is a fixed-output derivation, which gets a network.
    pub fixed_output: bool,
    /// The builtin builder it names (`builtin:<name>`), if any.
    pub builtin: Option<&'static str>,
    /// The build directory on the host.
    pub host_build_dir: &'a Path,
    /// The build's slice of ids, when sandboxed builds get slices.
    pub ids: Option<BuildIds<'a>>,
    /// The outputs' locks, held until they are registered.
    pub held: &'a OutputLocks<'a>,
}

/// A build's slice of ids.
#[derive(Clone, Copy)]
pub(super) struct BuildIds<'a> {
    /// The pool it comes from.
    pub pool: &'a IdPool,
    /// The held slice.
    pub lease: &'a IdLease,
    /// Whether the builder gets the whole slice as root (`uid-range`).
    pub uid_range: bool,
}

/// The program to start, its arguments and its complete environment.
struct BuilderCommand {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
}

/// Runs the builder of `job` in its build directory and registers the outputs.
pub(super) fn run_builder(
    cx: &GoalCx<'_>,
    job: &BuildJob<'_>,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let store = cx.store;
    let shown = store.print_path(job.drv_path);
    let scratch = Scratch::new(store, cx.cfg.sandbox, job.drv_path, job.outputs)?;
    let command = prepare_command(cx, job, &scratch)?;
    let log_file = cx.cfg.log_dir.as_ref().map(|d| log_path(d, job.drv_path));
    let mut log =
        BuildLog::create(log_file.clone(), cx.cfg.max_log_size).map_err(BuildError::io(
            "creating the build log",
            log_file.clone().unwrap_or_default(),
        ))?;
    let (read, write) = run::log_pipe()?;
    // The sandbox root (and with it every stray entry) goes away on every path out.
    let root = if cx.cfg.sandbox {
        Some(cx.dirs.new_root(store)?)
    } else {
        None
    };
    let mut runner = match &root {
        Some(root) => start_sandboxed(cx, job, &root.path, command, &write)?,
        None => start_direct(cx, job, &scratch, command, &write)?,
    };
    drop(write);
    let ended = watch(cx, &mut runner, read, &mut log);
    let reclaimed = matches!(&runner, Runner::Sandboxed(c) if c.reclaimed());
    drop(runner);
    // The sandbox is gone (its PID namespace with it), so nothing runs as the slice's
    // ids: everything the build left (outputs, stray entries, the build directory,
    // however it set their modes) goes back to the store owner, whose files the output
    // handling and the removal below then deal with as in the single-id mode. The
    // helper did so from inside the build's namespace as it ended; a helper that did
    // not get that far (killed, failed) leaves it to a reclaiming helper of its own.
    if let (Some(ids), Some(root), false) = (job.ids, &root, reclaimed) {
        cx.cfg
            .helper
            .reclaim(
                &ids.pool.reclaim_maps(ids.lease.slice()),
                &[root.path.clone(), job.host_build_dir.to_path_buf()],
            )
            .map_err(BuildError::from)?;
    }
    check_ended(ended?, &shown, &log)?;
    let root_path = root.as_ref().map(|r| r.path.as_path());
    let locations = output_locations(store, job.outputs, root_path, &scratch);
    if scratch.is_empty() {
        return finish_outputs(cx, job, job.outputs, &locations);
    }
    // The valid outputs built again are then dropped (not when repairing: they
    // replace the old ones); they can still be referred to.
    scratch.rewrite_back(&locations)?;
    let keep = |name: &String| cx.mode == BuildMode::Repair || !scratch.contains(name);
    let wanted: BTreeMap<String, StorePath> = job
        .outputs
        .iter()
        .filter(|(n, _)| keep(n))
        .map(|(n, p)| (n.clone(), p.clone()))
        .collect();
    let wanted_at: BTreeMap<String, PathBuf> =
        locations.into_iter().filter(|(n, _)| keep(n)).collect();
    finish_outputs(cx, job, &wanted, &wanted_at)?;
    Ok(job.outputs.clone())
}

/// The builder's environment, arguments and files (written into the build
/// directory), pointed at the scratch paths where there are any.
fn prepare_command(
    cx: &GoalCx<'_>,
    job: &BuildJob<'_>,
    scratch: &Scratch,
) -> Result<BuilderCommand, Failure> {
    let store = cx.store;
    let inner_build_dir = if cx.cfg.sandbox {
        cx.cfg.sandbox_build_dir.clone()
    } else {
        job.host_build_dir.to_path_buf()
    };
    let impure = |k: &str| std::env::var(k).ok();
    let graph = export_references_graph(store, job.drv, job.closure)
        .map_err(|e| fail(Status::MiscFailure, error_chain(&e)))?;
    let mut benv = builder_env(
        job.drv,
        &EnvParams {
            store_dir: store.store_dir(),
            build_dir: &inner_build_dir,
            cores: cx
                .opts
                .cores
                .filter(|c| *c > 0)
                .unwrap_or_else(|| cx.cfg.effective_cores()),
            outputs: job.outputs,
            impure_env: &impure,
            extra_attrs: &graph.attrs,
        },
    )?;
    scratch.rewrite_env(&mut benv);
    for (name, contents) in benv.files.iter().chain(&graph.files) {
        let p = job.host_build_dir.join(name);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&p)
            .and_then(|mut f| f.write_all(contents))
            .map_err(BuildError::io("writing", &p))?;
    }
    let mut env = benv.env;
    if job.builtin == Some("fetchurl") {
        builtin_fetchurl_env(cx, &mut env);
    }
    Ok(BuilderCommand {
        program: PathBuf::from(OsStr::from_bytes(&job.drv.builder)),
        args: benv.args,
        env,
    })
}

/// What the daemon's settings give `builtin:fetchurl`, in place of anything the
/// derivation named so.
fn builtin_fetchurl_env(cx: &GoalCx<'_>, env: &mut Vec<(OsString, OsString)>) {
    env.retain(|(k, _)| k != crate::builtins::HASHED_MIRRORS_VAR);
    if !cx.cfg.hashed_mirrors.is_empty() {
        env.push((
            crate::builtins::HASHED_MIRRORS_VAR.into(),
            cx.cfg.hashed_mirrors.join(" ").into(),
        ));
    }
}

/// Store paths among the sandbox paths bring their closure along, as in Nix (bound,
/// not reference-scan candidates).
fn sandbox_paths_closure(cx: &GoalCx<'_>) -> Result<BTreeSet<StorePath>, Failure> {
    let store = cx.store;
    let mut extra = BTreeSet::new();
    for sp in &cx.cfg.sandbox_paths {
        let Some(text) = sp.source.to_str() else {
            continue;
        };
        let Some(rest) = text.strip_prefix(store.store_dir().as_str()) else {
            continue;
        };
        let base = rest.trim_start_matches('/').split('/').next().unwrap_or("");
        if let Ok(p) = StorePath::from_base_name(base) {
            if store.is_valid_path(&p).map_err(BuildError::from)? {
                extra.insert(p);
            }
        }
    }
    Ok(store.query_closure(&extra).map_err(BuildError::from)?)
}

/// Starts the builder in a sandbox rooted at `root`, its output going to `log`.
fn start_sandboxed(
    cx: &GoalCx<'_>,
    job: &BuildJob<'_>,
    root: &Path,
    command: BuilderCommand,
    log: &OwnedFd,
) -> Result<Runner, Failure> {
    let store = cx.store;
    let dir = store.store_dir();
    let extra = sandbox_paths_closure(cx)?;
    if dir.as_str() != store.config().real_store_dir.as_os_str().to_string_lossy() {
        return Err(fail(
            Status::MiscFailure,
            "building in a store whose directory is not where it is on disk is not supported by unrooted yet",
        ));
    }
    let mut spec = SandboxSpec::new(
        root.to_path_buf(),
        PathBuf::from(dir.as_str()),
        job.host_build_dir.to_path_buf(),
        command.program,
    );
    spec.sandbox_build_dir = cx.cfg.sandbox_build_dir.clone();
    spec.inputs = job
        .closure
        .iter()
        .chain(&extra)
        .map(|p| store.real_path(p))
        .collect();
    spec.sandbox_paths = cx.cfg.sandbox_paths.clone();
    spec.network = job.fixed_output;
    if job.fixed_output {
        fixed_output_network(&mut spec, &cx.cfg.fixed_output_network, job.builtin)?;
    }
    spec.builtin = job.builtin.map(str::to_owned);
    spec.args = command.args;
    spec.env = command.env;
    if let Some(ids) = job.ids {
        (spec.host_uid, spec.host_gid) = ids.pool.owner();
        spec.id_slice = Some(ids.lease.slice().clone());
        spec.uid_range = ids.uid_range;
        spec.reclaim = vec![root.to_path_buf(), job.host_build_dir.to_path_buf()];
    }
    let plan = Plan::new(&spec).map_err(|e| BuildError::Sandbox(e.into()))?;
    let helper = match (&cx.cfg.exec_helper, job.builtin) {
        (Some(fast), None) => fast,
        _ => &cx.cfg.helper,
    };
    let child = helper
        .spawn(&plan, std::os::fd::AsFd::as_fd(log))
        .map_err(BuildError::from)?;
    Ok(Runner::Sandboxed(child))
}

/// Starts the builder directly (`sandbox = false`), its output going to `log`.
fn start_direct(
    cx: &GoalCx<'_>,
    job: &BuildJob<'_>,
    scratch: &Scratch,
    command: BuilderCommand,
    log: &OwnedFd,
) -> Result<Runner, Failure> {
    let store = cx.store;
    // Unsandboxed builders write the real output paths; leftovers of an earlier
    // failed build would be in the way.
    for p in job.outputs.values() {
        if !store.is_valid_path(p).map_err(BuildError::from)? {
            let _ = remove_tree(&store.real_path(p));
        }
    }
    for p in scratch.paths() {
        let _ = remove_tree(&store.real_path(p));
    }
    // A builtin runs in a process of its own too (the helper's binary, which has the
    // builtins), never in the daemon.
    let (program, args) = match job.builtin {
        Some(name) => {
            let helper = &cx.cfg.helper;
            let mut args = helper.args().to_vec();
            args.extend(["--builtin".into(), name.into()]);
            (helper.program().to_path_buf(), args)
        }
        None => (command.program, command.args),
    };
    Ok(Runner::Direct(run::spawn_direct(
        &program,
        &args,
        &command.env,
        job.host_build_dir,
        log,
    )?))
}

/// Watches the builder until it ends, passing its lines on and into `log`.
fn watch(
    cx: &GoalCx<'_>,
    runner: &mut Runner,
    read: OwnedFd,
    log: &mut BuildLog,
) -> Result<Ended, BuildError> {
    let limits = Limits {
        timeout: cx.opts.timeout,
        max_silent: cx.opts.max_silent_time,
        max_log: cx.cfg.max_log_size,
    };
    let events = cx.events;
    let mut on_line = |l: &str| events(GoalEvent::Line(l));
    let ended = run::watch(runner, read, log, limits, cx.cancelled, &mut on_line);
    log.finish(&mut on_line);
    ended
}

/// The failure of a builder that did not exit with 0, with the log's last lines
/// where it failed itself.
fn check_ended(ended: Ended, shown: &str, log: &BuildLog) -> Result<(), Failure> {
    let tail = || {
        let lines: Vec<&str> = log.tail().collect();
        if lines.is_empty() {
            return String::new();
        }
        let mut s = format!(";\nlast {} log lines:\n", lines.len().min(TAIL_LINES));
        for l in lines {
            s.push_str("> ");
            s.push_str(l);
            s.push('\n');
        }
        s.push_str(&format!("For full logs, run 'nix log {shown}'."));
        s
    };
    let (status, msg) = match ended {
        Ended::Exited(0) => return Ok(()),
        Ended::Exited(code) => (
            Status::PermanentFailure,
            format!(
                "builder for '{shown}' failed with exit code {code}{}",
                tail()
            ),
        ),
        Ended::Signaled(sig) => (
            Status::PermanentFailure,
            format!("builder for '{shown}' failed due to signal {sig}{}", tail()),
        ),
        Ended::TimedOut(secs) => (
            Status::TimedOut,
            format!("building of '{shown}' timed out after {secs} seconds"),
        ),
        Ended::Silent(secs) => (
            Status::TimedOut,
            format!("building of '{shown}' timed out after {secs} seconds of silence"),
        ),
        Ended::LogLimit(max) => (
            Status::LogLimitExceeded,
            format!(
                "building of '{shown}' killed after writing more than {max} bytes of log output"
            ),
        ),
        Ended::Cancelled => (
            Status::MiscFailure,
            format!("building of '{shown}' was cancelled: no client waits for it any more"),
        ),
    };
    Err(fail(status, msg))
}

/// Where the builder left each output: in the sandbox root's store directory, or
/// (unsandboxed) at the output's path or its scratch path.
fn output_locations(
    store: &LocalStore,
    outputs: &BTreeMap<String, StorePath>,
    root: Option<&Path>,
    scratch: &Scratch,
) -> BTreeMap<String, PathBuf> {
    let dir = store.store_dir();
    outputs
        .iter()
        .map(|(name, p)| {
            let at = match root {
                Some(r) => r
                    .join(dir.as_str().trim_start_matches('/'))
                    .join(p.to_base_name()),
                None => store.real_path(scratch.get(name).unwrap_or(p)),
            };
            (name.clone(), at)
        })
        .collect()
}

/// Gives a sandboxed fixed-output build its network: `pasta`'s, with the host's
/// `/etc/services` and `/etc/hosts` and a resolver file naming pasta's gateway, or
/// the host's network with its three files.
fn fixed_output_network(
    spec: &mut SandboxSpec,
    how: &FixedOutputNetwork,
    builtin: Option<&str>,
) -> Result<(), Failure> {
    let host_files = unrooted_sandbox::host_network_files();
    match how {
        FixedOutputNetwork::Pasta(pasta) => {
            spec.pasta = Some(unrooted_sandbox::Pasta::new(pasta.clone()));
            spec.network_files = host_files
                .into_iter()
                .filter(|f| f.target != Path::new("/etc/resolv.conf"))
                .collect();
            let host = fs::read("/etc/resolv.conf").unwrap_or_default();
            spec.resolv_conf = Some(unrooted_sandbox::pasta_resolv_conf(&host));
        }
        FixedOutputNetwork::Host => spec.network_files = host_files,
        FixedOutputNetwork::Missing(pasta) if builtin == Some("fetchurl") => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                tracing::warn!(
                    "{} is missing: builtin:fetchurl shares the host's network (the daemon's own fetcher, which cannot reach abstract sockets); fixed-output builds that run a program fail until passt is installed",
                    pasta.display()
                )
            });
            spec.network_files = host_files;
        }
        FixedOutputNetwork::Missing(pasta) => {
            return Err(fail(
                Status::MiscFailure,
                format!(
                    "fixed-output builds get their network through pasta, and {} is not there: install pasta (Debian's package passt), set pasta-path to it, or let fixed-output builds share the host's network with fixed-output-network = host",
                    pasta.display()
                ),
            ))
        }
    }
    Ok(())
}
