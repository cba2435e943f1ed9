//! The build workloads (issue 4): sandboxed builds through the real Nix client against
//! `unrooted daemon` (unprivileged, rootless sandbox) and `nix-daemon` 2.8 (as root,
//! `sandbox = true`, build users from `nixbld`), in the same run.
//!
//! - wall time of `nix-build` of one trivial derivation (`echo hello > $out`, builder
//!   `/bin/sh` = static busybox through `sandbox-paths`), unique per run so that nothing
//!   is cached (the client's evaluation is part of the time, for both);
//! - `nix-build` of many independent trivial derivations with `max-jobs = 2`;
//! - the sandbox set-up alone: `unrooted sandbox-run --repeat N` of `/bin/sh -c true`
//!   as the daemon's user (each run a new sandbox through the helper the daemon uses,
//!   one `unrooted` process for the loop, as one daemon for many builds) against the
//!   floor, `unshare -Urmpfn true` as the same user.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context};
use unrooted_testkit::daemon::{ensure_subids, DAEMON_USER};

use crate::daemon::{daemon_owner, header, nix_version, turns, Daemon, Daemons};
use crate::util::{median_of, time_command};

/// What the build workloads need from the command line.
pub struct Options {
    /// The `unrooted` binary.
    pub unrooted: PathBuf,
    /// The `nix-daemon` binary.
    pub nix_daemon: PathBuf,
    /// Timed single builds per daemon (after one warm-up build).
    pub runs: usize,
    /// Independent derivations built by one `nix-build`.
    pub many: usize,
    /// Iterations of each sandbox set-up loop.
    pub sandbox_loops: usize,
}

/// The goals the issue sets.
const GOAL_ONE_BUILD: f64 = 0.5;
const GOAL_SANDBOX: f64 = 3.0;

/// The derivations: `seed` makes every one unique per run, so no output is ever valid
/// already and every `nix-build` really builds.
const EXPR: &str = r#"
{ seed, n }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in {
  one = mk "bench-one-${seed}" "echo hello > $out";
  # Fixed-output: its own network namespace with pasta in unrooted (issue 15), the
  # host's network in nix-daemon 2.8.
  fod = derivation {
    name = "bench-fod-${seed}"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo hello > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
  };
  many = builtins.genList (i: mk "bench-many-${seed}-${toString i}" "echo ${toString i} > $out") (builtins.fromJSON n);
}
"#;

const SANDBOX_CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 2\n";

/// Makes sure the `nixbld` group and build users exist (Debian's nix-bin usually
/// creates them); returns how many members the group has.
fn ensure_build_users() -> anyhow::Result<usize> {
    let members = || -> Option<usize> {
        let out = Command::new("getent")
            .args(["group", "nixbld"])
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let list = line.rsplit(':').next().unwrap_or_default();
        Some(list.split(',').filter(|m| !m.is_empty()).count())
    };
    if let Some(n) = members().filter(|&n| n > 0) {
        return Ok(n);
    }
    ensure!(
        rustix::process::geteuid().is_root(),
        "no nixbld group: run the benchmark as root to create it"
    );
    let _ = Command::new("groupadd")
        .args(["--system", "nixbld"])
        .status();
    for i in 1..=4 {
        let _ = Command::new("useradd")
            .args([
                "--system",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--gid",
                "nixbld",
                "--groups",
                "nixbld",
                &format!("nixbld{i}"),
            ])
            .status();
    }
    members().context("creating the nixbld group and users failed")
}

