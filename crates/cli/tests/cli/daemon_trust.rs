//! Trust with real users: `allowed-users` refusing a user, `@group` by the kernel's
//! supplementary groups, and uids without an account, with the identities the kernel
//! reports. (What an untrusted client is refused is tested in process, as any user,
//! in `crates/daemon/tests/ops/trust.rs`.)

use std::fs;

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn allowed_users_refusal() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        "allowed-users = root @nosuchgroup",
    );
    fs::write(d.inputs().join("f"), "f\n").unwrap();
    d.start();
    let f = d.inputs().join("f");
    let err = d.client_err("nix-store", &["--add", f.to_str().unwrap()]);
    assert!(
        err.contains("cannot open connection to remote store 'daemon'"),
        "{err}"
    );
    let err = d.client_err("nix", &["store", "ping"]);
    assert!(
        err.contains("cannot open connection to remote store 'daemon'"),
        "{err}"
    );
    assert!(
        d.log()
            .contains("user 'unrooted-test-client' is not allowed to connect to the Nix daemon"),
        "{}",
        d.log()
    );
    assert_eq!(d.valid_paths_local(), Vec::<String>::new());
}

/// Issue 15, item 6: `@group` in `allowed-users` and `trusted-users` matches the
/// supplementary groups the kernel reports for the connection (`SO_PEERGROUPS`),
/// not only the primary group or the members the group database lists.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn at_group_matches_the_kernels_supplementary_groups() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    // A group that lists nobody: membership comes from the process alone.
    let group = "unrooted-test-peers";
    let _ = std::process::Command::new("groupadd")
        .args(["-f", "--system", group])
        .status();
    let getent = std::process::Command::new("getent")
        .args(["group", group])
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&getent.stdout).into_owned();
    let gid: u32 = line.split(':').nth(2).unwrap().parse().unwrap();
    assert!(
        line.trim_end().ends_with(':'),
        "{group} lists members: {line}"
    );
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        &format!("allowed-users = @{group}\ntrusted-users = root"),
    );
    fs::write(d.inputs().join("f"), "f\n").unwrap();
    d.start();
    let f = d.inputs().join("f");
    let f = f.to_str().unwrap();
    // Without the group: refused.
    let err = d.client_err("nix-store", &["--add", f]);
    assert!(err.contains("cannot open connection"), "{err}");
    // With it as a supplementary group: admitted, though /etc/group lists nobody.
    let (_, client_gid) = d.client_ids();
    let out = d
        .client_in_groups("nix-store", &[client_gid, gid])
        .args(["--add", f])
        .output()
        .unwrap();
    let added = d.expect_ok("nix-store --add in the group", &out);
    assert!(added.trim().ends_with("-f"), "{added}");
    // Trusted by the same means: a trusted client may repair.
    d.kill();
    d.set_conf(&format!("allowed-users = *\ntrusted-users = @{group}"));
    d.start();
    let err = d.client_err("nix-store", &["--verify", "--repair"]);
    assert!(err.contains("not privileged to repair"), "{err}");
    let out = d
        .client_in_groups("nix-store", &[client_gid, gid])
        .args(["--verify", "--repair"])
        .output()
        .unwrap();
    d.expect_ok("trusted nix-store --verify --repair", &out);
}

/// Issue 15, item 5: `allowed-users = *` admits accounts and users' subordinate ids
/// (charged to their user), but not a uid that is neither (only root can give a
/// process one); listed by number, such a uid is admitted. The first bytes of the
/// handshake tell: the daemon answers an admitted peer, closes on a refused one.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_uid_without_an_account_must_be_listed() {
    use std::io::{Read, Write};
    use unrooted_testkit::daemon::{ensure_subids, CLIENT_USER};
    if !can_run_daemon_tests() {
        return;
    }
    let Some((sub_start, _)) = ensure_subids(CLIENT_USER) else {
        return;
    };
    let stray = 3_999_999_000u32;
    let answered = |d: &TestDaemon, uid: u32| {
        let mut s = d.connect_as(uid, uid).unwrap();
        let _ = s.write_all(&0x6e697863u64.to_le_bytes());
        s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
            .unwrap();
        let mut magic = [0u8; 8];
        s.read_exact(&mut magic).is_ok()
    };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "allowed-users = *");
    d.start();
    assert!(!answered(&d, stray), "a stray uid was admitted by '*'");
    assert!(
        d.log()
            .contains(&format!("user '{stray}' is not allowed to connect")),
        "{}",
        d.log()
    );
    assert!(answered(&d, sub_start + 7), "a subordinate id was refused");
    assert!(answered(&d, d.client_ids().0), "an account was refused");
    // Subordinate ids get no per-user directories.
    let per_user = d.state_dir().join("profiles/per-user");
    assert!(!per_user.join((sub_start + 7).to_string()).exists());
    d.kill();
    d.set_conf(&format!("allowed-users = * {stray}"));
    d.start();
    assert!(answered(&d, stray), "a listed stray uid was refused");
}
