//! Trust: what an untrusted client (an ordinary user, not in `trusted-users`) is
//! refused, that each refusal is a clear error and leaves the store untouched, and
//! that trusted keys, trusted users and `allowed-users` work as in Nix 2.8.

use std::fs;

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep" "echo dep > $out";
  top = mk "top" "echo ${dep} ${./src.txt} > $out";
}
"#;

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn untrusted_clients() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let i = d.inputs();
    fs::write(i.join("src.txt"), "source\n").unwrap();
    fs::write(i.join("expr.nix"), EXPR).unwrap();
    let expr = i.join("expr.nix").to_string_lossy().into_owned();
    let top = d.owner_ok("nix-build", &[&expr, "-A", "top", "--no-out-link"]);
    let top = top.trim().to_owned();
    // A signing key; the owner signs the closure in local mode.
    let (sk, pk) = (i.join("sk"), i.join("pk"));
    let keygen = std::process::Command::new("nix-store")
        .args(["--generate-binary-cache-key", "test-key-1"])
        .args([&sk, &pk])
        .status()
        .unwrap();
    assert!(keygen.success());
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&sk, fs::Permissions::from_mode(0o644)).unwrap();
    d.owner_ok(
        "nix",
        &["store", "sign", "-r", "-k", sk.to_str().unwrap(), &top],
    );
    let pk = fs::read_to_string(&pk).unwrap();
    d.start();
    let closure = lines(&d.client_ok("nix-store", &["-q", "--requisites", &top]));
    let src = closure
        .iter()
        .find(|p| p.ends_with("-src.txt"))
        .unwrap()
        .clone();
    let hashes = d.client_ok("nix-store", &["-q", "--hash", &top]);
    let mut export_args = vec!["--export".to_owned()];
    export_args.extend(closure.iter().cloned());
    let export = d.client("nix-store").args(&export_args).output().unwrap();
    d.expect_ok("nix-store --export", &export);
    let export_file = i.join("closure.export");
    fs::write(&export_file, &export.stdout).unwrap();
    let cache = format!("file://{}/cache", d.client_home().display());
    d.client_ok("nix", &["copy", "--to", &cache, &top]);

    // Repairs are refused, and change nothing.
    let err = d.client_err("nix-store", &["--verify", "--check-contents", "--repair"]);
    assert!(
        err.contains("you are not privileged to repair paths"),
        "{err}"
    );
    let err = d.client_err("nix-store", &["--realise", "--repair", &src]);
    assert!(
        err.contains("repairing is not allowed because you are not in 'trusted-users'"),
        "{err}"
    );

    // An empty store that requires signatures and trusts no key.
    d.reset_store();
    d.start();
    let empty: Vec<String> = Vec::new();
    let import = |d: &TestDaemon, extra: &[&str]| {
        d.client("nix-store")
            .args(extra)
            .arg("--import")
            .stdin(fs::File::open(&export_file).unwrap())
            .output()
            .unwrap()
    };
    for extra in [&[][..], &["--option", "require-sigs", "false"][..]] {
        let out = import(&d, extra);
        assert!(
            !out.status.success(),
            "untrusted import with {extra:?} succeeded"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("because it lacks a signature by a trusted key"),
            "{err}"
        );
        assert_eq!(
            d.valid_paths_local(),
            empty,
            "a refused import changed the store"
        );
    }
    // A substituter that is not trusted is dropped with Nix's warning.
    let out = d
        .client("nix-store")
        .args(["--option", "substituters", &cache, "-q", "--hash", &src])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("ignoring untrusted substituter '{cache}'")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Signed, but by a key this store does not trust.
    let err = d.client_err("nix", &["copy", "--from", &cache, &top]);
    assert!(
        err.contains("because it lacks a signature by a trusted key"),
        "{err}"
    );
    let err = d.client_err("nix", &["copy", "--no-check-sigs", "--from", &cache, &top]);
    assert!(
        err.contains("because it lacks a signature by a trusted key"),
        "{err}"
    );
    // The unsigned, input-addressed path is refused and not registered. (Paths are
    // added one by one, as Nix does: a content-addressed dependency sent before it
    // may have been accepted on its own merits.)
    let valid = d.valid_paths_local();
    assert!(!valid.contains(&top), "{valid:?}");
    assert!(valid.iter().all(|p| *p == src), "{valid:?}");
    // Content-addressed and checking out: accepted without a signature.
    d.client_ok("nix", &["copy", "--no-check-sigs", "--from", &cache, &src]);
    assert_eq!(d.valid_paths_local(), vec![src.clone()]);
    d.assert_store_clean();

    // Trusting the key admits the signed closure.
    d.reset_store();
    d.set_conf(&format!("trusted-public-keys = {pk}"));
    d.start();
    d.client_ok("nix", &["copy", "--from", &cache, &top]);
    assert_eq!(d.valid_paths_local(), closure);
    assert_eq!(d.client_ok("nix-store", &["-q", "--hash", &top]), hashes);
    d.assert_store_clean();

    // A trusted user may import unsigned paths.
    d.reset_store();
    d.set_conf(&format!(
        "trusted-users = {}",
        unrooted_testkit::daemon::CLIENT_USER
    ));
    d.start();
    let out = import(&d, &[]);
    d.expect_ok("trusted nix-store --import", &out);
    assert_eq!(d.valid_paths_local(), closure);
    d.assert_store_clean();
}

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
