//! The second client of the test suite (issue 19): Debian 13's Nix 2.26 (`nix-bin`),
//! installed in a Debian 13 root that `scripts/trixie-root.sh` makes once per machine
//! with `debootstrap --variant=minbase trixie` (cached in
//! `/var/cache/unrooted-ci/trixie`, or `$UNROOTED_CI_CACHE/trixie`).
//!
//! A client command runs in a private mount namespace (`unshare --mount`) with its root switched (`pivot_root`) to
//! that root, with the test's directories (store, state, socket, homes) bound at the
//! same paths as outside, the host's `/dev`, a fresh `/proc` and the host's user
//! database, then as an unprivileged user (`setpriv`), so it talks to `unrooted daemon`
//! running outside exactly as a 2.26 client on another distribution would. The cached
//! root itself is never written: every mount is in the command's own namespace.
//!
//! Under `CI=true` a missing root is a failure; elsewhere the test skips, saying why.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::daemon::TestDaemon;
use crate::in_ci;

/// Derivations built with busybox's `sh` (the daemon's sandbox binds it at `/bin/sh`)
/// for the workflows of Debian 13's client (`crates/cli/tests/cli/trixie_*.rs`):
/// `hello`, `multi` (three outputs), `dep`, `pkg`, `fails`, `fails2`, then the
/// attributes `extra` adds (lines of `name = …;`).
pub fn workflow_expr(extra: &str) -> String {
    format!("{WORKFLOW_HEAD}{extra}}}\n")
}

