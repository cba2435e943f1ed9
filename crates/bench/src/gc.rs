//! The garbage collection workloads (issue 5): `unrooted daemon` (unprivileged, asking
//! the privileged roots helper `unrooted-find-roots` for the roots it cannot read)
//! against `nix-daemon` 2.8 as root, through the real client, in the same run.
//!
//! Each store gets `2 n` small text paths (added over a few protocol connections), `n`
//! of them rooted by symlinks in `<state>/gcroots/bench/` owned by the store owner.
//! Then:
//! - `nix-store --gc --print-roots` (the `n` roots plus the runtime ones), against
//!   nix-daemon's in-process scan;
//! - `nix-store --gc`, which deletes the `n` dead paths: paths deleted per second. The
//!   live paths are checked afterwards, all of them.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{chown, lchown, symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use unrooted_format::{StorePath, StorePathName};
use unrooted_protocol::request::ContentAddressMethod;
use unrooted_testkit::daemon::DAEMON_USER;

use crate::build::{met, time_row};
use crate::daemon::{daemon_owner, header, nix_version, row, turns, Daemon, Daemons};
use crate::util::median_of;

/// What the GC workloads need from the command line.
pub struct Options {
    /// The `unrooted` binary (`unrooted-find-roots` is looked for next to it).
    pub unrooted: PathBuf,
    /// The `nix-daemon` binary.
    pub nix_daemon: PathBuf,
    /// Timed `--print-roots` runs per daemon (after one warm-up).
    pub runs: usize,
    /// Dead paths collected, and live (rooted) paths beside them.
    pub paths: usize,
}

/// The goals the issue sets.
/// Issue 20's: collection at least 4x nix-daemon's rate, `--print-roots` no slower,
/// the 20,000 adds over 4 connections at least 2x.
const GOAL_DELETE_RATE: f64 = 4.0;
const GOAL_ROOTS: f64 = 1.0;
const GOAL_POPULATE: f64 = 2.0;

/// Connections that add the paths at once.
const POPULATE_CONNECTIONS: usize = 4;

/// The roots helper, run as root, killed (by its pid) when dropped.
struct Helper(Child);

