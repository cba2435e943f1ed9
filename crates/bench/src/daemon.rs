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
use std::io::{BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use unrooted_format::{StoreDir, StorePath, StorePathName};
use unrooted_protocol::client::Client;
use unrooted_protocol::request::{ClientSettings, ContentAddressMethod};
use unrooted_protocol::ProtocolVersion;
use unrooted_testkit::daemon::{test_user, DAEMON_USER};

use crate::mem::{self, Peak, Sampler};
use crate::nar::generate;
use crate::store_ops;
use crate::util::{median, median_of, time_command};

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

pub(crate) type Conn = Client<BufReader<UnixStream>, BufWriter<UnixStream>>;

/// A daemon on its own private store under the benchmark's temporary root.
pub(crate) struct Daemon {
    pub(crate) label: &'static str,
    pub(crate) root: PathBuf,
    pub(crate) store_dir: StoreDir,
    child: Option<Child>,
}

impl Daemon {
    /// Prepares `root` (store, state, log and conf directories owned by `owner`, a
    /// `nix.conf` with `extra_conf`), starts `program` there as `owner` (through
    /// `setpriv` when that is another user) with `extra_env` added to the environment
    /// the clients get too, and waits for its socket.
    pub(crate) fn start(
        label: &'static str,
        root: PathBuf,
        program: &[&Path],
        owner: Option<(u32, u32)>,
        extra_conf: &str,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        for dir in ["", "store", "state", "log", "conf", "client-home"] {
            let p = root.join(dir);
            fs::create_dir_all(&p)?;
            // Every user must be able to reach the store (world-readable, as /nix/store).
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            if let (Some((uid, gid)), false) = (owner, dir.is_empty() || dir == "client-home") {
                chown(&p, Some(uid), Some(gid))?;
            }
        }
        let conf = root.join("conf/nix.conf");
        fs::write(
            &conf,
            format!("sandbox = false\nsubstituters =\n{extra_conf}"),
        )?;
        if let Some((uid, gid)) = owner {
            chown(&conf, Some(uid), Some(gid))?;
        }
        let store = root.join("store");
        let store_dir = StoreDir::new(store.to_str().context("non-UTF-8 temporary directory")?)?;
        let mut d = Self {
            label,
            root,
            store_dir,
            child: None,
        };
        let mut cmd = match owner {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "--inh-caps=-all", "--"])
                    .args(program);
                c
            }
            None => {
                let mut c = Command::new(program[0]);
                c.args(&program[1..]);
                c
            }
        };
        d.env(&mut cmd);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.env("HOME", d.root.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.root.join("daemon.log"))?);
        d.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {label}: {cmd:?}"))?,
        );
        let socket = d.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{label} exited with {status}: {}", d.log());
            }
            ensure!(
                Instant::now() < deadline,
                "{label} did not create {}: {}",
                socket.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.root.join("state/daemon-socket/socket")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    /// The environment that points Nix (daemon or client) at this store.
    fn env(&self, cmd: &mut Command) {
        let r = &self.root;
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("NIX_DAEMON_SOCKET_PATH", self.socket())
            // The logs go to files, read by people and by this benchmark.
            .env("NO_COLOR", "1");
    }

    /// A real Nix client (run as the benchmark's user) talking to this daemon.
    pub(crate) fn nix_client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        self.env(&mut cmd);
        cmd.env("HOME", self.root.join("client-home"))
            .env("NIX_REMOTE", "daemon");
        cmd
    }

    /// A new connection after the handshake and SetOptions, as `nix-store` opens one.
    pub(crate) fn connect(&self) -> anyhow::Result<Conn> {
        let s = UnixStream::connect(self.socket())
            .with_context(|| format!("connecting to {}", self.label))?;
        let r = BufReader::new(s.try_clone()?);
        let w = BufWriter::new(s);
        let mut c = Client::handshake(r, w, self.store_dir.clone(), ProtocolVersion::NIX_2_8)
            .with_context(|| format!("handshake with {}", self.label))?;
        c.set_options(&ClientSettings::default())?;
        Ok(c)
    }

    /// Kills the daemon and its connection processes (nix-daemon forks one per
    /// connection), children first so none is re-parented and left behind.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in mem::descendants(child.id()) {
                kill(pid);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Both daemons, stopped before their temporary root is removed.