/// Runs the build workloads and prints their table.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    ensure!(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing (apt-get install busybox-static)"
    );
    let root_user = rustix::process::geteuid().is_root();
    let builders = ensure_build_users()?;
    let owner = daemon_owner()?;
    if root_user {
        // The id-range mode of the sandbox, as in the tests and a real installation.
        ensure_subids(DAEMON_USER);
    }
    let mut daemons = Daemons::new("unrooted-bench-build-")?;
    let expr = daemons.tmp.path().join("build.nix");
    fs::write(&expr, EXPR)?;
    fs::set_permissions(&expr, fs::Permissions::from_mode(0o644))?;
    let unrooted = Daemon::start(
        "unrooted",
        daemons.tmp.path().join("unrooted"),
        &[&opts.unrooted, Path::new("daemon")],
        owner,
        SANDBOX_CONF,
        &[],
    )?;
    daemons.list.push(unrooted);
    let nix_conf = if root_user {
        format!("{SANDBOX_CONF}build-users-group = nixbld\n")
    } else {
        format!("{SANDBOX_CONF}build-users-group =\n")
    };
    let nix = Daemon::start(
        "nix-daemon",
        daemons.tmp.path().join("nix-daemon"),
        &[&opts.nix_daemon],
        None,
        &nix_conf,
        &[],
    )?;
    daemons.list.push(nix);

    println!(
        "## Builds: unrooted daemon vs {}, same machine, same run",
        nix_version(&opts.nix_daemon)
    );
    println!(
        "both: sandbox = true, sandbox-paths = /bin/sh=/bin/busybox, max-jobs = 2; {}",
        if root_user {
            format!(
                "unrooted as {DAEMON_USER} (rootless sandbox), nix-daemon as root with build-users-group = nixbld ({builders} users)"
            )
        } else {
            "NOT ROOT: both daemons run as the current user, nix-daemon without build users"
                .to_owned()
        }
    );
    println!("client: nix-build --no-out-link (NIX_REMOTE=daemon), evaluation included; every derivation is new");
    println!();
    let mut result = workloads(opts, &daemons.list, &expr, owner);
    if result.is_ok() && root_user {
        result = id_range_cost(opts, &mut daemons, &expr, owner);
    }
    if result.is_err() {
        daemons.print_log_tails();
    }
    result
}

/// The cost of the id-range mode (a slice of subordinate ids per build) against the
/// single-id mode: the same trivial build through the daemon above and through a
/// second unrooted daemon with `auto-allocate-uids = false`, taking turns.
fn id_range_cost(
    opts: &Options,
    daemons: &mut Daemons,
    expr: &Path,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    let single = Daemon::start(
        "unrooted (single id)",
        daemons.tmp.path().join("unrooted-single"),
        &[&opts.unrooted, Path::new("daemon")],
        owner,
        &format!("{SANDBOX_CONF}auto-allocate-uids = false\n"),
        &[],
    )?;
    daemons.list.push(single);
    let pair = [0, daemons.list.len() - 1];
    let mut times = [Vec::new(), Vec::new()];
    // More rounds than the other rows: the difference is a few ms in ~100 ms.
    let rounds = (opts.runs * 3).max(5);
    for run in 0..=rounds {
        for i in turns(2, run) {
            let (t, _) = nix_build(&daemons.list[pair[i]], expr, "one", 1)?;
            if run > 0 {
                times[i].push(t);
            }
        }
    }
    let ranged = median_of(&mut times[0]).as_secs_f64();
    let single = median_of(&mut times[1]).as_secs_f64();
    let added_ms = (ranged - single) * 1000.0;
    println!(
        "{:<38} {:<8} {:>11.1} {:>11.1}  added {added_ms:.1} ms  (goal < 5 ms)  {}",
        "one build: id-range vs single-id mode",
        "ms",
        ranged * 1000.0,
        single * 1000.0,
        met(added_ms < 5.0)
    );
    Ok(())
}

/// A seed no earlier run used.
fn seed(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{tag}{nanos}")
}

/// `nix-build` of `attr` with a new seed through `d`; wall time and the number of
/// output paths printed.
fn nix_build(d: &Daemon, expr: &Path, attr: &str, n: usize) -> anyhow::Result<(Duration, usize)> {
    let mut cmd = d.nix_client("nix-build");
    cmd.arg(expr)
        .args(["-A", attr, "--no-out-link", "--argstr", "seed"])
        .arg(seed(d.label.get(..1).unwrap_or("x")))
        .args(["--argstr", "n", &n.to_string()]);
    let start = Instant::now();
    let out = cmd
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("running nix-build through {}", d.label))?;
    let t = start.elapsed();
    ensure!(
        out.status.success(),
        "nix-build -A {attr} through {} failed: {}",
        d.label,
        String::from_utf8_lossy(&out.stderr)
    );
    let paths = String::from_utf8_lossy(&out.stdout).lines().count();
    Ok((t, paths))
}

