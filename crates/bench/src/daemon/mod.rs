//! The daemon workloads: `unrooted daemon` (as an unprivileged user) and the real
//! `nix-daemon` 2.8 (as root, as Nix is normally deployed) on two private stores,
//! driven by the same clients in the same run.
//!
//! - IsValidPath and QueryPathInfo round trips over one connection and over several
//!   concurrent ones, through the protocol crate's client at protocol 1.34 (Nix 2.8's)
//!   for both daemons, so both speak the same protocol;
//! - `nix-store --add` of a generated tree with the real client, against the hashing
//!   floor (NAR serialisation + SHA-256 of the same tree, warm cache);
//! - many small paths added one by one over one connection;
//! - the peak memory of each daemon's process tree during all of the above.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use unrooted_format::StorePathName;
use unrooted_protocol::request::ContentAddressMethod;
use unrooted_protocol::ProtocolVersion;
use unrooted_testkit::daemon::{test_user, DAEMON_USER};

use crate::mem::{self, Peak, Sampler};
use crate::nar::generate;
use crate::store_ops;
use crate::util::median;

mod measure;
mod server;

use measure::{add_tree, pingpong_rate, query_rate, small_paths, Query, QueryRun, QUERY_TRIALS};
pub(crate) use server::{daemon_owner, nix_version, Daemon, Daemons};

/// What the daemon workloads need from the command line.
pub struct Options {
    /// The `unrooted` binary.
    pub unrooted: PathBuf,
    /// The `nix-daemon` binary.
    pub nix_daemon: PathBuf,
    /// Where generated input lives between runs.
    pub dir: PathBuf,
    /// Size of the tree given to `nix-store --add`, in MiB.
    pub add_size_mib: u64,
    /// Timed runs of `nix-store --add` (after one warm-up run).
    pub runs: usize,
    /// Small paths added one by one.
    pub small_paths: usize,
    /// Seconds each daemon spends on each query measurement, over all its trials.
    pub query_secs: f64,
    /// Concurrent connections in the concurrent query measurements.
    pub connections: usize,
    /// AddIndirectRoot requests sent over one connection.
    pub indirect_roots: usize,
}

/// The goals the issue sets.
const GOAL_IMPORT: f64 = 1.5;
const GOAL_MEMORY: f64 = 0.1;

/// Runs the daemon workloads and prints their tables.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    // Generate the input before any daemon runs, so its cost is neither sampled nor timed.
    let add_dir = opts.dir.join("add");
    fs::create_dir_all(&add_dir)?;
    let tree = add_dir.join("tree");
    let concat = add_dir.join("concat.bin");
    generate(&tree, &concat, opts.add_size_mib)?;

    let root_user = rustix::process::geteuid().is_root();
    let owner = if root_user {
        Some(test_user(DAEMON_USER).with_context(|| format!("creating the user {DAEMON_USER}"))?)
    } else {
        None
    };
    let tmp = tempfile::Builder::new()
        .prefix("unrooted-bench-daemons-")
        .tempdir()?;
    fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
    let mut daemons = Daemons {
        list: Vec::new(),
        tmp,
    };
    let unrooted = Daemon::start(
        "unrooted",
        daemons.tmp.path().join("unrooted"),
        &[&opts.unrooted, Path::new("daemon")],
        owner,
        "",
        &[],
    )?;
    daemons.list.push(unrooted);
    let nix = Daemon::start(
        "nix-daemon",
        daemons.tmp.path().join("nix-daemon"),
        &[&opts.nix_daemon],
        None,
        "build-users-group =\n",
        &[],
    )?;
    daemons.list.push(nix);

    print_preamble(opts, &daemons, root_user);
    let sampler = Sampler::start(daemons.list.iter().map(Daemon::pid).collect(), "idle");
    std::thread::sleep(Duration::from_millis(100));
    let result = workloads(opts, &daemons.list, &sampler, &tree, &concat);
    let hwm: Vec<Option<u64>> = daemons
        .list
        .iter()
        .map(|d| mem::status_field(d.pid(), "VmHWM:"))
        .collect();
    let (phases, peaks) = sampler.finish();
    // The stores go away with the temporary root; the logs are kept for a look later.
    let logs = opts.dir.join("daemon-logs");
    fs::create_dir_all(&logs)?;
    for d in &daemons.list {
        let _ = fs::copy(
            d.root.join("daemon.log"),
            logs.join(format!("{}.log", d.label)),
        );
    }
    if let Err(e) = result {
        for d in &daemons.list {
            eprintln!("--- {} log (tail) ---", d.label);
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
        return Err(e);
    }
    print_memory(&daemons.list, &phases, &peaks, &hwm);
    print_log_notes(&daemons.list, &logs);
    Ok(())
}

