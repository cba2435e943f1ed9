//! `unrooted install` / `uninstall` into a directory tree: every file, owner and mode,
//! the unit files byte for byte against `data/deploy/`, and `systemd-analyze verify`.
//!
//! Owners are only meaningful when the test can chown, so these run as root (the
//! store owner is the daemon tests' user); under `CI=true` not being root fails.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::unrooted;
use unrooted_testkit::daemon::{is_root, test_user, DAEMON_USER};

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/deploy")
        .join(name)
}

/// The owner uid, or `None` (skip) when not root outside CI.
fn setup() -> Option<u32> {
    if !unrooted_testkit::require(is_root(), "install tests need root to chown") {
        return None;
    }
    Some(test_user(DAEMON_USER).expect("test user").0)
}

fn install(root: &Path, extra: &[&str]) -> Output {
    let roots_bin = root.parent().unwrap().join("fake-find-roots");
    fs::write(&roots_bin, b"#!/bin/sh\n").unwrap();
    let sandbox_bin = root.parent().unwrap().join("fake-sandbox");
    fs::write(&sandbox_bin, b"#!/bin/sh\n").unwrap();
    let out = Command::new(unrooted())
        .arg("install")
        .arg("--root")
        .arg(root)
        .args(["--store-owner", DAEMON_USER, "--find-roots-binary"])
        .arg(&roots_bin)
        .arg("--sandbox-binary")
        .arg(&sandbox_bin)
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "install failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn name_of(id: u32, db: &str) -> String {
    fs::read_to_string(db)
        .unwrap()
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.get(2) == Some(&id.to_string().as_str())).then(|| f[0].to_owned())
        })
        .unwrap_or_else(|| id.to_string())
}

/// `type mode user:group path[ -> target]` for every entry, sorted.
fn listing(root: &Path) -> String {
    let mut lines = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let kind = if m.is_dir() {
                stack.push(p.clone());
                'd'
            } else if m.file_type().is_symlink() {
                'l'
            } else {
                'f'
            };
            let target = if kind == 'l' {
                format!(" -> {}", fs::read_link(&p).unwrap().display())
            } else {
                String::new()
            };
            let mode = if kind == 'l' {
                "----".to_owned()
            } else {
                format!("{:04o}", m.permissions().mode() & 0o7777)
            };
            lines.push(format!(
                "{kind} {mode} {}:{} /{rel}{target}",
                name_of(m.uid(), "/etc/passwd"),
                name_of(m.gid(), "/etc/group")
            ));
        }
    }
    lines.sort_by(|a, b| a.split(' ').nth(3).cmp(&b.split(' ').nth(3)));
    lines.join("\n") + "\n"
}

fn expect_file(actual: &str, expected: &Path, uid: u32) {
    let want = fs::read_to_string(expected)
        .unwrap_or_else(|e| panic!("{}: {e}", expected.display()))
        .replace("@OWNER_UID@", &uid.to_string());
    if actual != want {
        if std::env::var_os("UNROOTED_BLESS").is_some() {
            fs::write(
                expected,
                actual.replace(&format!("--owner-uid {uid}"), "--owner-uid @OWNER_UID@"),
            )
            .unwrap();
            return;
        }
        panic!(
            "{} differs (UNROOTED_BLESS=1 rewrites it):\n--- expected\n{want}\n--- actual\n{actual}",
            expected.display()
        );
    }
}