pub(crate) struct Daemons {
    pub(crate) list: Vec<Daemon>,
    pub(crate) tmp: tempfile::TempDir,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.list {
            d.kill();
        }
        // Store objects are read-only by design; without root they can only be
        // removed once made writable again.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.tmp.path())
            .status();
    }
}

impl Daemons {
    /// No daemon yet, under a new temporary root (mode 0755, so every user reaches the
    /// stores, as `/nix/store`) named after `prefix`.
    pub(crate) fn new(prefix: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            list: Vec::new(),
            tmp,
        })
    }

    /// Prints the last lines of each daemon's log to stderr (after a failure).
    pub(crate) fn print_log_tails(&self) {
        for d in &self.list {
            eprintln!("--- {} log (tail) ---", d.label);
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The uid and gid unrooted runs as: the unprivileged [`DAEMON_USER`] (created if
/// missing) when the benchmark runs as root, else the benchmark's own user (`None`).
pub(crate) fn daemon_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if rustix::process::geteuid().is_root() {
        Ok(Some(test_user(DAEMON_USER).with_context(|| {
            format!("creating the user {DAEMON_USER}")
        })?))
    } else {
        Ok(None)
    }
}

/// The version line of `nix-daemon`.
pub(crate) fn nix_version(nix_daemon: &Path) -> String {
    Command::new(nix_daemon)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Renames a tree for one run and back afterwards (also on error), so each run adds a
/// path the daemon does not have yet while the generated tree is kept between runs.
struct Renamed {
    from: PathBuf,
    to: PathBuf,
}

impl Renamed {
    fn new(from: &Path, to: PathBuf) -> anyhow::Result<Self> {
        fs::rename(from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        Ok(Self {
            from: from.to_path_buf(),
            to,
        })
    }
}

impl Drop for Renamed {
    fn drop(&mut self) {
        let _ = fs::rename(&self.to, &self.from);
    }
}

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
    for d in &daemons.list {
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
    Ok(())
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
            let rate = |t: &[QueryRun]| {
                let mut r: Vec<f64> = t.iter().map(|q| q.ops as f64 / q.secs).collect();
                r.sort_by(f64::total_cmp);
                r[r.len() / 2]
            };
            let cpu_us = |t: &[QueryRun]| {
                let ops: u64 = t.iter().map(|q| q.ops).sum();
                t.iter().map(|q| q.cpu_secs).sum::<f64>() * 1e6 / ops as f64
            };
            let plural = if conns == 1 { "" } else { "s" };
            row(
                &format!("{op:?}, {conns} connection{plural}"),
                "ops/s",
                rate(&trials[0]),
                rate(&trials[1]),
                None,
            );
            store_ops::floor_row(rate(&trials[0]), rate(&trials[1]), floor);
            store_ops::cpu_row(cpu_us(&trials[0]), cpu_us(&trials[1]), floor);
        }
    }

    store_ops::print_floors(&floors, opts.connections);
    // nix-daemon's connection processes take a moment to exit once their client
    // hangs up; their memory belongs to the queries, not to what comes next.
    for d in daemons {
        let deadline = Instant::now() + Duration::from_secs(2);
        while mem::tree(d.pid()).len() > 1 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }

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
    let rates = store_ops::indirect_roots(daemons, &targets, opts.indirect_roots)?;
    row(
        &format!("{} AddIndirectRoot, 1 connection", opts.indirect_roots),
        "roots/s",
        rates[0],
        rates[1],
        Some(store_ops::GOAL_INDIRECT_ROOTS),
    );

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

#[derive(Clone, Copy, Debug)]
enum Query {
    IsValidPath,
    QueryPathInfo,
}

/// Query measurements per daemon, each lasting `--query-secs` / this.
const QUERY_TRIALS: usize = 3;

/// The order in which `n` daemons take their turn in round `round`: alternating, so
/// none is always first.
pub(crate) fn turns(n: usize, round: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    if round % 2 == 1 {
        order.reverse();
    }
    order
}

/// One query measurement.
#[derive(Clone, Copy)]
struct QueryRun {
    /// Round trips completed.
    ops: u64,
    /// Wall time, from the common start to the last connection's end.
    secs: f64,
    /// CPU time the daemon's processes used meanwhile.
    cpu_secs: f64,
}

/// Round trips of `op` on `target` over `conns` concurrent connections, each running
/// for `dur` from a common start.
fn query_rate(
    d: &Daemon,
    target: &StorePath,
    conns: usize,
    dur: Duration,
    op: Query,
) -> anyhow::Result<QueryRun> {
    // Connect before starting any thread, so a failed connection cannot leave the
    // others waiting at the barrier.
    let clients = (0..conns)
        .map(|_| d.connect())
        .collect::<anyhow::Result<Vec<_>>>()?;
    // nix-daemon's connection processes exist once the handshakes are done, and live
    // until the connections close, after the second reading.
    let pids = mem::tree(d.pid());
    let cpu = || pids.iter().filter_map(|&p| mem::cpu_secs(p)).sum::<f64>();
    let cpu_before = cpu();
    let barrier = Barrier::new(conns);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let barrier = &barrier;
                s.spawn(move || -> anyhow::Result<(u64, Duration, Conn)> {
                    barrier.wait();
                    let start = Instant::now();
                    let mut ops = 0u64;
                    while start.elapsed() < dur {
                        // Reading the clock costs little next to a round trip, but
                        // batches make it negligible.
                        for _ in 0..16 {
                            let ok = match op {
                                Query::IsValidPath => c.is_valid_path(target)?,
                                Query::QueryPathInfo => c.query_path_info(target)?.is_some(),
                            };
                            ensure!(ok, "{} does not know {target:?}", d.label);
                        }
                        ops += 16;
                    }
                    // The connection is closed only after the CPU reading:
                    // nix-daemon's connection process, and its CPU time, go with it.
                    Ok((ops, start.elapsed(), c))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("query thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let cpu_secs = cpu() - cpu_before;
    let ops: u64 = results.iter().map(|r| r.0).sum();
    let secs = results
        .iter()
        .map(|r| r.1)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    Ok(QueryRun {
        ops,
        secs,
        cpu_secs,
    })
}

/// Round trips per second of an 8-byte ping-pong over `conns` socket pairs, each served
/// by its own thread: what the machine allows with no daemon work at all (the median
/// of the trials, as for the daemons).
fn pingpong_rate(conns: usize, dur: Duration) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..QUERY_TRIALS {
        let pairs = (0..conns)
            .map(|_| UnixStream::pair())
            .collect::<std::io::Result<Vec<_>>>()?;
        let barrier = Barrier::new(conns);
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .into_iter()
                .map(|(mut client, mut server)| {
                    s.spawn(move || {
                        let mut buf = [0u8; 8];
                        // Ends when the client hangs up.
                        while server.read_exact(&mut buf).is_ok() {
                            if server.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    });
                    let barrier = &barrier;
                    s.spawn(move || -> std::io::Result<(u64, Duration)> {
                        barrier.wait();
                        let start = Instant::now();
                        let mut ops = 0u64;
                        let mut buf = [0u8; 8];
                        while start.elapsed() < dur {
                            for _ in 0..16 {
                                client.write_all(&buf)?;
                                client.read_exact(&mut buf)?;
                            }
                            ops += 16;
                        }
                        Ok((ops, start.elapsed()))
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ping-pong thread panicked"))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let ops: u64 = results.iter().map(|r| r.0).sum();
        let secs = results.iter().map(|r| r.1).max().unwrap_or_default();
        rates.push(ops as f64 / secs.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Adds small text paths `first..first + n` with distinct contents over one
/// connection; paths/s.
fn small_paths(d: &Daemon, first: usize, n: usize) -> anyhow::Result<f64> {
    let mut c = d.connect()?;
    let start = Instant::now();
    for i in first..first + n {
        let name = StorePathName::new(&format!("small-{i}"))?;
        let text = format!("small path {i}\n");
        let info = c
            .add_to_store(
                name,
                ContentAddressMethod::Text,
                BTreeSet::new(),
                &mut text.as_bytes(),
            )
            .with_context(|| format!("adding small path {i} to {}", d.label))?;
        ensure!(
            info.info.nar_size > 0,
            "{} returned an empty path info",
            d.label
        );
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Median seconds of `nix-store --add` of `tree` through each daemon. Every run adds the
/// tree under a new name, so every run is a real import; one warm-up run comes first,
/// and the daemons take turns going first.
fn add_tree(opts: &Options, daemons: &[Daemon], tree: &Path) -> anyhow::Result<AddTimes> {
    let mut times = vec![Vec::new(); daemons.len()];
    let mut client_cpu = vec![0.0; daemons.len()];
    let mut daemon_cpu = vec![0.0; daemons.len()];
    let mut nar_hashes = Vec::new();
    for run in 0..=opts.runs {
        let renamed = Renamed::new(tree, tree.with_file_name(format!("bench-add-{run}")))?;
        for i in turns(daemons.len(), run) {
            let d = &daemons[i];
            let cpu_before = (mem::children_cpu_secs(), mem::cpu_secs(d.pid()));
            let (t, out) = time_command(d.nix_client("nix-store").arg("--add").arg(&renamed.to))
                .with_context(|| format!("nix-store --add through {}", d.label))?;
            if run > 0 {
                // The client is the only child waited for meanwhile.
                client_cpu[i] +=
                    mem::children_cpu_secs().unwrap_or(0.0) - cpu_before.0.unwrap_or(0.0);
                daemon_cpu[i] +=
                    mem::cpu_secs(d.pid()).unwrap_or(0.0) - cpu_before.1.unwrap_or(0.0);
            }
            let path = d
                .store_dir
                .parse_path(&out)
                .with_context(|| format!("nix-store --add through {} printed {out:?}", d.label))?;
            if run > 0 {
                times[i].push(t);
            }
            if run == opts.runs {
                let info = d
                    .connect()?
                    .query_path_info(&path)?
                    .with_context(|| format!("{} lost {out}", d.label))?;
                nar_hashes.push(info.nar_hash);
            }
        }
    }
    // Both daemons must have stored the same contents, or they did different work.
    ensure!(
        nar_hashes.windows(2).all(|w| w[0] == w[1]),
        "the daemons recorded different NAR hashes for the same tree: {nar_hashes:?}"
    );
    let runs = opts.runs as f64;
    Ok(AddTimes {
        wall: times
            .iter_mut()
            .map(|t| median_of(t).as_secs_f64())
            .collect(),
        client_cpu: client_cpu.iter().map(|c| c / runs).collect(),
        daemon_cpu: daemon_cpu.iter().map(|c| c / runs).collect(),
    })
}

/// Seconds per `nix-store --add`, per daemon.
struct AddTimes {
    /// Median wall time.
    wall: Vec<f64>,
    /// Mean CPU time of the client.
    client_cpu: Vec<f64>,
    /// Mean CPU time of the daemon's main process: all of unrooted's work (its
    /// connections are threads), none of nix-daemon's (its connections are processes
    /// that have exited, unwaited, by the time of the reading).
    daemon_cpu: Vec<f64>,
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