/// What the daemon table compares, and as which users.
fn print_preamble(opts: &Options, daemons: &Daemons, root_user: bool) {
    let version = Command::new(&opts.nix_daemon)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default();
    println!("## Daemons: unrooted daemon vs {version}, same machine, same run");
    if root_user {
        println!(
            "unrooted runs as {DAEMON_USER} (setpriv, no capabilities); nix-daemon runs as root"
        );
    } else {
        println!(
            "NOT ROOT: both daemons run as the current user (uid {}), unlike a real deployment",
            rustix::process::geteuid().as_raw()
        );
    }
    println!(
        "queries through unrooted-protocol's client at protocol {} for both; stores under {}",
        ProtocolVersion::NIX_2_8,
        daemons.tmp.path().display()
    );
    println!();
}

/// Points at daemon logs that hold errors or warnings.
fn print_log_notes(daemons: &[Daemon], logs: &Path) {
    for d in daemons {
        let errors = d.log().lines().filter(|l| is_error_line(l)).count();
        if errors > 0 {
            println!(
                "note: {} logged {errors} error or warning lines (all in {}), e.g.:",
                d.label,
                logs.join(format!("{}.log", d.label)).display()
            );
            for l in d.log().lines().filter(|l| is_error_line(l)).take(5) {
                println!("  {l}");
            }
        }
    }
}

/// Whether a daemon log line reports an error or a warning.
fn is_error_line(l: &str) -> bool {
    ["ERROR", "WARN", "error:", "warning:"]
        .iter()
        .any(|w| l.contains(w))
}

/// One row: a figure per daemon (higher is better) and the unrooted / nix-daemon ratio.
pub(crate) fn row(label: &str, unit: &str, u: f64, n: f64, goal: Option<f64>) {
    let ratio = u / n;
    let goal = match goal {
        Some(g) => format!(">= {g}x  {}", if ratio >= g { "met" } else { "NOT MET" }),
        None => String::new(),
    };
    println!("{label:<38} {unit:<8} {u:>11.0} {n:>11.0} {ratio:>8.2}x  {goal}");
}

pub(crate) fn header() {
    println!(
        "{:<38} {:<8} {:>11} {:>11} {:>9}  goal",
        "workload", "unit", "unrooted", "nix-daemon", "unr/nix"
    );
}

fn workloads(
    opts: &Options,
    daemons: &[Daemon],
    sampler: &Sampler,
    tree: &Path,
    concat: &Path,
) -> anyhow::Result<()> {
    sampler.phase("queries");
    header();
    let targets = query_targets(daemons)?;
    query_workloads(opts, daemons, &targets)?;
    wait_for_connection_processes(daemons);
    small_and_root_workloads(opts, daemons, sampler, &targets)?;
    add_workload(opts, daemons, sampler, tree, concat)
}

/// Adds to each daemon's store the path the query workloads ask about.
fn query_targets(daemons: &[Daemon]) -> anyhow::Result<Vec<unrooted_format::StorePath>> {
    let mut targets = Vec::new();
    for d in daemons {
        let mut c = d.connect()?;
        let info = c.add_to_store(
            StorePathName::new("bench-query-target")?,
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"the path the query workloads ask about\n"[..],
        )?;
        targets.push(info.path);
    }
    Ok(targets)
}

