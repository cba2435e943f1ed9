//! `unrooted migrate`: a store populated by Nix 2.8 as root (`nix-store --add`,
//! `nix-build`, `nix-env` profiles) is handed to the store owner; afterwards the
//! unprivileged daemon serves it, `nix-store --verify --check-contents` run by the
//! owner is clean, and the old profiles are still roots.

use std::fs;
use std::os::unix::fs::{chown, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use crate::common::unrooted;
use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon, CLIENT_USER, DAEMON_USER};
use unrooted_testkit::nix_tool;

/// A Nix 2.8 command run as root in local mode on the test daemon's store.
fn as_root(d: &TestDaemon, program: &str, args: &[&str]) -> String {
    let r = d.root();
    let out = Command::new(program)
        .args(args)
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("HOME", r.join("inputs"))
        .env("NIX_REMOTE", "local")
        .env("NIX_STORE_DIR", d.store_dir())
        .env("NIX_STATE_DIR", d.state_dir())
        .env("NIX_LOG_DIR", r.join("log"))
        .env("NIX_CONF_DIR", r.join("conf"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// `unrooted migrate` on the test daemon's store, in a PID namespace of its own with
/// its own `/proc`.
///
/// `migrate` refuses while any process named `nix-daemon` runs on the host, and this
/// test cannot stop other tests' and tools' root `nix-daemon`s from running beside it
/// (`crates/protocol/tests/protocol/client_server.rs` starts one, `unrooted-bench` another, and
/// a test runner may run binaries in parallel); with the host's `/proc` this test then
/// failed whenever one happened to run. In its own namespace `migrate` sees only
/// itself; the refusal is tested on a prepared `/proc` in
/// [`migration_refuses_while_a_nix_daemon_runs`].
fn migrate(d: &TestDaemon) -> String {
    let r = d.root();
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "--"])
        .arg(unrooted())
        .arg("migrate")
        .args(["--store-owner", DAEMON_USER])
        .arg("--store-dir")
        .arg(d.store_dir())
        .arg("--state-dir")
        .arg(d.state_dir())
        .arg("--log-dir")
        .arg(r.join("log"))
        .arg("--conf-dir")
        .arg(r.join("conf"))
        .output()
        .unwrap_or_else(|e| panic!("running unrooted migrate under unshare (util-linux): {e}"));
    assert!(
        out.status.success(),
        "migrate failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn owners_under(dir: &Path, out: &mut Vec<(String, u32)>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        out.push((p.display().to_string(), m.uid()));
        if m.is_dir() {
            owners_under(&p, out);
        }
    }
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_root_daemons_store_is_served_by_the_owner_after_migration() {
    if !can_run_daemon_tests() || nix_tool("nix-store").is_none() {
        return;
    }
    let mut d = TestDaemon::new(unrooted(), "");
    let r = d.root().to_path_buf();
    // As a root nix-daemon leaves it: everything root's, the store 1775.
    for dir in ["store", "state", "log"] {
        chown(r.join(dir), Some(0), Some(0)).unwrap();
    }
    fs::set_permissions(d.store_dir(), fs::Permissions::from_mode(0o1775)).unwrap();
    fs::write(r.join("inputs/hello.txt"), "hello from a root store\n").unwrap();
    let added = as_root(
        &d,
        "nix-store",
        &["--add", r.join("inputs/hello.txt").to_str().unwrap()],
    );
    let built = as_root(
        &d,
        "nix-build",
        &[
            "--no-out-link",
            "-E",
            r#"derivation { name = "migrated"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo built > $out" ]; }"#,
        ],
    );
    let state = d.state_dir();
    let default_profile = state.join("profiles/default");
    as_root(
        &d,
        "nix-env",
        &["-p", default_profile.to_str().unwrap(), "--set", &added],
    );
    // A user's profile, in the per-user directory the old daemon gave that user.
    let user_dir = state.join("profiles/per-user").join(CLIENT_USER);
    fs::create_dir_all(&user_dir).unwrap();
    chown(&user_dir, Some(d.client_uid), None).unwrap();
    let user_profile = user_dir.join("profile");
    as_root(
        &d,
        "nix-env",
        &["-p", user_profile.to_str().unwrap(), "--set", &built],
    );
    chown(&user_dir, Some(d.client_uid), None).unwrap();
    let valid_before = as_root(&d, "nix-store", &["-q", "--hash", &added, &built]);

    // Debian's nix.conf turns Nix's sandbox off and names the build users' group.
    let conf = r.join("conf/nix.conf");
    let mut old_conf = fs::read_to_string(&conf).unwrap_or_default();
    old_conf.push_str("sandbox = false\nbuild-users-group = nixbld\n");
    fs::write(&conf, &old_conf).unwrap();

    let text = migrate(&d);
    assert!(
        text.contains("systemctl disable --now nix-daemon.socket nix-daemon.service"),
        "{text}"
    );
    assert!(
        text.contains("changed: `sandbox = false` to `sandbox = true`")
            && text.contains("removed: `build-users-group = nixbld`"),
        "{text}"
    );
    let new_conf = fs::read_to_string(&conf).unwrap();
    assert!(
        new_conf.contains("\nsandbox = true\n") && !new_conf.contains("\nbuild-users-group"),
        "{new_conf}"
    );
    let store_meta = fs::metadata(d.store_dir()).unwrap();
    assert_eq!(
        (store_meta.uid(), store_meta.mode() & 0o7777),
        (d.daemon_uid, 0o755)
    );
    let mut owners = Vec::new();
    owners_under(&d.store_dir(), &mut owners);
    owners_under(&state.join("db"), &mut owners);
    for (path, uid) in &owners {
        assert_eq!(*uid, d.daemon_uid, "{path} not handed over");
    }
    // The user's directory stays the user's; its parent is writable by the store
    // owner alone (the daemon makes new users' directories).
    assert_eq!(fs::metadata(&user_dir).unwrap().uid(), d.client_uid);
    let per_user = fs::metadata(state.join("profiles/per-user")).unwrap();
    assert_eq!(per_user.mode() & 0o7777, 0o755);

    // A second run (or the rest of an interrupted one) only does what is left.
    let again = migrate(&d);
    assert!(
        again.contains("gave 0 state and 0 store entries"),
        "{again}"
    );
    chown(Path::new(&added), Some(0), Some(0)).unwrap();
    chown(d.store_dir(), Some(0), Some(0)).unwrap();
    let resumed = migrate(&d);
    assert!(
        resumed.contains("gave 0 state and 2 store entries"),
        "{resumed}"
    );

    // The unprivileged daemon serves the store; the owner finds it clean.
    d.start();
    let valid = d.client_ok("nix-store", &["-q", "--hash", &added, &built]);
    assert_eq!(valid.trim(), valid_before);
    assert_eq!(
        d.client_ok(
            "nix-store",
            &["--check-validity", "--print-invalid", &added, &built]
        ),
        ""
    );
    d.assert_store_clean();
    let roots = d.owner_ok("nix-store", &["--gc", "--print-roots"]);
    for (link, path) in [(&default_profile, &added), (&user_profile, &built)] {
        let link = link.display().to_string();
        assert!(
            roots
                .lines()
                .any(|l| l.starts_with(&link) && l.ends_with(path.as_str())),
            "{link} -> {path} is no longer a root:\n{roots}"
        );
    }
}

#[test]
fn migration_refuses_while_a_nix_daemon_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let proc = tmp.path().join("proc/4242");
    fs::create_dir_all(&proc).unwrap();
    fs::write(proc.join("comm"), "nix-daemon\n").unwrap();
    let out = Command::new(unrooted())
        .arg("migrate")
        .arg("--root")
        .arg(tmp.path())
        .args(["--store-owner", "nobody"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("a root nix-daemon is running (pid 4242)"),
        "{err}"
    );
    assert!(err.contains("systemctl stop nix-daemon.socket"), "{err}");
}
