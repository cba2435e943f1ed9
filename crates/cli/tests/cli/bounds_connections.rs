//! Resource bounds (issue 9, item 5): 10,000 connections opened by one client user
//! and left idle. The daemon's `--max-connections-per-user` (default 128) closes the
//! extra ones at once, so its file descriptors and threads stay bounded, it survives,
//! another user is served during the flood, and once the idle connections go, the
//! flooding user is served again.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_daemon_tests, ensure_subids, TestDaemon, CLIENT_USER};

/// Opens `$ARGV[1]` connections to the socket `$ARGV[0]`, prints how many connect
/// calls succeeded, then how many are still open a moment later (a refused one reads
/// EOF), and holds them until its stdin closes.
const HOLDER: &str = r#"
use IO::Socket::UNIX; use Socket; use IO::Select;
$| = 1;
my @s; my $n = 0;
for (1 .. $ARGV[1]) {
  my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]);
  if ($c) { push @s, $c; $n++ }
}
print "connected $n\n";
sleep 3;
my $open = 0;
for my $c (@s) {
  my $sel = IO::Select->new($c);
  if ($sel->can_read(0)) { my $b; my $r = sysread($c, $b, 1); $open++ if $r } else { $open++ }
}
print "open $open\n";
<STDIN>;
"#;

fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count()
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn ten_thousand_idle_connections_are_throttled() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    d.start();
    let fds_before = fd_count(d.pid());
    // The holder needs more than 10,000 descriptors: raise its soft limit (the hard
    // limit is inherited from the test; prlimit runs before the drop to the client).
    let mut holder = d.client("prlimit");
    holder
        .args(["--nofile=16384:16384", "perl", "-e", HOLDER])
        .arg(d.socket())
        .arg("10000")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut holder = holder.spawn().expect("starting the connection holder");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let connected = lines.next().unwrap().unwrap();
    let open = lines.next().unwrap().unwrap();
    let open: usize = open.strip_prefix("open ").unwrap().parse().unwrap();
    let fds_during = fd_count(d.pid());
    let threads = d.proc_status("Threads");
    eprintln!(
        "idle connections: {connected}, still open {open}; daemon fds {fds_before} -> {fds_during}, threads {threads}"
    );
    assert!(d.is_running(), "the daemon died: {}", d.log());
    assert!(
        open <= 128,
        "{open} idle connections kept (max-connections-per-user is 128)"
    );
    // Two descriptors per served connection (the socket and its clone for the
    // writer), none for the refused ones.
    let bound = fds_before + 2 * 128 + 16;
    assert!(
        fds_during <= bound,
        "fd usage exploded: {fds_during} > {bound}"
    );
    assert!(
        d.log().contains("refusing a connection"),
        "no log of the throttling"
    );
    // Another user is served while the flood holds its connections.
    let during = d.inputs().join("during.txt");
    std::fs::write(&during, "during the flood\n").unwrap();
    d.other_ok("nix-store", &["--add", during.to_str().unwrap()]);
    // The abuser leaves; the slots come back and it is served again at once.
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    holder.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while fd_count(d.pid()) > fds_before + 8 {
        assert!(Instant::now() < deadline, "connections not released");
        std::thread::sleep(Duration::from_millis(50));
    }
    let file = d.inputs().join("after.txt");
    std::fs::write(&file, "after the flood\n").unwrap();
    d.client_ok("nix-store", &["--add", file.to_str().unwrap()]);
    assert!(d.is_running());
}

/// Like [`HOLDER`], but connection `i` is made with effective uid `i` of a user
/// namespace mapping the user itself to 0 and its subordinate ids to 1 and up
/// (`unshare --map-root-user --map-auto`, through the setuid `newuidmap`): what any
/// user with a range in `/etc/subuid` can do without privilege.
const SUBID_HOLDER: &str = r#"
use IO::Socket::UNIX; use Socket; use IO::Select;
$| = 1;
my @s; my $n = 0;
for my $i (0 .. $ARGV[1] - 1) {
  $> = 0; $> = $i;
  my $c = IO::Socket::UNIX->new(Type => SOCK_STREAM(), Peer => $ARGV[0]);
  if ($c) { push @s, $c; $n++ }
}
$> = 0;
print "connected $n\n";
sleep 3;
my $open = 0;
for my $c (@s) {
  my $sel = IO::Select->new($c);
  if ($sel->can_read(0)) { my $b; my $r = sysread($c, $b, 1); $open++ if $r } else { $open++ }
}
print "open $open\n";
<STDIN>;
"#;

