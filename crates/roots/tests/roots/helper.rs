//! The helper as a process: its exact wire bytes, hostile roots, runtime roots, and
//! the listening socket's access rules.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const EXE: &str = env!("CARGO_BIN_EXE_unrooted-find-roots");
const A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-alpha";
const B: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-beta-1.0";
const C: &str = "cccccccccccccccccccccccccccccccc-gamma";

struct Env {
    dir: tempfile::TempDir,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        for d in [
            "store",
            "state/gcroots/auto",
            "state/profiles",
            "proc",
            "home",
        ] {
            fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        Self { dir }
    }
    fn p(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn store(&self, base: &str) -> String {
        format!("{}/{base}", self.p("store").display())
    }
    fn run(&self, proc: Option<&Path>, extra: &[&str]) -> Output {
        let proc = proc.map_or(self.p("proc"), Path::to_path_buf);
        Command::new(EXE)
            .arg("--store-dir")
            .arg(self.p("store"))
            .arg("--state-dir")
            .arg(self.p("state"))
            .arg("--proc")
            .arg(proc)
            .args(["--owner-uid", "0", "--inetd"])
            .args(extra)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }
}

/// The items of a complete answer, without its last item (`end of answer`), which
/// every complete answer has.
fn items(out: &[u8]) -> Vec<String> {
    let out = out
        .strip_suffix(b"end of answer\0")
        .unwrap_or_else(|| panic!("no end-of-answer item: {out:?}"));
    assert!(
        out.is_empty() || out.ends_with(b"\0"),
        "not NUL-terminated: {out:?}"
    );
    out.split(|&b| b == 0)
        .filter(|i| !i.is_empty())
        .map(|i| String::from_utf8(i.to_vec()).unwrap())
        .collect()
}

#[test]
fn wire_bytes_are_nul_terminated_store_paths_then_the_end_item() {
    let env = Env::new();
    symlink(env.store(B), env.p("state/gcroots/b")).unwrap();
    // A link inside a store path names its top-level path.
    symlink(
        format!("{}/bin/tool", env.store(A)),
        env.p("state/profiles/a"),
    )
    .unwrap();
    let out = env.run(None, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let expected = format!("{}\0{}\0end of answer\0", env.store(A), env.store(B));
    assert_eq!(out.stdout, expected.as_bytes());
}

#[test]
fn empty_answer_is_only_the_end_item() {
    let env = Env::new();
    let out = env.run(None, &[]);
    assert!(out.status.success());
    assert_eq!(out.stdout, b"end of answer\0");
}

#[test]
fn indirect_per_user_and_file_roots() {
    let env = Env::new();
    // auto → ~/result → store path
    symlink(env.store(A), env.p("home/result")).unwrap();
    symlink(env.p("home/result"), env.p("state/gcroots/auto/x")).unwrap();
    // per-user profile generation → store path
    let pu = env.p("state/profiles/per-user/alice");
    fs::create_dir_all(&pu).unwrap();
    symlink(env.store(B), pu.join("profile-1-link")).unwrap();
    // a regular file named like a store path
    fs::write(env.p("state/gcroots").join(C), b"").unwrap();
    // a dangling indirect root: nothing
    symlink(env.p("home/gone"), env.p("state/gcroots/auto/y")).unwrap();
    let out = env.run(None, &[]);
    assert_eq!(
        items(&out.stdout),
        vec![env.store(A), env.store(B), env.store(C)]
    );
}

#[test]
fn hostile_roots_give_the_right_answer_in_bounded_time() {
    let env = Env::new();
    let g = env.p("state/gcroots");
    symlink(g.join("loop2"), g.join("loop1")).unwrap();
    symlink(g.join("loop1"), g.join("loop2")).unwrap();
    symlink("/proc/self/cwd", g.join("self")).unwrap();
    symlink("/proc/self/root/etc/passwd", env.p("home/proc-link")).unwrap();
    symlink(env.p("home/proc-link"), g.join("auto/proc")).unwrap();
    // A directory symlink loop in the inner link's path: ELOOP resolves to nothing.
    symlink(env.p("home/dirloop"), env.p("home/dirloop")).unwrap();
    symlink(env.p("home/dirloop/result"), g.join("auto/eloop")).unwrap();
    // A chain link → link → link → store: only one extra hop is followed (Nix).
    symlink(env.store(C), env.p("home/c3")).unwrap();
    symlink(env.p("home/c3"), env.p("home/c2")).unwrap();
    symlink(env.p("home/c2"), g.join("auto/chain")).unwrap();
    // Inside a store path, with `..` games: only a clean top-level name counts.
    symlink(
        format!("{}/../{A}/x", env.p("store").display()),
        g.join("dots"),
    )
    .unwrap();
    symlink(format!("{}/share/doc", env.store(B)), env.p("home/inside")).unwrap();
    symlink(env.p("home/inside"), g.join("auto/inside")).unwrap();
    // Many entries in a user-writable directory.
    let many = env.p("state/gcroots/per-user/mallory");
    fs::create_dir_all(&many).unwrap();
    for i in 0..30_000 {
        fs::write(many.join(format!("f{i}")), b"").unwrap();
    }
    let started = Instant::now();
    let out = env.run(None, &[]);
    let took = started.elapsed();
    assert!(took < Duration::from_secs(10), "took {took:?}");
    assert_eq!(items(&out.stdout), vec![env.store(B)]);

    // Over the entry budget: an error item, never a silently shorter list.
    let started = Instant::now();
    let out = env.run(None, &["--max-entries", "1000"]);
    assert!(started.elapsed() < Duration::from_secs(5));
    let got = items(&out.stdout);
    assert!(
        got.iter()
            .any(|i| i.starts_with("error: ") && i.contains("entries")),
        "{got:?}"
    );
    // Too deep: an error item too.
    let mut deep = env.p("state/gcroots/deep");
    for i in 0..10 {
        deep = deep.join(format!("d{i}"));
    }
    fs::create_dir_all(&deep).unwrap();
    let out = env.run(None, &["--max-depth", "5"]);
    let got = items(&out.stdout);
    assert!(
        got.iter().any(|i| i.contains("nested too deeply")),
        "{got:?}"
    );
}

/// Fills `dir` with `n` entries cheaply: hard links to a few empty files (ext4
/// allows 65,000 links to one file), named `f<i>`, none of them a root.
fn fill_with_entries(dir: &Path, n: usize) {
    const PER_FILE: usize = 60_000;
    let sources = dir.join(".sources");
    fs::create_dir(&sources).unwrap();
    for i in 0..n {
        let source = sources.join(format!("s{}", i / PER_FILE));
        if i % PER_FILE == 0 {
            fs::write(&source, b"").unwrap();
        }
        fs::hard_link(&source, dir.join(format!("f{i}"))).unwrap();
    }
}

/// A user plants a million entries in its per-user roots directory: the helper
/// still answers with the one real root among them, within its own time bound (10
/// s, after which it would send an error item); with bounds below the directory's
/// size, it refuses with an error item naming the bound, never a shorter list.
#[test]
fn a_million_entries_get_the_right_answer_in_bounded_time() {
    let env = Env::new();
    let many = env.p("state/gcroots/per-user/mallory");
    fs::create_dir_all(&many).unwrap();
    fill_with_entries(&many, 1_000_000);
    symlink(
        format!("{}/bin/x", env.store(A)),
        many.join("the-real-root"),
    )
    .unwrap();

    let started = Instant::now();
    let out = env.run(None, &[]);
    let took = started.elapsed();
    eprintln!("helper answer beside a million root entries: {took:?}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(items(&out.stdout), vec![env.store(A)]);
    assert!(took < Duration::from_secs(10), "took {took:?}");

    for (flags, bound) in [
        (["--max-entries", "500000"], "more than 500000 entries"),
        (["--max-seconds", "0"], "more than 0ns"),
    ] {
        let started = Instant::now();
        let got = items(&env.run(None, &flags).stdout);
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(
            got.iter()
                .any(|i| i.starts_with("error: ") && i.contains(bound)),
            "{flags:?}: {got:?}"
        );
    }
}

#[test]
fn unreadable_root_is_an_error_item() {
    if !unrooted_testkit::daemon::is_root() {
        // As root every directory is readable; the error path needs a non-root run.
        let env = Env::new();
        let private = env.p("state/gcroots/private");
        fs::create_dir(&private).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o000)).unwrap();
        let got = items(&env.run(None, &[]).stdout);
        assert!(
            got.iter().any(|i| i.contains("cannot read potential root")),
            "{got:?}"
        );
        return;
    }
    let Some((uid, gid)) =
        unrooted_testkit::daemon::test_user(unrooted_testkit::daemon::DAEMON_USER)
    else {
        panic!("cannot create the test user as root");
    };
    let env = Env::new();
    let private = env.p("state/gcroots/private");
    fs::create_dir(&private).unwrap();
    fs::set_permissions(&private, fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(env.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={gid}"),
            "--clear-groups".into(),
        ])
        .arg(EXE)
        .arg("--store-dir")
        .arg(env.p("store"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .arg("--proc")
        .arg(env.p("proc"))
        .args(["--owner-uid", "0", "--inetd"])
        .output()
        .unwrap();
    let got = items(&out.stdout);
    assert!(
        got.iter()
            .any(|i| i.starts_with("error: cannot read potential root")),
        "{got:?}"
    );
}

#[test]
fn runtime_roots_from_proc() {
    let env = Env::new();
    let cwd_path = env.p("store").join(A);
    fs::create_dir_all(cwd_path.join("sub")).unwrap();
    let file_path = env.p("store").join(B);
    fs::write(&file_path, b"data").unwrap();
    let mut by_cwd = Command::new("sleep")
        .arg("30")
        .current_dir(cwd_path.join("sub"))
        .spawn()
        .unwrap();
    // `sleep` has its cwd once spawned (the exec happened); the shell says when its
    // descriptor is open.
    let mut by_fd = unrooted_testkit::spawn_ready(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3<'{}'; echo ready; exec sleep 30",
                file_path.display()
            ))
            .env("UNROOTED_TEST_ENV", env.store(C)),
    );
    let out = env.run(Some(Path::new("/proc")), &[]);
    let _ = by_cwd.kill();
    let _ = by_fd.kill();
    let _ = by_cwd.wait();
    let _ = by_fd.wait();
    let got = items(&out.stdout);
    for want in [env.store(A), env.store(B), env.store(C)] {
        assert!(got.contains(&want), "{want} missing from {got:?}");
    }
    assert!(!got.iter().any(|i| i.starts_with("error")), "{got:?}");
}

#[test]
#[ignore = "needs root; CI runs it with --include-ignored"]
fn listen_mode_socket_is_owner_only_and_answers_each_connection() {
    if !unrooted_testkit::require(
        unrooted_testkit::daemon::is_root(),
        "listen mode tests need root",
    ) {
        return;
    }
    let (uid, _) = unrooted_testkit::daemon::test_user(unrooted_testkit::daemon::DAEMON_USER)
        .expect("test user");
    let env = Env::new();
    symlink(env.store(A), env.p("state/gcroots/a")).unwrap();
    let sockdir = env.p("sock");
    fs::create_dir(&sockdir).unwrap();
    let socket = sockdir.join("socket");
    let mut helper = Command::new(EXE)
        .arg("--store-dir")
        .arg(env.p("store"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .arg("--proc")
        .arg(env.p("proc"))
        .args(["--owner-uid", &uid.to_string(), "--listen"])
        .arg(&socket)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while fs::symlink_metadata(&socket)
        .map(|m| m.uid() != uid)
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "socket not created");
        std::thread::sleep(Duration::from_millis(20));
    }
    let meta = fs::symlink_metadata(&socket).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o600);
    for _ in 0..2 {
        let mut bytes = Vec::new();
        UnixStream::connect(&socket)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        assert_eq!(
            bytes,
            format!("{}\0end of answer\0", env.store(A)).as_bytes()
        );
    }
    let _ = helper.kill();
    let _ = helper.wait();

