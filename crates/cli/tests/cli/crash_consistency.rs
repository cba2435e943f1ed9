//! Crash consistency (issue 9, item 2): SIGKILL at random points while the daemon
//! imports a large export, builds several derivations (some slow), collects many
//! dead paths and optimises the store — and separately SIGKILL of a builder process
//! (found among the daemon's descendants in `/proc`) and of the roots helper during a
//! collection. After every kill the daemon is restarted and the store is checked:
//!
//! * `nix-store --verify --check-contents` as the owner in local mode is clean (every
//!   valid path exists and its NAR hash matches the database);
//! * every valid path exists on disk (the database compared with the directory);
//! * no `.unrooted-tmp-*` is left after start-up but the live daemon's own;
//! * the killed daemon's descendants (sandbox helper, builder) are gone;
//! * roots are not lost: `~/result` links (with their `gcroots/auto` entries) still
//!   point at valid paths, and so does everything they refer to;
//! * the interrupted operation can be done again and succeeds.
//!
//! Kill points are drawn uniformly over the duration of an uninterrupted run of each
//! operation, from a seeded generator (`UNROOTED_CRASH_SEED`, printed), and counted by
//! phase and by what they interrupted. `UNROOTED_CRASH_ITERATIONS` sets the kills per
//! phase (default 4; the long run uses e.g. 50).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon, CLIENT_USER};
use unrooted_testkit::Rng;

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 4\n";

const EXPR: &str = r#"
{ salt }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  a = mk "a-${salt}" "echo a ${salt} > $out";
  big = mk "big-${salt}" "mkdir $out; i=0; while [ $i -lt 40 ]; do head -c 65536 /dev/urandom > $out/f$i; i=$((i+1)); done";
  slow1 = mk "slow1-${salt}" "sleep 1; echo ${a} > $out";
  slow2 = mk "slow2-${salt}" "echo start; sleep 2; cat ${a} > $out";
  many = builtins.genList (i: mk "m${toString i}-${salt}" "echo ${toString i} > $out") 12;
  top = mk "top-${salt}" "echo ${a} ${big} ${slow1} ${slow2} > $out; ${builtins.concatStringsSep "; " (map (d: "cat ${d} >> $out") many)}";
}
"#;

fn iterations() -> usize {
    std::env::var("UNROOTED_CRASH_ITERATIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4)
}

fn seed(salt: u64) -> u64 {
    let s = std::env::var("UNROOTED_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("crash harness seed (UNROOTED_CRASH_SEED): {s}");
    s ^ salt
}

struct Harness {
    d: TestDaemon,
    rng: Rng,
    /// Kill points exercised, by "phase: what was interrupted".
    points: BTreeMap<String, usize>,
    /// `~/result`-style links that must keep pointing at valid paths.
    roots: Vec<(PathBuf, String)>,
    /// Temporaries of killed daemons found in the store, all removed at start-up.
    swept_temporaries: usize,
    /// Store entries that are neither valid paths nor the store's own (invalid
    /// leftovers, legal in Nix's model and collected by the next GC).
    invalid_leftovers: usize,
    /// Build directories of killed daemons left in the temporary directory.
    leftover_build_dirs: usize,
    /// Directories of valid paths left writable by a killed optimise.
    writable_after_optimise_kill: usize,
    checks: usize,
}

fn prepared(seed_salt: u64) -> Option<Harness> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    // The client is trusted so that it may import an unsigned export.
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        &format!("{CONF}trusted-users = {CLIENT_USER}\n"),
    );
    fs::write(d.inputs().join("crash.nix"), EXPR).unwrap();
    d.start_roots_helper();
    d.start();
    Some(Harness {
        d,
        rng: Rng::new(seed(seed_salt)),
        points: BTreeMap::new(),
        roots: Vec::new(),
        swept_temporaries: 0,
        invalid_leftovers: 0,
        leftover_build_dirs: 0,
        writable_after_optimise_kill: 0,
        checks: 0,
    })
}

