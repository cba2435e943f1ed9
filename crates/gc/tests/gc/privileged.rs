//! The safety rule with real users: the collector runs as the unprivileged store
//! owner (`unrooted-test-daemon`), a second user (`unrooted-test-client`) keeps a
//! `result` link in a home of mode 0700 and runs processes holding store paths, and
//! the roots helper runs as root. Tests run as root only to set this up; under
//! `CI=true` they must not skip.

use crate::common;

use std::fs;
use std::os::unix::fs::{lchown, symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::*;
use unrooted_gc::{add_indirect_root, GcAction, GcConfig, RootsHelper, TempRoots};
use unrooted_testkit::daemon::{can_run_daemon_tests, test_user, CLIENT_USER, DAEMON_USER};

const CHILD_ROOT: &str = "UNROOTED_GC_CHILD_ROOT";
const CHILD_HELPER: &str = "UNROOTED_GC_CHILD_HELPER";

/// The helper binary, built on demand into its own target directory (it has no
/// dependencies, so this takes seconds, and it never waits on the outer cargo lock).
fn helper_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let target = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("helper-build");
            let st = Command::new(env!("CARGO"))
                .args([
                    "build",
                    "-q",
                    "-p",
                    "unrooted-roots",
                    "--bin",
                    "unrooted-find-roots",
                ])
                .env("CARGO_TARGET_DIR", &target)
                .current_dir(env!("CARGO_MANIFEST_DIR"))
                .status()
                .unwrap();
            assert!(st.success(), "building unrooted-find-roots");
            target.join("debug/unrooted-find-roots")
        })
        .clone()
}

/// The collector as the store owner: prints `OK <deleted>…` or `ERR <message>`.
/// Does nothing when run as an ordinary test.
#[test]
fn gc_child() {
    let Some(root) = std::env::var_os(CHILD_ROOT) else {
        return;
    };
    let store = open_at(Path::new(&root));
    let helper = match std::env::var(CHILD_HELPER).unwrap().as_str() {
        "none" => RootsHelper::None,
        s => RootsHelper::Socket(PathBuf::from(s)),
    };
    let temps = TempRoots::new();
    let (r, _) = collect(
        &store,
        GcConfig::new(helper),
        &temps,
        GcAction::DeleteDead,
        u64::MAX,
    );
    match r {
        Ok(r) => println!(
            "\nRESULT:OK {}",
            r.paths.into_iter().collect::<Vec<_>>().join(" ")
        ),
        Err(e) => println!("\nRESULT:ERR {}", chain(&e)),
    }
}

/// The helper started by a test; killed (by its pid) when the test ends, also on
/// a failed assertion.
struct HelperProcess(Child);

impl Drop for HelperProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Setup {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    daemon: (u32, u32),
    client: (u32, u32),
}

impl Setup {
    fn new() -> Option<Self> {
        if !can_run_daemon_tests() {
            return None;
        }
        let daemon = test_user(DAEMON_USER).unwrap();
        let client = test_user(CLIENT_USER).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_owned();
        fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
        Some(Self {
            _tmp: tmp,
            root,
            daemon,
            client,
        })
    }

