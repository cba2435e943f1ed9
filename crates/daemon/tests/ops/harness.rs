//! The harness of the operation tests: a private store under a temporary directory,
//! the daemon serving it in-process as the current user
//! ([`unrooted_daemon::testing::InProcessDaemon`]), our protocol client and the real
//! Nix 2.8 client (`NIX_REMOTE=unix://<socket>`) against it.
//!
//! Runs as any user: nothing here needs root, other users or subordinate ids. The
//! single-id sandbox needs unprivileged user namespaces and Debian's static busybox
//! (the builders' `/bin/sh`); under `CI=true` their absence fails the test.

use std::fs;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use unrooted_daemon::testing::InProcessDaemon;
use unrooted_daemon::trust::Peer;
use unrooted_daemon::Config;
use unrooted_format::{StoreDir, StorePath};
use unrooted_protocol::client::Client;
use unrooted_protocol::{ProtocolError, ProtocolVersion};

/// How builders run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `sandbox = false`: builders run as the store owner, unsandboxed.
    Unsandboxed,
    /// `sandbox = true`, `auto-allocate-uids = false`: each builder in its own user
    /// namespace, its ids mapped to the store owner's (no subordinate ids needed).
    SingleId,
}

/// A protocol client over a socket.
pub type SocketClient = Client<UnixStream, UnixStream>;

/// A daemon on a private store.
pub struct Harness {
    root: tempfile::TempDir,
    daemon: Option<InProcessDaemon>,
    mode: Mode,
    extra_conf: String,
}

/// The daemon's `nix.conf` before the mode's and the test's lines.
const BASE_CONF: &str = "substituters =\nexperimental-features = nix-command\n\
                         unrooted-gc-without-roots-helper = true\nmax-jobs = 4\n";

/// The client's `nix.conf`.
const CLIENT_CONF: &str = "substituters =\nexperimental-features = nix-command\n";

/// The `nix.conf` of the Nix tools in local mode (never sent to the daemon: a trusted
/// client's settings would override the daemon's `sandbox`).
const LOCAL_CONF: &str = "substituters =\nexperimental-features = nix-command\n\
                          sandbox = false\nbuild-users-group =\n";

impl Harness {
    /// A started daemon on an empty store; `None` (the test skips) when `mode` cannot
    /// run here outside CI.
    pub fn new(mode: Mode) -> Option<Self> {
        Self::with_conf(mode, "")
    }

    /// As [`Harness::new`], with `extra_conf` appended to the daemon's `nix.conf`.
    pub fn with_conf(mode: Mode, extra_conf: &str) -> Option<Self> {
        if mode == Mode::SingleId && !unrooted_testkit::daemon::can_sandbox_as_this_user() {
            return None;
        }
        let root = tempfile::Builder::new()
            .prefix("unrooted-ops-")
            .tempdir()
            .expect("temporary directory");
        for dir in [
            "store",
            "state",
            "log",
            "conf",
            "client-conf",
            "local-conf",
            "home",
            "inputs",
        ] {
            fs::create_dir(root.path().join(dir)).expect("mkdir");
        }
        fs::write(root.path().join("client-conf/nix.conf"), CLIENT_CONF).expect("nix.conf");
        fs::write(root.path().join("local-conf/nix.conf"), LOCAL_CONF).expect("nix.conf");
        let mut h = Self {
            root,
            daemon: None,
            mode,
            extra_conf: extra_conf.to_owned(),
        };
        h.start();
        Some(h)
    }

    fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let r = self.root.path();
        vec![
            ("NIX_STORE_DIR", r.join("store")),
            ("NIX_STATE_DIR", r.join("state")),
            ("NIX_LOG_DIR", r.join("log")),
            ("NIX_CONF_DIR", r.join("conf")),
            ("NIX_DAEMON_SOCKET_PATH", self.socket()),
        ]
    }

    /// (Re)starts the daemon with the current configuration.
    pub fn start(&mut self) {
        self.daemon = None;
        let mode_conf = match self.mode {
            Mode::Unsandboxed => "sandbox = false\n",
            Mode::SingleId => {
                "sandbox = true\nauto-allocate-uids = false\nsandbox-paths = /bin/sh=/bin/busybox\n"
            }
        };
        let conf = format!("{BASE_CONF}{mode_conf}{}\n", self.extra_conf);
        fs::write(self.root.path().join("conf/nix.conf"), conf).expect("nix.conf");
        let env = self.env();
        let config = Config::load(|k| {
            env.iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| v.to_string_lossy().into_owned())
        })
        .expect("loading the configuration");
        // The test binary stands for the daemon's executable unless builders run in
        // the sandbox, whose helper must be a real one.
        let exe = match self.mode {
            Mode::Unsandboxed => std::env::current_exe().expect("current exe"),
            Mode::SingleId => sandbox_helper_dir().join("unrooted"),
        };
        self.daemon = Some(InProcessDaemon::start(config, &exe).expect("starting the daemon"));
    }

    /// Stops the daemon and replaces the store, state and logs with empty ones at the
    /// same places (the store directory, hence every path, stays the same), then
    /// starts it again with `extra_conf`: a test can import what it exported into a
    /// store that lacks it.
    pub fn reset_store(&mut self, extra_conf: &str) {
        self.daemon = None;
        for dir in ["store", "state", "log"] {
            let p = self.root.path().join(dir);
            let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&p).status();
            fs::remove_dir_all(&p).expect("removing the old store");
            fs::create_dir(&p).expect("mkdir");
        }
        self.restart_with(extra_conf);
    }

    /// Replaces the test's lines of the daemon's `nix.conf` and restarts it.
    pub fn restart_with(&mut self, extra_conf: &str) {
        extra_conf.clone_into(&mut self.extra_conf);
        self.start();
    }

    /// The daemon.
    pub fn daemon(&self) -> &InProcessDaemon {
        self.daemon.as_ref().expect("the daemon runs")
    }

    /// The temporary root.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A directory for the test's own files.
    pub fn inputs(&self) -> PathBuf {
        self.root.path().join("inputs")
    }

    /// The store directory.
    pub fn store_dir(&self) -> StoreDir {
        StoreDir::new(self.root.path().join("store").to_str().expect("UTF-8 path"))
            .expect("store dir")
    }

    /// The socket.
    pub fn socket(&self) -> PathBuf {
        self.root.path().join("state/daemon-socket/socket")
    }

    /// A store path of this store from its full text.
    pub fn path(&self, text: &str) -> StorePath {
        self.store_dir()
            .parse_path(text.trim())
            .unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    /// A protocol client connected over the socket, as whom the kernel names (the
    /// current user, the store owner: trusted) unless
    /// [`InProcessDaemon::set_socket_peer`] chose someone else.
    pub fn client(&self) -> SocketClient {
        let s = UnixStream::connect(self.socket()).expect("connecting");
        self.handshake(s).expect("handshake")
    }

    /// A protocol client connected as `peer` (see
    /// [`InProcessDaemon::connect_as`]): the handshake fails when `peer` is refused.
    pub fn client_as(&self, peer: Peer) -> Result<SocketClient, ProtocolError> {
        let s = self.daemon().connect_as(peer).expect("socket pair");
        self.handshake(s)
    }

    /// A protocol client at protocol 1.38 announcing `features` (Nix 2.35 names
    /// two), connected as the current user, with its socket to write raw requests
    /// on.
    pub fn client_with_features(&self, features: &[&str]) -> (SocketClient, UnixStream) {
        let s = UnixStream::connect(self.socket()).expect("connecting");
        let r = s.try_clone().expect("clone");
        let raw = s.try_clone().expect("clone");
        let features = features.iter().map(|f| (*f).to_owned()).collect();
        let c = Client::handshake_with_features(
            r,
            s,
            self.store_dir(),
            ProtocolVersion::new(1, 38),
            &features,
        )
        .expect("handshake");
        (c, raw)
    }

    fn handshake(&self, s: UnixStream) -> Result<SocketClient, ProtocolError> {
        let r = s.try_clone().expect("clone");
        Client::handshake(r, s, self.store_dir(), ProtocolVersion::RECOMMENDED)
    }

    /// The real Nix client `program` against the daemon, or `None` (the test skips)
    /// when it is not installed outside CI.
    pub fn nix(&self, program: &str) -> Option<Command> {
        let exe = unrooted_testkit::nix_tool(program)?;
        let mut cmd = Command::new(exe);
        let r = self.root.path();
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("client-conf"))
            .env("HOME", r.join("home"))
            .env(
                "NIX_REMOTE",
                format!("unix://{}", self.socket().to_str().expect("UTF-8")),
            );
        Some(cmd)
    }

    /// The real Nix client in local mode on the same store (no daemon), as the store
    /// owner.
    pub fn local(&self, program: &str) -> Option<Command> {
        let mut cmd = self.nix(program)?;
        cmd.env("NIX_REMOTE", "local")
            .env("NIX_CONF_DIR", self.root.path().join("local-conf"));
        Some(cmd)
    }

    /// Runs `program args…` against the daemon; its stdout, or a panic with its
    /// stderr.
    pub fn nix_ok(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.nix(program).expect("checked by the caller");
        expect_ok(program, args, &cmd.args(args).output().expect("spawning"))
    }

    /// Runs `program args…` against the daemon, which must fail; its stderr.
    pub fn nix_err(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.nix(program).expect("checked by the caller");
        expect_err(program, args, &cmd.args(args).output().expect("spawning"))
    }

    /// Runs `program args…` in local mode; its stdout.
    pub fn local_ok(&self, program: &str, args: &[&str]) -> String {
        let mut cmd = self.local(program).expect("checked by the caller");
        expect_ok(program, args, &cmd.args(args).output().expect("spawning"))
    }

    /// Writes `text` to `inputs/name` and returns its path.
    pub fn input(&self, name: &str, text: &str) -> String {
        let p = self.inputs().join(name);
        fs::write(&p, text).expect("writing an input");
        p.to_str().expect("UTF-8").to_owned()
    }

    /// The valid paths, as Nix sees them in local mode, sorted.
    pub fn valid_paths_local(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .local_ok("nix", &["path-info", "--all"])
            .lines()
            .map(str::to_owned)
            .collect();
        v.sort();
        v
    }

    /// Asserts that `nix-store --verify --check-contents` in local mode finds the
    /// store clean.
    pub fn assert_store_clean(&self) {
        let out = self
            .local("nix-store")
            .expect("checked by the caller")
            .args(["--verify", "--check-contents"])
            .output()
            .expect("spawning");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("error") && !stderr.contains("warning"),
            "nix-store --verify --check-contents: {stderr}"
        );
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.daemon = None;
        // The store is read-only by design; make it deletable.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.root.path())
            .status();
    }
}

/// Panics with the output unless it succeeded; its stdout.
pub fn expect_ok(program: &str, args: &[&str], out: &Output) -> String {
    assert!(
        out.status.success(),
        "{program} {} failed ({}): {}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panics unless the command failed; its stderr.
pub fn expect_err(program: &str, args: &[&str], out: &Output) -> String {
    assert!(
        !out.status.success(),
        "{program} {} succeeded but should have failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The directory holding `unrooted-sandbox`, built once per test process: the
/// sandbox helper that starts builders (the daemon finds it beside its executable).
fn sandbox_helper_dir() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = unrooted_testkit::workspace_binary(
                "unrooted-sandbox",
                "unrooted-sandbox",
                "testkit-sandbox-build",
            );
            exe.parent().expect("a directory").to_path_buf()
        })
        .clone()
}

/// A peer with an account other than the store owner's: `nobody` (65534).
pub fn nobody() -> Peer {
    InProcessDaemon::peer(1, 65534, 65534)
}

/// Sorted lines.
pub fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}
