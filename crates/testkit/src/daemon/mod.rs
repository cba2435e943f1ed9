//! A daemon under test: `unrooted daemon` started as an unprivileged user on a private
//! store, and the real Nix client run as another unprivileged user against it.
//!
//! Tests run as root only to set this up (create the users, hand the store to the
//! daemon's user, drop privileges with `setpriv`); nothing of the daemon or the client
//! runs as root. The one exception is the privileged roots helper
//! (`unrooted-find-roots`), which garbage collection tests start as root, as an
//! administrator would (see [`TestDaemon::start_roots_helper`]).

mod clients;
mod inspect;
mod roots_helper;
mod users;

pub use roots_helper::roots_helper_exe;
pub use users::{
    can_run_daemon_tests, can_run_sandboxed_builds, can_sandbox_as_this_user, ensure_subids,
    is_root, test_user, CLIENT_USER, DAEMON_USER, OTHER_USER, TEST_SUBID_COUNT,
};

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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

    /// A directory (mode 0755, owned by the test) for files every user may read, such
    /// as the inputs of `nix-store --add`.
    pub fn inputs(&self) -> PathBuf {
        self.root.path().join("inputs")
    }

    /// Whether the daemon process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
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
