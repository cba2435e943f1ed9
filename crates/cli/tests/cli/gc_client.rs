//! Garbage collection with the real Nix 2.8 client: `nix-store --gc` and friends,
//! `nix-collect-garbage`, `nix store gc`, run as unprivileged users against
//! `unrooted daemon` (its own unprivileged user), with the roots helper
//! `unrooted-find-roots` running as root, as an administrator would run it.
//! Builders run in the rootless sandbox with `/bin/sh` bound to Debian's static
//! busybox. Under `CI=true` nothing here may skip.

use std::collections::BTreeSet;
use std::fs;
use std::process::Child;
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 8\n";

const EXPR: &str = r#"
{ salt ? "", src ? null }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep${salt}" "echo dep ${salt} > $out";
  top = mk "top${salt}" "echo ${dep} > $out";
  other = mk "other${salt}" "echo other ${salt} > $out";
  gen = mk "gen${salt}" "mkdir $out; echo gen ${salt} > $out/file";
  slowdep = mk "slowdep${salt}" "sleep 1; echo ${dep} > $out";
  user = mk "user${salt}" ''
    echo ${builtins.path { path = /. + src; name = "src${salt}"; }} > $out
    echo ${builtins.toFile "text${salt}" salt} >> $out
    echo ${slowdep} >> $out
  '';
  sleeper = mk "sleeper${salt}" "sleep 30; echo > $out";
}
"#;

fn prepared(extra_conf: &str) -> Option<TestDaemon> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        &format!("{CONF}{extra_conf}"),
    );
    fs::write(d.inputs().join("gc.nix"), EXPR).unwrap();
    d.start_roots_helper();
    d.start();
    Some(d)
}

fn expr(d: &TestDaemon) -> String {
    d.inputs().join("gc.nix").to_str().unwrap().to_owned()
}

/// A new store path added by the client with `nix-store --add` (nobody roots it
/// once the client exits).
fn add_file(d: &TestDaemon, name: &str, contents: &str) -> String {
    let f = d.inputs().join(name);
    fs::write(&f, contents).unwrap();
    d.client_ok("nix-store", &["--add", f.to_str().unwrap()])
        .trim()
        .to_owned()
}

fn exists(p: &str) -> bool {
    fs::symlink_metadata(p).is_ok()
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines().map(str::to_owned).collect()
}

