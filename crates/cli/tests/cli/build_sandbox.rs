//! Builds with the real Nix 2.8 client (`nix-build`, `nix-store`, `nix-env`), run as
//! an unprivileged user, against `unrooted daemon` run as another unprivileged user
//! with `sandbox = true`: every builder runs in the rootless sandbox, with
//! `/bin/sh` bound to Debian's static busybox (`sandbox-paths = /bin/sh=/bin/busybox`,
//! whose shell finds its applets without a `PATH`). Under `CI=true` a missing busybox
//! or missing user namespaces fails the suite instead of skipping it.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Instant;

use unrooted_format::{nar, Hash, HashAlgo, Hasher};
use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 4\n";

/// The derivations under test; `@FLAT@`/`@REC@` are the expected hashes of
/// "hello\n" as a flat file and as a NAR.
const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
  fod = name: mode: hash: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo hello > $out" ];
    outputHashMode = mode; outputHashAlgo = "sha256"; outputHash = hash;
  };
in rec {
  trivial = mk "trivial" "echo building trivial; echo hello > $out";
  a = mk "a" "echo a > $out";
  chain = mk "chain" "read x < ${a}; echo $x-chain > $out";
  b = mk "b" "echo ${a} > $out";
  c = mk "c" "echo c ${a} > $out";
  diamond = mk "diamond" "cat ${b} ${c} > $out";
  multi = derivation {
    name = "multi"; system = builtins.currentSystem; builder = "/bin/sh";
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo out > $out; echo dev $out > $dev" ];
  };
  fodFlat = fod "fod-flat" "flat" "@FLAT@";
  fodRec = fod "fod-rec" "recursive" "@REC@";
  fodBad = fod "fod-bad" "flat" "0000000000000000000000000000000000000000000000000000000000000000";
  fail = mk "fail" "echo first line; echo about to fail; exit 3";
  slow = mk "slow" "echo sleeping; sleep 30; echo > $out";
  modes = mk "modes" "mkdir -p $out/bin; echo x > $out/bin/x; chmod 755 $out/bin/x; echo f > $out/f; chmod 664 $out/f; chmod 0755 $out";
  stray = mk "stray" "echo > $out; mkdir $NIX_STORE/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-stray; echo > $NIX_STORE/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x";
  nondet = mk "nondet" "cat /proc/sys/kernel/random/uuid > $out";
  conc = mk "conc" "echo concurrent; sleep 2; echo done > $out";
  keep = mk "keep" "echo secret > kept.txt; mkdir sub; chmod 777 sub; exit 1";
  probe = derivation {
    name = "probe"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "env | sort > $out; echo $$ $(id -u) $(id -g) $(hostname) >> $out; ls / >> $out; cat $bigPath >> $out" ];
    passAsFile = [ "big" ]; big = "big data";
  };
  many = builtins.genList (i: mk "many-${toString i}" "echo ${toString i} > $out") 200;
  manyTop = mk "many-top" (builtins.concatStringsSep "; " (map (d: "cat ${d} >> $out") many));
  lsStore = mk "ls-store" "ls $NIX_STORE > $out";
  pkg = mk "pkg" "mkdir -p $out/bin; echo '#!/bin/sh' > $out/bin/hello; chmod +x $out/bin/hello";
}
"#;

fn prepared() -> Option<TestDaemon> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), CONF);
    let hello = d.inputs().join("hello");
    fs::write(&hello, "hello\n").unwrap();
    let flat = Hash::sha256(unrooted_format::hash::sha256(b"hello\n")).to_base16();
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut nar_bytes = Vec::new();
    nar::dump_path(&hello, &mut nar_bytes).unwrap();
    h.update(&nar_bytes);
    let rec = h.finish().to_base16();
    let expr = EXPR.replace("@FLAT@", &flat).replace("@REC@", &rec);
    fs::write(d.inputs().join("build.nix"), expr).unwrap();
    d.start();
    Some(d)
}

fn expr(d: &TestDaemon) -> String {
    d.inputs().join("build.nix").to_str().unwrap().to_owned()
}