impl Drop for Helper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `unrooted-find-roots` as root on `socket` for the store under `root`,
/// answering `owner_uid`, and waits until the socket is handed to that user.
fn start_helper(exe: &Path, root: &Path, socket: &Path, owner_uid: u32) -> anyhow::Result<Helper> {
    let log = root.with_file_name("roots-helper.log");
    let child = Command::new(exe)
        .arg("--store-dir")
        .arg(root.join("store"))
        .arg("--state-dir")
        .arg(root.join("state"))
        .args(["--owner-uid", &owner_uid.to_string(), "--listen"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log)?)
        .spawn()
        .with_context(|| format!("starting {}", exe.display()))?;
    let mut helper = Helper(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if fs::symlink_metadata(socket).is_ok_and(|m| m.uid() == owner_uid) {
            return Ok(helper);
        }
        if let Some(status) = helper.0.try_wait()? {
            bail!(
                "the roots helper exited with {status}: {}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        ensure!(Instant::now() < deadline, "the roots helper did not listen");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the GC workloads and prints their table.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    ensure!(
        rustix::process::geteuid().is_root(),
        "the GC workload needs root: the roots helper runs as root, the daemon as {DAEMON_USER}"
    );
    let helper_exe = opts.unrooted.with_file_name("unrooted-find-roots");
    ensure!(
        helper_exe.exists(),
        "{} is missing (cargo build --release -p unrooted-roots)",
        helper_exe.display()
    );
    let owner = daemon_owner()?.context("no daemon user")?;
    let mut daemons = Daemons::new("unrooted-bench-gc-")?;
    // `--listen` wants a directory only root can write to.
    let helper_dir = daemons.tmp.path().join("roots-helper");
    fs::create_dir(&helper_dir)?;
    fs::set_permissions(&helper_dir, fs::Permissions::from_mode(0o755))?;
    let socket = helper_dir.join("socket");
    let unrooted_root = daemons.tmp.path().join("unrooted");
    let unrooted = Daemon::start(
        "unrooted",
        unrooted_root.clone(),
        &[&opts.unrooted, Path::new("daemon")],
        Some(owner),
        "",
        // For the daemon alone: the Nix client warns about settings it does not know.
        &[(
            "NIX_CONFIG",
            format!("roots-helper-socket = {}\n", socket.display()),
        )],
    )?;
    daemons.list.push(unrooted);
    let _helper = start_helper(&helper_exe, &unrooted_root, &socket, owner.0)?;
    let nix = Daemon::start(
        "nix-daemon",
        daemons.tmp.path().join("nix-daemon"),
        &[&opts.nix_daemon],
        None,
        "build-users-group =\n",
        &[],
    )?;
    daemons.list.push(nix);

    println!(
        "## GC: unrooted daemon + roots helper vs {}, same machine, same run",
        nix_version(&opts.nix_daemon)
    );
    println!(
        "unrooted as {DAEMON_USER}, unrooted-find-roots as root; nix-daemon as root; client: nix-store (root, NIX_REMOTE=daemon)"
    );
    println!(
        "each store: {n} live paths rooted by {n} symlinks in <state>/gcroots/bench, {n} dead paths",
        n = opts.paths
    );
    println!();
    let result = workloads(opts, &daemons.list, [Some(owner), None]);
    if result.is_err() {
        daemons.print_log_tails();
        eprintln!(
            "--- roots helper log ---\n{}",
            fs::read_to_string(daemons.tmp.path().join("roots-helper.log")).unwrap_or_default()
        );
    }
    result
}

/// Adds text paths `<prefix>-<i>` for `i` in `0..n` over a few connections; the paths,
/// in order, and the rate.
fn populate(d: &Daemon, prefix: &str, n: usize) -> anyhow::Result<(Vec<StorePath>, f64)> {
    let start = Instant::now();
    let chunks: Vec<Vec<usize>> = (0..POPULATE_CONNECTIONS)
        .map(|c| (c..n).step_by(POPULATE_CONNECTIONS).collect())
        .collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = chunks
            .iter()
            .map(|chunk| {
                s.spawn(move || -> anyhow::Result<Vec<(usize, StorePath)>> {
                    let mut c = d.connect()?;
                    let mut out = Vec::with_capacity(chunk.len());
                    for &i in chunk {
                        let text = format!("{prefix} {i}\n");
                        let info = c
                            .add_to_store(
                                StorePathName::new(&format!("{prefix}-{i}"))?,
                                ContentAddressMethod::Text,
                                BTreeSet::new(),
                                &mut text.as_bytes(),
                            )
                            .with_context(|| format!("adding {prefix}-{i} to {}", d.label))?;
                        out.push((i, info.path));
                    }
                    Ok(out)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("populating thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let rate = n as f64 / start.elapsed().as_secs_f64();
    let mut all: Vec<(usize, StorePath)> = results.into_iter().flatten().collect();
    all.sort_by_key(|p| p.0);
    Ok((all.into_iter().map(|p| p.1).collect(), rate))
}

/// Runs a client command through `d`; wall time and stdout.
fn client(d: &Daemon, program: &str, args: &[&str]) -> anyhow::Result<(Duration, String)> {
    let mut cmd = d.nix_client(program);
    cmd.args(args).stderr(Stdio::piped());
    let start = Instant::now();
    let out = cmd
        .output()
        .with_context(|| format!("running {program} through {}", d.label))?;
    let t = start.elapsed();
    ensure!(
        out.status.success(),
        "{program} {} through {} failed: {}",
        args.join(" "),
        d.label,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((t, String::from_utf8_lossy(&out.stdout).into_owned()))
}

fn workloads(
    opts: &Options,
    daemons: &[Daemon],
    owners: [Option<(u32, u32)>; 2],
) -> anyhow::Result<()> {
    let live = populate_all(opts, daemons)?;
    make_roots(daemons, &live, owners)?;
    print_roots(opts, daemons)?;
    collect(opts, daemons, &live)
}

/// Adds the live and the dead paths to each store; the live ones, per daemon.
fn populate_all(opts: &Options, daemons: &[Daemon]) -> anyhow::Result<Vec<Vec<StorePath>>> {
    let n = opts.paths;
    let mut live = Vec::new();
    let mut rates = Vec::new();
    for d in daemons {
        // One connection first: nix-daemon 2.8 creates the database of a new store
        // when a connection opens it, and several at once fail with "database is
        // busy" in the handshake.
        d.connect()?.query_valid_paths(BTreeSet::new(), false)?;
    }
    for d in daemons {
        let (paths, r1) = populate(d, "gc-live", n)?;
        let (_, r2) = populate(d, "gc-dead", n)?;
        live.push(paths);
        rates.push(2.0 / (1.0 / r1 + 1.0 / r2));
    }
    header();
    row(
        &format!(
            "populating: {} adds, {POPULATE_CONNECTIONS} connections",
            2 * n
        ),
        "paths/s",
        rates[0],
        rates[1],
        Some(GOAL_POPULATE),
    );
    Ok(live)
}

/// The roots of the live paths, as the store owner would make them.
fn make_roots(
    daemons: &[Daemon],
    live: &[Vec<StorePath>],
    owners: [Option<(u32, u32)>; 2],
) -> anyhow::Result<()> {
    for ((d, paths), owner) in daemons.iter().zip(live).zip(owners) {
        let dir = d.root.join("state/gcroots/bench");
        fs::create_dir_all(&dir)?;
        for (i, p) in paths.iter().enumerate() {
            let link = dir.join(format!("r{i}"));
            symlink(d.store_dir.display(p), &link)?;
            if let Some((uid, gid)) = owner {
                lchown(&link, Some(uid), Some(gid))?;
            }
        }
        if let Some((uid, gid)) = owner {
            chown(&dir, Some(uid), Some(gid))?;
        }
    }

    Ok(())
}

/// Root discovery (`nix-store --gc --print-roots`): one warm-up, then the daemons
/// take turns.
fn print_roots(opts: &Options, daemons: &[Daemon]) -> anyhow::Result<()> {
    let n = opts.paths;
    let mut times = vec![Vec::new(); daemons.len()];
    let mut counts = vec![(0, 0); daemons.len()];
    let mut samples = vec![String::new(); daemons.len()];
    for run in 0..=opts.runs {
        for i in turns(daemons.len(), run) {
            let (t, out) = client(&daemons[i], "nix-store", &["--gc", "--print-roots"])?;
            let roots = out
                .lines()
                .filter(|l| l.contains("/gcroots/bench/"))
                .count();
            ensure!(
                roots == n,
                "{} printed {roots} of the {n} roots:\n{}",
                daemons[i].label,
                out.lines().take(5).collect::<Vec<_>>().join("\n")
            );
            let distinct: BTreeSet<&str> = out.lines().collect();
            counts[i] = (out.lines().count(), distinct.len());
            samples[i] = out
                .lines()
                .filter(|l| l.contains("/gcroots/bench/r1 "))
                .chain(
                    out.lines()
                        .filter(|l| !l.contains("/gcroots/bench/"))
                        .take(2),
                )
                .collect::<Vec<_>>()
                .join(" | ");
            if run > 0 {
                times[i].push(t);
            }
        }
    }
    let (u, x) = (
        median_of(&mut times[0]).as_secs_f64(),
        median_of(&mut times[1]).as_secs_f64(),
    );
    time_row(
        &format!("--print-roots, {n} roots"),
        u,
        x,
        Some(format!("<= {GOAL_ROOTS}x  {}", met(u / x <= GOAL_ROOTS))),
    );
    println!(
        "{:<38} {:<8} {:>11} {:>11}",
        "  roots printed", "lines", counts[0].0, counts[1].0
    );
    println!(
        "{:<38} {:<8} {:>11} {:>11}",
        "  distinct lines", "lines", counts[0].1, counts[1].1
    );
    for (d, s) in daemons.iter().zip(&samples) {
        println!("  {} prints root r1 (and others) as: {s}", d.label);
    }

    Ok(())
}

/// The collection itself, once per daemon; nothing rooted may be lost.
fn collect(opts: &Options, daemons: &[Daemon], live: &[Vec<StorePath>]) -> anyhow::Result<()> {
    let n = opts.paths;
    let mut deleted = Vec::new();
    let mut secs = Vec::new();
    for i in turns(daemons.len(), 0) {
        let (t, out) = client(&daemons[i], "nix-store", &["--gc"])?;
        let count: usize = out
            .lines()
            .find_map(|l| l.split(" store paths deleted").next()?.trim().parse().ok())
            .with_context(|| format!("{} printed no count: {out}", daemons[i].label))?;
        deleted.push((i, count));
        secs.push((i, t.as_secs_f64()));
    }
    deleted.sort();
    secs.sort_by_key(|s| s.0);
    let rate = |i: usize| deleted[i].1 as f64 / secs[i].1;
    let ratio = rate(0) / rate(1);
    row(
        &format!("nix-store --gc, {n} dead + {n} live"),
        "paths/s",
        rate(0),
        rate(1),
        None,
    );
    println!(
        "{:<38} {:<8} {:>11} {:>11} {ratio:>8.2}x  >= {GOAL_DELETE_RATE}x  {}",
        "  paths deleted (rate above)",
        "paths",
        deleted[0].1,
        deleted[1].1,
        met(ratio >= GOAL_DELETE_RATE)
    );
    println!(
        "{:<38} {:<8} {:>11.3} {:>11.3}",
        "  nix-store --gc wall time", "s", secs[0].1, secs[1].1
    );
    // Nothing rooted may be lost.
    for (d, paths) in daemons.iter().zip(live) {
        let mut c = d.connect()?;
        let valid = c.query_valid_paths(paths.iter().cloned().collect(), false)?;
        ensure!(
            valid.len() == paths.len(),
            "{} lost {} rooted paths",
            d.label,
            paths.len() - valid.len()
        );
    }
    println!("all {n} rooted paths still valid in both stores");
    Ok(())
}
