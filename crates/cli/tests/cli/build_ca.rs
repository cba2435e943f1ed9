//! Issue 18: floating content-addressed derivations (`ca-derivations`) built through
//! unrooted by the real Nix 2.8 client. The ground truth is Nix itself: the same
//! expression built by `nix-build` 2.8 into a local store with the same logical
//! store directory (`local?store=…&real=…`) gives the paths ours must give, a CA
//! output (with a self-reference) and the deferred input-addressed derivation that
//! depends on it, which is resolved before it is built.

use std::fs;
use std::path::Path;
use std::process::Command;

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\n\
experimental-features = nix-command ca-derivations\n";

/// `a` writes its own path into itself (a self-reference); `b` refers to `a` and
/// itself; `c` is input-addressed on top of `b`, so deferred.
const EXPR: &str = r#"
{ salt ? "" }:
let
  mk = args: derivation ({
    system = builtins.currentSystem;
    builder = "/bin/sh";
    __contentAddressed = true;
    outputHashMode = "recursive";
    outputHashAlgo = "sha256";
  } // args);
  a = mk {
    name = "ca-a";
    inherit salt;
    args = [ "-c" "echo hello > $out; echo $out >> $out" ];
  };
  b = mk {
    name = "ca-b";
    args = [ "-c" "mkdir $out; echo ${a} > $out/a; echo $out > $out/self" ];
  };
  c = derivation {
    name = "ia-c";
    system = builtins.currentSystem;
    builder = "/bin/sh";
    args = [ "-c" "mkdir $out; cat ${b}/a > $out/a; echo ${b} > $out/b; date +%s%N > $out/t" ];
  };
in { inherit a b c; }
"#;

fn prepared() -> Option<TestDaemon> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), CONF);
    fs::write(d.inputs().join("ca.nix"), EXPR).unwrap();
    d.start();
    Some(d)
}

fn build(d: &TestDaemon, attr: &str, salt: &str) -> String {
    let e = d.inputs().join("ca.nix");
    let e = e.to_str().unwrap();
    d.client_ok(
        "nix-build",
        &[e, "-A", attr, "--no-out-link", "--argstr", "salt", salt],
    )
    .trim()
    .to_owned()
}

/// What Nix 2.8 itself builds `attr` to, in a local store with the same logical
/// store directory as `d`'s.
fn nix_builds(d: &TestDaemon, attr: &str, work: &Path) -> String {
    let conf = work.join("conf");
    fs::create_dir_all(&conf).unwrap();
    fs::write(conf.join("nix.conf"), format!("{CONF}substituters =\n")).unwrap();
    let store = format!(
        "local?store={}&real={}&state={}&log={}",
        d.store_dir().display(),
        work.join("real").display(),
        work.join("state").display(),
        work.join("log").display()
    );
    let out = Command::new("nix-build")
        .env("NIX_CONF_DIR", &conf)
        .args(["--store", &store])
        .arg(d.inputs().join("ca.nix"))
        .args(["-A", attr, "--no-out-link"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn ca_derivation_outputs_are_the_paths_nix_2_8_gives() {
    let Some(d) = prepared() else { return };
    let work = tempfile::tempdir().unwrap();
    for attr in ["a", "b", "c"] {
        let ours = build(&d, attr, "");
        assert_eq!(ours, nix_builds(&d, attr, work.path()), "output of {attr}");
    }
    let a = build(&d, "a", "");
    let text = fs::read_to_string(&a).unwrap();
    assert_eq!(text, format!("hello\n{a}\n"), "self-reference rewritten");
    let refs = d.client_ok("nix-store", &["-q", "--references", &a]);
    assert_eq!(refs.trim(), a, "a refers to itself only");
    let info = d.client_ok("nix-store", &["-q", "--hash", &a]);
    assert!(info.starts_with("sha256:"), "{info}");
    let b = build(&d, "b", "");
    let refs: Vec<String> = d
        .client_ok("nix-store", &["-q", "--references", &b])
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(refs, {
        let mut v = vec![a.clone(), b.clone()];
        v.sort();
        v
    });
    let verify = d.client_ok("nix-store", &["--verify-path", &a]);
    assert_eq!(verify, "");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn rebuilt_input_with_the_same_content_does_not_rebuild_dependents() {
    let Some(d) = prepared() else { return };
    let c = build(&d, "c", "");
    let t = fs::read_to_string(Path::new(&c).join("t")).unwrap();
    // Another `a` derivation (another salt in its environment) with the same output:
    // `b` resolves to the same derivation, so neither it nor `c` is built again.
    let c2 = build(&d, "c", "other");
    assert_eq!(c2, c);
    assert_eq!(fs::read_to_string(Path::new(&c2).join("t")).unwrap(), t);
}
