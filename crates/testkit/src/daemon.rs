//! A daemon under test: `unrooted daemon` started as an unprivileged user on a private
//! store, and the real Nix client run as another unprivileged user against it.
//!
//! Tests run as root only to set this up (create the users, hand the store to the
//! daemon's user, drop privileges with `setpriv`); nothing of the daemon or the client
//! runs as root. The one exception is the privileged roots helper
//! (`unrooted-find-roots`), which garbage collection tests start as root, as an
//! administrator would (see [`TestDaemon::start_roots_helper`]).

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The user the daemon runs as in tests.
pub const DAEMON_USER: &str = "unrooted-test-daemon";
/// The user the Nix client runs as in tests.
pub const CLIENT_USER: &str = "unrooted-test-client";
/// A third user, for tests where one user collects garbage while another holds roots.
pub const OTHER_USER: &str = "unrooted-test-other";

/// The roots helper binary `unrooted-find-roots`, built once per test process.
///
/// Integration tests of another crate get no `CARGO_BIN_EXE_` for it, and the
/// binary next to `unrooted` in `target/<profile>` exists only if something built
/// it. So it is built here with the `cargo` that builds the tests, into a target
/// directory of its own (`target/roots-helper-build`): the crate has no
/// dependencies, so this takes seconds, and it never waits on the outer cargo's
/// lock on `target/`. `UNROOTED_FIND_ROOTS` names a prebuilt binary instead. The
/// binary is run as root, so it must live where the daemon's user cannot write.
pub fn roots_helper_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("UNROOTED_FIND_ROOTS") {
                return PathBuf::from(p);
            }
            crate::workspace_binary(
                "unrooted-roots",
                "unrooted-find-roots",
                "roots-helper-build",
            )
        })
        .clone()
}

/// A system user's uid and primary gid, creating the user when running as root.
pub fn test_user(name: &str) -> Option<(u32, u32)> {
    let lookup = || {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, name]).output().ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        Some((id("-u")?, id("-g")?))
    };
    if let Some(ids) = lookup() {
        return Some(ids);
    }
    if is_root() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .ok()?;
        if status.success() {
            return lookup();
        }
    }
    None
}

/// How many subordinate ids [`ensure_subids`] gives a user: eight slices of 65,536,
/// so concurrent builds each get their own.
pub const TEST_SUBID_COUNT: u32 = 8 * 65536;

/// The first range of `user` in a `subuid(5)` text.
fn subid_range(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        (f.next()? == user).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Gives `user` a range of [`TEST_SUBID_COUNT`] ids in `/etc/subuid` and
/// `/etc/subgid` (the same start in both), after every range already there so it
/// overlaps nobody's; idempotent, and only as root. Returns the user's first range
/// in `/etc/subuid`, if any.
pub fn ensure_subids(user: &str) -> Option<(u32, u32)> {
    // Test threads and test binaries run at once: one writer at a time (the lock is
    // per open file, so it excludes threads of this process too).
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("unrooted-test-subids.lock"))
        .ok();
    if let Some(l) = &lock {
        let _ = rustix::fs::flock(l, rustix::fs::FlockOperation::LockExclusive);
    }
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let (subuid, subgid) = (read("/etc/subuid"), read("/etc/subgid"));
    if let (Some(u), Some(_)) = (subid_range(&subuid, user), subid_range(&subgid, user)) {
        return Some(u);
    }
    if !is_root() {
        return subid_range(&subuid, user);
    }
    let end = |text: &str| {
        text.lines()
            .filter_map(|l| {
                let mut f = l.trim().split(':').skip(1);
                let start: u64 = f.next()?.parse().ok()?;
                let count: u64 = f.next()?.parse().ok()?;
                Some(start + count)
            })
            .max()
            .unwrap_or(0)
    };
    let start = end(&subuid).max(end(&subgid)).max(100_000);
    let start = u32::try_from(start).ok()?;
    for (file, text) in [("/etc/subuid", &subuid), ("/etc/subgid", &subgid)] {
        if subid_range(text, user).is_none() {
            let mut new = text.clone();
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(&format!("{user}:{start}:{TEST_SUBID_COUNT}\n"));
            fs::write(file, new).ok()?;
        }
    }
    subid_range(&read("/etc/subuid"), user)
}

