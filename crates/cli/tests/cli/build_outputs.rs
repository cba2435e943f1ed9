//! Issue 15, item 1 (Nix CVE-2024-27297): a registered output cannot be changed
//! after the daemon checked it. A hostile builder (`data/hostile/hostile.c`, compiled
//! with `gcc -static` here and bound into the sandbox as `/hostile`) keeps write access
//! to what it wrote in every way it has: a read-write descriptor sent over an abstract
//! unix socket (fixed-output builds share the host's network namespace) to a listener
//! run as another local user (the test client), a shared writable mapping of it there,
//! a daemonised process it forks and leaves behind (holding a descriptor and a
//! mapping), and hard links of an output file (inside the output, in another output,
//! in the build directory, `/tmp` and the sandbox's store directory). Each writes
//! "evil" after the build returned; the registered path must still hold the checked
//! "good" and verify (`nix-store --verify-path`, and `--verify --check-contents`, run
//! by the store owner in local mode), and the build succeeds as in Nix. Both id modes
//! (id range, the default here, and single id) where a test is cheap.

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::common::hostile;
use unrooted_format::{nar, Hash, HashAlgo, Hasher};
use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};

/// The id modes: the id range (the default where subordinate ids exist) and single id.
const MODES: [(&str, &str); 2] = [("range", ""), ("single", "auto-allocate-uids = false\n")];

/// `@FLAT@` and `@REC@`: the hashes of "good\n" as a flat file and of a directory
/// holding it as `a` and `b` (what kind `links` makes), as a NAR.
const EXPR: &str = r#"
{ name, kind, sock ? "", secs ? "0" }:
let
  base = {
    inherit name; system = builtins.currentSystem; builder = "/hostile";
    args = [ "build" kind sock secs ];
  };
in {
  plain = derivation base;
  multi = derivation (base // { outputs = [ "out" "dev" ]; });
  fodFlat = derivation (base // {
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "@FLAT@";
  });
  fodRec = derivation (base // {
    outputHashMode = "recursive"; outputHashAlgo = "sha256"; outputHash = "@REC@";
  });
  slow = derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo good > $out; mkdir -p d; echo x > d/f; touch /build/marker; sleep 2" ];
  };
}
"#;

/// A daemon in the given id mode whose builds can run `/hostile`.
fn prepared(ids: &str) -> Option<TestDaemon> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let exe = hostile()?;
    let conf = format!(
        "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox /hostile={}\nmax-jobs = 4\n{ids}",
        exe.display()
    );
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), &conf);
    let flat = Hash::sha256(unrooted_format::hash::sha256(b"good\n")).to_base16();
    let tree = d.inputs().join("good-tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("a"), "good\n").unwrap();
    fs::write(tree.join("b"), "good\n").unwrap();
    let mut bytes = Vec::new();
    nar::dump_path(&tree, &mut bytes).unwrap();
    let mut h = Hasher::new(HashAlgo::Sha256);
    h.update(&bytes);
    let rec = h.finish().to_base16();
    let expr = EXPR.replace("@FLAT@", &flat).replace("@REC@", &rec);
    fs::write(d.inputs().join("outputs.nix"), expr).unwrap();
    d.start();
    Some(d)
}

/// Restarts `d` in another id mode (the store stays).
fn switch_mode(d: &mut TestDaemon, ids: &str) {
    let exe = hostile().unwrap();
    d.kill();
    d.set_conf(&format!(
        "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox /hostile={}\nmax-jobs = 4\n{ids}",
        exe.display()
    ));
    d.start();
}

