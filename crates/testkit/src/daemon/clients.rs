//! Commands and connections as the test users: the Nix client against the daemon,
//! the store owner in local mode, raw protocol connections.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::TestDaemon;

impl TestDaemon {
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

    /// A command run as the client user against the daemon (`NIX_REMOTE=daemon`).
    pub fn client(&self, program: &str) -> Command {
        self.as_user(
            program,
            self.client_uid,
            self.client_gid,
            &self.client_home(),
        )
    }

    /// A command run as the third user (see [`OTHER_USER`](super::OTHER_USER)) against the daemon.
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
