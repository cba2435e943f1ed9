//! Authorization (issue 9, item 4): everything an untrusted user — an ordinary
//! account, not in `trusted-users` — must not do, tried with the real Nix 2.8 client
//! (and the raw protocol where the client would not even send the request), each
//! refused with a clear error and the store unchanged: the valid paths (in local
//! mode, as the owner), the store directory's entries and the GC roots compared
//! before and after, and `nix-store --verify --check-contents` clean.
//!
//! Refused: importing unsigned paths (`nix-store --import`, `nix copy --from`, a
//! client-side `trusted-public-keys`), privileged options (`sandbox`, `build-hook`,
//! `allowed-users`, `trusted-users`, `extra-sandbox-paths` — ignored: the build still
//! runs in the sandbox), repairs (`--repair` on verify, realise, build, `--repair-path`),
//! reading or removing another user's kept build directory, deleting another user's
//! roots (`nix-store --delete`, `--ignore-liveness`, the links themselves), and
//! connecting when not in `allowed-users`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon, CLIENT_USER, OTHER_USER};

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\n";

const EXPR: &str = r#"
{ salt ? "" }:
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep${salt}" "echo dep > $out";
  top = mk "top${salt}" "echo ${dep} > $out";
  probe = mk "probe${salt}" "echo $(id -u) $(hostname) > $out; ls / >> $out; ls /etc >> $out";
  keep = mk "keep${salt}" "echo secret > kept.txt; mkdir sub; chmod 777 sub; exit 1";
}
"#;

fn prepared(conf: &str) -> Option<TestDaemon> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        &format!("{CONF}{conf}"),
    );
    fs::write(d.inputs().join("authz.nix"), EXPR).unwrap();
    d.start_roots_helper();
    d.start();
    Some(d)
}

fn expr(d: &TestDaemon) -> String {
    d.inputs().join("authz.nix").to_str().unwrap().to_owned()
}

/// What must not change when a request is refused.
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    valid: Vec<String>,
    entries: BTreeSet<String>,
    roots: BTreeSet<String>,
}

fn snapshot(d: &TestDaemon) -> Snapshot {
    let names = |dir: &Path| -> BTreeSet<String> {
        fs::read_dir(dir)
            .map(|r| {
                r.filter_map(|e| e.ok())
                    .map(|e| {
                        let target = fs::read_link(e.path())
                            .map(|t| format!(" -> {}", t.display()))
                            .unwrap_or_default();
                        format!("{}{target}", e.file_name().to_string_lossy())
                    })
                    // The daemon's own temporary area is not part of the store.
                    .filter(|n| !n.starts_with(".unrooted-tmp-"))
                    .collect()
            })
            .unwrap_or_default()
    };
    Snapshot {
        valid: d.valid_paths_local(),
        entries: names(&d.store_dir()),
        roots: names(&d.state_dir().join("gcroots/auto")),
    }
}

/// Asserts that `err` (a refused command's stderr) contains `expected`, that the
/// store is as it was in `before` and that it verifies.
fn refused(d: &TestDaemon, what: &str, err: &str, expected: &str, before: &Snapshot) {
    assert!(
        err.contains(expected),
        "{what}: expected '{expected}' in: {err}"
    );
    assert_eq!(&snapshot(d), before, "{what} changed the store");
    eprintln!("refused: {what}: {}", first_error_line(err));
}

fn first_error_line(err: &str) -> &str {
    err.lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| err.lines().next().unwrap_or(""))
        .trim()
}