/// Whether this process is root (the only case in which users can be switched).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Whether daemon tests can run here; under `CI=true` they must.
pub fn can_run_daemon_tests() -> bool {
    let ok = is_root()
        && test_user(DAEMON_USER).is_some()
        && test_user(CLIENT_USER).is_some()
        && test_user(OTHER_USER).is_some();
    crate::require(
        ok,
        &format!("daemon tests need root to create {DAEMON_USER}/{CLIENT_USER} and switch to them"),
    )
}

/// Whether sandboxed builds can be tested here: the daemon tests' users, the Nix
/// client, Debian's static busybox (the builders' `/bin/sh`) and unprivileged user
/// namespaces. Under `CI=true` each missing piece is a failure, never a skip.
pub fn can_run_sandboxed_builds() -> bool {
    if !can_run_daemon_tests() || crate::nix_tool("nix-build").is_none() {
        return false;
    }
    if !crate::require(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing (busybox-static)",
    ) {
        return false;
    }
    match unrooted_sandbox::check_user_namespaces() {
        Ok(()) => true,
        Err(e) => crate::require(false, &e.to_string()),
    }
}

/// A running daemon on a private store, with the paths clients need.
pub struct TestDaemon {
    root: tempfile::TempDir,
    child: Option<Child>,
    /// The daemon's uid.
    pub daemon_uid: u32,
    /// The client's uid.
    pub client_uid: u32,
    client_gid: u32,
    daemon_gid: u32,
    /// The third user's uid (see [`OTHER_USER`]).
    pub other_uid: u32,
    other_gid: u32,
    unrooted: PathBuf,
    extra_conf: String,
    daemon_args: Vec<String>,
    daemon_env: Vec<(String, String)>,
    helper: Option<Child>,
}

