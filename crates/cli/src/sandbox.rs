//! `unrooted sandbox-run`: run one command in a build sandbox made from arguments, to
//! see what a builder would see; and the hidden `sandbox-helper` verb, the
//! single-threaded process that sets a sandbox up (see the `unrooted-sandbox` crate)
//! and runs the builtin builders of `unrooted-builder` inside it, or, with `--builtin`,
//! runs one unsandboxed (`sandbox = false`).

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use unrooted_sandbox::{exit_code, BuildStatus, Sandbox, SandboxPath, SandboxRun, SandboxRunError};

/// The hidden verb the sandbox re-executes this binary with.
pub const HELPER_VERB: &str = "sandbox-helper";

/// Options of `unrooted sandbox-run`.
#[derive(Args)]
pub struct SandboxArgs {
    /// The store directory as the builder sees it (inputs must be directly inside).
    #[arg(
        long,
        value_name = "DIR",
        env = "NIX_STORE_DIR",
        default_value = "/nix/store"
    )]
    store_dir: PathBuf,
    /// A store path to bind read-only (repeatable): the builder's input closure.
    #[arg(long = "input", value_name = "PATH")]
    inputs: Vec<PathBuf>,
    /// An extra `sandbox-paths` entry, `TARGET=SOURCE` or `PATH`, `?` = optional
    /// (repeatable); bound read-only.
    #[arg(long = "sandbox-path", value_name = "ENTRY")]
    sandbox_paths: Vec<OsString>,
    /// The host build directory, bound at /build (created 0700 if missing).
    #[arg(long, value_name = "DIR")]
    build_dir: PathBuf,
    /// A path the command is expected to create in the store dir; after the run it is
    /// reported if it exists in the sandbox root (which is then kept).
    #[arg(long = "output", value_name = "PATH")]
    outputs: Vec<PathBuf>,
    /// Share the host network, as fixed-output derivations do (default: loopback only).
    #[arg(long)]
    network: bool,
    /// A network namespace of its own, connected through this `pasta`, as fixed-output
    /// derivations get by default (implies the network).
    #[arg(long, value_name = "PATH")]
    pasta: Option<PathBuf>,
    /// An extra environment variable NAME=VALUE (repeatable), after Nix's own.
    #[arg(long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Where to make the private parent of the sandbox root (default: $TMPDIR).
    #[arg(long, value_name = "DIR")]
    work_dir: Option<PathBuf>,
    /// Keep the sandbox root afterwards and print where it is.
    #[arg(long)]
    keep_root: bool,
    /// Run the command this many times, each in a new sandbox (the root and the build
    /// directory emptied in between, as the daemon does between builds), and print the
    /// time per run: what one build's sandbox costs, without this process's own start.
    #[arg(long, value_name = "N", default_value_t = 1)]
    repeat: u32,
    /// The builder (a path inside the sandbox) and its arguments.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<OsString>,
}

/// Options of the hidden `sandbox-helper` verb.
#[derive(Args)]
pub struct HelperArgs {
    /// Run this builtin builder here, unsandboxed, with this process's environment
    /// and working directory, instead of reading a plan from stdin.
    #[arg(long, value_name = "NAME")]
    builtin: Option<String>,
}

/// Runs the hidden helper verb; never returns.
pub fn helper(args: HelperArgs) -> ! {
    let builtins = unrooted_builder::builtins::BUILTINS;
    match args.builtin {
        Some(name) => unrooted_sandbox::builtin_main(builtins, &name),
        None => unrooted_sandbox::helper_main_with_builtins(builtins),
    }
}

/// Runs the command in a sandbox; the exit code is the builder's (128+N for signal N).
pub fn run(args: SandboxArgs) -> anyhow::Result<ExitCode> {
    if !args.build_dir.exists() {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&args.build_dir)
            .with_context(|| format!("creating {}", args.build_dir.display()))?;
    }
    let mut env = Vec::new();
    for kv in &args.env {
        let (k, v) = kv.split_once('=').context("--env wants NAME=VALUE")?;
        env.push((k.into(), v.into()));
    }
    let prepared = SandboxRun {
        store_dir: args.store_dir,
        build_dir: args.build_dir,
        inputs: args.inputs,
        sandbox_paths: args
            .sandbox_paths
            .iter()
            .map(|e| SandboxPath::parse(e))
            .collect::<Result<_, _>>()?,
        network: args.network,
        pasta: args.pasta,
        host_network_files: true,
        env,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        work_dir: args.work_dir.unwrap_or_else(std::env::temp_dir),
        command: args.command,
    }
    .prepare()?;

    // The helper the daemon would start for this builder.
    let exe = std::env::current_exe().context("finding this executable")?;
    let sandbox =
        Sandbox::beside(&exe).unwrap_or_else(|| Sandbox::new(exe, vec![HELPER_VERB.into()]));
    let stdout = std::io::stdout();
    let started = std::time::Instant::now();
    let mut result: Result<BuildStatus, SandboxRunError> = prepared
        .run(&sandbox, stdout.as_fd(), None)
        .map_err(SandboxRunError::from);
    for _ in 1..args.repeat {
        if result.is_err() {
            break;
        }
        result = prepared.run_again(&sandbox, stdout.as_fd());
    }
    if args.repeat > 1 {
        eprintln!(
            "{} runs, {:.3} ms per run",
            args.repeat,
            started.elapsed().as_secs_f64() * 1e3 / f64::from(args.repeat)
        );
    }
    let keep = report_outputs(prepared.root(), &args.outputs) || args.keep_root;
    if keep {
        eprintln!("sandbox root kept at {}", prepared.root().display());
    } else {
        prepared.remove()?;
    }
    Ok(exit_code(result?))
}

/// Says which of the expected `outputs` the command created in the sandbox root;
/// true if any was (the root is then kept).
fn report_outputs(root: &Path, outputs: &[PathBuf]) -> bool {
    let mut created = false;
    for out in outputs {
        let inside = root.join(out.strip_prefix("/").unwrap_or(out));
        if inside.symlink_metadata().is_ok() {
            eprintln!("output {} created at {}", out.display(), inside.display());
            created = true;
        } else {
            eprintln!("output {} was not created", out.display());
        }
    }
    created
}