/// Everything a command printed: Nix prints progress on stderr and the
/// "N store paths deleted, X MiB freed" summary on stdout.
fn stderr_of(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// Runs `nix-store --gc` (plus `extra`) as the client; returns what it printed.
fn gc(d: &TestDaemon, extra: &[&str]) -> String {
    let mut args = vec!["--gc"];
    args.extend_from_slice(extra);
    let out = d.client("nix-store").args(&args).output().unwrap();
    d.expect_ok(&format!("nix-store {}", args.join(" ")), &out);
    stderr_of(&out)
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn nix_store_gc_print_roots_live_dead_max_freed_and_delete() {
    let Some(d) = prepared("") else { return };
    let dead = add_file(&d, "dead", "dead\n");
    let kept = add_file(&d, "kept", "kept\n");
    let home_root = d.client_home().join("r");
    d.client_ok(
        "nix-store",
        &[
            "--add-root",
            home_root.to_str().unwrap(),
            "--indirect",
            "-r",
            &kept,
        ],
    );

    let roots = d.client_ok("nix-store", &["--gc", "--print-roots"]);
    assert!(roots.contains(&format!(" -> {kept}")), "{roots}");
    let live = lines(&d.client_ok("nix-store", &["--gc", "--print-live"]));
    assert!(live.contains(&kept) && !live.contains(&dead), "{live:?}");
    let dead_list = lines(&d.client_ok("nix-store", &["--gc", "--print-dead"]));
    assert!(dead_list.contains(&dead) && !dead_list.contains(&kept));

    // A live path is refused with Nix's words; a dead one goes.
    let err = d.client_err("nix-store", &["--delete", &kept]);
    assert!(
        err.contains(&format!(
            "Cannot delete path '{kept}' since it is still alive. To find out why, use: nix-store --query --roots"
        )),
        "{err}"
    );
    assert!(exists(&kept));
    let out = d
        .client("nix-store")
        .args(["--delete", &dead])
        .output()
        .unwrap();
    d.expect_ok("nix-store --delete", &out);
    assert!(
        stderr_of(&out).contains("1 store paths deleted"),
        "{}",
        stderr_of(&out)
    );
    assert!(!exists(&dead));

    // --max-freed stops after the first deletion; --gc takes the rest, in Nix's words.
    let a = add_file(&d, "a", "a\n");
    let b = add_file(&d, "b", "b\n");
    let err = gc(&d, &["--max-freed", "1"]);
    assert_eq!(
        [&a, &b].iter().filter(|p| exists(p)).count(),
        1,
        "one of the two should be gone: {err}"
    );
    let err = gc(&d, &[]);
    for expected in [
        "finding garbage collector roots...",
        "deleting garbage...",
        "deleting unused links...",
        "store paths deleted,",
        "MiB freed",
    ] {
        assert!(err.contains(expected), "missing '{expected}' in: {err}");
    }
    assert!(err.contains("deleting '"), "{err}");
    assert!(!exists(&a) && !exists(&b) && exists(&kept));

    // Removing the link makes its target collectable. (Its `gcroots/auto` entry
    // stays: the daemon cannot see into the home that the link is gone.)
    fs::remove_file(&home_root).unwrap();
    let err = gc(&d, &[]);
    assert!(!exists(&kept), "{err}");
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_second_users_result_and_profile_survive_gc_by_any_user() {
    let Some(d) = prepared("") else { return };
    let result = d.client_home().join("result");
    let top = d
        .client_ok(
            "nix-build",
            &[&expr(&d), "-A", "top", "-o", result.to_str().unwrap()],
        )
        .trim()
        .to_owned();
    let dep = fs::read_to_string(&top).unwrap().trim().to_owned();
    let gen_path = d
        .client_ok("nix-build", &[&expr(&d), "-A", "gen", "--no-out-link"])
        .trim()
        .to_owned();
    let prof = d.client_home().join("prof");
    d.client_ok(
        "nix-env",
        &["-p", prof.to_str().unwrap(), "--set", &gen_path],
    );
    let garbage = d
        .client_ok("nix-build", &[&expr(&d), "-A", "other", "--no-out-link"])
        .trim()
        .to_owned();

    // The daemon cannot read the client's home (0700): only the helper can.
    gc(&d, &[]);
    d.other_ok("nix-store", &["--gc"]);
    let err = d
        .other("nix-store")
        .args(["--gc"])
        .output()
        .map(|o| stderr_of(&o))
        .unwrap();
    for p in [&top, &dep, &gen_path] {
        assert!(exists(p), "{p} was collected: {err}\n{}", d.log());
    }
    assert!(!exists(&garbage), "unrooted {garbage} survived");
    let out = d.other_ok("nix", &["store", "ls", &top]);
    assert!(!out.is_empty());

    // Links gone: collectable.
    fs::remove_file(&result).unwrap();
    for entry in fs::read_dir(d.client_home()).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_str().unwrap().starts_with("prof") {
            fs::remove_file(p).unwrap();
        }
    }
    d.other_ok("nix-store", &["--gc"]);
    assert!(!exists(&top) && !exists(&dep) && !exists(&gen_path));
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn nix_collect_garbage_and_nix_store_gc() {
    let Some(d) = prepared("") else { return };
    // Two generations of a per-user profile in the state directory.
    let profile_dir = d.state_dir().join("profiles/per-user/unrooted-test-client");
    let g1 = d
        .client_ok("nix-build", &[&expr(&d), "-A", "gen", "--no-out-link"])
        .trim()
        .to_owned();
    let g2 = d
        .client_ok(
            "nix-build",
            &[
                &expr(&d),
                "-A",
                "gen",
                "--argstr",
                "salt",
                "2",
                "--no-out-link",
            ],
        )
        .trim()
        .to_owned();
    let profile = profile_dir.join("p");
    d.client_ok("nix-env", &["-p", profile.to_str().unwrap(), "--set", &g1]);
    d.client_ok("nix-env", &["-p", profile.to_str().unwrap(), "--set", &g2]);
    let dead = add_file(&d, "dead1", "dead1\n");

    let out = d.client("nix-collect-garbage").output().unwrap();
    d.expect_ok("nix-collect-garbage", &out);
    assert!(
        stderr_of(&out).contains("store paths deleted"),
        "{}",
        stderr_of(&out)
    );
    assert!(!exists(&dead) && exists(&g1) && exists(&g2));

    let out = d.client("nix-collect-garbage").arg("-d").output().unwrap();
    d.expect_ok("nix-collect-garbage -d", &out);
    assert!(
        !exists(&g1),
        "old generation's path survived: {}",
        stderr_of(&out)
    );
    assert!(exists(&g2));

    let dead = add_file(&d, "dead2", "dead2\n");
    let out = d
        .client("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "store",
            "gc",
        ])
        .output()
        .unwrap();
    d.expect_ok("nix store gc", &out);
    assert!(!exists(&dead) && exists(&g2));
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn gc_refuses_without_the_helper_and_names_it() {
    let Some(mut d) = prepared("") else { return };
    let dead = add_file(&d, "dead", "dead\n");
    let kept = add_file(&d, "kept", "kept\n");
    let link = d.client_home().join("r");
    d.client_ok(
        "nix-store",
        &[
            "--add-root",
            link.to_str().unwrap(),
            "--indirect",
            "-r",
            &kept,
        ],
    );
    d.stop_roots_helper();
    let err = d.client_err("nix-store", &["--gc"]);
    assert!(
        err.contains("refusing to collect garbage")
            && err.contains(d.roots_helper_socket().to_str().unwrap())
            && err.contains("nothing was deleted"),
        "{err}"
    );
    let err = d.client_err("nix-store", &["--delete", &dead]);
    assert!(err.contains("refusing to collect garbage"), "{err}");
    assert!(exists(&dead) && exists(&kept));
    // Listing the dead would be as wrong as deleting them.
    let err = d.client_err("nix-store", &["--gc", "--print-dead"]);
    assert!(err.contains("refusing to collect garbage"), "{err}");

    // The administrator's explicit opt-out: a root the daemon cannot read still
    // refuses, naming the root.
    d.kill();
    d.set_conf(&format!(
        "{CONF}use-roots-daemon = false\nunrooted-gc-without-roots-helper = true\n"
    ));
    d.start();
    assert!(d.log().contains("WITHOUT the roots helper"), "{}", d.log());
    let err = d.client_err("nix-store", &["--gc"]);
    assert!(
        err.contains("cannot read potential root") && err.contains(link.to_str().unwrap()),
        "{err}"
    );
    assert!(exists(&dead) && exists(&kept));
    // Once the root and its registration are gone (an administrator's cleanup: the
    // daemon cannot even see that a link in a private home is gone), collection
    // without the helper works.
    fs::remove_file(&link).unwrap();
    fs::remove_dir_all(d.state_dir().join("gcroots/auto")).unwrap();
    gc(&d, &[]);
    assert!(!exists(&dead) && !exists(&kept));
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_daemon_logs_its_gc_mode_and_refuses_a_silent_opt_out() {
    let Some(mut d) = prepared("") else { return };
    let log = d.log();
    assert!(
        log.contains("roots the daemon cannot read come from the roots helper")
            && log.contains(d.roots_helper_socket().to_str().unwrap()),
        "{log}"
    );
    d.kill();
    d.set_conf(&format!("{CONF}use-roots-daemon = false\n"));
    // The daemon must refuse to start: `start` would panic waiting for the socket.
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| d.start()));
    assert!(
        r.is_err(),
        "the daemon started with use-roots-daemon = false alone"
    );
    assert!(d.log().contains("use-roots-daemon"), "{}", d.log());
}

/// The links FindRoots shows for `path` while a slow build of `salt` runs.
fn links_during_build(d: &TestDaemon, salt: &str) -> BTreeSet<String> {
    let mut build = d
        .client("nix-build")
        .args([
            &expr(d),
            "-A",
            "sleeper",
            "--argstr",
            "salt",
            salt,
            "--no-out-link",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let drv = d
        .client_ok(
            "nix-instantiate",
            &[&expr(d), "-A", "sleeper", "--argstr", "salt", salt],
        )
        .trim()
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(20);
    let links = loop {
        let roots = d.client_ok("nix-store", &["--gc", "--print-roots"]);
        let links: BTreeSet<String> = roots
            .lines()
            .filter(|l| l.ends_with(&format!(" -> {drv}")))
            .map(|l| l.split(" -> ").next().unwrap().to_owned())
            .collect();
        if !links.is_empty() {
            break links;
        }
        assert!(Instant::now() < deadline, "the build's roots never showed");
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = build.kill();
    let _ = build.wait();
    links
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn find_roots_is_censored_for_untrusted_clients() {
    let Some(mut d) = prepared("") else { return };
    let links = links_during_build(&d, "u");
    assert!(
        links.iter().all(|l| l == "{censored}"),
        "an untrusted client saw {links:?}"
    );
    d.kill();
    d.set_conf(&format!("{CONF}trusted-users = unrooted-test-client\n"));
    d.start();
    let links = links_during_build(&d, "t");
    assert!(
        links.iter().any(|l| l.starts_with("{temp:")),
        "a trusted client saw only {links:?}"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn auto_gc_below_min_free() {
    // A min-free no disk has: every check collects (all of the dead paths, as
    // max-free is unlimited).
    let Some(d) = prepared("min-free = 1000000000000000\nmin-free-check-interval = 0\n") else {
        return;
    };
    assert!(
        d.log().contains("automatic garbage collection"),
        "{}",
        d.log()
    );
    let dead = add_file(&d, "dead", "dead\n");
    // Every add pokes the collector, so `kept` must be rooted before it is added:
    // its path is computed first (as `nix-store --add` would give it) and a direct
    // root to it is placed in gcroots by the store owner; a root to a path that is
    // not valid yet is simply ignored until it is.
    let kept_src = d.inputs().join("kept");
    fs::write(&kept_src, "kept\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_unrooted"))
        .args(["store-path", "--store-dir"])
        .arg(d.store_dir())
        .arg(&kept_src)
        .output()
        .unwrap();
    assert!(out.status.success());
    let kept = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    d.owner_ok(
        "ln",
        &[
            "-s",
            &kept,
            d.state_dir().join("gcroots/kept").to_str().unwrap(),
        ],
    );
    assert_eq!(
        d.client_ok("nix-store", &["--add", kept_src.to_str().unwrap()])
            .trim(),
        kept
    );
    // The next add pokes the collector.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while exists(&dead) {
        assert!(
            Instant::now() < deadline,
            "auto-GC did not run: {}",
            d.log()
        );
        n += 1;
        add_file(&d, &format!("poke{n}"), &format!("{n}\n"));
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(exists(&kept));
    assert!(d.log().contains("auto-GC"), "{}", d.log());
}

/// One client process to start: program, arguments, and the file its stdin reads.
type Job = (String, Vec<String>, Option<std::path::PathBuf>);

/// Starts a client process for each job.
fn spawn_many(d: &TestDaemon, jobs: &[Job]) -> Vec<(String, Child)> {
    jobs.iter()
        .map(|(program, args, stdin)| {
            let stdin = match stdin {
                Some(f) => std::process::Stdio::from(fs::File::open(f).unwrap()),
                None => std::process::Stdio::null(),
            };
            let child = d
                .client(program)
                .args(args)
                .stdin(stdin)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            (format!("{program} {}", args.join(" ")), child)
        })
        .collect()
}

/// Builds in the race, each with a build, an add of a source and of a text file
/// during evaluation, and a dependency that builds for a second.
const RACE_BUILDS: usize = 20;
/// Plain adds in the race.
const RACE_ADDS: usize = 15;
/// Imports in the race, each of a two-path closure (a `.drv` referring to another).
const RACE_IMPORTS: usize = 15;

/// An export of the closure of a freshly instantiated `.drv` (two paths, one
/// referring to the other) in a file, and the paths, which are garbage once the
/// client exits.
fn exported_closure(d: &TestDaemon, salt: &str) -> (std::path::PathBuf, BTreeSet<String>) {
    let drv = d.client_ok(
        "nix-instantiate",
        &[&expr(d), "-A", "top", "--argstr", "salt", salt],
    );
    let closure = lines(&d.client_ok("nix-store", &["-qR", drv.trim()]));
    assert_eq!(closure.len(), 2, "{closure:?}");
    let mut args = vec!["--export"];
    args.extend(closure.iter().map(String::as_str));
    let out = d.client("nix-store").args(&args).output().unwrap();
    d.expect_ok("nix-store --export", &out);
    let file = d.inputs().join(format!("export-{salt}"));
    fs::write(&file, &out.stdout).unwrap();
    (file, closure)
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn gc_racing_fifty_concurrent_builds_adds_and_imports_loses_nothing() {
    // The client is not trusted, and its exports are not signed.
    let Some(d) = prepared("require-sigs = false\n") else {
        return;
    };
    // Some garbage for every collection to chew on.
    for i in 0..30 {
        add_file(&d, &format!("g{i}"), &format!("garbage {i}\n"));
    }
    // Closures to import, collected before the race so that importing adds them.
    let exports: Vec<_> = (0..RACE_IMPORTS)
        .map(|i| exported_closure(&d, &format!("imp{i}")))
        .collect();
    gc(&d, &[]);
    for (_, closure) in &exports {
        for p in closure {
            assert!(!exists(p), "{p} was not collected before the race");
        }
    }
    // Builds that add a source and a text file during evaluation, build a
    // dependency and a top derivation, and root the result in a private home;
    // plain adds; imports. Fifty clients at once, interleaved.
    let mut jobs: Vec<Job> = Vec::new();
    for i in 0..RACE_BUILDS {
        let src = d.inputs().join(format!("src{i}"));
        fs::write(&src, format!("source {i}\n")).unwrap();
        let link = d.client_home().join(format!("res{i}"));
        jobs.push((
            "nix-build".to_owned(),
            vec![
                expr(&d),
                "-A".into(),
                "user".into(),
                "--argstr".into(),
                "salt".into(),
                format!("r{i}"),
                "--argstr".into(),
                "src".into(),
                src.to_str().unwrap().to_owned(),
                "-o".into(),
                link.to_str().unwrap().to_owned(),
            ],
            None,
        ));
        if i < RACE_ADDS {
            let f = d.inputs().join(format!("add{i}"));
            fs::write(&f, format!("added {i}\n")).unwrap();
            jobs.push((
                "nix-store".to_owned(),
                vec!["--add".into(), f.to_str().unwrap().to_owned()],
                None,
            ));
        }
        if let Some((file, _)) = exports.get(i) {
            jobs.push((
                "nix-store".to_owned(),
                vec!["--import".into()],
                Some(file.clone()),
            ));
        }
    }
    assert_eq!(jobs.len(), 50);
    let started = Instant::now();
    let mut pending = spawn_many(&d, &jobs);
    let stop = started + Duration::from_secs(120);
    let mut outputs = Vec::new();
    let mut gcs = 0;
    while !pending.is_empty() {
        assert!(Instant::now() < stop, "clients did not finish: {}", d.log());
        let g = d.client("nix-store").arg("--gc").output().unwrap();
        d.expect_ok("nix-store --gc (racing)", &g);
        gcs += 1;
        let mut still = Vec::new();
        for (what, mut c) in pending {
            if c.try_wait().unwrap().is_some() {
                outputs.push((what, c.wait_with_output().unwrap()));
            } else {
                still.push((what, c));
            }
        }
        pending = still;
    }
    eprintln!(
        "{} clients done in {:?}, {gcs} collections beside them",
        jobs.len(),
        started.elapsed()
    );
    assert!(gcs >= 2, "the collections did not overlap the clients");
    // Every client succeeded (an import prints the paths it imported); every
    // rooted result and everything it refers to is still there after one more
    // collection.
    let mut imported = BTreeSet::new();
    for (what, out) in &outputs {
        let stdout = d.expect_ok(what, out);
        if what.ends_with("--import") {
            imported.insert(lines(&stdout));
        }
    }
    let expected: BTreeSet<BTreeSet<String>> = exports.into_iter().map(|(_, c)| c).collect();
    assert_eq!(imported, expected, "imports did not import their closures");
    gc(&d, &[]);
    for i in 0..RACE_BUILDS {
        let link = d.client_home().join(format!("res{i}"));
        let out = fs::read_link(&link).unwrap();
        let text = fs::read_to_string(&out).unwrap();
        for p in text.lines() {
            assert!(exists(p), "{} refers to {p}, which is gone", out.display());
        }
        let slow = fs::read_to_string(text.lines().nth(2).unwrap()).unwrap();
        assert!(exists(slow.trim()), "{slow} is gone");
    }
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn sigkill_mid_gc_leaves_a_consistent_store() {
    let Some(mut d) = prepared("") else { return };
    // Many dead paths: an import of a big export is quickest.
    let dir = d.inputs().join("many");
    fs::create_dir(&dir).unwrap();
    let mut paths = Vec::new();
    for i in 0..300 {
        let f = dir.join(format!("f{i}"));
        fs::write(&f, format!("file {i}\n").repeat(50)).unwrap();
        paths.push(f.to_str().unwrap().to_owned());
    }
    let mut args = vec!["--add".to_owned()];
    args.extend(paths);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    d.client_ok("nix-store", &args);
    let gc_child = d.client("nix-store").arg("--gc").spawn().unwrap();
    // Kill once deleting has begun.
    let deadline = Instant::now() + Duration::from_secs(20);
    let store_count = || fs::read_dir(d.store_dir()).unwrap().count();
    let before = store_count();
    while store_count() + 5 > before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    d.kill();
    let mut gc_child = gc_child;
    let _ = gc_child.wait();
    d.assert_store_clean();
    d.start();
    gc(&d, &[]);
    d.assert_store_clean();
}

/// Serves the roots helper socket the way systemd's `Accept=yes` socket unit does:
/// for each connection, starts `command` (as root, the test's user) with the
/// connection as its stdin and stdout. The socket is the daemon user's, mode 0600.
fn socket_activated_helper(d: &TestDaemon, command: Vec<String>) -> std::thread::JoinHandle<()> {
    use std::os::unix::fs::PermissionsExt;
    let socket = d.roots_helper_socket();
    fs::create_dir_all(socket.parent().unwrap()).unwrap();
    let _ = fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    fs::set_permissions(&socket, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&socket, Some(d.daemon_uid), None).unwrap();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { return };
            let out = conn.try_clone().unwrap();
            let status = std::process::Command::new(&command[0])
                .args(&command[1..])
                .stdin(std::os::fd::OwnedFd::from(conn))
                .stdout(std::os::fd::OwnedFd::from(out))
                .stderr(std::process::Stdio::null())
                .status();
            if status.is_err() {
                return;
            }
        }
    })
}

/// GC fails closed (regression of the installed system, where a placeholder
/// `--owner-uid 4294967295` made the socket-activated helper refuse every connection
/// and the daemon read the closed connection as "no roots", deleting a user's
/// `~/result`). With the real helper refusing the daemon's uid, and with a helper
/// that crashes after part of its answer, another user's `nix-collect-garbage` fails
/// naming the cause and deletes nothing: the first user's root in its 0700 home and
/// even the dead paths stay. The real helper, socket-activated for the right uid,
/// then answers in full and only the dead path goes.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn gc_fails_closed_when_the_helper_refuses_or_dies() {
    let Some(mut d) = prepared("") else { return };
    d.stop_roots_helper();
    let result = d.client_home().join("result");
    let top = d
        .client_ok(
            "nix-build",
            &[&expr(&d), "-A", "top", "-o", result.to_str().unwrap()],
        )
        .trim()
        .to_owned();
    let dead = add_file(&d, "dead-fails-closed", "dead\n");
    let helper = |owner: u32, peer_uid: u32| {
        vec![
            unrooted_testkit::daemon::roots_helper_exe()
                .display()
                .to_string(),
            "--store-dir".into(),
            d.store_dir().display().to_string(),
            "--state-dir".into(),
            d.state_dir().display().to_string(),
            "--owner-uid".into(),
            owner.to_string(),
            "--inetd".into(),
            "--peer-instance".into(),
            format!("0-1-{peer_uid}"),
        ]
    };
    // Another user's collection is refused naming `cause`, and deletes nothing.
    let refused_for = |cause: &str| {
        let err = d.other_err("nix-collect-garbage", &[]);
        assert!(
            err.contains("refusing to collect garbage") && err.contains(cause),
            "{err}"
        );
        assert!(exists(&top) && exists(&dead), "deleted: {cause}");
    };
    let refused = socket_activated_helper(&d, helper(u32::MAX, d.daemon_uid));
    refused_for("not uid 4294967295");

    // A helper that dies after writing a root but before its answer's end.
    drop(refused);
    let crash = format!(
        "printf '%s\\0' {}; kill -9 $$",
        d.store_dir()
            .join("00000000000000000000000000000000-x")
            .display()
    );
    let crashing = socket_activated_helper(&d, vec!["/bin/sh".into(), "-c".into(), crash]);
    refused_for("no end-of-answer item");
    drop(crashing);

    // The real helper for the right uid: the root survives, the dead path goes.
    let _ok = socket_activated_helper(&d, helper(d.daemon_uid, d.daemon_uid));
    d.other_ok("nix-collect-garbage", &[]);
    assert!(exists(&top), "{top} was collected: {}", d.log());
    assert!(!exists(&dead), "{dead} survived");
}