    // A socket directory the store owner could write is refused.
    let owned = env.p("owned");
    fs::create_dir(&owned).unwrap();
    std::os::unix::fs::chown(&owned, Some(uid), None).unwrap();
    let out = Command::new(EXE)
        .arg("--store-dir")
        .arg(env.p("store"))
        .arg("--state-dir")
        .arg(env.p("state"))
        .args(["--owner-uid", &uid.to_string(), "--listen"])
        .arg(owned.join("socket"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("owned by root"));
}

#[test]
fn peer_instance_of_another_uid_is_refused() {
    let env = Env::new();
    symlink(env.store(A), env.p("state/gcroots/a")).unwrap();
    // Refused: an error item naming why, and no end-of-answer item.
    let out = env.run(None, &["--peer-instance", "3-1234-1000"]);
    assert!(!out.status.success());
    let refused = "error: refusing peer 3-1234-1000: not uid 0\0";
    assert_eq!(String::from_utf8_lossy(&out.stdout), refused);
    let out = env.run(None, &["--peer-instance", "3-1234-0"]);
    assert!(out.status.success());
    assert_eq!(items(&out.stdout), vec![env.store(A)]);
}

#[test]
fn base_names_use_nix_base32_only() {
    use unrooted_roots::is_base_name;
    let all = "0123456789abcdfghijklmnpqrsvwxyz";
    assert!(is_base_name(format!("{all}-x").as_bytes()));
    for bad in ['e', 'o', 't', 'u', 'A', '-', '/'] {
        let hash: String = std::iter::once(bad).chain(all.chars().skip(1)).collect();
        assert!(!is_base_name(format!("{hash}-x").as_bytes()), "{bad}");
    }
    assert!(!is_base_name(format!("{all}-").as_bytes()));
    assert!(!is_base_name(format!("{all}-.x").as_bytes()));
}