const UNITS: [&str; 5] = [
    "unrooted-store.service",
    "unrooted-daemon.socket",
    "unrooted-daemon.service",
    "unrooted-find-roots.socket",
    "unrooted-find-roots@.service",
];

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn install_into_a_tree_makes_every_file_with_its_owner_and_mode() {
    let Some(uid) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let out = install(&root, &["--subids", "no", "--apparmor", "no"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("systemctl enable --now unrooted-store.service"),
        "{text}"
    );
    expect_file(&listing(&root), &data("install-tree.txt"), uid);
    for unit in UNITS {
        let actual = fs::read_to_string(root.join("etc/systemd/system").join(unit)).unwrap();
        expect_file(&actual, &data(&format!("units/{unit}")), uid);
    }
    // The daemon's binary is a copy of the program, executable by the owner's group only.
    assert_eq!(
        fs::read(root.join("usr/local/libexec/unrooted/unrooted")).unwrap(),
        fs::read(unrooted()).unwrap()
    );

    // Idempotent: a second run changes nothing.
    let before = listing(&root);
    let mtime = |p: &str| fs::metadata(root.join(p)).unwrap().mtime_nsec();
    let t = mtime("etc/systemd/system/unrooted-daemon.service");
    install(&root, &["--subids", "no", "--apparmor", "no"]);
    assert_eq!(before, listing(&root));
    assert_eq!(t, mtime("etc/systemd/system/unrooted-daemon.service"));
}

/// Regression: a second `install` while `unrooted-store.service` is active (the
/// store bind-mounted on `.unrooted/rw-store`) made the store directory root's,
/// through the mount point's owner and mode, and every add and build then failed.
/// Also: `unrooted` is on root's `PATH` (`/usr/local/sbin`) and the next steps name it.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn reinstall_with_the_store_mounted_keeps_the_store_the_owners() {
    let Some(uid) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let out = install(&root, &["--subids", "no", "--apparmor", "no"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("/usr/local/sbin/unrooted doctor"), "{text}");
    let link = fs::read_link(root.join("usr/local/sbin/unrooted")).unwrap();
    assert_eq!(link, Path::new("/usr/local/libexec/unrooted/unrooted"));

    let (store, rw) = (root.join("nix/store"), root.join("nix/.unrooted/rw-store"));
    let mount = |args: &[&str]| {
        let ok = Command::new(args[0])
            .args(&args[1..])
            .status()
            .unwrap()
            .success();
        assert!(ok, "{args:?}");
    };
    mount(&[
        "mount",
        "--bind",
        store.to_str().unwrap(),
        rw.to_str().unwrap(),
    ]);
    let again = std::panic::catch_unwind(|| {
        install(&root, &["--subids", "no", "--apparmor", "no"]);
    });
    mount(&["umount", rw.to_str().unwrap()]);
    again.unwrap();
    let meta = fs::metadata(&store).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (uid, 0o755));
    let meta = fs::metadata(&rw).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o755));
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn dry_run_prints_every_step_and_writes_nothing() {
    if setup().is_none() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    let out = install(&root, &["--dry-run", "--subids", "no", "--apparmor", "no"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "would: directory /nix/store mode 0755",
        "would: directory /nix/var/nix/profiles/per-user mode 0755",
        "would: directory /nix/var/nix/gcroots/per-user mode 0755",
        "would: file /usr/local/libexec/unrooted/unrooted-find-roots (the roots helper) mode 0755 owner 0:0",
        "would: file /etc/systemd/system/unrooted-daemon.service",
        "would: file /etc/nix/nix.conf",
        "would: file /etc/profile.d/unrooted.sh",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert_eq!(
        fs::read_dir(&root).unwrap().count(),
        0,
        "dry run wrote files"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn subordinate_ids_and_apparmor_when_the_host_has_them() {
    let Some(_) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["usr/bin", "etc", "proc/sys/kernel"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for b in ["newuidmap", "newgidmap"] {
        fs::write(root.join("usr/bin").join(b), b"").unwrap();
    }
    fs::write(root.join("etc/subuid"), "alice:100000:65536\n").unwrap();
    fs::write(root.join("etc/subgid"), "bob:200000:65536").unwrap();
    fs::write(
        root.join("proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
        "1\n",
    )
    .unwrap();
    fs::create_dir_all(root.join("etc/nix")).unwrap();
    fs::write(
        root.join("etc/nix/nix.conf"),
        "build-users-group = nixbld\nmax-jobs = 200\n",
    )
    .unwrap();
    let out = install(&root, &["--chown-kept-build-dirs"]);
    // Copies of the mappers beside the daemon, with file capabilities instead of
    // setuid root, executable by the store owner's group only.
    use unrooted_deploy::filecaps::{get, CAP_SETGID, CAP_SETUID};
    for (name, cap) in [("newuidmap", CAP_SETUID), ("newgidmap", CAP_SETGID)] {
        let copy = root.join("usr/local/libexec/unrooted").join(name);
        let meta = fs::metadata(&copy).unwrap();
        assert_eq!((meta.uid(), meta.mode() & 0o7777), (0, 0o750), "{name}");
        assert_eq!(get(&copy), Some(vec![cap]), "{name}");
    }
    // max-jobs = 200 concurrent builds, at most Nix's default id-count (128 slices of
    // 65536), in one range free in both files: past alice's uids and bob's gids.
    let line = format!("{DAEMON_USER}:327680:8388608\n");
    assert_eq!(
        fs::read_to_string(root.join("etc/subuid")).unwrap(),
        format!("alice:100000:65536\n{line}")
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/subgid")).unwrap(),
        format!("bob:200000:65536\n{line}")
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!(
            "subordinate ids 327680..8716287 for {DAEMON_USER} (128 concurrent builds of 65536 ids)"
        )),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let profile = fs::read_to_string(root.join("etc/apparmor.d/unrooted-daemon")).unwrap();
    assert!(profile.contains(
        "profile unrooted-daemon /usr/local/libexec/unrooted/{unrooted,unrooted-sandbox} flags=(unconfined) {"
    ));
    assert!(profile.contains("  userns,\n"));
    let daemon =
        fs::read_to_string(root.join("etc/systemd/system/unrooted-daemon.service")).unwrap();
    assert!(daemon.contains("CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_CHOWN\n"));
    assert!(daemon.contains("AmbientCapabilities=CAP_CHOWN\n"));
    assert!(daemon.contains("NoNewPrivileges=no\n"));
    // The admin's nix.conf is kept; the managed block is added once.
    let conf = fs::read_to_string(root.join("etc/nix/nix.conf")).unwrap();
    assert!(conf.starts_with("build-users-group = nixbld\n"));
    install(&root, &["--chown-kept-build-dirs"]);
    assert_eq!(
        conf,
        fs::read_to_string(root.join("etc/nix/nix.conf")).unwrap()
    );
    assert_eq!(
        fs::read_to_string(root.join("etc/subuid"))
            .unwrap()
            .matches(DAEMON_USER)
            .count(),
        1
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn systemd_analyze_verify_accepts_the_units() {
    let Some(_) = setup() else { return };
    let Ok(version) = Command::new("systemd-analyze").arg("--version").output() else {
        unrooted_testkit::skip("systemd-analyze is missing (apt-get install systemd)");
        return;
    };
    assert!(version.status.success());
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    install(&root, &["--subids", "yes", "--apparmor", "no"]);
    // verify --root resolves everything inside the tree: the distribution's units
    // (sockets.target, ...) and every ExecStart= binary must be there.
    let sys = root.join("usr/lib/systemd");
    fs::create_dir_all(&sys).unwrap();
    let cp = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&sys)
        .status()
        .unwrap();
    assert!(cp.success());
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/sh", root.join("bin/sh")).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(UNITS)
        .arg("unrooted-find-roots@0-1234-990.service")
        .current_dir(root.join("etc/systemd/system"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify ({}):\n{stderr}",
        out.status
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn uninstall_removes_what_install_put_and_keeps_the_store() {
    let Some(_) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    fs::create_dir(&root).unwrap();
    fs::create_dir_all(root.join("etc/nix")).unwrap();
    fs::write(root.join("etc/nix/nix.conf"), "max-jobs = 4\n").unwrap();
    install(&root, &["--subids", "no", "--apparmor", "no"]);
    fs::write(root.join("nix/store/some-file"), b"x").unwrap();
    let run = |extra: &[&str]| {
        let out = Command::new(unrooted())
            .arg("uninstall")
            .arg("--root")
            .arg(&root)
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run(&[]);
    assert!(text.contains("kept /nix/store"), "{text}");
    for gone in UNITS
        .iter()
        .map(|u| format!("etc/systemd/system/{u}"))
        .chain(
            [
                "usr/local/libexec/unrooted",
                "etc/profile.d/unrooted.sh",
                "nix/.unrooted",
                "nix/var/nix/daemon-socket/socket",
            ]
            .map(String::from),
        )
    {
        assert!(
            fs::symlink_metadata(root.join(&gone)).is_err(),
            "{gone} still there"
        );
    }
    assert!(root.join("nix/store/some-file").exists());
    assert!(root.join("nix/var/nix/profiles/per-user").is_dir());
    assert_eq!(
        fs::read_to_string(root.join("etc/nix/nix.conf")).unwrap(),
        "max-jobs = 4\n\n"
    );
    run(&["--remove-store"]);
    assert!(!root.join("nix/store").exists());
    assert!(!root.join("nix/var/nix").exists());
}

/// The range is sized for `--build-slices` builds (by default max-jobs, at least the
/// CPUs); an owner that already has a smaller range keeps it, with a note saying how
/// many builds it allows.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_subordinate_range_holds_a_slice_per_concurrent_build() {
    let Some(_) = setup() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    for d in ["usr/bin", "etc/nix"] {
        fs::create_dir_all(root.join(d)).unwrap();
    }
    for b in ["newuidmap", "newgidmap"] {
        fs::write(root.join("usr/bin").join(b), b"").unwrap();
    }
    // No max-jobs: Nix's default of 1, so the CPUs decide.
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get() as u64)
        .clamp(1, 128);
    let dry = install(&root, &["--apparmor", "no", "--dry-run"]);
    let dry = String::from_utf8_lossy(&dry.stdout);
    assert!(
        dry.contains(&format!(
            "subordinate ids 131072..{} for {DAEMON_USER} ({cpus} concurrent builds of 65536 ids)",
            131072 + cpus * 65536 - 1
        )),
        "{dry}"
    );
    assert!(!root.join("etc/subuid").exists());

    install(&root, &["--apparmor", "no", "--build-slices", "3"]);
    let line = format!("{DAEMON_USER}:131072:196608\n");
    for f in ["etc/subuid", "etc/subgid"] {
        assert_eq!(fs::read_to_string(root.join(f)).unwrap(), line);
    }
    let out = install(&root, &["--apparmor", "no", "--build-slices", "8"]);
    let out = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.contains(&format!(
            "note: {DAEMON_USER} already has 196608 ids in /etc/subuid, enough for 3 concurrent builds in the id-range mode (not 8)"
        )),
        "{out}"
    );
    for f in ["etc/subuid", "etc/subgid"] {
        assert_eq!(fs::read_to_string(root.join(f)).unwrap(), line);
    }
    let err = Command::new(unrooted())
        .args(["install", "--root"])
        .arg(&root)
        .args(["--store-owner", DAEMON_USER, "--build-slices", "0"])
        .output()
        .unwrap();
    assert!(!err.status.success());
}
