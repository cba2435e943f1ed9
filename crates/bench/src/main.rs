//! `unrooted-bench`: times unrooted against the real Nix 2.8 tools on the same input,
//! in one run on one machine, and prints the ratios the issues set as goals.
//!
//! Workloads:
//! - `nar` ([`nar`]): NAR serialisation + SHA-256 of a generated tree, against
//!   `nix-hash`, `nix-store --dump | sha256sum` and `sha256sum`;
//! - `daemon` ([`daemon`]): `unrooted daemon` (unprivileged) against `nix-daemon` 2.8
//!   (as root): query round trips, `nix-store --add`, small adds, peak memory;
//! - `build` ([`build`]): sandboxed builds through `nix-build` against both daemons
//!   (nix-daemon with `sandbox = true` and build users), and the sandbox set-up alone
//!   against the bare `unshare -Urmpfn true` floor;
//! - `gc` ([`gc`]): `nix-store --gc` of dead paths with live ones present, and
//!   `--print-roots` (unrooted through its roots helper) against nix-daemon's scan;
//! - `subst` ([`subst`]): substituting a closure from a loopback binary cache into each
//!   daemon's empty store, and `unrooted serve`'s narinfo latency and NAR throughput.
//!
//! Commands are run once to warm the page cache, then `--runs` times; the median wall
//! time is reported.

mod build;
mod daemon;
mod floor;
mod gc;
mod mem;
mod nar;
mod store_ops;
mod subst;
mod util;

use std::fs;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, ValueEnum};

/// Benchmark unrooted against Nix 2.8 on the same machine.
#[derive(Parser)]
struct Args {
    /// Where the generated input lives (kept between runs; regenerated if the size changes).
    #[arg(long, default_value = "/tmp/unrooted-bench")]
    dir: PathBuf,
    /// Run only this workload (default: all of them).
    #[arg(long, value_enum)]
    only: Option<Workload>,
    /// Total bytes of file contents in the NAR workload's tree, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Timed runs per command (after one warm-up run); the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// The `unrooted` binary to measure.
    #[arg(long, default_value = "target/release/unrooted")]
    unrooted: PathBuf,
    /// The `nix-daemon` to compare the daemon with (run as root when the bench is).
    #[arg(long, default_value = "/usr/bin/nix-daemon")]
    nix_daemon: PathBuf,
    /// Size of the tree the daemon workload gives to `nix-store --add`, in MiB.
    #[arg(long, default_value_t = 200)]
    add_size_mib: u64,
    /// Small paths the daemon workload adds one by one.
    #[arg(long, default_value_t = 2000)]
    small_paths: usize,
    /// Seconds each daemon spends on each query measurement of the daemon workload,
    /// split over three interleaved trials (the median trial is reported).
    #[arg(long, default_value_t = 1.5)]
    query_secs: f64,
    /// Concurrent connections in the concurrent query measurements.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// AddIndirectRoot requests the daemon workload sends over one connection (as
    /// `nix-build -o` does, each after an AddTempRoot).
    #[arg(long, default_value_t = 2500)]
    indirect_roots: usize,
    /// Independent trivial derivations built by one `nix-build` in the build workload.
    #[arg(long, default_value_t = 200)]
    builds: usize,
    /// Iterations of each sandbox set-up loop in the build workload.
    #[arg(long, default_value_t = 50)]
    sandbox_loops: usize,
    /// Dead paths the GC workload collects (as many live ones are rooted beside them).
    #[arg(long, default_value_t = 10_000)]
    gc_paths: usize,
    /// Paths in the closure the substitution workload substitutes.
    #[arg(long, default_value_t = 2000)]
    subst_paths: usize,
    /// Total size of that closure, in MiB.
    #[arg(long, default_value_t = 200)]
    subst_size_mib: u64,
    /// Size of the NAR `unrooted serve` sends in its throughput measurement, in MiB.
    #[arg(long, default_value_t = 256)]
    serve_nar_mib: u64,
    /// `max-jobs` of both daemons in the substitution workload (Nix 2.8 bounds its
    /// substitutions by it).
    #[arg(long, default_value_t = 2)]
    subst_max_jobs: usize,
}

/// A workload to run alone.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// NAR serialisation + SHA-256 of a tree.
    Nar,
    /// The daemons: queries, imports, small adds, memory.
    Daemon,
    /// Sandboxed builds and the sandbox set-up.
    Build,
    /// Garbage collection and root discovery.
    Gc,
    /// Substitution from a binary cache, and `unrooted serve`.
    Subst,
}

/// Prints the machine's load, which every figure above depends on.
fn uptime(when: &str) {
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average (1, 5, 15 min) at the {when}: {}; {} CPUs",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(", "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
}

fn main() -> anyhow::Result<()> {
    // The echo server of the socket floor is this binary, started by itself.
    floor::serve_if_asked();
    let args = Args::parse();
    let unrooted = fs::canonicalize(&args.unrooted).with_context(|| {
        format!(
            "{} (build it with cargo build --release)",
            args.unrooted.display()
        )
    })?;
    anyhow::ensure!(args.runs > 0, "--runs must be at least 1");
    fs::create_dir_all(&args.dir)?;
    let selected = |w: Workload| args.only.is_none() || args.only == Some(w);
    uptime("start");
    let mut first = true;
    let mut gap = || {
        if !std::mem::take(&mut first) {
            println!();
        }
    };
    if selected(Workload::Nar) {
        gap();
        nar::run(&unrooted, &args.dir, args.size_mib, args.runs)?;
    }
    if selected(Workload::Daemon) {
        gap();
        daemon::run(&daemon::Options {
            unrooted: unrooted.clone(),
            nix_daemon: args.nix_daemon.clone(),
            dir: args.dir.clone(),
            add_size_mib: args.add_size_mib,
            runs: args.runs,
            small_paths: args.small_paths,
            query_secs: args.query_secs,
            connections: args.connections,
            indirect_roots: args.indirect_roots.max(1),
        })?;
    }
    if selected(Workload::Build) {
        gap();
        build::run(&build::Options {
            unrooted: unrooted.clone(),
            nix_daemon: args.nix_daemon.clone(),
            runs: args.runs,
            many: args.builds,
            sandbox_loops: args.sandbox_loops.max(1),
        })?;
    }
    if selected(Workload::Gc) {
        gap();
        gc::run(&gc::Options {
            unrooted: unrooted.clone(),
            nix_daemon: args.nix_daemon.clone(),
            runs: args.runs,
            paths: args.gc_paths,
        })?;
    }
    if selected(Workload::Subst) {
        gap();
        subst::run(&subst::Options {
            unrooted,
            nix_daemon: args.nix_daemon,
            logs: args.dir.join("subst-logs"),
            paths: args.subst_paths.max(2),
            size_mib: args.subst_size_mib,
            serve_nar_mib: args.serve_nar_mib,
            max_jobs: args.subst_max_jobs.max(1),
        })?;
    }
    println!();
    uptime("end");
    Ok(())
}
