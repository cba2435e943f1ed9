//! `unrooted doctor` against broken set-ups built in a directory tree (a fake
//! `/proc/sys` standing in for the kernel), and against a real unprivileged daemon.

use std::fs;
use std::os::unix::fs::chown;
use std::path::Path;
use std::process::Command;

use crate::common::unrooted;
use unrooted_testkit::daemon::{can_run_daemon_tests, is_root, test_user, TestDaemon, DAEMON_USER};

/// An installed tree with user namespaces on, or `None` (skip) when not root.
fn installed() -> Option<tempfile::TempDir> {
    if !unrooted_testkit::require(is_root(), "doctor tests need root to chown") {
        return None;
    }
    test_user(DAEMON_USER).expect("test user");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let helper = root.join("fake-find-roots");
    fs::write(&helper, b"#!/bin/sh\n").unwrap();
    let out = Command::new(unrooted())
        .arg("install")
        .arg("--root")
        .arg(root)
        .args([
            "--store-owner",
            DAEMON_USER,
            "--subids",
            "no",
            "--apparmor",
            "no",
        ])
        .arg("--find-roots-binary")
        .arg(&helper)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sysctl(root, "user/max_user_namespaces", "15000");
    Some(tmp)
}

fn sysctl(root: &Path, name: &str, value: &str) {
    let p = root.join("proc/sys").join(name);
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, format!("{value}\n")).unwrap();
}