impl TestDaemon {
    /// Prepares a private store owned by the daemon user (the daemon is not started;
    /// call [`TestDaemon::start`]). `nix_conf` is appended to the daemon's `nix.conf`.
    pub fn new(unrooted: &Path, nix_conf: &str) -> Self {
        let (daemon_uid, daemon_gid) = test_user(DAEMON_USER).expect("daemon test user");
        let (client_uid, client_gid) = test_user(CLIENT_USER).expect("client test user");
        let (other_uid, other_gid) = test_user(OTHER_USER).expect("third test user");
        // Builds run in the id-range mode, the default wherever the host allows it.
        ensure_subids(DAEMON_USER);
        let root = tempfile::Builder::new()
            .prefix("unrooted-daemon-")
            .tempdir()
            .expect("temporary directory");
        // Every user must be able to reach the store (it is world-readable, as /nix/store).
        fs::set_permissions(root.path(), fs::Permissions::from_mode(0o755)).expect("chmod root");
        for (dir, owner) in [
            ("store", daemon_uid),
            ("state", daemon_uid),
            ("log", daemon_uid),
            ("conf", daemon_uid),
            ("client-home", client_uid),
            ("other-home", other_uid),
            ("inputs", 0),
            ("roots-helper", 0),
        ] {
            let p = root.path().join(dir);
            fs::create_dir(&p).expect("mkdir");
            let gid = if owner == daemon_uid {
                daemon_gid
            } else if owner == client_uid {
                client_gid
            } else if owner == other_uid {
                other_gid
            } else {
                0
            };
            chown(&p, Some(owner), Some(gid)).expect("chown");
            let mode = if dir.ends_with("-home") { 0o700 } else { 0o755 };
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).expect("chmod");
        }
        let mut daemon = Self {
            root,
            child: None,
            daemon_uid,
            client_uid,
            client_gid,
            daemon_gid,
            other_uid,
            other_gid,
            unrooted: unrooted.to_path_buf(),
            extra_conf: nix_conf.to_owned(),
            daemon_args: Vec::new(),
            daemon_env: Vec::new(),
            helper: None,
        };
        daemon.write_conf();
        daemon
    }

    fn write_conf(&mut self) {
        let conf = format!(
            "sandbox = false\nsubstituters =\nexperimental-features = nix-command\n{}\n",
            self.extra_conf
        );
        let path = self.root.path().join("conf/nix.conf");
        fs::write(&path, conf).expect("nix.conf");
        chown(&path, Some(self.daemon_uid), Some(self.daemon_gid)).expect("chown nix.conf");
    }

    /// Options given to `unrooted daemon` at its next start (e.g. its connection bounds).
    pub fn set_daemon_args(&mut self, args: &[&str]) {
        self.daemon_args = args.iter().map(|a| (*a).to_owned()).collect();
    }

    /// Environment variables the daemon gets at its next start (e.g. the store
    /// owner's S3 credentials).
    pub fn set_daemon_env(&mut self, vars: &[(&str, &str)]) {
        self.daemon_env = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Replaces the text appended to the daemon's `nix.conf` (read when it starts).
    pub fn set_conf(&mut self, nix_conf: &str) {
        self.extra_conf = nix_conf.to_owned();
        self.write_conf();
    }

    /// Stops the daemon and replaces the store, state and logs with empty ones at the
    /// same locations (the store directory, hence every path, stays the same), so a
    /// test can import what it exported into a store that lacks it. The client's home
    /// and the inputs are kept.
    pub fn reset_store(&mut self) {
        self.kill();
        for dir in ["store", "state", "log"] {
            let p = self.root.path().join(dir);
            let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&p).status();
            fs::remove_dir_all(&p).expect("removing the old store");
            fs::create_dir(&p).expect("mkdir");
            chown(&p, Some(self.daemon_uid), Some(self.daemon_gid)).expect("chown");
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).expect("chmod");
        }
    }

    /// The temporary root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// The store directory.
    pub fn store_dir(&self) -> PathBuf {
        self.root.path().join("store")
    }

    /// The state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.root.path().join("state")
    }

    /// The daemon socket.
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("state/daemon-socket/socket")
    }

    /// The client user's home directory (mode 0700, unreadable to the daemon).
    pub fn client_home(&self) -> PathBuf {
        self.root.path().join("client-home")
    }

    /// The third user's home directory (mode 0700).
    pub fn other_home(&self) -> PathBuf {
        self.root.path().join("other-home")
    }

    /// The roots helper's socket, which the daemon's `nix.conf` names.
    pub fn roots_helper_socket(&self) -> PathBuf {
        self.root.path().join("roots-helper/socket")
    }

    /// Starts the roots helper as root on [`TestDaemon::roots_helper_socket`] (made
    /// mode 0600 and owned by the daemon user) and waits until it listens.
    pub fn start_roots_helper(&mut self) {
        self.stop_roots_helper();
        let socket = self.roots_helper_socket();
        let _ = fs::remove_file(&socket);
        let log = fs::File::create(self.root.path().join("roots-helper.log")).expect("log");
        let child = Command::new(roots_helper_exe())
            .arg("--store-dir")
            .arg(self.store_dir())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--owner-uid", &self.daemon_uid.to_string(), "--listen"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting unrooted-find-roots");
        self.helper = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let owned = fs::symlink_metadata(&socket)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == self.daemon_uid)
                .unwrap_or(false);
            if owned {
                return;
            }
            if let Some(status) = self
                .helper
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "unrooted-find-roots exited with {status}: {}",
                    fs::read_to_string(self.root.path().join("roots-helper.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the roots helper did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the roots helper (by its pid) and removes its socket.
    pub fn stop_roots_helper(&mut self) {
        if let Some(mut child) = self.helper.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.roots_helper_socket());
    }

    /// A directory (mode 0755, owned by the test) for files every user may read, such
    /// as the inputs of `nix-store --add`.
    pub fn inputs(&self) -> PathBuf {
        self.root.path().join("inputs")
    }

    /// A raw connection to the daemon made by the client user: a relay process whose
    /// stdin goes to the socket and whose stdout comes from it (both piped), so a test
    /// can speak the protocol byte by byte as an unprivileged peer. Closing its stdin
    /// half-closes the connection; the relay exits when the daemon closes its end.
    pub fn raw_connection(&self) -> Child {
        const RELAY: &str = r#"
use IO::Socket::UNIX; use Socket;
my $s = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]) or die "connect: $!";
sub put { my ($fh, $b) = @_; my $o = 0;
  while ($o < length $b) { my $n = syswrite($fh, $b, length($b) - $o, $o); return 0 unless $n; $o += $n } 1 }