/// `nix-build -A attr --no-out-link` as the client; the output path(s).
fn build(d: &TestDaemon, attr: &str) -> String {
    d.client_ok("nix-build", &[&expr(d), "-A", attr, "--no-out-link"])
        .trim()
        .to_owned()
}

fn build_err(d: &TestDaemon, attr: &str, extra: &[&str]) -> String {
    let e = expr(d);
    let mut args = vec![e.as_str(), "-A", attr, "--no-out-link"];
    args.extend_from_slice(extra);
    d.client_err("nix-build", &args)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

fn references(d: &TestDaemon, p: &str) -> Vec<String> {
    let mut r: Vec<String> = d
        .client_ok("nix-store", &["-q", "--references", p])
        .lines()
        .map(str::to_owned)
        .collect();
    r.sort();
    r
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn trivial_build_streams_its_log_and_stores_it() {
    let Some(d) = prepared() else { return };
    let t0 = Instant::now();
    let out = d
        .client("nix-build")
        .args([&expr(&d), "-A", "trivial", "--no-out-link"])
        .output()
        .unwrap();
    let elapsed = t0.elapsed();
    let stdout = d.expect_ok("nix-build trivial", &out);
    eprintln!("one trivial sandboxed build through the client: {elapsed:?}");
    let path = stdout.trim();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("building trivial"),
        "log line streamed: {stderr}"
    );
    assert_eq!(fs::read_to_string(path).unwrap(), "hello\n");
    assert_eq!(mode(Path::new(path)), 0o444);
    assert_eq!(fs::symlink_metadata(path).unwrap().mtime(), 1);
    // The deriver, as Nix records it, and the log where `nix-store -l` finds it.
    let deriver = d.client_ok("nix-store", &["-q", "--deriver", path]);
    assert!(deriver.trim().ends_with("-trivial.drv"));
    assert_eq!(
        d.client_ok("nix-store", &["-l", path]),
        "building trivial\n"
    );
    // Built once: a second build is a no-op.
    assert_eq!(build(&d, "trivial"), path);
    assert_eq!(d.log().matches("-trivial.drv'").count(), 1, "{}", d.log());
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn builder_runs_sandboxed_with_nix_environment() {
    let Some(d) = prepared() else { return };
    let out = build(&d, "probe");
    let text = fs::read_to_string(&out).unwrap();
    let store = d.store_dir();
    let store = store.display();
    let cores = std::thread::available_parallelism().unwrap().get();
    let top = store.to_string();
    let top = top
        .trim_start_matches('/')
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    // `ls /`: Nix's layout, the store's top directory and the sandbox-path `/bin`.
    let mut root: Vec<&str> = vec!["bin", "build", "dev", "etc", "proc", "tmp", &top];
    root.sort();
    root.dedup();
    let root = root.join("\n");
    assert_eq!(
        text,
        format!(
            "HOME=/homeless-shelter\nNIX_BUILD_CORES={cores}\nNIX_BUILD_TOP=/build\nNIX_LOG_FD=2\n\
             NIX_STORE={store}\nPATH=/path-not-set\nPWD=/build\nSHLVL=1\nTEMP=/build\nTEMPDIR=/build\n\
             TERM=xterm-256color\nTMP=/build\nTMPDIR=/build\n\
             bigPath=/build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a\n\
             builder=/bin/sh\nname=probe\nout={out}\npassAsFile=big\nsystem={}\n\
             1 1000 100 localhost\n{root}\nbig data",
            unrooted_build_system()
        )
    );
}

fn unrooted_build_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn chain_diamond_and_references_found_by_scanning() {
    let Some(d) = prepared() else { return };
    let chain = build(&d, "chain");
    assert_eq!(fs::read_to_string(&chain).unwrap(), "a-chain\n");
    assert!(references(&d, &chain).is_empty(), "the text holds no path");
    let diamond = build(&d, "diamond");
    let a = build(&d, "a");
    let b = build(&d, "b");
    let c = build(&d, "c");
    assert_eq!(references(&d, &c), vec![a.clone()]);
    assert_eq!(
        fs::read_to_string(&diamond).unwrap(),
        format!("{a}\nc {a}\n")
    );
    assert_eq!(references(&d, &b), vec![a.clone()]);
    // diamond's text names only `a`, not b or c.
    assert_eq!(references(&d, &diamond), vec![a]);
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn multiple_outputs_are_registered_together() {
    let Some(d) = prepared() else { return };
    let out = d.client_ok(
        "nix-build",
        &[&expr(&d), "-A", "multi.all", "--no-out-link"],
    );
    let paths: Vec<&str> = out.lines().collect();
    assert_eq!(paths.len(), 2, "{out}");
    let dev = paths.iter().find(|p| p.ends_with("-multi-dev")).unwrap();
    let outp = paths.iter().find(|p| p.ends_with("-multi")).unwrap();
    assert_eq!(fs::read_to_string(dev).unwrap(), format!("dev {outp}\n"));
    assert_eq!(references(&d, dev), vec![outp.to_string()]);
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fixed_output_flat_recursive_and_mismatch() {
    let Some(d) = prepared() else { return };
    let flat = build(&d, "fodFlat");
    assert_eq!(fs::read_to_string(&flat).unwrap(), "hello\n");
    let rec = build(&d, "fodRec");
    assert_eq!(fs::read_to_string(&rec).unwrap(), "hello\n");
    let info = d.client_ok("nix", &["path-info", "--json", &flat]);
    assert!(info.contains(r#""ca":"fixed:sha256:"#), "{info}");
    let err = build_err(&d, "fodBad", &[]);
    assert!(
        err.contains("hash mismatch in fixed-output derivation")
            && err.contains("specified: sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            && err.contains("got:    sha256-"),
        "{err}"
    );
    // As Nix 2.8 (its tests/fixed.sh): the output is registered under the path of
    // the hash it got, which matches its content, and not under the specified one.
    let got: Vec<String> = d
        .valid_paths_local()
        .into_iter()
        .filter(|p| p.ends_with("-fod-bad"))
        .collect();
    assert_eq!(got.len(), 1, "{got:?}");
    let info = d.client_ok("nix", &["path-info", "--json", &got[0]]);
    assert!(info.contains(r#""ca":"fixed:"#), "{info}");
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn failing_builder_reports_exit_code_and_last_lines() {
    let Some(mut d) = prepared() else { return };
    let err = build_err(&d, "fail", &[]);
    // The client indents the message's continuation lines.
    let flat: Vec<&str> = err.lines().map(str::trim).collect();
    let flat = flat.join("\n");
    assert!(
        flat.contains("-fail.drv' failed with exit code 3;\nlast 2 log lines:\n> first line\n> about to fail\nFor full logs, run 'nix log "),
        "{err}"
    );
    assert!(d.is_running());
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn busybox_from_the_store_as_sandbox_path_brings_its_closure() {
    let Some(mut d) = prepared() else { return };
    let bb = d.inputs().join("busybox");
    fs::copy("/bin/busybox", &bb).unwrap();
    let added = d.client_ok("nix-store", &["--add", bb.to_str().unwrap()]);
    let added = added.trim();
    d.kill();
    d.set_conf(&format!("{CONF}sandbox-paths = /bin/sh={added}\n"));
    d.start();
    let out = build(&d, "lsStore");
    let name = |p: &str| {
        Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned()
    };
    // The store dir holds the sandbox path's closure and the output being written.
    let mut want = [name(added), name(&out)];
    want.sort();
    assert_eq!(
        fs::read_to_string(&out).unwrap(),
        format!("{}\n", want.join("\n"))
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_graph_of_200_derivations() {
    let Some(d) = prepared() else { return };
    let t0 = Instant::now();
    let out = build(&d, "manyTop");
    eprintln!(
        "200 sandboxed derivations and their user, max-jobs 4: {:?}",
        t0.elapsed()
    );
    let text = fs::read_to_string(&out).unwrap();
    let want: String = (0..200).map(|i| format!("{i}\n")).collect();
    assert_eq!(text, want);
    assert_eq!(references(&d, &out).len(), 0);
    assert_eq!(d.log().matches("building '").count(), 201);
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_missing_opaque_path_fails_as_in_nix() {
    let Some(d) = prepared() else { return };
    let missing = format!(
        "{}/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-missing",
        d.store_dir().display()
    );
    let err = d.client_err("nix-store", &["-r", &missing]);
    assert!(
        err.contains(&format!("build of '{missing}' failed")),
        "{err}"
    );
}

/// The daemon's descendants that serve builds (sandbox helpers with a plan, and
/// builders); other tests' daemons run as the same user, so the process tree decides.
/// The spare helper that waits, started, for the next build (`sandbox-spare` until it
/// has a plan) is not one of them.
fn daemon_children(d: &TestDaemon) -> Vec<String> {
    let out = std::process::Command::new("ps")
        .args(["-e", "-o", "pid=,ppid=,comm=,args="])
        .output()
        .unwrap();
    let procs: Vec<(u32, u32, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let pid = w.next()?.parse().ok()?;
            let ppid = w.next()?.parse().ok()?;
            let comm = w.next()?;
            let args = w.collect::<Vec<_>>().join(" ");
            (comm != "sandbox-spare").then_some((pid, ppid, args))
        })
        .collect();
    let mut tree = vec![d.pid()];
    let mut found = Vec::new();
    while let Some(parent) = tree.pop() {
        for (pid, ppid, args) in &procs {
            if *ppid == parent {
                tree.push(*pid);
                found.push(format!("{pid} {args}"));
            }
        }
    }
    found
}

/// `nix-build -A slow` (30 s) as the client, started.
fn spawn_slow(d: &TestDaemon) -> std::process::Child {
    d.client("nix-build")
        .args([&expr(d), "-A", "slow", "--no-out-link"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// The daemon's descendants named `name` (`/proc/<pid>/comm`).
fn descendants_named(d: &TestDaemon, name: &str) -> Vec<u32> {
    TestDaemon::descendants(d.pid())
        .into_iter()
        .filter(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == name))
        .collect()
}

/// Waits (at most 20 s) until the daemon has exactly one descendant named `name`.
fn the_one_named(d: &TestDaemon, name: &str) -> u32 {
    let t0 = Instant::now();
    loop {
        let found = descendants_named(d, name);
        if let [one] = found[..] {
            return one;
        }
        assert!(
            t0.elapsed().as_secs() < 20,
            "not exactly one {name}: {found:?}; {}",
            d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// One helper is started ahead of the next build and serves it (the build's helper
/// is that process); the next spare is started once the build has ended, and a spare
/// killed while it waits is not used: the build starts a helper of its own and
/// succeeds.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_spare_helper_serves_the_next_build_and_a_killed_one_is_replaced() {
    let Some(d) = prepared() else { return };
    let spare = the_one_named(&d, "sandbox-spare");
    let mut client = spawn_slow(&d);
    assert_eq!(
        the_one_named(&d, "sandbox-helper"),
        spare,
        "the spare runs the build"
    );
    client.kill().unwrap();
    client.wait().unwrap();
    let next = the_one_named(&d, "sandbox-spare");
    assert_ne!(next, spare);
    let killed = std::process::Command::new("kill")
        .args(["-KILL", &next.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = build(&d, "trivial");
    assert_eq!(fs::read_to_string(&out).unwrap(), "hello\n");
    let third = the_one_named(&d, "sandbox-spare");
    assert!(third != next && third != spare);
    let mut d = d;
    assert!(d.is_running());
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_client_going_away_cancels_its_build() {
    let Some(d) = prepared() else { return };
    let mut client = spawn_slow(&d);
    let t0 = Instant::now();
    while !d.log().contains("-slow.drv'") {
        assert!(t0.elapsed().as_secs() < 20, "the build did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(!daemon_children(&d).is_empty(), "a sandbox runs");
    client.kill().unwrap();
    client.wait().unwrap();
    let t1 = Instant::now();
    loop {
        let left = daemon_children(&d);
        if left.is_empty() {
            break;
        }
        assert!(
            t1.elapsed().as_secs() < 10,
            "the sandbox outlived its client: {left:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let mut d = d;
    assert!(d.is_running());
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn timeout_kills_the_build() {
    let Some(d) = prepared() else { return };
    let t0 = Instant::now();
    let err = build_err(&d, "slow", &["--option", "timeout", "2"]);
    assert!(err.contains("timed out after 2 seconds"), "{err}");
    assert!(t0.elapsed().as_secs() < 20);
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn check_rebuilds_and_reports_non_determinism() {
    let Some(d) = prepared() else { return };
    build(&d, "trivial");
    let e = expr(&d);
    d.client_ok(
        "nix-build",
        &[&e, "-A", "trivial", "--no-out-link", "--check"],
    );
    let nondet = build(&d, "nondet");
    let err = build_err(&d, "nondet", &["--check"]);
    assert!(
        err.contains("may not be deterministic: output")
            && err.contains(&format!("'{nondet}' differs")),
        "{err}"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn keep_failed_hands_the_build_dir_to_the_client_only() {
    let Some(d) = prepared() else { return };
    let err = build_err(&d, "keep", &["--keep-failed"]);
    let kept = err
        .split("keeping build directory '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no kept directory in: {err}"))
        .to_owned();
    let kept = Path::new(&kept);
    // 0700 plus the client's ACL entry (shown as the group bits, the ACL mask).
    assert_eq!(mode(kept) & 0o707, 0o700);
    assert_eq!(
        mode(&kept.join("sub")) & 0o022,
        0,
        "world-writable bits removed"
    );
    assert_eq!(
        d.client_ok("cat", &[kept.join("kept.txt").to_str().unwrap()]),
        "secret\n"
    );
    // Nobody else can read it.
    let other = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "cat"])
        .arg(kept.join("kept.txt"))
        .output()
        .unwrap();
    assert!(!other.status.success());
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(kept)
        .status();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn output_modes_are_canonical_and_stray_entries_are_not_registered() {
    let Some(d) = prepared() else { return };
    let out = build(&d, "modes");
    let out = Path::new(&out);
    assert_eq!(mode(out), 0o555);
    assert_eq!(mode(&out.join("bin")), 0o555);
    assert_eq!(mode(&out.join("bin/x")), 0o555);
    assert_eq!(mode(&out.join("f")), 0o444);
    build(&d, "stray");
    let store = d.store_dir();
    assert!(!store
        .join("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-stray")
        .exists());
    assert!(!store.join("bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-x").exists());
    assert!(!d.valid_paths_local().iter().any(|p| p.contains("aaaaaaaa")));
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn two_clients_building_the_same_derivation_build_it_once() {
    let Some(d) = prepared() else { return };
    let e = expr(&d);
    let spawn = || {
        d.client("nix-build")
            .args([&e, "-A", "conc", "--no-out-link"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let c1 = spawn();
    let c2 = spawn();
    let o1 = c1.wait_with_output().unwrap();
    let o2 = c2.wait_with_output().unwrap();
    let p1 = d.expect_ok("first client", &o1);
    let p2 = d.expect_ok("second client", &o2);
    assert_eq!(p1, p2);
    assert_eq!(d.log().matches("-conc.drv'").count(), 1, "{}", d.log());
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn nix_env_installs_a_built_package_through_builtin_buildenv() {
    let Some(d) = prepared() else { return };
    let profile = d.client_home().join("profile");
    let p = profile.to_str().unwrap().to_owned();
    d.client_ok("nix-env", &["-p", &p, "-f", &expr(&d), "-iA", "pkg"]);
    // `bin` is linked whole: no other package adds to it.
    let target = fs::read_link(profile.join("bin")).unwrap();
    assert!(target.to_str().unwrap().ends_with("-pkg/bin"), "{target:?}");
    assert!(profile.join("bin/hello").exists());
    assert!(profile.join("manifest.nix").exists());
    let listed = d.client_ok("nix-env", &["-p", &p, "-q"]);
    assert_eq!(listed.trim(), "pkg");
}