/// IsValidPath and QueryPathInfo over 1 and `opts.connections` connections, each
/// against the socket floor of the same number of connections.
fn query_workloads(
    opts: &Options,
    daemons: &[Daemon],
    targets: &[unrooted_format::StorePath],
) -> anyhow::Result<()> {
    let dur = Duration::from_secs_f64(opts.query_secs / QUERY_TRIALS as f64);
    let floors = [1, opts.connections]
        .map(|conns| store_ops::Floor::measure(conns, dur, QUERY_TRIALS, pingpong_rate))
        .into_iter()
        .collect::<anyhow::Result<Vec<_>>>()?;
    for op in [Query::IsValidPath, Query::QueryPathInfo] {
        for (conns, floor) in [1, opts.connections].into_iter().zip(&floors) {
            // Short interleaved trials, so that a burst of load elsewhere on the
            // machine or an unlucky placement of threads on CPUs (which alone can
            // change a one-connection rate several times over) does not fall on one
            // daemon only; the median trial is reported.
            let mut trials = vec![Vec::new(); daemons.len()];
            for trial in 0..QUERY_TRIALS {
                for i in turns(daemons.len(), trial) {
                    trials[i].push(query_rate(&daemons[i], &targets[i], conns, dur, op)?);
                }
            }
            let plural = if conns == 1 { "" } else { "s" };
            row(
                &format!("{op:?}, {conns} connection{plural}"),
                "ops/s",
                median_rate(&trials[0]),
                median_rate(&trials[1]),
                None,
            );
            store_ops::floor_row(median_rate(&trials[0]), median_rate(&trials[1]), floor);
            store_ops::cpu_row(cpu_us_per_op(&trials[0]), cpu_us_per_op(&trials[1]), floor);
        }
    }
    store_ops::print_floors(&floors, opts.connections);
    Ok(())
}

