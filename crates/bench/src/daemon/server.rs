//! The daemons under measurement: each on its own private store, started as its
//! owner, with the clients and connections the workloads use.

use std::fs;
use std::io::{BufReader, BufWriter};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use unrooted_format::StoreDir;
use unrooted_protocol::client::Client;
use unrooted_protocol::request::ClientSettings;
use unrooted_protocol::ProtocolVersion;
use unrooted_testkit::daemon::{test_user, DAEMON_USER};

use crate::mem;

pub(crate) type Conn = Client<BufReader<UnixStream>, BufWriter<UnixStream>>;

/// A daemon on its own private store under the benchmark's temporary root.
pub(crate) struct Daemon {
    pub(crate) label: &'static str,
    pub(crate) root: PathBuf,
    pub(crate) store_dir: StoreDir,
    child: Option<Child>,
}

impl Daemon {
    /// Prepares `root` (store, state, log and conf directories owned by `owner`, a
    /// `nix.conf` with `extra_conf`), starts `program` there as `owner` (through
    /// `setpriv` when that is another user) with `extra_env` added to the environment
    /// the clients get too, and waits for its socket.
    pub(crate) fn start(
        label: &'static str,
        root: PathBuf,
        program: &[&Path],
        owner: Option<(u32, u32)>,
        extra_conf: &str,
        extra_env: &[(&str, String)],
    ) -> anyhow::Result<Self> {
        for dir in ["", "store", "state", "log", "conf", "client-home"] {
            let p = root.join(dir);
            fs::create_dir_all(&p)?;
            // Every user must be able to reach the store (world-readable, as /nix/store).
            fs::set_permissions(&p, fs::Permissions::from_mode(0o755))?;
            if let (Some((uid, gid)), false) = (owner, dir.is_empty() || dir == "client-home") {
                chown(&p, Some(uid), Some(gid))?;
            }
        }
        let conf = root.join("conf/nix.conf");
        fs::write(
            &conf,
            format!("sandbox = false\nsubstituters =\n{extra_conf}"),
        )?;
        if let Some((uid, gid)) = owner {
            chown(&conf, Some(uid), Some(gid))?;
        }
        let store = root.join("store");
        let store_dir = StoreDir::new(store.to_str().context("non-UTF-8 temporary directory")?)?;
        let mut d = Self {
            label,
            root,
            store_dir,
            child: None,
        };
        let mut cmd = match owner {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "--inh-caps=-all", "--"])
                    .args(program);
                c
            }
            None => {
                let mut c = Command::new(program[0]);
                c.args(&program[1..]);
                c
            }
        };
        d.env(&mut cmd);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        cmd.env("HOME", d.root.join("state"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(d.root.join("daemon.log"))?);
        d.child = Some(
            cmd.spawn()
                .with_context(|| format!("starting {label}: {cmd:?}"))?,
        );
        let socket = d.socket();
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("{label} exited with {status}: {}", d.log());
            }
            ensure!(
                Instant::now() < deadline,
                "{label} did not create {}: {}",
                socket.display(),
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(d)
    }

    pub(crate) fn socket(&self) -> PathBuf {
        self.root.join("state/daemon-socket/socket")
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.root.join("daemon.log")).unwrap_or_default()
    }

    /// The environment that points Nix (daemon or client) at this store.
    fn env(&self, cmd: &mut Command) {
        let r = &self.root;
        cmd.env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("NIX_DAEMON_SOCKET_PATH", self.socket())
            // The logs go to files, read by people and by this benchmark.
            .env("NO_COLOR", "1");
    }

    /// A real Nix client (run as the benchmark's user) talking to this daemon.
    pub(crate) fn nix_client(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        self.env(&mut cmd);
        cmd.env("HOME", self.root.join("client-home"))
            .env("NIX_REMOTE", "daemon");
        cmd
    }

    /// A new connection after the handshake and SetOptions, as `nix-store` opens one.
    pub(crate) fn connect(&self) -> anyhow::Result<Conn> {
        let s = UnixStream::connect(self.socket())
            .with_context(|| format!("connecting to {}", self.label))?;
        let r = BufReader::new(s.try_clone()?);
        let w = BufWriter::new(s);
        let mut c = Client::handshake(r, w, self.store_dir.clone(), ProtocolVersion::NIX_2_8)
            .with_context(|| format!("handshake with {}", self.label))?;
        c.set_options(&ClientSettings::default())?;
        Ok(c)
    }

    /// Kills the daemon and its connection processes (nix-daemon forks one per
    /// connection), children first so none is re-parented and left behind.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            for pid in mem::descendants(child.id()) {
                kill(pid);
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

fn kill(pid: u32) {
    if let Some(pid) = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
    }
}

/// Both daemons, stopped before their temporary root is removed.
pub(crate) struct Daemons {
    pub(crate) list: Vec<Daemon>,
    pub(crate) tmp: tempfile::TempDir,
}

impl Drop for Daemons {
    fn drop(&mut self) {
        for d in &mut self.list {
            d.kill();
        }
        // Store objects are read-only by design; without root they can only be
        // removed once made writable again.
        let _ = Command::new("chmod")
            .args(["-R", "u+w"])
            .arg(self.tmp.path())
            .status();
    }
}

impl Daemons {
    /// No daemon yet, under a new temporary root (mode 0755, so every user reaches the
    /// stores, as `/nix/store`) named after `prefix`.
    pub(crate) fn new(prefix: &str) -> anyhow::Result<Self> {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            list: Vec::new(),
            tmp,
        })
    }

    /// Prints the last lines of each daemon's log to stderr (after a failure).
    pub(crate) fn print_log_tails(&self) {
        for d in &self.list {
            eprintln!("--- {} log (tail) ---", d.label);
            let log = d.log();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// The uid and gid unrooted runs as: the unprivileged [`DAEMON_USER`] (created if
/// missing) when the benchmark runs as root, else the benchmark's own user (`None`).
pub(crate) fn daemon_owner() -> anyhow::Result<Option<(u32, u32)>> {
    if rustix::process::geteuid().is_root() {
        Ok(Some(test_user(DAEMON_USER).with_context(|| {
            format!("creating the user {DAEMON_USER}")
        })?))
    } else {
        Ok(None)
    }
}

/// The version line of `nix-daemon`.
pub(crate) fn nix_version(nix_daemon: &Path) -> String {
    Command::new(nix_daemon)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}