my $pid = fork() // die "fork: $!";
if ($pid == 0) { my $b; while (sysread(STDIN, $b, 65536)) { put($s, $b) or exit 1 } shutdown($s, 1); exit 0 }
my $b; while (sysread($s, $b, 65536)) { put(\*STDOUT, $b) or last }
kill 'TERM', $pid; waitpid($pid, 0); exit 0;
"#;
        let mut cmd = self.client("perl");
        cmd.args(["-e", RELAY])
            .arg(self.socket())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        cmd.spawn().expect("starting the socket relay")
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    /// Runs a client command (see [`TestDaemon::client`]) and returns its stdout,
    /// panicking with its stderr and the daemon's log when it fails.
    pub fn client_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.client(program).args(args).output().expect("spawning");
        self.expect_ok(&format!("{program} {}", args.join(" ")), &out)
    }

    /// Runs a client command that must fail and returns its stderr.
    pub fn client_err(&self, program: &str, args: &[&str]) -> String {
        Self::expect_err(program, args, self.client(program))
    }

    /// Runs a command as the third user that must fail and returns its stderr.
    pub fn other_err(&self, program: &str, args: &[&str]) -> String {
        Self::expect_err(program, args, self.other(program))
    }

    fn expect_err(program: &str, args: &[&str], mut cmd: Command) -> String {
        let out = cmd.args(args).output().expect("spawning");
        assert!(
            !out.status.success(),
            "{program} {} succeeded but should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs a command as the store owner in local mode (see
    /// [`TestDaemon::owner_local`]) and returns its stdout, panicking on failure.
    pub fn owner_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self
            .owner_local(program)
            .args(args)
            .output()
            .expect("spawning");
        self.expect_ok(&format!("(local) {program} {}", args.join(" ")), &out)
    }

    /// Checks that `out` succeeded and returns its stdout.
    pub fn expect_ok(&self, what: &str, out: &std::process::Output) -> String {
        assert!(
            out.status.success(),
            "{what} failed ({}):\n{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Asserts that `nix-store --verify --check-contents`, run by the store owner in
    /// local mode (without the daemon), finds the store clean.
    pub fn assert_store_clean(&self) {
        let out = self
            .owner_local("nix-store")
            .args(["--verify", "--check-contents"])
            .output()
            .expect("spawning nix-store --verify");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("error") && !stderr.contains("warning"),
            "nix-store --verify --check-contents found problems ({}): {stderr}",
            out.status
        );
    }

    /// The valid paths as Nix sees them in local mode, sorted, one per element.
    pub fn valid_paths_local(&self) -> Vec<String> {
        let mut paths: Vec<String> = self
            .owner_ok("nix", &["path-info", "--all"])
            .lines()
            .map(str::to_owned)
            .collect();
        paths.sort();
        paths
    }

    /// Lines of `/proc/<daemon pid>/status` starting with `key` (e.g. `CapEff`), with
    /// the key removed; the daemon is the process `setpriv` execs into, so the pid is
    /// the child's.
    pub fn proc_status(&self, key: &str) -> String {
        let status = fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("reading the daemon's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(':')))
            .unwrap_or_else(|| panic!("{key} missing from /proc status"))
            .trim()
            .to_owned()
    }

    /// The number of file descriptors the daemon has open.
    pub fn fd_count(&self) -> usize {
        fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// The daemon's resident memory (`VmRSS`) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.proc_status("VmRSS")
            .trim_end_matches("kB")
            .trim()
            .parse()
            .expect("VmRSS in kB")
    }

    /// The roots helper's process id, when it runs.
    pub fn roots_helper_pid(&self) -> Option<u32> {
        self.helper.as_ref().map(Child::id)
    }

    /// Kills the roots helper with SIGKILL (by its pid) and waits for it, leaving its
    /// socket behind as a crashed helper would.
    pub fn kill_roots_helper(&mut self) {
        if let Some(mut child) = self.helper.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The names of the `.unrooted-tmp-*` entries in the store directory.
    pub fn store_temporaries(&self) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(self.store_dir())
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(".unrooted-tmp-"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// The client user's uid and primary gid.
    pub fn client_ids(&self) -> (u32, u32) {
        (self.client_uid, self.client_gid)
    }

    /// The third user's uid and primary gid.
    pub fn other_ids(&self) -> (u32, u32) {
        (self.other_uid, self.other_gid)
    }

    /// A connection to the daemon socket whose peer credentials are `uid`/`gid`
    /// (no supplementary groups), made without a relay process: a short-lived thread
    /// drops its own credentials (Linux credentials are per thread; the thread ends
    /// right after) and connects, and the socket is handed back. The daemon sees an
    /// unprivileged peer, and the test can speak the protocol from its own threads,
    /// which is far cheaper than a process per connection.
    pub fn connect_as(&self, uid: u32, gid: u32) -> std::io::Result<UnixStream> {
        let socket = self.socket();
        std::thread::spawn(move || {
            use rustix::thread::{
                set_thread_groups, set_thread_res_gid, set_thread_res_uid, Gid, Uid,
            };
            set_thread_groups(&[Gid::from_raw(gid)])?;
            let g = Gid::from_raw(gid);
            set_thread_res_gid(g, g, g)?;
            let u = Uid::from_raw(uid);
            set_thread_res_uid(u, u, u)?;
            UnixStream::connect(socket)
        })
        .join()
        .expect("the connecting thread panicked")
    }

    /// The process ids of every descendant of `pid` (children, their children, …),
    /// from the parent links in `/proc/<pid>/stat`.
    pub fn descendants(pid: u32) -> Vec<u32> {
        let mut parent_of: Vec<(u32, u32)> = Vec::new();
        if let Ok(dir) = fs::read_dir("/proc") {
            for e in dir.filter_map(|e| e.ok()) {
                let Some(p) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                    continue;
                };
                let Ok(stat) = fs::read_to_string(format!("/proc/{p}/stat")) else {
                    continue;
                };
                // `pid (comm) state ppid …`: comm may hold spaces and parentheses.
                let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                    continue;
                };
                if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|v| v.parse().ok()) {
                    parent_of.push((p, ppid));
                }
            }
        }
        let mut out = Vec::new();
        let mut frontier = vec![pid];
        while let Some(q) = frontier.pop() {
            for &(p, pp) in &parent_of {
                if pp == q && !out.contains(&p) {
                    out.push(p);
                    frontier.push(p);
                }
            }
        }
        out
    }

    fn env(&self, cmd: &mut Command) {
        let r = self.root.path();
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("NIX_DAEMON_SOCKET_PATH", self.socket());
    }

    /// Starts the daemon as the daemon user and waits for its socket.
    pub fn start(&mut self) {
        self.start_with(Command::new("setpriv"));
    }

    /// Starts the daemon with the capability bounding set the installed unit gives it
    /// with subordinate ids (`CapabilityBoundingSet=CAP_SETUID CAP_SETGID`): the daemon
    /// holds no capability, and a program it executes gains at most those two.
    pub fn start_with_the_units_bounding_set(&mut self) {
        let mut cmd = Command::new("setpriv");
        cmd.arg("--bounding-set=-all,+setuid,+setgid");
        self.start_with(cmd);
    }

    /// Starts the daemon socket-activated, as systemd would: root
    /// (`systemd-socket-activate`) creates and listens on the socket, then becomes the
    /// daemon user and the daemon (`LISTEN_FDS`), so the socket's creator, which
    /// `SO_PEERCRED` names, is root.
    pub fn start_socket_activated(&mut self) {
        let mut cmd = Command::new("systemd-socket-activate");
        cmd.arg("--listen").arg(self.socket());
        // It passes on only the variables named (taking their values from its own,
        // which `start_with` sets).
        for var in [
            "PATH",
            "NIX_STORE_DIR",
            "NIX_STATE_DIR",
            "NIX_LOG_DIR",
            "NIX_CONF_DIR",
            "NIX_DAEMON_SOCKET_PATH",
            "NIX_CONFIG",
            "RUST_LOG",
        ] {
            cmd.args(["-E", var]);
        }
        cmd.arg("setpriv");
        self.start_with(cmd);
    }

    fn start_with(&mut self, mut cmd: Command) {
        cmd.arg(format!("--reuid={}", self.daemon_uid))
            .arg(format!("--regid={}", self.daemon_gid))
            .args(["--init-groups", "--inh-caps=-all", "--"])
            .arg(&self.unrooted)
            .arg("daemon")
            .args(&self.daemon_args);
        self.env(&mut cmd);
        // The helper's socket is in a root-owned directory (its `--listen` mode
        // refuses any other), not at the default `<state>/gc-roots-socket/socket`,
        // which systemd's socket activation serves in a real installation. Given to
        // the daemon alone: the Nix client would warn about a setting it does not know.
        cmd.env(
            "NIX_CONFIG",
            format!(
                "roots-helper-socket = {}\n",
                self.roots_helper_socket().display()
            ),
        );
        cmd.envs(self.daemon_env.iter().map(|(k, v)| (k, v)));
        cmd.env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(self.root.path().join("daemon.log")).expect("log file"));
        let socket = self.socket();
        let _ = fs::remove_file(&socket);
        self.child = Some(cmd.spawn().expect("starting the daemon"));
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("the daemon exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not create {}",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Kills the daemon with SIGKILL and waits for it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What the daemon logged so far.
    pub fn log(&self) -> String {
        fs::read_to_string(self.root.path().join("daemon.log")).unwrap_or_default()
    }

    /// A command run as the client user against the daemon (`NIX_REMOTE=daemon`).
    pub fn client(&self, program: &str) -> Command {
        self.as_user(
            program,
            self.client_uid,
            self.client_gid,
            &self.client_home(),
        )
    }

    /// A command run as the third user (see [`OTHER_USER`]) against the daemon.
    pub fn other(&self, program: &str) -> Command {
        self.as_user(program, self.other_uid, self.other_gid, &self.other_home())
    }

    /// Runs a command as the third user and returns its stdout, panicking on failure.
    pub fn other_ok(&self, program: &str, args: &[&str]) -> String {
        let out = self.other(program).args(args).output().expect("spawning");
        self.expect_ok(&format!("(other) {program} {}", args.join(" ")), &out)
    }

    /// A command run as the daemon user in local mode (no daemon), e.g. to check the
    /// store with `nix-store --verify` as its owner.
    pub fn owner_local(&self, program: &str) -> Command {
        let mut cmd = self.as_user(program, self.daemon_uid, self.daemon_gid, &self.state_dir());
        cmd.env("NIX_REMOTE", "local");
        cmd
    }

    /// A command run as the client user against the daemon with exactly `groups` as
    /// its supplementary groups, whatever the group database lists for it (as after
    /// `newgrp`, or groups a login manager or directory service gave).
    pub fn client_in_groups(&self, program: &str, groups: &[u32]) -> Command {
        let list: Vec<String> = groups.iter().map(u32::to_string).collect();
        self.as_user_in(
            program,
            (self.client_uid, self.client_gid),
            &format!("--groups={}", list.join(",")),
            &self.client_home(),
        )
    }

    fn as_user(&self, program: &str, uid: u32, gid: u32, home: &Path) -> Command {
        self.as_user_in(program, (uid, gid), "--init-groups", home)
    }

    /// `program` as `ids` (uid, gid) with the supplementary groups `groups` says
    /// (a `setpriv` option).
    fn as_user_in(&self, program: &str, ids: (u32, u32), groups: &str, home: &Path) -> Command {
        let (uid, gid) = ids;
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={uid}"))
            .arg(format!("--regid={gid}"))
            .args([groups, "--inh-caps=-all", "--"])
            .arg(program);
        self.env(&mut cmd);
        cmd.env("HOME", home)
            .env("USER", "")
            .env("NIX_REMOTE", "daemon");
        cmd
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        self.kill();
        self.stop_roots_helper();
        // The store is read-only by design; make it deletable for the temp dir's cleanup.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.root.path())
            .status();
    }
}