fn spawn(d: &TestDaemon, program: &str, args: &[&str], stdin: Option<&Path>) -> Child {
    let mut cmd = d.client(program);
    cmd.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(f) = stdin {
        cmd.stdin(fs::File::open(f).unwrap());
    }
    cmd.spawn().unwrap()
}

fn exists(p: &str) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}

fn comm(pid: u32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn sigkill(pid: u32) {
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &pid.to_string()])
        .stderr(Stdio::null())
        .status();
}

/// `unrooted-builds-<pid>-*` directories of the daemon's temporary directory.
fn build_dirs_of(pid: u32) -> usize {
    fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("unrooted-builds-{pid}-"))
                })
                .count()
        })
        .unwrap_or(0)
}

impl Harness {
    fn expr(&self) -> String {
        self.d
            .inputs()
            .join("crash.nix")
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn point(&mut self, phase: &str, what: &str) {
        *self.points.entry(format!("{phase}: {what}")).or_default() += 1;
    }

    fn sleep_random(&mut self, max: Duration) -> Duration {
        let ms = self.rng.below(max.as_millis().max(1) as u64);
        let t = Duration::from_millis(ms);
        std::thread::sleep(t);
        t
    }

    /// SIGKILLs the daemon, waits for the client, restarts and checks.
    fn kill_daemon_and_check(&mut self, client: Child) -> std::process::Output {
        let old = self.d.pid();
        let descendants = TestDaemon::descendants(old);
        self.d.kill();
        let out = client.wait_with_output().unwrap();
        // Nothing the daemon started outlives it (a builder writing on into the
        // store's temporary area would race the next start-up's sweep).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let left: Vec<u32> = descendants.iter().copied().filter(|p| alive(*p)).collect();
            if left.is_empty() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "processes of the killed daemon survive: {:?}",
                left.iter().map(|p| (p, comm(*p))).collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let tag = format!("-{old}-");
        self.swept_temporaries += self
            .d
            .store_temporaries()
            .iter()
            .filter(|t| t.contains(&tag))
            .count();
        self.leftover_build_dirs += build_dirs_of(old);
        self.d.start();
        self.check();
        out
    }

    /// The consistency checks, against the running daemon's store.
    fn check(&mut self) {
        self.checks += 1;
        let d = &self.d;
        let live = format!("-{}-", d.pid());
        // The new daemon may not have opened its own area yet; none other may remain
        // once it has (the store is opened before the socket is created).
        let stray: Vec<String> = d
            .store_temporaries()
            .into_iter()
            .filter(|t| !t.contains(&live))
            .collect();
        assert!(
            stray.is_empty(),
            "temporaries left after start-up: {stray:?}"
        );
        d.assert_store_clean();
        let valid = d.valid_paths_local();
        for p in &valid {
            assert!(exists(p), "valid path {p} is missing on disk");
        }
        let store = d.store_dir();
        let store_s = store.to_str().unwrap();
        for e in fs::read_dir(&store).unwrap().filter_map(|e| e.ok()) {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if valid.binary_search(&format!("{store_s}/{name}")).is_err() {
                self.invalid_leftovers += 1;
            }
        }
        for (link, path) in &self.roots {
            let target =
                fs::read_link(link).unwrap_or_else(|e| panic!("root {} lost: {e}", link.display()));
            assert_eq!(
                target.to_str().unwrap(),
                path,
                "root {} changed",
                link.display()
            );
            assert!(
                valid.binary_search(path).is_ok(),
                "rooted {path} is no longer valid"
            );
            // Its closure too.
            for r in d
                .client_ok("nix-store", &["-q", "--requisites", path])
                .lines()
            {
                assert!(
                    valid.binary_search(&r.to_owned()).is_ok(),
                    "{r} of {path} lost"
                );
            }
        }
    }

    /// A rooted result of `attr`, kept for the whole run.
    fn rooted_build(&mut self, salt: &str, name: &str) -> String {
        let link = self.d.client_home().join(name);
        let out = self
            .d
            .client_ok(
                "nix-build",
                &[
                    &self.expr(),
                    "-A",
                    "top",
                    "--argstr",
                    "salt",
                    salt,
                    "-o",
                    link.to_str().unwrap(),
                ],
            )
            .trim()
            .to_owned();
        self.roots.push((link, out.clone()));
        out
    }

    fn report(&self, test: &str, started: Instant) {
        let total: usize = self.points.values().sum();
        eprintln!(
            "{test}: {total} kill points in {:.1} s, {} consistency checks; by phase:",
            started.elapsed().as_secs_f64(),
            self.checks
        );
        for (k, v) in &self.points {
            eprintln!("  {k}: {v}");
        }
        eprintln!(
            "  temporaries of killed daemons swept at start-up: {}; invalid leftovers seen (collectable): {}; build dirs of killed daemons left in /tmp: {}",
            self.swept_temporaries, self.invalid_leftovers, self.leftover_build_dirs
        );
        eprintln!(
            "  store directories left writable by a killed optimise: {}",
            self.writable_after_optimise_kill
        );
    }

    /// Adds `n` files (one `nix-store --add`), each `size` bytes of `salt`-specific
    /// data, and returns their store paths.
    fn add_files(&mut self, dir: &str, n: usize, size: usize, dup: bool) -> Vec<String> {
        let base = self.d.inputs().join(dir);
        fs::create_dir_all(&base).unwrap();
        let mut args = vec!["--add".to_owned()];
        for i in 0..n {
            let p = base.join(format!("f{i}"));
            if dup {
                // A directory of identical files plus one unique file.
                fs::create_dir_all(&p).unwrap();
                for j in 0..4 {
                    fs::write(
                        p.join(format!("same{j}")),
                        format!("{dir} {j}\n").repeat(size / 8),
                    )
                    .unwrap();
                }
                fs::write(p.join("unique"), format!("{dir} {i}\n")).unwrap();
            } else {
                unrooted_testkit::write_random_file(&p, &mut self.rng, size);
            }
            args.push(p.to_str().unwrap().to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.d
            .client_ok("nix-store", &args)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    fn delete(&self, paths: &[String]) {
        let valid = self.d.valid_paths_local();
        let present: Vec<&str> = paths
            .iter()
            .filter(|p| valid.binary_search(p).is_ok())
            .map(String::as_str)
            .collect();
        if !present.is_empty() {
            let mut args = vec!["--delete"];
            args.extend(present);
            self.d.client_ok("nix-store", &args);
        }
    }

    fn count_valid(&self, paths: &[String]) -> usize {
        let valid = self.d.valid_paths_local();
        paths
            .iter()
            .filter(|p| valid.binary_search(p).is_ok())
            .count()
    }
}

fn class(done: usize, all: usize) -> &'static str {
    match done {
        0 => "none done",
        n if n == all => "all done",
        _ => "partly done",
    }
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn sigkill_daemon_during_imports_and_optimise() {
    let Some(mut h) = prepared(1) else { return };
    let started = Instant::now();
    h.rooted_build("root", "result");
    h.check();
    // A large export: 24 files of 512 KiB and 150 small ones.
    let mut paths = h.add_files("big", 24, 512 * 1024, false);
    paths.extend(h.add_files("small", 150, 200, false));
    let mut args = vec!["--export"];
    args.extend(paths.iter().map(String::as_str));
    let export = h.d.client("nix-store").args(&args).output().unwrap();
    h.d.expect_ok("nix-store --export", &export);
    let export_file = h.d.inputs().join("large.export");
    fs::write(&export_file, &export.stdout).unwrap();
    eprintln!(
        "export: {} paths, {} MiB",
        paths.len(),
        export.stdout.len() >> 20
    );
    h.delete(&paths);
    // An uninterrupted import sets the window for kill points.
    let t0 = Instant::now();
    let out = spawn(&h.d, "nix-store", &["--import"], Some(&export_file))
        .wait_with_output()
        .unwrap();
    h.d.expect_ok("nix-store --import", &out);
    let window = t0.elapsed();
    assert_eq!(h.count_valid(&paths), paths.len());
    h.delete(&paths);
    for _ in 0..iterations() {
        let client = spawn(&h.d, "nix-store", &["--import"], Some(&export_file));
        h.sleep_random(window);
        let out = h.kill_daemon_and_check(client);
        let n = h.count_valid(&paths);
        let what = match (class(n, paths.len()), out.status.success()) {
            (c, true) => format!("import {c}, client finished"),
            (c, false) => format!("import {c}"),
        };
        h.point("import", &what);
        // Importing again completes what was interrupted.
        let out = spawn(&h.d, "nix-store", &["--import"], Some(&export_file))
            .wait_with_output()
            .unwrap();
        h.d.expect_ok("nix-store --import (again)", &out);
        assert_eq!(h.count_valid(&paths), paths.len());
        h.check();
        h.delete(&paths);
    }

    // Optimise: each round adds paths whose files are duplicates of each other.
    let mut round = 0;
    let mut fresh = |h: &mut Harness| {
        round += 1;
        h.add_files(&format!("dup{round}"), 60, 32 * 1024, true)
    };
    fresh(&mut h);
    let t0 = Instant::now();
    h.d.client_ok("nix-store", &["--optimise"]);
    let window = t0.elapsed();
    for _ in 0..iterations() {
        fresh(&mut h);
        let client = spawn(&h.d, "nix-store", &["--optimise"], None);
        h.sleep_random(window);
        let out = h.kill_daemon_and_check(client);
        let writable = writable_dirs(&h.d);
        h.point(
            "optimise",
            if out.status.success() {
                "client finished"
            } else {
                "interrupted"
            },
        );
        // Optimise makes a directory writable for the rename and read-only again
        // after it; a kill in between is repaired when the restarted daemon opens
        // the store (verify cannot see modes, so this is checked here).
        h.writable_after_optimise_kill += writable.len();
        assert!(
            writable.is_empty(),
            "left writable after a restart: {writable:?}"
        );
        h.d.client_ok("nix-store", &["--optimise"]);
        h.check();
    }
    h.report("imports and optimise", started);
}

/// Directories inside valid paths that are writable (an interrupted optimise must
/// not leave one: store trees are read-only).
fn writable_dirs(d: &TestDaemon) -> Vec<String> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    for p in d.valid_paths_local() {
        let mut stack = vec![PathBuf::from(&p)];
        while let Some(dir) = stack.pop() {
            let Ok(meta) = fs::symlink_metadata(&dir) else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            if meta.permissions().mode() & 0o222 != 0 {
                out.push(dir.display().to_string());
            }
            for e in fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()) {
                stack.push(e.path());
            }
        }
    }
    out
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn sigkill_daemon_and_builders_during_builds() {
    let Some(mut h) = prepared(2) else { return };
    let started = Instant::now();
    h.rooted_build("root", "result");
    h.check();
    let expr = h.expr();
    let build_args = |salt: &str| -> Vec<String> {
        vec![
            expr.clone(),
            "-A".into(),
            "top".into(),
            "--argstr".into(),
            "salt".into(),
            salt.into(),
            "--no-out-link".into(),
        ]
    };
    let t0 = Instant::now();
    let a: Vec<String> = build_args("window");
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    h.d.client_ok("nix-build", &a);
    let window = t0.elapsed();
    for i in 0..iterations() {
        let salt = format!("d{i}");
        let a = build_args(&salt);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let client = spawn(&h.d, "nix-build", &a, None);
        h.sleep_random(window);
        let running = TestDaemon::descendants(h.d.pid())
            .into_iter()
            .filter(|p| comm(*p) != "unrooted")
            .count();
        let out = h.kill_daemon_and_check(client);
        let what = if out.status.success() {
            "build finished".to_owned()
        } else if running == 0 {
            "no builder running".to_owned()
        } else {
            "builders running".to_owned()
        };
        h.point("build (daemon killed)", &what);
        // Building again completes.
        let out = spawn(&h.d, "nix-build", &a, None)
            .wait_with_output()
            .unwrap();
        h.d.expect_ok("nix-build (again)", &out);
        h.check();
    }
    // SIGKILL of one process of a running build: the sandbox helper, the builder's
    // shell or one of its children. The build fails (or, rarely, the kill lands
    // after the builder finished), the daemon lives on, a rebuild succeeds.
    for i in 0..iterations() {
        let salt = format!("b{i}");
        let a = build_args(&salt);
        let a: Vec<&str> = a.iter().map(String::as_str).collect();
        let mut client = spawn(&h.d, "nix-build", &a, None);
        let skip = Duration::from_millis(h.rng.below(1500));
        std::thread::sleep(skip);
        // Wait for a process of a build to appear, then kill a random one.
        let deadline = Instant::now() + Duration::from_secs(20);
        let victim = loop {
            // Not the spare helper waiting for the next build (it has no plan yet).
            let procs: Vec<u32> = TestDaemon::descendants(h.d.pid())
                .into_iter()
                .filter(|p| comm(*p) != "sandbox-spare")
                .collect();
            if !procs.is_empty() {
                break Some(procs[h.rng.below(procs.len() as u64) as usize]);
            }
            if client.try_wait().unwrap().is_some() || Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let what = match victim {
            Some(pid) => {
                let name = comm(pid);
                sigkill(pid);
                format!("killed {name}")
            }
            None => "no build process found".to_owned(),
        };
        let out = client.wait_with_output().unwrap();
        assert!(
            h.d.is_running(),
            "the daemon died with its builder: {}",
            h.d.log()
        );
        h.point(
            "build (builder killed)",
            &format!(
                "{what}, build {}",
                if out.status.success() {
                    "succeeded"
                } else {
                    "failed"
                }
            ),
        );
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(err.contains("error:"), "no clear error: {err}");
        }
        h.check();
        let out = spawn(&h.d, "nix-build", &a, None)
            .wait_with_output()
            .unwrap();
        h.d.expect_ok("nix-build after a killed builder", &out);
        h.check();
    }
    h.report("builds", started);
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn sigkill_daemon_and_roots_helper_during_gc() {
    let Some(mut h) = prepared(3) else { return };
    let started = Instant::now();
    h.rooted_build("root", "result");
    // A rooted path added (not built): a gcroots/auto link of its own.
    let kept = h.add_files("kept", 1, 100, false).remove(0);
    let link = h.d.client_home().join("kept-link");
    h.d.client_ok(
        "nix-store",
        &["--add-root", link.to_str().unwrap(), "--realise", &kept],
    );
    h.roots.push((link, kept));
    h.check();
    let mut round = 0;
    let mut dead = |h: &mut Harness| {
        round += 1;
        h.add_files(&format!("dead{round}"), 300, 300, false)
    };
    dead(&mut h);
    let t0 = Instant::now();
    h.d.client_ok("nix-store", &["--gc"]);
    let window = t0.elapsed();
    for _ in 0..iterations() {
        let paths = dead(&mut h);
        let client = spawn(&h.d, "nix-store", &["--gc"], None);
        h.sleep_random(window);
        h.kill_daemon_and_check(client);
        let left = h.count_valid(&paths);
        h.point(
            "gc (daemon killed)",
            match left {
                0 => "all deleted",
                n if n == paths.len() => "none deleted",
                _ => "partly deleted",
            },
        );
        h.d.client_ok("nix-store", &["--gc"]);
        assert_eq!(h.count_valid(&paths), 0);
        h.check();
    }
    // The helper killed at a random point of a collection: the collection either
    // completes (the helper had answered) or fails; roots are never lost, and with
    // the helper gone a collection is refused, not run without it.
    for _ in 0..iterations() {
        let paths = dead(&mut h);
        let client = spawn(&h.d, "nix-store", &["--gc"], None);
        h.sleep_random(window);
        h.d.kill_roots_helper();
        let out = client.wait_with_output().unwrap();
        h.point(
            "gc (roots helper killed)",
            if out.status.success() {
                "collection finished"
            } else {
                "collection failed"
            },
        );
        let err = h.d.client_err("nix-store", &["--gc"]);
        assert!(err.contains("error:"), "{err}");
        h.check();
        h.d.start_roots_helper();
        h.d.client_ok("nix-store", &["--gc"]);
        assert_eq!(h.count_valid(&paths), 0);
        h.check();
    }
    h.report("gc", started);
}
