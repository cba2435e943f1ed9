//! The real Nix 2.8 clients, run as an unprivileged user, against `unrooted daemon`
//! run as another unprivileged user.
//!
//! Expected outputs come from Nix itself: the same query run by the store owner in
//! local mode (no daemon) on the same store must print the same bytes, and adding the
//! same content in local mode must give the same path without creating a new one.

use std::fs;

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

/// Derivations with dependencies and a local source file; builders use only the
/// shell, so the store owner can build them with Nix 2.8 in local mode.
const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep" "echo dep > $out";
  top = mk "top" "echo ${dep} ${./src.txt} > $out";
  note = builtins.toFile "note" "a note";
  other = mk "other" "echo ${note} > $out";
}
"#;

fn prepared() -> Option<TestDaemon> {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return None;
    }
    Some(TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), ""))
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_owned).collect()
}

fn write_inputs(d: &TestDaemon) -> String {
    let i = d.inputs();
    fs::write(i.join("src.txt"), "source\n").unwrap();
    fs::write(i.join("expr.nix"), EXPR).unwrap();
    fs::write(i.join("hello.txt"), "hello world\n").unwrap();
    fs::create_dir(i.join("tree")).unwrap();
    fs::write(i.join("tree/a"), "a\n").unwrap();
    fs::create_dir(i.join("tree/sub")).unwrap();
    fs::write(i.join("tree/sub/b"), "b\n").unwrap();
    std::os::unix::fs::symlink("../a", i.join("tree/sub/link")).unwrap();
    i.join("expr.nix").to_str().unwrap().to_owned()
}

#[test]
fn daemon_is_unprivileged() {
    let Some(mut d) = prepared() else { return };
    d.start();
    let uid_line = d.proc_status("Uid");
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, vec![d.daemon_uid; 4], "real/effective/saved/fs uid");
    assert_ne!(d.daemon_uid, 0);
    for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        assert_eq!(d.proc_status(cap), "0000000000000000", "{cap}");
    }
    let ping = d.client("nix").args(["store", "ping"]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    d.expect_ok("nix store ping", &ping);
    assert!(text.contains("Store URL: daemon"), "{text}");
}

#[test]
fn store_commands() {
    let Some(mut d) = prepared() else { return };
    let expr = write_inputs(&d);
    // A store made by Nix 2.8 in local mode, served unchanged.
    let top = d.owner_ok("nix-build", &[&expr, "-A", "top", "--no-out-link"]);
    let top = top.trim().to_owned();
    let before = d.valid_paths_local();
    d.start();

    for q in [
        "--references",
        "--referrers",
        "--requisites",
        "--deriver",
        "--hash",
        "--size",
        "--tree",
        "--graph",
    ] {
        let via_daemon = d.client_ok("nix-store", &["-q", q, &top]);
        let local = d.owner_ok("nix-store", &["-q", q, &top]);
        assert_eq!(via_daemon, local, "nix-store -q {q}");
        eprintln!("{q}: {via_daemon}");
    }
    let json = d.client_ok("nix", &["path-info", "--json", "-r", "-S", &top]);
    assert_eq!(
        json,
        d.owner_ok("nix", &["path-info", "--json", "-r", "-S", &top])
    );
    eprintln!("{json}");
    assert_eq!(before, d.valid_paths_local());
}