/// Starts `holder` (one of the scripts above, run by the client user through
/// `prefix`), returning the process and its "open" count once it has one.
fn hold(
    d: &TestDaemon,
    prefix: &[&str],
    script: &str,
    count: usize,
) -> (std::process::Child, usize) {
    let mut cmd = d.client("prlimit");
    cmd.arg("--nofile=16384:16384")
        .args(prefix)
        .args(["perl", "-e", script])
        .arg(d.socket())
        .arg(count.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut holder = cmd.spawn().expect("starting the connection holder");
    let mut lines = BufReader::new(holder.stdout.take().unwrap()).lines();
    let connected = lines.next().unwrap().unwrap();
    let open = lines.next().unwrap().unwrap();
    eprintln!("{connected}, {open}");
    let open: usize = open.strip_prefix("open ").unwrap().parse().unwrap();
    (holder, open)
}

/// `nix-store -q --hash` by the third user, which must answer within a second.
fn other_answers_quickly(d: &TestDaemon, path: &str) {
    let t = Instant::now();
    let out = d
        .other("nix-store")
        .args(["-q", "--hash", path])
        .output()
        .unwrap();
    let took = t.elapsed();
    d.expect_ok("(other) nix-store -q --hash during the flood", &out);
    assert!(took < Duration::from_secs(1), "took {took:?}");
}

/// Issue 15, item 5: the client user floods from its own uid and 1,099 of its
/// subordinate uids. Counted per raw uid, that filled all 1,024 connections and
/// every other user got "Connection reset by peer"; charged to the user owning the
/// range, it keeps 128 and another user's query answers within a second.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_flood_from_subordinate_ids_is_charged_to_their_user() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    if ensure_subids(CLIENT_USER).is_none() {
        unrooted_testkit::skip(&format!("no subordinate ids for {CLIENT_USER}"));
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    d.start();
    let f = d.inputs().join("f.txt");
    std::fs::write(&f, "queried during the flood\n").unwrap();
    let path = d.other_ok("nix-store", &["--add", f.to_str().unwrap()]);
    let path = path.trim();
    let (mut holder, open) = hold(
        &d,
        &["unshare", "--map-root-user", "--map-auto"],
        SUBID_HOLDER,
        1100,
    );
    assert!(d.is_running(), "the daemon died: {}", d.log());
    assert!(open <= 128, "{open} connections kept for one user's ids");
    let log = d.log();
    let charged = format!(
        "(a subordinate id of uid {uid}): uid {uid} has 128 open",
        uid = d.client_uid
    );
    assert!(log.contains(&charged), "{log}");
    other_answers_quickly(&d, path);
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    holder.wait().unwrap();
}

/// Issue 15, item 5: the reserve. With 64 connections in all, 8 of them kept for
/// users holding fewer than 4 and no per-user bound below 64, one user flooding
/// cannot take the last 8, and another user's query answers within a second.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_reserve_keeps_room_for_users_holding_few() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    d.set_daemon_args(&[
        "--max-connections",
        "64",
        "--max-connections-per-user",
        "64",
        "--reserved-connections",
        "8",
    ]);
    d.start();
    let f = d.inputs().join("f.txt");
    std::fs::write(&f, "queried during the flood\n").unwrap();
    let path = d.other_ok("nix-store", &["--add", f.to_str().unwrap()]);
    let path = path.trim();
    let (mut holder, open) = hold(&d, &[], HOLDER, 100);
    assert_eq!(open, 56, "the flooder holds all but the reserve");
    assert!(
        d.log().contains("kept for users with fewer than 4"),
        "{}",
        d.log()
    );
    other_answers_quickly(&d, path);
    holder.stdin.take().unwrap().write_all(b"\n").unwrap();
    holder.wait().unwrap();
}