fn workloads(
    opts: &Options,
    daemons: &[Daemon],
    expr: &Path,
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    header();
    one_build(opts, daemons, expr)?;
    many_builds(opts, daemons, expr)?;
    sandbox_floor(opts, daemons, owner)
}

/// One trivial build and one trivial fixed-output build, timed in turns.
fn one_build(opts: &Options, daemons: &[Daemon], expr: &Path) -> anyhow::Result<()> {
    // One trivial build, unique per run; one warm-up, then the daemons take turns,
    // often enough for the median to hold on a shared machine (a build is ~50 ms).
    let mut one = vec![Vec::new(); daemons.len()];
    for run in 0..=(opts.runs * 5).max(15) {
        for i in turns(daemons.len(), run) {
            let (t, paths) = nix_build(&daemons[i], expr, "one", 1)?;
            ensure!(paths == 1, "{} built {paths} paths", daemons[i].label);
            if run > 0 {
                one[i].push(t);
            }
        }
    }
    let (u, n) = (
        median_of(&mut one[0]).as_secs_f64(),
        median_of(&mut one[1]).as_secs_f64(),
    );
    time_row(
        "one trivial sandboxed build",
        u,
        n,
        Some(format!(
            "<= {GOAL_ONE_BUILD}x  {}",
            met(u / n <= GOAL_ONE_BUILD)
        )),
    );

    // One trivial fixed-output build, the same way: unrooted's gets a network
    // namespace of its own and pasta (when installed), nix-daemon 2.8's the host's.
    let mut fod = vec![Vec::new(); daemons.len()];
    for run in 0..=(opts.runs * 3).max(9) {
        for i in turns(daemons.len(), run) {
            let (t, paths) = nix_build(&daemons[i], expr, "fod", 1)?;
            ensure!(paths == 1, "{} built {paths} paths", daemons[i].label);
            if run > 0 {
                fod[i].push(t);
            }
        }
    }
    time_row(
        "one trivial fixed-output build",
        median_of(&mut fod[0]).as_secs_f64(),
        median_of(&mut fod[1]).as_secs_f64(),
        None,
    );

    Ok(())
}

/// Many independent derivations in one `nix-build`.
fn many_builds(opts: &Options, daemons: &[Daemon], expr: &Path) -> anyhow::Result<()> {
    // max-jobs = 2.
    let mut many = vec![0.0; daemons.len()];
    for i in turns(daemons.len(), 0) {
        let (t, paths) = nix_build(&daemons[i], expr, "many", opts.many)?;
        ensure!(
            paths == opts.many,
            "{} built {paths} paths, not {}",
            daemons[i].label,
            opts.many
        );
        many[i] = t.as_secs_f64();
    }
    time_row(
        &format!("{} independent builds, max-jobs 2", opts.many),
        many[0],
        many[1],
        None,
    );
    println!(
        "{:<38} {:<8} {:>11.1} {:>11.1}",
        "  builds per second",
        "1/s",
        opts.many as f64 / many[0],
        opts.many as f64 / many[1]
    );

    Ok(())
}