/// `nix-build -A attr` with the derivation's arguments; the output paths.
fn build(d: &TestDaemon, attr: &str, args: &[(&str, &str)]) -> Vec<String> {
    let argv = build_args(d, attr, args);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    d.client_ok("nix-build", &argv)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn build_args(d: &TestDaemon, attr: &str, args: &[(&str, &str)]) -> Vec<String> {
    let e = d.inputs().join("outputs.nix");
    let mut argv: Vec<String> = vec![e.display().to_string(), "-A".into(), attr.into()];
    argv.push("--no-out-link".into());
    for (k, v) in args {
        argv.extend(["--argstr".into(), k.to_string(), v.to_string()]);
    }
    argv
}

/// Whether builders are scoped by Landlock (kernel ≥ 6.12), so a builder cannot
/// even connect to an abstract socket of the host.
fn landlock_scoped() -> bool {
    unrooted_sandbox::landlock_abi().is_some_and(|v| v >= unrooted_sandbox::LANDLOCK_SCOPE_ABI)
}

/// A unique abstract socket name.
fn socket_name(what: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("unrooted-test-{}-{what}-{n}", std::process::id())
}

/// The accomplice outside the sandbox: `hostile listen`, run as the client user.
struct Listener {
    child: Child,
    out: BufReader<ChildStdout>,
}

impl Listener {
    fn start(d: &TestDaemon, sock: &str, how: &str) -> Self {
        let mut child = d
            .client(hostile().unwrap().to_str().unwrap())
            .args(["listen", sock, how])
            .arg(d.client_home())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let out = BufReader::new(child.stdout.take().unwrap());
        let mut l = Listener { child, out };
        assert_eq!(l.line(), "ready");
        l
    }

    fn line(&mut self) -> String {
        let mut s = String::new();
        self.out.read_line(&mut s).unwrap();
        s.trim().to_owned()
    }

    /// Lets it write now (the build has returned); what it printed since it got the
    /// descriptor.
    fn write_now(mut self) -> Vec<String> {
        let mut stdin = self.child.stdin.take().unwrap();
        stdin.write_all(b"go\n").unwrap();
        drop(stdin);
        let mut lines = Vec::new();
        loop {
            let l = self.line();
            if l.is_empty() {
                break;
            }
            lines.push(l);
        }
        assert!(self.child.wait().unwrap().success(), "listener: {lines:?}");
        lines
    }
}

/// Every regular file under `path` (or `path` itself).
fn files_under(path: &Path) -> Vec<PathBuf> {
    if !path.is_dir() {
        return vec![path.to_owned()];
    }
    let mut files: Vec<PathBuf> = fs::read_dir(path)
        .unwrap()
        .flat_map(|e| files_under(&e.unwrap().path()))
        .collect();
    files.sort();
    files
}

/// The registered `path` still holds what was checked ("good" in every file) and
/// verifies, and so does the whole store.
fn assert_unchanged(d: &TestDaemon, path: &str) {
    for f in files_under(Path::new(path)) {
        assert_eq!(
            fs::read_to_string(&f).unwrap(),
            "good\n",
            "{} was changed after it was checked",
            f.display()
        );
    }
    d.owner_ok("nix-store", &["--verify-path", path]);
    assert_store_clean(d);
}

/// `nix-store --verify --check-contents` as the store owner in local mode finds
/// nothing wrong. (As [`TestDaemon::assert_store_clean`], but the local client's
/// warning about `auto-allocate-uids`, a setting Nix 2.8 does not know and the
/// single-id mode's `nix.conf` holds, is not a finding.)
fn assert_store_clean(d: &TestDaemon) {
    let out = d
        .owner_local("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let findings: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("error") || l.contains("warning") || l.contains("modified"))
        .filter(|l| !l.contains("unknown setting 'auto-allocate-uids'"))
        .collect();
    assert!(
        out.status.success() && findings.is_empty(),
        "nix-store --verify --check-contents found problems ({}): {stderr}",
        out.status
    );
}

/// Builds `attr` of kind `kind` while a listener of the client user takes its
/// descriptor (`how`), lets the listener write once the build returned, and checks
/// the output; returns the output path and what the listener said.
/// With Landlock's scoping, the builder's `connect` to the listener's abstract socket
/// is refused (EPERM), and on pasta's network there is no such socket in the build's
/// network namespace (ECONNREFUSED); either way the build fails: `None`.
/// Without it, the output copy is what keeps the registered path intact.
fn build_with_listener(
    d: &TestDaemon,
    attr: &str,
    name: &str,
    kind: &str,
    how: &str,
) -> Option<(String, Vec<String>)> {
    let sock = socket_name(name);
    let mut listener = Listener::start(d, &sock, how);
    let args = [("name", name), ("kind", kind), ("sock", sock.as_str())];
    let on_pasta = ["/usr/bin/pasta", "/usr/local/bin/pasta"]
        .iter()
        .any(|p| Path::new(p).is_file())
        && fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006);
    if landlock_scoped() || on_pasta {
        let argv = build_args(d, attr, &args);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let err = d.client_err("nix-build", &argv);
        // Refused by Landlock on the host's network, or not even there on pasta's
        // (issue 15, item 2: the host's abstract sockets are another namespace's).
        assert!(
            err.contains("hostile: connect: Operation not permitted")
                || err.contains("hostile: connect: Connection refused"),
            "{err}"
        );
        let _ = listener.child.kill();
        let _ = listener.child.wait();
        return None;
    }
    let out = build(d, attr, &args);
    assert_eq!(out.len(), 1, "{out:?}");
    let said = listener.write_now();
    assert!(said.iter().any(|l| l == "got"), "{said:?}");
    assert!(said.iter().any(|l| l == "wrote"), "{said:?}");
    let out = out.into_iter().next().unwrap();
    assert_unchanged(d, &out);
    Some((out, said))
}

/// Runs `f` against one daemon in each id mode, in turn.
fn in_both_modes(f: impl Fn(&TestDaemon, &str)) {
    let Some(mut d) = prepared(MODES[0].1) else {
        return;
    };
    for (i, (mode, ids)) in MODES.iter().enumerate() {
        if i > 0 {
            switch_mode(&mut d, ids);
        }
        f(&d, mode);
    }
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fixed_output_fd_passed_out_cannot_change_registered_output() {
    in_both_modes(|d, mode| {
        build_with_listener(d, "fodFlat", &format!("fd-{mode}"), "fd", "fd");
    });
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fixed_output_mapping_passed_out_cannot_change_registered_output() {
    in_both_modes(|d, mode| {
        build_with_listener(d, "fodFlat", &format!("mmap-{mode}"), "fd", "mmap");
    });
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn leftover_process_cannot_change_registered_output() {
    const SECS: u64 = 2;
    in_both_modes(|d, mode| {
        let mut outs = Vec::new();
        for attr in ["plain", "fodFlat"] {
            for kind in ["fork", "mmap"] {
                let name = format!("leftover-{attr}-{kind}-{mode}");
                let secs = SECS.to_string();
                outs.extend(build(
                    d,
                    attr,
                    &[("name", &name), ("kind", kind), ("secs", &secs)],
                ));
            }
        }
        // Past the leftovers' delay, with a margin.
        std::thread::sleep(Duration::from_secs(SECS + 2));
        for out in &outs {
            assert_unchanged(d, out);
        }
    });
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn output_hard_links_cannot_change_registered_output() {
    in_both_modes(|d, mode| {
        // Inside one output and across two: each registered file is a file of its own.
        let name = format!("links-{mode}");
        let outs = build(d, "multi.all", &[("name", &name), ("kind", "links")]);
        assert_eq!(outs.len(), 2, "{outs:?}");
        let mut inodes = Vec::new();
        for out in &outs {
            for f in files_under(Path::new(out)) {
                let m = fs::symlink_metadata(&f).unwrap();
                assert_eq!(m.nlink(), 1, "{} keeps a hard link", f.display());
                inodes.push(m.ino());
            }
            assert_unchanged(d, out);
        }
        assert_eq!(inodes.len(), 3);
        inodes.dedup();
        assert_eq!(inodes.len(), 3, "separate files");

        // A fixed-output tree whose file the listener holds, and links where it can.
        let keep = d.client_home().join("keep");
        let _ = fs::remove_file(&keep);
        let Some((out, said)) =
            build_with_listener(d, "fodRec", &format!("links-fod-{mode}"), "links", "link")
        else {
            return;
        };
        // "nolink …" where the sandbox's mount of the output refuses a link elsewhere.
        eprintln!("{mode}: the listener said {said:?}");
        for f in files_under(Path::new(&out)) {
            let m = fs::symlink_metadata(&f).unwrap();
            assert_eq!(m.nlink(), 1, "{} keeps a hard link: {said:?}", f.display());
            if let Ok(k) = fs::symlink_metadata(&keep) {
                assert_ne!(k.ino(), m.ino(), "the listener's link is the store's file");
            }
        }
        let _ = fs::remove_file(&keep);
    });
}

/// The entries of `dir` whose names start with `prefix`.
fn entries_starting(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let Ok(read) = fs::read_dir(dir) else {
        return Vec::new();
    };
    read.flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// Asserts that `path` is a directory of the daemon's user with mode 0700.
fn assert_private(d: &TestDaemon, path: &Path) {
    let m = fs::symlink_metadata(path).unwrap();
    assert!(m.is_dir(), "{}", path.display());
    assert_eq!(m.uid(), d.daemon_uid, "{}", path.display());
    assert_eq!(m.mode() & 0o7777, 0o700, "{}", path.display());
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn build_files_are_unreachable_by_other_users_while_it_runs() {
    in_both_modes(|d, mode| {
        let name = format!("slow-{mode}");
        let e = d.inputs().join("outputs.nix");
        let build = d
            .client("nix-build")
            .args([e.to_str().unwrap(), "-A", "slow", "--no-out-link"])
            .args(["--argstr", "name", &name, "--argstr", "kind", "none"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // The build directory (under the daemon's TMPDIR, /tmp here) once the builder
        // runs, and its output inside the sandbox root in the store's temporary area.
        let t0 = std::time::Instant::now();
        let (build_dir, output) = loop {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "the build did not start"
            );
            let parents =
                entries_starting(Path::new("/tmp"), &format!("unrooted-builds-{}-", d.pid()));
            let dirs: Vec<PathBuf> = parents
                .iter()
                .flat_map(|p| entries_starting(p, "nix-build-"))
                .filter(|b| b.join("marker").exists())
                .collect();
            let store = d.store_dir();
            let inner = store.strip_prefix("/").unwrap().to_owned();
            let outputs: Vec<PathBuf> = entries_starting(&store, ".unrooted-tmp-")
                .iter()
                .flat_map(|a| entries_starting(a, "chroot-"))
                .flat_map(|r| fs::read_dir(r.join(&inner)).into_iter().flatten().flatten())
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().ends_with(&format!("-{name}")))
                .collect();
            if let (Some(b), Some(o)) = (dirs.first(), outputs.first()) {
                break (b.clone(), o.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_private(d, build_dir.parent().unwrap());
        let area = output.ancestors().find(|a| {
            a.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".unrooted-tmp-"))
        });
        assert_private(d, area.unwrap());
        for target in [&output, &build_dir.join("d/f")] {
            for mut cat in [d.client("cat"), d.other("cat")] {
                let out = cat.arg(target).output().unwrap();
                assert!(!out.status.success(), "{} is readable", target.display());
            }
        }
        let out = build.wait_with_output().unwrap();
        assert!(out.status.success());
        let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        assert_eq!(fs::read_to_string(&path).unwrap(), "good\n");
    });
}
