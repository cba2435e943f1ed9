//! `unrooted-bench`: times unrooted against the real Nix 2.8 tools on the same input,
//! in one run on one machine, and prints the ratios the issues set as goals.
//!
//! Workloads:
//! - `nar` ([`nar`]): NAR serialisation + SHA-256 of a generated tree, against
//!   `nix-hash`, `nix-store --dump | sha256sum` and `sha256sum`;
//! - `daemon` ([`daemon`]): `unrooted daemon` (unprivileged) against `nix-daemon` 2.8
//!   (as root): query round trips, `nix-store --add`, small adds, peak memory.
//!
//! Commands are run once to warm the page cache, then `--runs` times; the median wall
//! time is reported.

mod daemon;
mod mem;
mod nar;
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
}

/// A workload to run alone.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Workload {
    /// NAR serialisation + SHA-256 of a tree.
    Nar,
    /// The daemons: queries, imports, small adds, memory.
    Daemon,
}

fn main() -> anyhow::Result<()> {
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
    if selected(Workload::Nar) {
        nar::run(&unrooted, &args.dir, args.size_mib, args.runs)?;
    }
    if selected(Workload::Daemon) {
        if selected(Workload::Nar) {
            println!();
        }
        daemon::run(&daemon::Options {
            unrooted,
            nix_daemon: args.nix_daemon,
            dir: args.dir,
            add_size_mib: args.add_size_mib,
            runs: args.runs,
            small_paths: args.small_paths,
            query_secs: args.query_secs,
            connections: args.connections,
        })?;
    }
    Ok(())
}