/// The median rate of query trials, in ops/s.
fn median_rate(trials: &[QueryRun]) -> f64 {
    let mut r: Vec<f64> = trials.iter().map(|q| q.ops as f64 / q.secs).collect();
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

/// The daemon's CPU time per query over all trials, in microseconds.
fn cpu_us_per_op(trials: &[QueryRun]) -> f64 {
    let ops: u64 = trials.iter().map(|q| q.ops).sum();
    trials.iter().map(|q| q.cpu_secs).sum::<f64>() * 1e6 / ops as f64
}

/// nix-daemon's connection processes take a moment to exit once their client hangs
/// up; their memory belongs to the queries, not to what comes next.
fn wait_for_connection_processes(daemons: &[Daemon]) {
    for d in daemons {
        let deadline = Instant::now() + Duration::from_secs(2);
        while mem::tree(d.pid()).len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Small paths added one by one, then AddIndirectRoot over one connection.
fn small_and_root_workloads(
    opts: &Options,
    daemons: &[Daemon],
    sampler: &Sampler,
    targets: &[unrooted_format::StorePath],
) -> anyhow::Result<()> {
    sampler.phase("small paths");
    let rates = store_ops::interleaved(daemons, opts.small_paths, small_paths)?;
    row(
        &format!("{} small paths, one by one", opts.small_paths),
        "paths/s",
        rates[0],
        rates[1],
        Some(store_ops::GOAL_SMALL_ADDS),
    );

    sampler.phase("indirect roots");
    let rates = store_ops::indirect_roots(daemons, targets, opts.indirect_roots)?;
    row(
        &format!("{} AddIndirectRoot, 1 connection", opts.indirect_roots),
        "roots/s",
        rates[0],
        rates[1],
        Some(store_ops::GOAL_INDIRECT_ROOTS),
    );
    Ok(())
}

/// `nix-store --add` of the generated tree, against the hashing floor.
fn add_workload(
    opts: &Options,
    daemons: &[Daemon],
    sampler: &Sampler,
    tree: &Path,
    concat: &Path,
) -> anyhow::Result<()> {
    sampler.phase("nix-store --add");
    let add = add_tree(opts, daemons, tree)?;
    let times = &add.wall;
    let mib = opts.add_size_mib as f64;
    row(
        &format!("nix-store --add, {} MiB tree", opts.add_size_mib),
        "MiB/s",
        mib / times[0],
        mib / times[1],
        None,
    );

    // The floor is measured while the daemons idle, after the imports, so the tree is
    // in the page cache for it as it was for them.
    sampler.phase("hashing floor");
    let (floor, _) = median(
        &format!(
            "{} hash path --type sha256 {}",
            opts.unrooted.display(),
            tree.display()
        ),
        opts.runs,
    )?;
    let (sha, _) = median(&format!("sha256sum {}", concat.display()), opts.runs)?;
    // The real client serialises the tree itself before the daemon sees a byte; its
    // share bounds what any daemon can reach.
    let (dump, _) = median(
        &format!("nix-store --dump {} > /dev/null", tree.display()),
        opts.runs,
    )?;
    // What writing the same files costs without any store around it.
    let copy_dir = tree.with_file_name("copy");
    let (copy, _) = median(
        &format!(
            "rm -rf {c} && cp -a {} {c}",
            tree.display(),
            c = copy_dir.display()
        ),
        opts.runs,
    )?;
    let _ = fs::remove_dir_all(&copy_dir);
    let floor = floor.as_secs_f64();
    println!();
    println!(
        "hashing floor: unrooted hash path --type sha256 {floor:.3} s ({:.0} MiB/s); sha256sum of the same bytes {:.3} s ({:.0} MiB/s)",
        mib / floor,
        sha.as_secs_f64(),
        mib / sha.as_secs_f64()
    );
    println!(
        "the client's share: nix-store --dump > /dev/null {:.3} s ({:.0} MiB/s)",
        dump.as_secs_f64(),
        mib / dump.as_secs_f64()
    );
    println!(
        "writing the same files: cp -a {:.3} s ({:.0} MiB/s, no fsync)",
        copy.as_secs_f64(),
        mib / copy.as_secs_f64()
    );
    println!(
        "nix-store --add time: unrooted {:.3} s, nix-daemon {:.3} s (median of {})",
        times[0], times[1], opts.runs
    );
    println!(
        "CPU per add: client {:.3} s / {:.3} s; unrooted daemon {:.3} s (nix-daemon's is in exited connection processes, not measured)",
        add.client_cpu[0], add.client_cpu[1], add.daemon_cpu[0]
    );
    let u = times[0] / floor;
    println!(
        "import / hashing floor: unrooted {u:.2}x (goal <= {GOAL_IMPORT}x, {}), nix-daemon {:.2}x",
        if u <= GOAL_IMPORT { "met" } else { "NOT MET" },
        times[1] / floor
    );
    Ok(())
}

/// The order in which `n` daemons take their turn in round `round`: alternating, so
/// none is always first.
pub(crate) fn turns(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

fn print_memory(
    daemons: &[Daemon],
    phases: &[(String, Vec<Peak>)],
    peaks: &[Peak],
    hwm: &[Option<u64>],
) {
    let mib = |k: u64| k as f64 / 1024.0;
    println!();
    println!("peak memory of each daemon's process tree, sampled every 10 ms (MiB):");
    println!(
        "{:<44} {:>10} {:>11} {:>9}  goal",
        "", "unrooted", "nix-daemon", "unr/nix"
    );
    let ratio = |u: u64, n: u64| u as f64 / n as f64;
    let r = ratio(peaks[0].rss_kib, peaks[1].rss_kib);
    println!(
        "{:<44} {:>10.1} {:>11.1} {:>8.2}x  <= {GOAL_MEMORY}x  {}",
        "peak sum of VmRSS, all workloads",
        mib(peaks[0].rss_kib),
        mib(peaks[1].rss_kib),
        r,
        if r <= GOAL_MEMORY { "met" } else { "NOT MET" }
    );
    println!(
        "{:<44} {:>10.1} {:>11.1} {:>8.2}x",
        "peak sum of PSS, all workloads",
        mib(peaks[0].pss_kib),
        mib(peaks[1].pss_kib),
        ratio(peaks[0].pss_kib, peaks[1].pss_kib)
    );
    for (name, p) in phases {
        println!(
            "{:<44} {:>10} {:>11}",
            format!("  VmRSS in phase {name:?} (procs)"),
            format!("{:.1} ({})", mib(p[0].rss_kib), p[0].processes),
            format!("{:.1} ({})", mib(p[1].rss_kib), p[1].processes),
        );
    }
    let show = |h: Option<u64>| h.map_or("?".to_owned(), |k| format!("{:.1}", mib(k)));
    println!(
        "VmHWM of the main process: {} {} MiB, {} {} MiB (nix-daemon's connection processes are separate)",
        daemons[0].label,
        show(hwm[0]),
        daemons[1].label,
        show(hwm[1])
    );
}