    /// Hands the store to the daemon user (after root created it).
    fn give_store_to_daemon(&self) {
        let st = Command::new("chown")
            .arg("-R")
            .arg(format!("{}:{}", self.daemon.0, self.daemon.1))
            .arg(self.root.join("store"))
            .arg(self.root.join("state"))
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Runs the collector as the daemon user.
    fn collect_as_daemon(&self, helper: &str) -> String {
        let out = Command::new("setpriv")
            .arg(format!("--reuid={}", self.daemon.0))
            .arg(format!("--regid={}", self.daemon.1))
            .arg("--clear-groups")
            .arg(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "privileged::gc_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ROOT, &self.root)
            .env(CHILD_HELPER, helper)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("RESULT:"))
            .unwrap_or_else(|| {
                panic!(
                    "child said nothing: {stdout}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                )
            })
            .to_owned()
    }

    /// Starts the helper as root on a socket in a root-owned directory.
    fn start_helper(&self) -> (HelperProcess, PathBuf) {
        let dir = self.root.join("helper");
        fs::create_dir_all(&dir).unwrap();
        let socket = dir.join("socket");
        let child = Command::new(helper_exe())
            .arg("--store-dir")
            .arg(self.root.join("store"))
            .arg("--state-dir")
            .arg(self.root.join("state"))
            .args(["--owner-uid", &self.daemon.0.to_string(), "--listen"])
            .arg(&socket)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let child = HelperProcess(child);
        let deadline = Instant::now() + Duration::from_secs(5);
        while !socket.exists()
            || fs::metadata(&socket)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
                .unwrap_or(0)
                != self.daemon.0
        {
            assert!(Instant::now() < deadline, "helper socket did not appear");
            std::thread::sleep(Duration::from_millis(20));
        }
        (child, socket)
    }

    /// A private home of the client user with a `result` link to `target`.
    fn private_result(&self, target: &str) -> PathBuf {
        let home = self.root.join("home-client");
        fs::create_dir_all(&home).unwrap();
        let link = home.join("result");
        symlink(target, &link).unwrap();
        lchown(&link, Some(self.client.0), Some(self.client.1)).unwrap();
        std::os::unix::fs::chown(&home, Some(self.client.0), Some(self.client.1)).unwrap();
        fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
        link
    }
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn indirect_root_in_a_private_home_refuses_without_helper_and_survives_with_it() {
    let Some(s) = Setup::new() else { return };
    let store = open_at(&s.root);
    let kept = text(&store, "kept-by-result", "k", &[]);
    let garbage = text(&store, "garbage", "g", &[]);
    let link = s.private_result(&store.print_path(&kept));
    add_indirect_root(&s.root.join("state"), &link).unwrap();
    let (kept_p, garbage_p) = (store.print_path(&kept), store.print_path(&garbage));
    drop(store);
    s.give_store_to_daemon();

    // No helper (even by explicit opt-in): an unreadable root refuses, naming it.
    let out = s.collect_as_daemon("none");
    assert!(
        out.starts_with("ERR refusing to collect garbage: cannot read potential root"),
        "{out}"
    );
    assert!(out.contains(&link.display().to_string()), "{out}");
    assert!(out.contains("Permission denied"), "{out}");

    // Helper configured but not running: refuses.
    let missing = s.root.join("helper/socket");
    let out = s.collect_as_daemon(missing.to_str().unwrap());
    assert!(
        out.starts_with(
            "ERR refusing to collect garbage: cannot get the roots from the roots helper"
        ),
        "{out}"
    );

    // With the helper as root: the rooted path survives, the garbage goes.
    let (helper, socket) = s.start_helper();
    let out = s.collect_as_daemon(socket.to_str().unwrap());
    assert_eq!(out, format!("OK {garbage_p}"));
    let store = open_at(&s.root);
    assert!(store.is_valid_path(&kept).unwrap());
    assert!(store.real_path(&kept).exists());
    drop(store);

    // The user removes the link: the path becomes collectable.
    fs::remove_file(&link).unwrap();
    let out = s.collect_as_daemon(socket.to_str().unwrap());
    assert_eq!(out, format!("OK {kept_p}"));
    drop(helper);
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn runtime_roots_of_another_users_processes_survive_with_the_helper() {
    let Some(s) = Setup::new() else { return };
    let store = open_at(&s.root);
    let cwd_root = file_path(&store, 'a', "cwd-root", b"c", None);
    let fd_root = file_path(&store, 'b', "fd-root", b"f", None);
    let garbage = text(&store, "garbage", "g", &[]);
    let cwd_dir = s.root.join("store");
    let fd_file = store.real_path(&fd_root);
    let cwd_target = store.print_path(&cwd_root);
    let garbage_p = store.print_path(&garbage);
    drop(store);
    s.give_store_to_daemon();
    // A process of the client user: cwd in the store, one store file open, and a
    // store path in its environment.
    // It says when its descriptor is open.
    let mut holder = unrooted_testkit::spawn_ready(
        Command::new("setpriv")
            .arg(format!("--reuid={}", s.client.0))
            .arg(format!("--regid={}", s.client.1))
            .arg("--clear-groups")
            .args(["sh", "-c"])
            .arg(format!(
                "exec 3<'{}'; echo ready; exec sleep 60",
                fd_file.display()
            ))
            .current_dir(&cwd_dir)
            .env("HOLD", &cwd_target),
    );
    let (helper, socket) = s.start_helper();
    let out = s.collect_as_daemon(socket.to_str().unwrap());
    let _ = holder.kill();
    let _ = holder.wait();
    drop(helper);
    assert_eq!(out, format!("OK {garbage_p}"));
}