/// The text of [`workflow_expr`] up to the attributes a test adds.
const WORKFLOW_HEAD: &str = r#"
let
  mk = name: script: attrs: derivation ({
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" script ];
  } // attrs);
in rec {
  hello = mk "hello" "echo building hello; echo hello > $out" {};
  multi = mk "multi" "echo o > $out; echo d > $dev; echo doc > $doc" {
    outputs = [ "out" "dev" "doc" ];
  };
  dep = mk "dep" "echo ${hello} > $out" {};
  pkg = mk "pkg-1.0" "mkdir -p $out/bin; printf '#!/bin/sh\necho pkg 1.0\n' > $out/bin/pkg; chmod +x $out/bin/pkg" {};
  fails = mk "fails" "echo about to fail; exit 1" {};
  fails2 = mk "fails2" "exit 1" {};
"#;

/// What `scripts/trixie-root.sh` writes into the root's `/.unrooted-root` when done.
const MARKER: &str = ".unrooted-root";

/// Where the trixie root is: `$UNROOTED_TRIXIE_ROOT`, else `$UNROOTED_CI_CACHE/trixie`,
/// else `/var/cache/unrooted-ci/trixie`.
pub fn trixie_root_path() -> PathBuf {
    if let Some(p) = std::env::var_os("UNROOTED_TRIXIE_ROOT") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("UNROOTED_CI_CACHE")
        .filter(|c| !c.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/unrooted-ci"));
    cache.join("trixie")
}

/// The finished trixie root, or `None` (the caller skips) when it is missing or
/// incomplete outside CI; panics under `CI=true`.
pub fn trixie_root() -> Option<PathBuf> {
    let root = trixie_root_path();
    let complete = root.join(MARKER).is_file() && root.join("usr/bin/nix").is_file();
    if !complete {
        assert!(
            !in_ci(),
            "the Debian 13 root {} with Nix 2.26 is missing, but CI=true: run scripts/trixie-root.sh as root",
            root.display()
        );
        eprintln!(
            "skipping: no Debian 13 root with Nix 2.26 at {} (make it with scripts/trixie-root.sh as root)",
            root.display()
        );
        return None;
    }
    Some(root)
}

/// The script run by `unshare --mount`: `$1` the root, `$2` uid, `$3` gid, `$4` the
/// working directory inside, `$5` how many host directories follow, then those
/// directories, then the program and its arguments.
const ENTER: &str = r#"
set -e
root=$1 uid=$2 gid=$3 cwd=$4 n=$5
shift 5
# The root becomes the namespace's root with pivot_root, not a chroot: the kernel
# refuses new user namespaces to a chrooted process, and nix-daemon's sandbox needs them.
mount --bind "$root" "$root"
mount --rbind /dev "$root/dev"
mount -t proc proc "$root/proc"
for f in passwd group; do mount --bind "/etc/$f" "$root/etc/$f"; done
while [ "$n" -gt 0 ]; do
  d=$1; shift; n=$((n - 1))
  [ -d "$root$d" ] || { echo "trixie client: $d has no mount point in $root" >&2; exit 127; }
  mount --rbind "$d" "$root$d"
done
cd "$root"
/usr/sbin/pivot_root . mnt
cd /
umount -l /mnt
exec setpriv --reuid="$uid" --regid="$gid" --init-groups --inh-caps=-all -- \
  sh -c 'cd "$0" && exec "$@"' "$cwd" "$@"
"#;

/// A command that runs `program` of the trixie root as `uid`/`gid` in the root, with
/// each of `host_dirs` bound at its own path (a top-level directory such as `/tmp`,
/// which must exist in the root), `cwd` as the working directory, and the command's
/// environment as given by the caller (nothing else is inherited: the environment is
/// cleared).
pub fn trixie_command(
    root: &Path,
    ids: (u32, u32),
    host_dirs: &[PathBuf],
    cwd: &Path,
    program: &str,
) -> Command {
    let mut cmd = Command::new("unshare");
    cmd.args([
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        ENTER,
        "sh",
    ])
    .arg(root)
    .arg(ids.0.to_string())
    .arg(ids.1.to_string())
    .arg(cwd)
    .arg(host_dirs.len().to_string())
    .args(host_dirs)
    .arg(program);
    cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
    cmd
}

/// The top-level directory holding `path` (`/tmp` for `/tmp/unrooted-daemon-x/store`).
pub fn top_level(path: &Path) -> PathBuf {
    let mut it = path.components();
    let mut top = PathBuf::new();
    if let Some(c) = it.next() {
        top.push(c);
    }
    if let Some(c) = it.next() {
        top.push(c);
    }
    top
}

impl TestDaemon {
    /// `program` of the trixie root (Nix 2.26) run as the client user against this
    /// daemon (`NIX_REMOTE=daemon`), with the same `NIX_*` directories as
    /// [`TestDaemon::client`], in the client's home.
    pub fn trixie_client(&self, root: &Path, program: &str) -> Command {
        let (uid, gid) = self.client_ids();
        self.trixie_as(root, (uid, gid), &self.client_home(), program)
    }

    /// `program` of the trixie root run as the third user against this daemon.
    pub fn trixie_other(&self, root: &Path, program: &str) -> Command {
        self.trixie_as(root, self.other_ids(), &self.other_home(), program)
    }

    /// `program` of the trixie root run as `ids` with `home`, against this daemon.
    pub fn trixie_as(&self, root: &Path, ids: (u32, u32), home: &Path, program: &str) -> Command {
        let r = self.root();
        let mut cmd = trixie_command(root, ids, &[top_level(r)], home, program);
        cmd.env("NIX_STORE_DIR", self.store_dir())
            .env("NIX_STATE_DIR", self.state_dir())
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("NIX_DAEMON_SOCKET_PATH", self.socket())
            .env("NIX_REMOTE", "daemon")
            .env("HOME", home)
            .env("USER", "")
            .env("TERM", "dumb");
        cmd
    }

    /// Runs a trixie client command and returns its stdout, panicking with its stderr
    /// and the daemon's log when it fails.
    pub fn trixie_ok(&self, root: &Path, program: &str, args: &[&str]) -> String {
        let out = self
            .trixie_client(root, program)
            .args(args)
            .output()
            .expect("spawning the trixie client");
        self.expect_ok(&format!("(nix 2.26) {program} {}", args.join(" ")), &out)
    }

    /// Runs a trixie client command that must fail and returns its stderr.
    pub fn trixie_err(&self, root: &Path, program: &str, args: &[&str]) -> String {
        let out = self
            .trixie_client(root, program)
            .args(args)
            .output()
            .expect("spawning the trixie client");
        assert!(
            !out.status.success(),
            "(nix 2.26) {program} {} succeeded but should have failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }
}

/// Debian 13's own `nix-daemon` 2.26, run from the trixie root as the daemon's user
/// (an ordinary user, as an administrator could run it since Nix 2.14 keeps profiles
/// client-side) on a [`TestDaemon`]'s store, state and socket: the competitor every
/// workflow is compared with. Start it after [`TestDaemon::reset_store`] (or instead of
/// [`TestDaemon::start`]) so both daemons serve identical, same-path stores. Killed (by
/// its pid) when dropped.
pub struct TrixieNixDaemon {
    child: std::process::Child,
    log: PathBuf,
}

impl TrixieNixDaemon {
    /// Starts `nix-daemon` for `d` and waits for its socket.
    pub fn start(d: &TestDaemon, root: &Path) -> Self {
        let ids = crate::daemon::test_user(crate::daemon::DAEMON_USER).expect("daemon user");
        Self::start_as(d, root, ids)
    }

    /// Starts `nix-daemon` for `d` as root (as Debian's `nix-setup-systemd` runs it),
    /// with no capability dropped, and waits for its socket.
    pub fn start_as_root(d: &TestDaemon, root: &Path) -> Self {
        Self::start_as(d, root, (0, 0))
    }

    fn start_as(d: &TestDaemon, root: &Path, (uid, gid): (u32, u32)) -> Self {
        let r = d.root();
        let log = r.join("nix-daemon.log");
        let mut cmd = trixie_command(
            root,
            (uid, gid),
            &[top_level(r)],
            &d.state_dir(),
            "nix-daemon",
        );
        cmd.env("NIX_STORE_DIR", d.store_dir())
            .env("NIX_STATE_DIR", d.state_dir())
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("NIX_DAEMON_SOCKET_PATH", d.socket())
            .env("HOME", d.state_dir())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("nix-daemon log"));
        let socket = d.socket();
        let _ = std::fs::remove_file(&socket);
        if let Some(parent) = socket.parent() {
            std::fs::create_dir_all(parent).expect("socket directory");
            let _ = std::os::unix::fs::chown(parent, Some(uid), Some(gid));
        }
        let mut child = cmd.spawn().expect("starting nix-daemon");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while !socket.exists() {
            if let Some(status) = child.try_wait().ok().flatten() {
                panic!(
                    "nix-daemon exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nix-daemon made no socket"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { child, log }
    }

    /// What `nix-daemon` logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for TrixieNixDaemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