/// Runs doctor on the tree; returns (success, stdout).
fn doctor(root: &Path) -> (bool, String) {
    let out = Command::new(unrooted())
        .arg("doctor")
        .arg("--root")
        .arg(root)
        .args(["--timeout", "2"])
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn line<'a>(text: &'a str, check: &str) -> &'a str {
    text.lines()
        .find(|l| l.contains(&format!("] {check}: ")))
        .unwrap_or_else(|| panic!("no {check} line in:\n{text}"))
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_fresh_install_passes_every_check_but_the_absent_daemon() {
    let Some(tmp) = installed() else { return };
    let (ok, text) = doctor(tmp.path());
    assert!(
        line(&text, "user namespaces").starts_with("[ok  ]"),
        "{text}"
    );
    assert!(line(&text, "AppArmor").starts_with("[ok  ]"), "{text}");
    // The running kernel's Landlock, whatever the tree: scoped from ABI 6 (Linux 6.12).
    let scoped =
        unrooted_sandbox::landlock_abi().is_some_and(|v| v >= unrooted_sandbox::LANDLOCK_SCOPE_ABI);
    let expected = if scoped {
        "[ok  ] Landlock: ABI"
    } else {
        "[warn] Landlock:"
    };
    assert!(line(&text, "Landlock").starts_with(expected), "{text}");
    assert!(
        line(&text, "store ownership").starts_with("[ok  ]"),
        "{text}"
    );
    assert!(
        line(&text, "subordinate ids").starts_with("[warn]"),
        "{text}"
    );
    // Nothing serves the tree's socket: that blocks builds.
    assert!(
        line(&text, "daemon socket").starts_with("[FAIL] daemon socket: cannot connect"),
        "{text}"
    );
    assert!(!ok);
    assert!(
        text.contains("fix: systemctl enable --now unrooted-daemon.socket"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn user_namespaces_off_is_a_failure_with_the_sysctl_to_set() {
    let Some(tmp) = installed() else { return };
    sysctl(tmp.path(), "user/max_user_namespaces", "0");
    let (ok, text) = doctor(tmp.path());
    assert!(!ok);
    assert!(
        line(&text, "user namespaces")
            .starts_with("[FAIL] user namespaces: user.max_user_namespaces = 0"),
        "{text}"
    );
    assert!(
        text.contains("fix: echo user.max_user_namespaces=15000"),
        "{text}"
    );

    sysctl(tmp.path(), "user/max_user_namespaces", "15000");
    sysctl(tmp.path(), "kernel/unprivileged_userns_clone", "0");
    let (_, text) = doctor(tmp.path());
    assert!(
        line(&text, "user namespaces")
            .starts_with("[FAIL] user namespaces: kernel.unprivileged_userns_clone = 0"),
        "{text}"
    );

    sysctl(tmp.path(), "kernel/unprivileged_userns_clone", "1");
    sysctl(
        tmp.path(),
        "kernel/apparmor_restrict_unprivileged_userns",
        "1",
    );
    let (_, text) = doctor(tmp.path());
    assert!(
        line(&text, "user namespaces").starts_with("[ok  ]"),
        "{text}"
    );
    assert!(
        line(&text, "AppArmor")
            .starts_with("[FAIL] AppArmor: kernel.apparmor_restrict_unprivileged_userns = 1"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_store_owned_by_root_is_a_failure_pointing_at_migrate() {
    let Some(tmp) = installed() else { return };
    chown(tmp.path().join("nix/store"), Some(0), Some(0)).unwrap();
    let (ok, text) = doctor(tmp.path());
    assert!(!ok);
    let l = line(&text, "store ownership");
    assert!(
        l.starts_with(
            "[FAIL] store ownership: /nix/store is owned by uid 0, not unrooted-test-daemon"
        ),
        "{text}"
    );
    assert!(
        text.contains("fix: unrooted migrate --store-owner unrooted-test-daemon"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_missing_or_writable_roots_helper_is_reported() {
    let Some(tmp) = installed() else { return };
    let bin = tmp
        .path()
        .join("usr/local/libexec/unrooted/unrooted-find-roots");
    let (_, text) = doctor(tmp.path());
    assert!(
        line(&text, "roots helper").starts_with("[warn] roots helper: cannot reach"),
        "{text}"
    );
    assert!(
        text.contains("garbage collection will refuse to run"),
        "{text}"
    );

    let (uid, gid) = test_user(DAEMON_USER).unwrap();
    chown(&bin, Some(uid), Some(gid)).unwrap();
    let (_, text) = doctor(tmp.path());
    assert!(
        line(&text, "roots helper binary").starts_with("[FAIL] roots helper binary:"),
        "{text}"
    );
    assert!(
        text.contains("whoever can write it runs code as root"),
        "{text}"
    );

    fs::remove_file(&bin).unwrap();
    let (_, text) = doctor(tmp.path());
    assert!(
        line(&text, "roots helper binary").starts_with("[warn] roots helper binary:"),
        "{text}"
    );
    assert!(
        line(&text, "roots helper binary").ends_with("is missing"),
        "{text}"
    );
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_running_unprivileged_daemon_answers_and_is_not_root() {
    if !can_run_daemon_tests() {
        return;
    }
    let mut d = TestDaemon::new(unrooted(), "");
    d.start();
    expect_daemon_identity_ok(&d);
}

/// Regression: under socket activation `SO_PEERCRED` names the socket's creator
/// (systemd, root), and doctor failed every correct install with "the daemon runs
/// as root". It now finds the daemon as the process holding the listening socket.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_socket_activated_daemon_is_identified_by_the_process_holding_the_socket() {
    if !can_run_daemon_tests() {
        return;
    }
    let mut d = TestDaemon::new(unrooted(), "");
    d.start_socket_activated();
    expect_daemon_identity_ok(&d);
}

/// Regression (found by scripts/systemd-test.sh): systemd passes the listening socket
/// without close-on-exec, and the daemon kept it so: its sandbox helpers (and every
/// `newuidmap`) inherited the listening socket, and doctor listed them as daemons.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_socket_activated_daemons_children_do_not_inherit_the_listening_socket() {
    if !can_run_daemon_tests() {
        return;
    }
    let mut d = TestDaemon::new(unrooted(), "");
    d.start_socket_activated();
    let pid = d.pid();
    // Under socket activation the socket is there before the daemon: doctor's
    // handshake waits for the daemon itself.
    expect_daemon_identity_ok(&d);
    // The daemon's own descriptor 3 (LISTEN_FDS_START) is close-on-exec.
    let fdinfo = std::fs::read_to_string(format!("/proc/{pid}/fdinfo/3")).unwrap();
    let flags = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("flags:"))
        .map(|f| u32::from_str_radix(f.trim(), 8).unwrap())
        .unwrap();
    assert_ne!(flags & 0o2000000, 0, "fd 3 of the daemon: {fdinfo}");
    // Its spare sandbox helper, started ahead of the first build, holds no copy: doctor
    // names one daemon.
    let children = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|p| {
                std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| {
                    s.rsplit_once(") ")
                        .and_then(|(_, rest)| rest.split(' ').nth(1)?.parse::<u32>().ok())
                        == Some(pid)
                })
            })
            .count()
    };
    for _ in 0..50 {
        if children() > 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    expect_daemon_identity_ok(&d);
}

fn expect_daemon_identity_ok(d: &TestDaemon) {
    let out = Command::new(unrooted())
        .arg("doctor")
        .args(["--store-owner", DAEMON_USER, "--timeout", "5"])
        .arg("--store-dir")
        .arg(d.store_dir())
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--log-dir")
        .arg(d.root().join("log"))
        .arg("--conf-dir")
        .arg(d.root().join("conf"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        line(&text, "daemon socket").starts_with("[ok  ] daemon socket:"),
        "{text}"
    );
    assert_eq!(
        text.matches("] daemon identity:").count(),
        1,
        "one process holds the listening socket: {text}"
    );
    let id = line(&text, "daemon identity");
    assert!(
        id.starts_with(&format!(
            "[ok  ] daemon identity: pid {}, uid {},",
            d.pid(),
            d.daemon_uid
        )),
        "{text}"
    );
    assert!(line(&text, "free space").starts_with("[ok  ]"), "{text}");
}

/// With subordinate ids, doctor says how many id-range builds the range allows at
/// once, and warns when max-jobs asks for more.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_build_ids_check_counts_the_concurrent_builds_the_range_allows() {
    if !unrooted_testkit::require(is_root(), "doctor tests need root to chown") {
        return;
    }
    test_user(DAEMON_USER).expect("test user");
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("usr/bin")).unwrap();
    for b in ["newuidmap", "newgidmap"] {
        fs::write(root.join("usr/bin").join(b), b"").unwrap();
    }
    let helper = root.join("fake-find-roots");
    fs::write(&helper, b"#!/bin/sh\n").unwrap();
    let out = Command::new(unrooted())
        .arg("install")
        .arg("--root")
        .arg(root)
        .args(["--store-owner", DAEMON_USER, "--subids", "yes"])
        .args(["--apparmor", "no", "--build-slices", "3"])
        .arg("--find-roots-binary")
        .arg(&helper)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    sysctl(root, "user/max_user_namespaces", "15000");
    let (_, text) = doctor(root);
    assert!(
        line(&text, "subordinate ids").starts_with(&format!(
            "[ok  ] subordinate ids: {DAEMON_USER} has uids 131072+196608 and gids 131072+196608"
        )),
        "{text}"
    );
    let ids = line(&text, "build ids");
    assert!(
        ids.starts_with("[ok  ] build ids: id-range mode:"),
        "{text}"
    );
    assert!(
        ids.contains("allow 3 concurrent id-range builds") && ids.ends_with("(max-jobs = 1)"),
        "{text}"
    );

    let conf = root.join("etc/nix/nix.conf");
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("max-jobs = 5\n");
    fs::write(&conf, text).unwrap();
    let (_, text) = doctor(root);
    let ids = line(&text, "build ids");
    assert!(
        ids.starts_with("[warn] build ids: id-range mode:"),
        "{text}"
    );
    assert!(
        ids.contains("allow 3 concurrent id-range builds")
            && ids.ends_with("fewer than max-jobs = 5: the others wait for a slice"),
        "{text}"
    );
    assert!(text.contains("--build-slices N"), "{text}");

    // Nix's id-count bounds the pool the daemon uses: two slices of 65536.
    let mut text = fs::read_to_string(&conf).unwrap();
    text.push_str("id-count = 131072\n");
    fs::write(&conf, text).unwrap();
    let (_, text) = doctor(root);
    assert!(
        line(&text, "build ids").contains("allow 2 concurrent id-range builds"),
        "{text}"
    );
}
