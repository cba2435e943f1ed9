//! Issue 8: builders never run as the store owner. The Nix 2.8 client, as an
//! unprivileged user, against `unrooted daemon` as its own user whose subordinate ids
//! (given by [`ensure_subids`]) cut into per-build slices of 65,536: the builder is
//! 1000/100 inside and a slice id outside, concurrent builds get different slices,
//! what a build leaves becomes the store owner's (outputs with canonical modes, build
//! directories removed even when made unreadable), a killed build returns its slice
//! and leaves nothing owned by its ids, the `uid-range` feature gets 65,536 ids as
//! root, and without subordinate ids the daemon warns once and uses the single-id
//! mode. Under `CI=true` (where `scripts/setup.sh` installs `uidmap`) nothing skips.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_daemon_tests, ensure_subids, TestDaemon, DAEMON_USER};

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 4\n";

const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
  dep = mk "dep" "mkdir $out; echo hi > $out/f";
  # Every way out it can find, one line each: `<what>|ok` or `<what>|<strerror>`.
  escape = ''
    try() { l=$1; shift; if m=$("$@" 2>&1); then echo "$l|ok"; else echo "$l|''${m##*: }"; fi; }
    S=$NIX_STORE
    try store-touch touch $S/escape-probe-file
    try store-mkdir mkdir $S/escape-probe-dir
    try input-create touch $dep/escape-probe
    try input-mkdir mkdir $dep/escape-probe-dir
    try input-append sh -c "echo x >> $dep/f"
    try input-truncate truncate -s 0 $dep/f
    try input-chmod chmod 777 $dep
    try input-file-chmod chmod 666 $dep/f
    try input-unlink rm -f $dep/f
    p=$S
    while [ "$p" != / ]; do p=$(dirname $p); try "parent $p" touch $p/escape-probe; done
    try parent-mkdir mkdir $(dirname $S)/escape-probe-dir
    try proc-self-root-store touch /proc/self/root$S/escape-probe-proc
    try proc-self-root-input touch /proc/self/root$dep/escape-probe
    try proc-1-root-input touch /proc/1/root$dep/escape-probe
    try proc-1-root-parent touch /proc/1/root$(dirname $S)/escape-probe
    try proc-1-cwd-parent touch /proc/1/cwd/../escape-probe
    for d in /proc/[0-9]*; do
      [ -e $d/cwd ] && try "proc-cwd-root $d" touch $d/cwd/../escape-probe
      [ -e $d/root ] && try "proc-root-input $d" touch $d/root$dep/escape-probe
    done
    for f in /proc/$$/fd/*; do
      t=$(readlink $f)
      if [ -d $f ]; then try "fd-dir $t" touch $f/escape-probe; else echo "fd|$t"; fi
    done
    try remount-input unshare -r -m mount -o remount,bind,rw $dep
    try remount-store unshare -r -m mount -o remount,bind,rw $S
    try store-rename-input mv $dep $S/escape-probe-moved
    try store-unlink-input rm -rf $dep
    echo "done|"
  '';
in {
  escape = derivation {
    name = "escape"; system = builtins.currentSystem; builder = "/bin/sh"; inherit dep;
    args = [ "-c" "(${escape}) > /build/report 2>&1; mv /build/report $out" ];
  };
  inherit dep;
  # Unreadable trees owned by its ids in its output and in its build directory.
  killme = builtins.genList (i: mk "killme-${toString i}" "mkdir -p $out/a/b d/e; echo x > $out/a/b/f; echo x > d/e/f; chmod 000 $out/a/b $out/a d/e d; touch /build/ready; sleep 60") 2;
  wide = builtins.genList (i: mk "wide-${toString i}" "touch /build/marker; sleep 3; echo ${toString i} > $out") 8;
  bench = builtins.genList (i: mk "bench-${toString i}" "echo ${toString i} > $out") 30;
  ids = mk "ids" "echo $(id -u) $(id -g) > $out; touch /build/marker; sleep 3";
  conc1 = mk "conc1" "touch /build/marker; sleep 3; echo 1 > $out";
  conc2 = mk "conc2" "touch /build/marker; sleep 3; echo 2 > $out";
  odd = mk "odd" "mkdir -p $out/d/e; echo x > $out/d/f; chmod 600 $out/d/f; chmod 700 $out/d; chmod 750 $out/d/e; echo y > $out/g; chmod 640 $out/g; chmod 0755 $out; mkdir -p junk/deep; echo z > junk/deep/f; chmod 000 junk/deep junk";
  root = mk "root" "if chmod 0777 / 2>/dev/null; then echo chmod-ok; else echo chmod-denied; fi > $out; if echo x >> /etc/passwd 2>/dev/null; then echo passwd-ok; else echo passwd-denied; fi >> $out; ls -lnd / >> $out";
  slow = mk "slow" "mkdir -p d/e; echo x > d/e/f; chmod 000 d/e d; echo started; sleep 60; echo > $out";
  range = derivation {
    name = "range"; system = builtins.currentSystem; builder = "/bin/sh";
    requiredSystemFeatures = [ "uid-range" ];
    args = [ "-c" "cat /proc/self/uid_map > $out; cat /proc/self/gid_map >> $out; echo id $(id -u) $(id -g) >> $out; touch /build/f; chown 4242:4242 /build/f && echo chown-ok >> $out" ];
  };
}
"#;

/// A started daemon on a private store, or `None` when this host cannot run the
/// tests (and CI is not set).
fn prepared(conf: &str) -> Option<(TestDaemon, (u32, u32))> {
    prepared_checks()?;
    let range = ensure_subids(DAEMON_USER).expect("subordinate ids for the daemon user");
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), conf);
    fs::write(d.inputs().join("build.nix"), EXPR).unwrap();
    d.start();
    Some((d, range))
}

/// `Some` when this host can run the tests (else, outside CI, `None`: skip).
fn prepared_checks() -> Option<()> {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-build").is_none() {
        return None;
    }
    for (what, ok) in [
        ("/bin/busybox", Path::new("/bin/busybox").exists()),
        (
            "newuidmap (apt-get install uidmap)",
            Path::new("/usr/bin/newuidmap").exists(),
        ),
    ] {
        if !unrooted_testkit::require(ok, &format!("{what} is missing")) {
            return None;
        }
    }
    if let Err(e) = unrooted_sandbox::check_user_namespaces() {
        unrooted_testkit::skip(&e.to_string());
        return None;
    }
    Some(())
}

/// Under the installed unit's capability bounding set (`CAP_SETUID CAP_SETGID`),
/// Debian's setuid-root `newuidmap` cannot map the ids (it needs `CAP_SYS_ADMIN` and
/// `CAP_DAC_OVERRIDE` too), so every builder ran as the store owner while doctor said
/// otherwise. The daemon now says so (single-id mode, naming the mapper and the
/// cause), and with the copies `unrooted install` puts beside its binary (file
/// capabilities, written by the installer's own code) builders run as slice ids.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn under_the_units_bounding_set_builds_get_slices_through_file_capability_mappers() {
    if prepared_checks().is_none() {
        return;
    }
    let range = ensure_subids(DAEMON_USER).expect("subordinate ids for the daemon user");
    // The daemon's binary in a root-owned directory of its own, as installed.
    let libexec = tempfile::tempdir().unwrap();
    let dir = libexec.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("unrooted");
    fs::copy(env!("CARGO_BIN_EXE_unrooted"), &exe).unwrap();
    let mut d = TestDaemon::new(&exe, CONF);
    fs::write(d.inputs().join("build.nix"), EXPR).unwrap();
    d.start_with_the_units_bounding_set();
    let log = d.log();
    assert!(
        log.contains("single-id mode") && log.contains("CAP_SYS_ADMIN"),
        "{log}"
    );
    d.kill();

    use unrooted_deploy::filecaps::{set, CAP_SETGID, CAP_SETUID};
    for (name, cap) in [("newuidmap", CAP_SETUID), ("newgidmap", CAP_SETGID)] {
        let copy = dir.join(name);
        fs::copy(Path::new("/usr/bin").join(name), &copy).unwrap();
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755)).unwrap();
        set(&copy, &[cap]).unwrap();
    }
    d.start_with_the_units_bounding_set();
    let log = d.log();
    assert!(
        log.contains("id-range mode") && log.contains(&dir.join("newuidmap").display().to_string()),
        "{log}"
    );
    let owner = daemon_uid(&d);
    let child = spawn_build(&d, &["ids"]);
    let ids = builder_ids(&d, owner, 1);
    wait_ok(child);
    assert!(!ids.is_empty(), "a sandboxed builder was seen");
    for (uid, _) in ids {
        assert!(in_range(uid, range), "uid {uid} in {range:?}");
    }
}

fn expr(d: &TestDaemon) -> String {
    d.inputs().join("build.nix").to_str().unwrap().to_owned()
}

fn build(d: &TestDaemon, attr: &str) -> String {
    d.client_ok("nix-build", &[&expr(d), "-A", attr, "--no-out-link"])
        .trim()
        .to_owned()
}

fn spawn_build(d: &TestDaemon, attrs: &[&str]) -> Child {
    let e = expr(d);
    let mut args = vec![e.as_str(), "--no-out-link"];
    for a in attrs {
        args.extend(["-A", a]);
    }
    d.client("nix-build")
        .args(&args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The daemon's real uid, as its `/proc` status says (the store owner).
fn daemon_uid(d: &TestDaemon) -> u32 {
    d.proc_status("Uid")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

/// Waits for a client started by [`spawn_build`], asserts that it succeeded, and
/// returns what it printed.
fn wait_ok(child: Child) -> std::process::Output {
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `Uid:`/`Gid:` (real ids) of a process, from `/proc/<pid>/status`.
fn proc_ids(pid: u32) -> Option<(u32, u32)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |k: &str| -> Option<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some((field("Uid:")?, field("Gid:")?))
}

/// The outside ids of the daemon's descendants that are not the store owner's (the
/// sandboxed builders), waiting until `n` distinct uids run or 20 s pass.
fn builder_ids(d: &TestDaemon, owner: u32, n: usize) -> BTreeSet<(u32, u32)> {
    let t0 = Instant::now();
    loop {
        let ids: BTreeSet<(u32, u32)> = TestDaemon::descendants(d.pid())
            .into_iter()
            .filter_map(proc_ids)
            .filter(|(u, _)| *u != owner)
            .collect();
        let uids: BTreeSet<u32> = ids.iter().map(|(u, _)| *u).collect();
        if uids.len() >= n || t0.elapsed() > Duration::from_secs(20) {
            return ids;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn in_range(id: u32, (start, count): (u32, u32)) -> bool {
    id >= start && id - start < count
}

/// Every entry under `dir` owned by an id of the subordinate range.
fn owned_by_range(dir: &Path, range: (u32, u32), found: &mut Vec<String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        if in_range(m.uid(), range) || in_range(m.gid(), range) {
            found.push(format!("{} {}:{}", e.path().display(), m.uid(), m.gid()));
        }
        if m.is_dir() {
            owned_by_range(&e.path(), range, found);
        }
    }
}

/// What the daemon's builds left anywhere (its store, state, and build directories
/// in /tmp) that belongs to the subordinate range.
fn leftovers(d: &TestDaemon, range: (u32, u32)) -> Vec<String> {
    let mut found = Vec::new();
    owned_by_range(d.root(), range, &mut found);
    let prefix = format!("unrooted-builds-{}-", d.pid());
    for e in fs::read_dir("/tmp").unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            owned_by_range(&e.path(), range, &mut found);
        }
    }
    found
}

/// Whether every slice lock in `<state>/userpool2` is free.
fn all_slices_free(d: &TestDaemon) -> bool {
    let dir = d.state_dir().join("userpool2");
    // util-linux's flock(1): exit 0 when the exclusive lock is free.
    fs::read_dir(&dir).unwrap().flatten().all(|e| {
        std::process::Command::new("flock")
            .args(["-n", "-x"])
            .arg(e.path())
            .arg("true")
            .status()
            .unwrap()
            .success()
    })
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn builder_is_1000_100_inside_and_a_slice_id_outside() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    assert!(
        d.log().contains("id-range mode"),
        "the daemon says it uses slices: {}",
        d.log()
    );
    let owner = daemon_uid(&d);
    let child = spawn_build(&d, &["ids"]);
    let ids = builder_ids(&d, owner, 1);
    let out = wait_ok(child);
    let path = String::from_utf8(out.stdout).unwrap();
    assert_eq!(fs::read_to_string(path.trim()).unwrap(), "1000 100\n");
    eprintln!("outside ids of the builder: {ids:?} (store owner {owner})");
    assert!(!ids.is_empty(), "a sandboxed builder was seen");
    for (uid, gid) in ids {
        assert_ne!(uid, owner);
        assert!(in_range(uid, range), "uid {uid} in {range:?}");
        assert_eq!((uid - range.0) % 65536, 1000, "uid {uid} is inner 1000");
        assert_eq!((gid - range.0) % 65536, 100, "gid {gid} is inner 100");
    }
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
    assert!(all_slices_free(&d));
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn two_concurrent_builds_run_under_different_outside_uids() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let owner = daemon_uid(&d);
    let child = spawn_build(&d, &["conc1", "conc2"]);
    let ids = builder_ids(&d, owner, 2);
    wait_ok(child);
    let uids: BTreeSet<u32> = ids.iter().map(|(u, _)| *u).collect();
    eprintln!("outside uids of two concurrent builders: {uids:?} (store owner {owner})");
    assert_eq!(uids.len(), 2, "two different slices: {ids:?}");
    assert!(uids.iter().all(|u| *u != owner && in_range(*u, range)));
    assert!(all_slices_free(&d));
}

/// The user namespaces the daemon holds descriptors of (`user:[inode]` -> fd path).
fn held_user_namespaces(d: &TestDaemon) -> std::collections::BTreeMap<String, String> {
    let mut found = std::collections::BTreeMap::new();
    for e in fs::read_dir(format!("/proc/{}/fd", d.pid())).unwrap() {
        let fd = e.unwrap().path();
        if let Ok(target) = fs::read_link(&fd) {
            let target = target.to_string_lossy().into_owned();
            if target.starts_with("user:[") {
                found.insert(target, fd.to_string_lossy().into_owned());
            }
        }
    }
    found
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn builds_of_one_slice_enter_the_namespace_the_daemon_mapped_once() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let owner = daemon_uid(&d);
    assert!(held_user_namespaces(&d).is_empty(), "none before any build");
    build(&d, "bench.0");
    let first = held_user_namespaces(&d);
    assert_eq!(
        first.len(),
        1,
        "one namespace for the first slice: {first:?}"
    );
    // Its maps, read from inside it (so the outer ids are the host's): the store
    // owner is inner root and the rest of the slice follows.
    let fd = first.values().next().unwrap();
    let out = std::process::Command::new("nsenter")
        .arg(format!("--user={fd}"))
        .args(["cat", "/proc/self/uid_map", "/proc/self/gid_map"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Vec<u64>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| l.split_whitespace().map(|n| n.parse().unwrap()).collect())
        .collect();
    let gid = u64::from(proc_ids(d.pid()).unwrap().1);
    let start = u64::from(range.0);
    assert_eq!(
        lines,
        vec![
            vec![0, u64::from(owner), 1],
            vec![1, start + 1, 65535],
            vec![0, gid, 1],
            vec![1, start + 1, 65535],
        ]
    );
    // Later builds of that slice enter the same one: no new namespace is mapped.
    for i in 1..4 {
        build(&d, &format!("bench.{i}"));
        assert_eq!(held_user_namespaces(&d), first, "after build {i}");
    }
    // Two at once hold two slices, so two namespaces.
    wait_ok(spawn_build(&d, &["conc1", "conc2"]));
    let both = held_user_namespaces(&d);
    assert_eq!(both.len(), 2, "{both:?}");
    assert!(first.keys().all(|k| both.contains_key(k)));
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
    assert!(all_slices_free(&d));
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn outputs_become_the_owners_with_canonical_modes_and_build_dirs_go() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let owner = daemon_uid(&d);
    let out = build(&d, "odd");
    let mut entries = vec![Path::new(&out).to_path_buf()];
    let mut i = 0;
    while i < entries.len() {
        let p = entries[i].clone();
        let m = p.symlink_metadata().unwrap();
        assert_eq!(m.uid(), owner, "{} is the store owner's", p.display());
        let mode = m.mode() & 0o7777;
        if m.is_dir() {
            assert_eq!(mode, 0o555, "{}", p.display());
            entries.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else {
            assert_eq!(mode, 0o444, "{}", p.display());
        }
        i += 1;
    }
    assert_eq!(entries.len(), 5, "{entries:?}");
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_builder_cannot_chmod_the_root_or_write_etc() {
    let Some((d, _)) = prepared(CONF) else {
        return;
    };
    let out = fs::read_to_string(build(&d, "root")).unwrap();
    let mut lines = out.lines();
    assert_eq!(lines.next(), Some("chmod-denied"), "{out}");
    assert_eq!(lines.next(), Some("passwd-denied"), "{out}");
    // `/` belongs to the store owner (inner root of the outer namespace), which the
    // builder's nested namespace does not map: it sees `nobody`, never itself.
    let ls: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!((ls[2], ls[3]), ("65534", "65534"), "{out}");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_killed_build_returns_its_slice_and_leaves_nothing_of_its_ids() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let e = expr(&d);
    let t0 = Instant::now();
    let err = d.client_err(
        "nix-build",
        &[
            &e,
            "-A",
            "slow",
            "--no-out-link",
            "--option",
            "timeout",
            "2",
        ],
    );
    assert!(err.contains("timed out"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
    assert!(all_slices_free(&d), "the slice was returned");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn uid_range_builds_are_root_with_65536_ids() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let out = fs::read_to_string(build(&d, "range")).unwrap();
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(lines[0], ["0", "0", "65536"], "{out}");
    assert_eq!(lines[1], ["0", "0", "65536"], "{out}");
    assert_eq!(lines[2], ["id", "0", "0"], "{out}");
    assert_eq!(lines[3], ["chown-ok"], "{out}");
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn without_subordinate_ids_the_single_id_mode_warns_once() {
    for (conf, why) in [
        ("auto-allocate-uids = false\n", "auto-allocate-uids = false"),
        // A pool outside the owner's ranges is as good as none.
        ("start-id = 1\n", "start-id 1 is not in"),
    ] {
        let Some((d, _)) = prepared(&format!("{CONF}{conf}")) else {
            return;
        };
        let log = d.log();
        assert_eq!(log.matches("single-id mode").count(), 1, "{log}");
        assert!(log.contains(why), "{log}");
        assert!(log.contains("WARN"), "{log}");
        let owner: u32 = daemon_uid(&d);
        let child = spawn_build(&d, &["ids"]);
        let ids = TestDaemon::descendants(d.pid())
            .into_iter()
            .filter_map(proc_ids)
            .collect::<Vec<_>>();
        let out = wait_ok(child);
        let path = String::from_utf8(out.stdout).unwrap();
        assert_eq!(fs::read_to_string(path.trim()).unwrap(), "1000 100\n");
        assert!(ids.iter().all(|(u, _)| *u == owner), "{ids:?}");
        let err = d.client_err("nix-build", &[&expr(&d), "-A", "range", "--no-out-link"]);
        assert!(err.contains("uid-range"), "{err}");
        assert_eq!(d.log().matches("single-id mode").count(), 1);
    }
}

/// Seconds to build 30 trivial derivations one at a time (`max-jobs = 1`).
fn time_30_builds(conf: &str) -> Option<f64> {
    let (d, _) = prepared(&format!(
        "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 1\n{conf}"
    ))?;
    let e = expr(&d);
    let t0 = Instant::now();
    d.client_ok("nix-build", &[&e, "-A", "bench", "--no-out-link"]);
    Some(t0.elapsed().as_secs_f64())
}

/// The cost of the id-range mode against the single-id mode, per build: printed for
/// the record (the issue's goal is under 5 ms), bounded loosely so a regression that
/// makes it seconds fails.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn cost_of_the_id_range_mode() {
    // Alternating, best of three each: the first runs pay for cold caches.
    let (mut single, mut ranges) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let Some(s) = time_30_builds("auto-allocate-uids = false\n") else {
            return;
        };
        let Some(r) = time_30_builds("") else {
            return;
        };
        (single, ranges) = (single.min(s), ranges.min(r));
    }
    let per_build_ms = (ranges - single) / 30.0 * 1000.0;
    eprintln!(
        "30 builds: single-id mode {single:.3} s, id-range mode {ranges:.3} s: {per_build_ms:.1} ms added per build"
    );
    assert!(per_build_ms < 250.0, "{per_build_ms} ms per build");
}

/// Name, owner, group, mode, size, mtime and (for files) contents of every entry
/// under `p`, `p` included, in walk order.
fn snapshot(p: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![p.to_path_buf()];
    while let Some(p) = todo.pop() {
        let m = p.symlink_metadata().unwrap();
        let contents = if m.is_file() {
            String::from_utf8_lossy(&fs::read(&p).unwrap()).into_owned()
        } else {
            String::new()
        };
        out.push(format!(
            "{} {}:{} {:o} {} {}.{} {contents:?}",
            p.display(),
            m.uid(),
            m.gid(),
            m.mode(),
            m.size(),
            m.mtime(),
            m.mtime_nsec()
        ));
        if m.is_dir() {
            let mut names: Vec<_> = fs::read_dir(&p)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            names.sort();
            todo.extend(names);
        }
    }
    out
}

/// The errno a busybox message (glibc's `strerror`) stands for.
fn errno_of(message: &str) -> &str {
    match message {
        "ok" => "ok",
        "Permission denied" => "EACCES",
        "Read-only file system" => "EROFS",
        "Operation not permitted" => "EPERM",
        // busybox mount says this for EPERM and EACCES alike.
        "permission denied (are you root?)" => "EPERM|EACCES",
        other => panic!("unexpected message {other:?}"),
    }
}

/// A builder that tries to write to the store through every path it can reach (the
/// store directory as the sandbox shows it, the parents of its inputs, the inputs
/// themselves, `/proc/self/root`, `/proc/1/root`, `/proc/*/cwd`, its inherited
/// descriptors, a remount from a nested namespace) gets the exact errno the kernel
/// returns for each, and outside the real store directory and the input are unchanged.
/// The sandbox's store directory itself is writable (1775, as in Nix: the outputs are
/// made there), but it is the build's own directory, removed with its root, and what
/// is made there never reaches the store unless it is an output.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_builder_cannot_write_the_store_through_any_path() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let dep = build(&d, "dep");
    let store = d.store_dir();
    let store_meta = |m: fs::Metadata| (m.uid(), m.gid(), m.mode());
    let store_before = store_meta(store.symlink_metadata().unwrap());
    let entries = |p: &Path| -> BTreeSet<String> {
        fs::read_dir(p)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let names_before = entries(&store);
    let root_names_before = entries(d.root());
    let dep_before = snapshot(Path::new(&dep));

    let report = fs::read_to_string(build(&d, "escape")).unwrap();
    let lines: Vec<(&str, &str)> = report
        .lines()
        .map(|l| l.split_once('|').unwrap_or((l, "")))
        .collect();
    eprintln!("{report}");
    assert_eq!(lines.last(), Some(&("done", "")), "{report}");
    let got = |label: &str| -> &str {
        let msg = lines
            .iter()
            .find(|(l, _)| *l == label)
            .unwrap_or_else(|| panic!("no {label} in {report}"))
            .1;
        errno_of(msg)
    };
    let expected = [
        // The sandbox's own store directory (1775, as Nix): the outputs are made here.
        ("store-touch", "ok"),
        ("store-mkdir", "ok"),
        ("proc-self-root-store", "ok"),
        // Inputs are read-only bind mounts; a write open of a 0444 file owned by an
        // id the builder is not fails on the permission check before the mount's.
        ("input-create", "EROFS"),
        ("input-mkdir", "EROFS"),
        ("input-append", "EACCES"),
        ("input-truncate", "EACCES"),
        ("input-chmod", "EROFS"),
        ("input-file-chmod", "EROFS"),
        ("input-unlink", "EROFS"),
        ("parent-mkdir", "EACCES"),
        ("proc-self-root-input", "EROFS"),
        ("proc-1-root-input", "EROFS"),
        ("proc-1-root-parent", "EACCES"),
        ("proc-1-cwd-parent", "EACCES"),
        // The read-only flag of a mount inherited by a less privileged namespace is
        // locked: the kernel's do_reconfigure_mnt returns EPERM, which busybox's
        // mount reports as it reports EACCES. The store dir is the sandbox's own.
        ("remount-input", "EPERM|EACCES"),
        ("remount-store", "ok"),
        // The store dir is sticky and the input's mount point is not the builder's.
        ("store-rename-input", "EPERM"),
        ("store-unlink-input", "EROFS"),
    ];
    for (label, errno) in expected {
        assert_eq!(got(label), errno, "{label} in {report}");
    }
    // Every parent of the store directory: none is writable, except the sandbox's
    // private /tmp (where the test's store happens to lie), which is not the host's.
    let mut parents = 0;
    for a in store.ancestors().skip(1) {
        let want = if a == Path::new("/tmp") {
            "ok"
        } else {
            "EACCES"
        };
        assert_eq!(got(&format!("parent {}", a.display())), want, "{report}");
        parents += 1;
    }
    assert!(parents >= 2);
    // Every process it can see (itself: its PID namespace holds nothing else).
    let procs: Vec<&str> = lines
        .iter()
        .filter_map(|(l, _)| l.strip_prefix("proc-cwd-root "))
        .collect();
    assert!(procs.contains(&"/proc/1"), "{report}");
    for p in procs {
        assert_eq!(got(&format!("proc-cwd-root {p}")), "EACCES", "{report}");
        assert_eq!(got(&format!("proc-root-input {p}")), "EROFS", "{report}");
    }
    // Its descriptors: /dev/null and the log pipe, no directory.
    let fds: Vec<&str> = lines
        .iter()
        .filter(|(l, _)| *l == "fd" || l.starts_with("fd-dir"))
        .map(|(l, m)| if *l == "fd" { *m } else { *l })
        .collect();
    // No directory among them (an `fd-dir` line would say which).
    assert_eq!(fds.len(), 3, "{report}");
    assert_eq!(fds[0], "/dev/null", "{report}");
    assert!(fds[1..].iter().all(|f| f.starts_with("pipe:")), "{report}");

    // Outside: the store gained the build's derivation and output only, the input is
    // as it was, and nothing the builder made is anywhere.
    assert_eq!(store_meta(store.symlink_metadata().unwrap()), store_before);
    let added: Vec<String> = entries(&store).difference(&names_before).cloned().collect();
    assert!(
        added
            .iter()
            .all(|n| n.ends_with("-escape") || n.ends_with("-escape.drv")),
        "{added:?}"
    );
    assert!(names_before
        .iter()
        .all(|n| store.join(n).symlink_metadata().is_ok()));
    assert_eq!(snapshot(Path::new(&dep)), dep_before);
    assert_eq!(entries(d.root()), root_names_before);
    let mut probes = Vec::new();
    for top in [d.root(), Path::new("/tmp")] {
        let mut todo = vec![top.to_path_buf()];
        while let Some(p) = todo.pop() {
            let Ok(rd) = fs::read_dir(&p) else { continue };
            for e in rd.flatten() {
                if e.file_name().to_string_lossy().starts_with("escape-probe") {
                    probes.push(e.path());
                }
                // The daemon's private temporary area holds the builds' own build
                // directories (where a builder may write), emptied in the background
                // after the build: a probe the builder left in its own /tmp may still
                // be there.
                if e.file_name()
                    .to_string_lossy()
                    .starts_with(".unrooted-tmp-")
                {
                    continue;
                }
                // Only the test's own tree is walked deep; /tmp one level.
                if top != Path::new("/tmp") && e.file_type().is_ok_and(|t| t.is_dir()) {
                    todo.push(e.path());
                }
            }
        }
    }
    assert!(probes.is_empty(), "{probes:?}");
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
}

/// Entries owned by an id of `range` under the test's tree and under the build
/// directories in /tmp of the daemon `pid`.
fn leftovers_of(d: &TestDaemon, pid: u32, range: (u32, u32)) -> Vec<String> {
    let mut found = Vec::new();
    owned_by_range(d.root(), range, &mut found);
    let prefix = format!("unrooted-builds-{pid}-");
    for e in fs::read_dir("/tmp").unwrap().flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            owned_by_range(&e.path(), range, &mut found);
        }
    }
    found
}

/// A daemon killed with SIGKILL mid-build, together with its sandbox helpers and
/// builders (as `systemctl kill -s KILL` or the OOM killer take a whole unit), leaves
/// unreadable trees owned by its builds' slices in its build directories and sandbox
/// roots; the next daemon on the same store gives them back and removes them before
/// it serves, and every slice is usable again.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_daemon_killed_mid_build_leaves_nothing_once_restarted() {
    let Some((mut d, range)) = prepared(&CONF.replace("max-jobs = 4", "max-jobs = 8")) else {
        return;
    };
    let owner: u32 = daemon_uid(&d);
    let child = spawn_build(&d, &["killme"]);
    // Both builders run and made their unreadable trees.
    let old = d.pid();
    let t0 = Instant::now();
    loop {
        let found = leftovers_of(&d, old, range);
        let ready = found.iter().filter(|l| l.contains("/ready ")).count();
        if ready == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(30), "{found:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ids = builder_ids(&d, owner, 2);
    assert_eq!(ids.len(), 2, "two slices in use: {ids:?}");
    // Stopped first, so that nothing of the daemon reclaims anything on its way out.
    let mut all = TestDaemon::descendants(old);
    all.push(old);
    let pids: Vec<String> = all.iter().map(u32::to_string).collect();
    for signal in ["-STOP", "-KILL"] {
        let ok = std::process::Command::new("kill")
            .arg(signal)
            .args(&pids)
            .status()
            .unwrap();
        assert!(ok.success(), "kill {signal} {pids:?}");
    }
    d.kill();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let left = leftovers_of(&d, old, range);
    assert!(
        left.iter().any(|l| l.contains("/unrooted-builds-"))
            && left.iter().any(|l| l.contains("/.unrooted-tmp-")),
        "the killed builds left trees owned by their ids: {left:?}"
    );

    d.start();
    let log = d.log();
    assert!(log.contains("id-range mode"), "{log}");
    let gave: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("left by a daemon that died mid-build"))
        .collect();
    eprintln!("{}", gave.join("\n"));
    assert!(
        gave.iter().any(|l| l.contains("/unrooted-builds-"))
            && gave.iter().any(|l| l.contains("/.unrooted-tmp-")),
        "{log}"
    );
    assert_eq!(leftovers_of(&d, old, range), Vec::<String>::new(), "{log}");
    let old_dirs: Vec<_> = fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(&format!("unrooted-builds-{old}-"))
        })
        .map(|e| e.path())
        .collect();
    assert!(old_dirs.is_empty(), "{old_dirs:?}");
    assert!(
        d.store_temporaries()
            .iter()
            .all(|t| !t.contains(&format!("-{old}-"))),
        "{:?}",
        d.store_temporaries()
    );
    assert!(all_slices_free(&d));
    // All eight slices of the range at once.
    let child = spawn_build(&d, &["wide"]);
    let ids = builder_ids(&d, owner, 8);
    wait_ok(child);
    let slices: BTreeSet<u32> = ids.iter().map(|(u, _)| (u - range.0) / 65536).collect();
    assert_eq!(slices, (0..8).collect(), "{ids:?}");
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
}

/// Nix's `start-id` and `id-count` narrow the pool: two slices from the second slice
/// of the range, which the start-up log states (with a warning, as max-jobs is 4), and
/// two concurrent builds run in exactly those.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn start_id_and_id_count_narrow_the_pool() {
    if !can_run_daemon_tests() {
        return;
    }
    let Some(range) = ensure_subids(DAEMON_USER) else {
        unrooted_testkit::skip(&format!("no subordinate ids for {DAEMON_USER}"));
        return;
    };
    let start = range.0 + 65536;
    let Some((d, _)) = prepared(&format!("{CONF}start-id = {start}\nid-count = 131072\n")) else {
        return;
    };
    let log = d.log();
    assert!(
        log.contains(&format!(
            "so 2 id-range builds can run at once (uids {start}..{}",
            start + 131071
        )),
        "{log}"
    );
    assert!(
        log.contains("max-jobs = 4 but the id pool holds 2 slices"),
        "{log}"
    );
    let owner: u32 = daemon_uid(&d);
    let child = spawn_build(&d, &["conc1", "conc2"]);
    let ids = builder_ids(&d, owner, 2);
    wait_ok(child);
    let uids: BTreeSet<u32> = ids.iter().map(|(u, _)| *u).collect();
    assert_eq!(
        uids,
        [start + 1000, start + 65536 + 1000].into_iter().collect(),
        "{ids:?}"
    );
}

/// A daemon killed alone (`kill -9` of its pid) mid-build: its sandbox helpers see
/// it go, kill their builders and give their files back themselves, racing the next
/// daemon, which is started at once on the same store; that start succeeds, and
/// nothing owned by the range remains once the old helpers have ended.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_daemon_killed_alone_mid_build_restarts_at_once_and_leaves_nothing() {
    let Some((mut d, range)) = prepared(CONF) else {
        return;
    };
    let owner: u32 = daemon_uid(&d);
    let child = spawn_build(&d, &["killme"]);
    let old = d.pid();
    let t0 = Instant::now();
    while leftovers_of(&d, old, range)
        .iter()
        .filter(|l| l.contains("/ready "))
        .count()
        < 2
    {
        assert!(t0.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(50));
    }
    let helpers = TestDaemon::descendants(old);
    assert!(!helpers.is_empty());
    d.kill();
    d.start();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let t0 = Instant::now();
    while helpers
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(t0.elapsed() < Duration::from_secs(20), "old helpers linger");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        leftovers_of(&d, old, range),
        Vec::<String>::new(),
        "{}",
        d.log()
    );
    assert!(all_slices_free(&d));
    let child = spawn_build(&d, &["conc1", "conc2"]);
    let ids = builder_ids(&d, owner, 2);
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(ids.len(), 2, "{ids:?}");
}

/// Processes running as an id of `range` anywhere on the host.
fn processes_in(range: (u32, u32)) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| proc_ids(*p).is_some_and(|(u, _)| in_range(u, range)))
        .collect()
}

/// A sandbox helper killed alone mid-build takes its builder with it (the sandbox's
/// init dies with its parent), so when the daemon returns the slice no process runs
/// as its ids to share it with the next build, and nothing of its ids is left.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_killed_sandbox_helper_leaves_no_process_in_its_slice() {
    let Some((d, range)) = prepared(CONF) else {
        return;
    };
    let owner: u32 = daemon_uid(&d);
    let child = spawn_build(&d, &["slow"]);
    let ids = builder_ids(&d, owner, 1);
    let (uid, _) = *ids.iter().next().expect("a builder runs");
    let slice = (uid - 1000, 65536);
    // The build's helper, not the spare one waiting for the next build.
    let helpers: Vec<u32> = TestDaemon::descendants(d.pid())
        .into_iter()
        .filter(|p| proc_ids(*p).is_some_and(|(u, _)| u == owner))
        .filter(|p| {
            fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "sandbox-helper")
        })
        .collect();
    assert_eq!(helpers.len(), 1, "one sandbox helper: {helpers:?}");
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &helpers[0].to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let t0 = Instant::now();
    while !processes_in(slice).is_empty() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "processes outlive their helper in {slice:?}: {:?}",
            processes_in(slice)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(all_slices_free(&d));
    assert!(
        leftovers(&d, range).is_empty(),
        "{:?}",
        leftovers(&d, range)
    );
}