fn build(d: &TestDaemon, attr: &str, salt: &str, extra: &[&str]) -> String {
    let e = expr(d);
    let mut args = vec![e.as_str(), "-A", attr, "--argstr", "salt", salt];
    args.extend_from_slice(extra);
    if !extra.contains(&"-o") {
        args.push("--no-out-link");
    }
    d.client_ok("nix-build", &args).trim().to_owned()
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn unsigned_imports_are_refused() {
    let Some(d) = prepared("") else { return };
    // Input-addressed paths the daemon built, exported and copied to a file cache
    // (signed there by a key the client made), then deleted from the store.
    let top = build(&d, "top", "imp", &[]);
    let closure: Vec<String> = d
        .client_ok("nix-store", &["-q", "--requisites", &top])
        .lines()
        .map(str::to_owned)
        .collect();
    let mut args = vec!["--export"];
    args.extend(closure.iter().map(String::as_str));
    let export = d.client("nix-store").args(&args).output().unwrap();
    d.expect_ok("nix-store --export", &export);
    let export_file = d.inputs().join("closure.export");
    fs::write(&export_file, &export.stdout).unwrap();
    let home = d.client_home();
    let cache = format!("file://{}/cache", home.display());
    d.client_ok("nix", &["copy", "--to", &cache, &top]);
    let (sk, pk) = (home.join("sk"), home.join("pk"));
    d.client_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "client-key-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    d.client_ok(
        "nix",
        &[
            "store",
            "sign",
            "--store",
            &cache,
            "-r",
            "-k",
            sk.to_str().unwrap(),
            &top,
        ],
    );
    let pk = d
        .client_ok("cat", &[pk.to_str().unwrap()])
        .trim()
        .to_owned();
    let mut del = vec!["--delete"];
    del.extend(closure.iter().map(String::as_str));
    d.client_ok("nix-store", &del);
    let before = snapshot(&d);
    assert!(!before.valid.contains(&top));

    let lacks = "because it lacks a signature by a trusted key";
    for extra in [
        &[][..],
        &["--option", "require-sigs", "false"][..],
        &["--option", "trusted-public-keys", &pk][..],
    ] {
        let out = d
            .client("nix-store")
            .args(extra)
            .arg("--import")
            .stdin(fs::File::open(&export_file).unwrap())
            .output()
            .unwrap();
        assert!(!out.status.success(), "import with {extra:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        refused(
            &d,
            &format!("nix-store --import {extra:?}"),
            &err,
            lacks,
            &before,
        );
    }
    for extra in [
        &["--no-check-sigs"][..],
        &["--option", "trusted-public-keys", &pk][..],
        &["--option", "extra-trusted-public-keys", &pk][..],
    ] {
        let mut args = vec!["copy"];
        args.extend_from_slice(extra);
        args.extend(["--from", &cache, &top]);
        let err = d.client_err("nix", &args);
        refused(
            &d,
            &format!("nix copy --from {extra:?}"),
            &err,
            lacks,
            &before,
        );
    }
    // The other user cannot either.
    let out = d
        .other("nix-store")
        .arg("--import")
        .stdin(fs::File::open(&export_file).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    refused(
        &d,
        "nix-store --import (other user)",
        &String::from_utf8_lossy(&out.stderr),
        lacks,
        &before,
    );
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn privileged_options_are_ignored_and_repairs_refused() {
    let Some(d) = prepared("") else { return };
    let hook = d.inputs().join("hook.sh");
    fs::write(
        &hook,
        "#!/bin/sh\ntouch /tmp/unrooted-authz-hook-ran\nexit 1\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&hook, fs::Permissions::from_mode(0o755)).unwrap();
    let other_user = OTHER_USER;
    let privileged: Vec<String> = [
        ("sandbox", "false"),
        ("build-hook", hook.to_str().unwrap()),
        ("allowed-users", CLIENT_USER),
        ("trusted-users", CLIENT_USER),
        ("extra-sandbox-paths", "/etc/hostname-leak=/etc/hostname"),
        (
            "sandbox-paths",
            "/bin/sh=/bin/busybox /etc/hostname-leak=/etc/hostname",
        ),
        ("build-users-group", other_user),
        ("require-sigs", "false"),
        ("post-build-hook", hook.to_str().unwrap()),
    ]
    .iter()
    .flat_map(|(k, v)| ["--option".to_owned(), (*k).to_owned(), (*v).to_owned()])
    .collect();
    let args: Vec<&str> = privileged.iter().map(String::as_str).collect();
    let out = build(&d, "probe", "opts", &args);
    let text = fs::read_to_string(&out).unwrap();
    let first = text.lines().next().unwrap();
    // Still in the sandbox: uid 1000 in its user namespace, hostname localhost,
    // Nix's root layout and /etc, no bound host file.
    assert_eq!(first, "1000 localhost", "{text}");
    assert!(text.lines().any(|l| l == "build"), "{text}");
    assert!(
        !text.contains("hostname-leak") && !text.contains("home") && !text.contains("usr"),
        "{text}"
    );
    assert!(!Path::new("/tmp/unrooted-authz-hook-ran").exists());
    // The client is still untrusted: signing a store path is refused…
    let before = snapshot(&d);
    let home = d.client_home();
    let (sk, pk) = (home.join("sk"), home.join("pk"));
    d.client_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "client-key-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let mut sign = vec!["store", "sign", "-k", sk.to_str().unwrap(), out.as_str()];
    sign.extend(args.iter().copied());
    let err = d.client_err("nix", &sign);
    refused(
        &d,
        "nix store sign with privileged options",
        &err,
        "you are not privileged to add signatures",
        &before,
    );
    let sigs = d.owner_ok("nix", &["path-info", "--sigs", &out]);
    assert!(
        !sigs.contains("client-key-1"),
        "a signature was added: {sigs}"
    );
    // …and the other user is still allowed to connect.
    d.other_ok("nix-store", &["-q", "--hash", &out]);

    // Repairs, in every form the client has.
    let dep = build(&d, "dep", "opts", &[]);
    let before = snapshot(&d);
    let e = expr(&d);
    for (args, expected) in [
        (
            vec!["nix-store", "--verify", "--check-contents", "--repair"],
            "you are not privileged to repair paths",
        ),
        (
            vec!["nix-store", "--realise", "--repair", &dep],
            "repairing is not allowed because you are not in 'trusted-users'",
        ),
        // The Nix 2.8 client has no RepairPath request for a daemon store.
        (
            vec!["nix-store", "--repair-path", &dep],
            "operation 'repairPath' is not supported by store 'daemon'",
        ),
        (
            vec![
                "nix-build",
                &e,
                "-A",
                "dep",
                "--argstr",
                "salt",
                "opts",
                "--repair",
                "--no-out-link",
            ],
            "repairing is not allowed because you are not in 'trusted-users'",
        ),
    ] {
        let err = d.client_err(args[0], &args[1..]);
        refused(&d, &args.join(" "), &err, expected, &before);
    }
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn another_users_kept_build_dir_and_roots_are_out_of_reach() {
    let Some(d) = prepared("") else { return };
    // The client keeps a failed build's directory; the other user can neither read,
    // list nor remove it.
    let e = expr(&d);
    let err = d.client_err(
        "nix-build",
        &[&e, "-A", "keep", "--argstr", "salt", "k", "--keep-failed"],
    );
    let kept = err
        .split("keeping build directory '")
        .nth(1)
        .and_then(|r| r.split('\'').next())
        .unwrap_or_else(|| panic!("no kept directory in: {err}"))
        .to_owned();
    assert_eq!(
        d.client_ok("cat", &[&format!("{kept}/kept.txt")]),
        "secret\n"
    );
    for (program, args) in [
        ("cat", vec![format!("{kept}/kept.txt")]),
        ("ls", vec![kept.clone()]),
        ("rm", vec!["-rf".to_owned(), kept.clone()]),
        ("touch", vec![format!("{kept}/sub/planted")]),
    ] {
        let out = d.other(program).args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        // `rm` of the directory itself in sticky /tmp: EPERM; inside it: EACCES.
        assert!(
            !out.status.success()
                && (err.contains("Permission denied") || err.contains("Operation not permitted")),
            "other: {program} {args:?}: {err}"
        );
        eprintln!(
            "refused: other user {program} on the kept build dir: {}",
            err.trim()
        );
    }
    assert!(Path::new(&kept).join("kept.txt").exists());
    assert!(!Path::new(&kept).join("sub/planted").exists());

    // The client's result (an indirect root in gcroots/auto) and a profile.
    let result = d.client_home().join("result");
    let top = build(&d, "top", "r", &["-o", result.to_str().unwrap()]);
    let dep = fs::read_to_string(&top).unwrap().trim().to_owned();
    let before = snapshot(&d);
    for p in [&top, &dep] {
        let err = d.other("nix-store").args(["--delete", p]).output().unwrap();
        assert!(!err.status.success());
        refused(
            &d,
            &format!("other: nix-store --delete {p}"),
            &String::from_utf8_lossy(&err.stderr),
            "since it is still alive",
            &before,
        );
    }
    let err = d
        .other("nix-store")
        .args(["--delete", "--ignore-liveness", &top])
        .output()
        .unwrap();
    assert!(!err.status.success());
    refused(
        &d,
        "other: nix-store --delete --ignore-liveness",
        &String::from_utf8_lossy(&err.stderr),
        "you are not allowed to ignore liveness",
        &before,
    );
    // The links: the client's home is 0700; gcroots/auto belongs to the daemon.
    let auto = d.state_dir().join("gcroots/auto");
    let auto_link = fs::read_dir(&auto)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| fs::read_link(e.path()).is_ok_and(|t| t == result))
        .unwrap_or_else(|| panic!("no gcroots/auto link to {}", result.display()))
        .path();
    for target in [&result, &auto_link] {
        let out = d.other("rm").arg("-f").arg(target).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains("Permission denied"),
            "other: rm {}: {err}",
            target.display()
        );
        eprintln!(
            "refused: other user rm {}: {}",
            target.display(),
            err.trim()
        );
    }
    // A GC by the other user keeps everything the client's root holds.
    d.other_ok("nix-store", &["--gc"]);
    let after = snapshot(&d);
    assert!(after.valid.contains(&top) && after.valid.contains(&dep));
    assert_eq!(after.roots, before.roots);
    assert!(result.exists() || fs::symlink_metadata(&result).is_ok());
    d.assert_store_clean();
    let _ = std::process::Command::new("rm")
        .arg("-rf")
        .arg(&kept)
        .status();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn users_not_in_allowed_users_cannot_connect() {
    let Some(mut d) = prepared("") else { return };
    let top = build(&d, "top", "a", &[]);
    d.kill();
    d.set_conf(&format!("{CONF}allowed-users = {CLIENT_USER}\n"));
    d.start();
    let before = snapshot(&d);
    let f = d.inputs().join("f");
    fs::write(&f, "from the other user\n").unwrap();
    for args in [
        vec!["nix-store", "--add", f.to_str().unwrap()],
        vec!["nix-store", "-q", "--hash", &top],
        vec!["nix", "store", "ping"],
        vec!["nix-store", "--gc"],
    ] {
        let out = d.other(args[0]).args(&args[1..]).output().unwrap();
        assert!(!out.status.success(), "other: {args:?} succeeded");
        refused(
            &d,
            &format!("other (not in allowed-users): {}", args.join(" ")),
            &String::from_utf8_lossy(&out.stderr),
            "cannot open connection to remote store 'daemon'",
            &before,
        );
    }
    assert!(
        d.log().contains(&format!(
            "user '{OTHER_USER}' is not allowed to connect to the Nix daemon"
        )),
        "{}",
        d.log()
    );
    // A raw connection from the other user is closed before any reply.
    let (uid, gid) = d.other_ids();
    let mut s = d.connect_as(uid, gid).unwrap();
    use std::io::{Read, Write};
    let _ = s.write_all(&0x6e697863u64.to_le_bytes());
    let mut buf = Vec::new();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let n = s.read_to_end(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the daemon answered a user not in allowed-users");
    // The allowed user goes on.
    d.client_ok("nix-store", &["--add", f.to_str().unwrap()]);
    assert_eq!(d.valid_paths_local().len(), before.valid.len() + 1);
    d.assert_store_clean();
}
