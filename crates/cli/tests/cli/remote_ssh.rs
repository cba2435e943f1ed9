//! Issue 21, item 2: unrooted as the far side of `ssh-ng://`. A real `sshd` (Debian's
//! openssh-server, on a loopback port with its own host key and configuration, root
//! only because sshd must switch users) lets the SSH user run `unrooted daemon
//! --stdio`, which relays to the test daemon; Debian's Nix 2.8 client, as another
//! user, runs `nix store ping` and `nix copy --to ssh-ng://…` against it. The daemon
//! applies its trust rules to the SSH user exactly as to a local socket client.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

/// The user that logs in over SSH (a login shell, unlike the other test users).
const SSH_USER: &str = "unrooted-test-ssh";

/// A private sshd on 127.0.0.1, killed on drop.
struct Sshd {
    dir: tempfile::TempDir,
    child: Child,
    port: u16,
}

impl Sshd {
    /// Starts sshd letting `SSH_USER` in with `client_pub` only.
    fn start(client_pub: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("unrooted-sshd-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.path().join("host_ed25519");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        fs::write(dir.path().join("authorized_keys"), client_pub).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("sshd_config");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\n\
                 AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin no\nAllowUsers {SSH_USER}\nX11Forwarding no\n\
                 AllowTcpForwarding no\nPrintMotd no\n",
                key = key.display(),
                pid = dir.path().join("sshd.pid").display(),
                keys = dir.path().join("authorized_keys").display(),
            ),
        )
        .unwrap();
        // The privilege-separation directory sshd insists on.
        fs::create_dir_all("/run/sshd").unwrap();
        let child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.path().join("sshd.log")).unwrap())
            .spawn()
            .expect("starting sshd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "sshd did not listen on {port}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { dir, child, port }
    }

    fn public_host_key(&self) -> String {
        fs::read_to_string(self.dir.path().join("host_ed25519.pub")).unwrap()
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The SSH user `unrooted-test-ssh`, created (with a login shell and an unlocked,
/// password-less account, which `UsePAM no` requires) when missing; the trixie
/// tests' `ssh-ng://` use it too (never `test_user`, which would make it with no
/// login shell). Another test may be creating it at the same moment: a `useradd`
/// that fails is followed by a second look.
pub(crate) fn ssh_user() -> Option<(u32, u32)> {
    let exists = || {
        Command::new("id")
            .arg(SSH_USER)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !exists() {
        let _ = Command::new("useradd")
            .args(["--system", "--create-home", "--shell", "/bin/sh"])
            .args(["--password", "*", SSH_USER])
            .status();
    }
    if exists() {
        unrooted_testkit::daemon::test_user(SSH_USER)
    } else {
        None
    }
}

/// What the client needs to reach the store over SSH.
struct Remote {
    sshd: Sshd,
    /// The `ssh-ng://` URI.
    uri: String,
    /// `NIX_SSHOPTS` for the client.
    sshopts: String,
    /// The client's source store (a store of its own at the same store directory).
    local: String,
}

fn setup(d: &TestDaemon) -> Remote {
    let home = d.client_home();
    let (uid, gid) = d.client_ids();
    let ssh_dir = home.join("ssh");
    fs::create_dir(&ssh_dir).unwrap();
    let key = ssh_dir.join("id_ed25519");
    let ok = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let sshd = Sshd::start(&fs::read_to_string(ssh_dir.join("id_ed25519.pub")).unwrap());
    let host_key = sshd.public_host_key();
    let known = ssh_dir.join("known_hosts");
    fs::write(&known, format!("[127.0.0.1]:{} {host_key}", sshd.port)).unwrap();
    for p in [&ssh_dir, &key, &known, &ssh_dir.join("id_ed25519.pub")] {
        chown(p, Some(uid), Some(gid)).unwrap();
    }
    // The remote program: the SSH user's environment names the test daemon's socket
    // (an installed daemon's is the default, so `remote-program` can be `unrooted
    // daemon` there, see docs/install.md).
    let program = d.root().join("remote-program");
    fs::write(
        &program,
        format!(
            "#!/bin/sh\nexport NIX_DAEMON_SOCKET_PATH={}\nexec {} daemon \"$@\"\n",
            d.socket().display(),
            env!("CARGO_BIN_EXE_unrooted")
        ),
    )
    .unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!(
        "ssh-ng://{SSH_USER}@127.0.0.1?remote-program={}&ssh-key={}",
        program.display(),
        key.display()
    );
    let sshopts = format!(
        "-p {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        sshd.port,
        known.display()
    );
    let local = format!(
        "local?store={}&real={h}/real&state={h}/state&log={h}/log",
        d.store_dir().display(),
        h = home.display()
    );
    Remote {
        sshd,
        uri,
        sshopts,
        local,
    }
}

fn client(d: &TestDaemon, r: &Remote, args: &[&str]) -> std::process::Output {
    d.client("nix")
        .env("NIX_SSHOPTS", &r.sshopts)
        .args(["--extra-experimental-features", "nix-command"])
        .args(args)
        .output()
        .expect("running nix")
}

fn ok(d: &TestDaemon, r: &Remote, args: &[&str]) -> String {
    let out = client(d, r, args);
    assert!(
        out.status.success(),
        "nix {} failed:\n{}\n--- sshd ---\n{}\n--- daemon ---\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        r.sshd.log(),
        d.log()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn err(d: &TestDaemon, r: &Remote, args: &[&str]) -> String {
    let out = client(d, r, args);
    assert!(!out.status.success(), "nix {} succeeded", args.join(" "));
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn sshd_available() -> bool {
    unrooted_testkit::require(
        Path::new("/usr/sbin/sshd").exists(),
        "sshd is not installed (apt-get install openssh-server, scripts/setup.sh)",
    )
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn ssh_ng_clients_reach_the_daemon_through_stdio_with_the_ssh_users_trust() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix").is_none() || !sshd_available() {
        return;
    }
    ssh_user().expect("creating the SSH test user");
    // At first the SSH user may not connect at all.
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        "allowed-users = root",
    );
    d.start();
    let r = setup(&d);
    let e = err(&d, &r, &["store", "ping", "--store", &r.uri]);
    assert!(e.contains("cannot open connection"), "{e}");
    assert!(
        d.log()
            .contains(&format!("user '{SSH_USER}' is not allowed to connect")),
        "{}",
        d.log()
    );

    // Allowed (untrusted): the same rules as for a local socket client.
    d.kill();
    d.set_conf("");
    d.start();
    // Nix 2.8 prints what it found on stderr.
    let ping = client(&d, &r, &["store", "ping", "--store", &r.uri]);
    let said = String::from_utf8_lossy(&ping.stderr);
    assert!(ping.status.success(), "{said}\n{}", r.sshd.log());
    assert!(said.contains("Version: 2.8.0 (unrooted "), "{said}");

    // A path of the client's own store (content-addressed, so an untrusted user may
    // copy it without a signature).
    let file = d.client_home().join("hello.txt");
    fs::write(&file, "hello over ssh\n").unwrap();
    let (uid, gid) = d.client_ids();
    chown(&file, Some(uid), Some(gid)).unwrap();
    let added = ok(
        &d,
        &r,
        &[
            "store",
            "add-file",
            "--store",
            &r.local,
            file.to_str().unwrap(),
        ],
    );
    let path = added.trim().to_owned();
    assert!(path.starts_with(d.store_dir().to_str().unwrap()), "{path}");
    assert!(!d.valid_paths_local().contains(&path));
    ok(&d, &r, &["copy", "--from", &r.local, "--to", &r.uri, &path]);
    assert!(d.valid_paths_local().contains(&path));
    assert_eq!(
        fs::read_to_string(PathBuf::from(&path)).unwrap(),
        "hello over ssh\n"
    );
    d.assert_store_clean();

    // And back (QueryPathInfo, NarFromPath over the relay) into another store of
    // the client's.
    let back = r
        .local
        .replace("/real&", "/real2&")
        .replace("/state&", "/state2&");
    ok(&d, &r, &["copy", "--from", &r.uri, "--to", &back, &path]);
    let home = d.client_home();
    let copied = home
        .join("real2")
        .join(Path::new(&path).file_name().unwrap());
    assert_eq!(fs::read_to_string(copied).unwrap(), "hello over ssh\n");

    // No daemon: the relay says so instead of serving the store itself.
    d.kill();
    let e = err(&d, &r, &["store", "ping", "--store", &r.uri]);
    assert!(e.contains("connecting to the unrooted daemon"), "{e}");
}