/// The sandbox's set-up alone, against the bare `unshare` floor, as the daemon's user.
fn sandbox_floor(
    opts: &Options,
    daemons: &[Daemon],
    owner: Option<(u32, u32)>,
) -> anyhow::Result<()> {
    let work = daemons[0].root.join("sandbox-bench");
    fs::create_dir_all(work.join("store"))?;
    if let Some((uid, gid)) = owner {
        for p in [work.clone(), work.join("store")] {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid))?;
        }
    }
    let loops = opts.sandbox_loops;
    let script = |body: &str| {
        format!("i=0; while [ $i -lt {loops} ]; do i=$((i+1)); {body} || exit 1; done")
    };
    // One process runs all the sandboxes of a loop, as the daemon does, so its own
    // start is spread over them instead of counted in each.
    let sandbox_loop = format!(
        "{} sandbox-run --repeat {loops} --store-dir {w}/store --sandbox-path /bin/sh=/bin/busybox --work-dir {w} --build-dir {w}/b -- /bin/sh -c true >/dev/null 2>&1",
        opts.unrooted.display(),
        w = work.display()
    );
    let version_body = format!("{} --version >/dev/null", opts.unrooted.display());
    // The same with a fixed-output build's network: the host's, and pasta's.
    let network_loop = sandbox_loop.replace(" -- /bin/sh", " --network -- /bin/sh");
    let pasta = ["/usr/bin/pasta", "/usr/local/bin/pasta"]
        .into_iter()
        .find(|p| Path::new(p).is_file());
    let pasta_loop =
        pasta.map(|p| sandbox_loop.replace(" -- /bin/sh", &format!(" --pasta {p} -- /bin/sh")));
    let mut cases = vec![
        ("unshare -Urmpfn true", script("unshare -Urmpfn true")),
        ("unrooted sandbox-run /bin/sh -c true", sandbox_loop),
        ("unrooted --version (exec floor)", script(&version_body)),
        ("/bin/true (fork+exec floor)", script("/bin/true")),
        ("  the same, --network (host's)", network_loop),
    ];
    if let Some(l) = pasta_loop {
        cases.push(("  the same, --pasta (own netns + pasta)", l));
    }
    // Warm up each case, then time them in turn, round after round, and keep each
    // one's best: interleaving exposes every case to the same drifts of the shared
    // machine's load, which timing one case after another does not.
    for (label, body) in &cases {
        let mut cmd = as_owner(owner, &work);
        cmd.args(["sh", "-c", body]);
        time_command(&mut cmd).with_context(|| format!("{label} as the daemon's user"))?;
    }
    let mut best = vec![f64::INFINITY; cases.len()];
    for _ in 0..SANDBOX_ROUNDS {
        for (i, (_, body)) in cases.iter().enumerate() {
            let mut cmd = as_owner(owner, &work);
            cmd.args(["sh", "-c", body]);
            let ms = time_command(&mut cmd)?.0.as_secs_f64() * 1e3 / loops as f64;
            best[i] = best[i].min(ms);
        }
    }
    let per = best;
    println!();
    println!(
        "sandbox set-up alone, as {}, best of {SANDBOX_ROUNDS} interleaved loops of {loops} (ms per run):",
        if owner.is_some() {
            DAEMON_USER
        } else {
            "the current user"
        }
    );
    for ((label, _), ms) in cases.iter().zip(&per) {
        println!("  {label:<40} {ms:>8.2} ms");
    }
    let ratio = per[1] / per[0];
    println!(
        "  sandbox-run (per sandbox, one process for the loop) / unshare floor: {ratio:.2}x (goal <= {GOAL_SANDBOX}x, {})",
        met(ratio <= GOAL_SANDBOX),
    );
    let _ = Command::new("chmod")
        .args(["-R", "u+w"])
        .arg(&work)
        .status();
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Rounds of the sandbox set-up comparison.
const SANDBOX_ROUNDS: usize = 5;

/// `sh` run as the daemon's user (through `setpriv`), in `dir`, with `TMPDIR` there.
fn as_owner(owner: Option<(u32, u32)>, dir: &Path) -> Command {
    let mut cmd = match owner {
        Some((uid, gid)) => {
            let mut c = Command::new("setpriv");
            c.arg(format!("--reuid={uid}"))
                .arg(format!("--regid={gid}"))
                .args(["--init-groups", "--inh-caps=-all", "--"]);
            c
        }
        None => Command::new("env"),
    };
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", dir)
        .env("TMPDIR", dir)
        .current_dir(dir);
    cmd
}

/// "met" or "NOT MET".
pub(crate) fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// One row of times in seconds (lower is better) and the unrooted / nix-daemon ratio.
pub(crate) fn time_row(label: &str, u: f64, n: f64, goal: Option<String>) {
    println!(
        "{label:<38} {:<8} {u:>11.3} {n:>11.3} {:>8.2}x  {}",
        "s",
        u / n,
        goal.unwrap_or_default()
    );
}
