//! Issue 18: floating content-addressed derivations (`ca-derivations`) built through
//! unrooted by the real Nix 2.8 client. The ground truth is Nix itself: the same
//! expression built by `nix-build` 2.8 into a local store with the same logical
//! store directory (`local?store=…&real=…`) gives the paths ours must give, a CA
//! output (with a self-reference) and the deferred input-addressed derivation that
//! depends on it, which is resolved before it is built. The daemon runs as the
//! unprivileged test user in the id-range sandbox mode (each build its own 65,536
//! subordinate ids; the default where they exist, as the daemon's log says).

use std::fs;
use std::os::unix::fs::PermissionsExt;
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
  # Two outputs referring to each other one way, and each to itself.
  multi = mk {
    name = "ca-multi";
    outputs = [ "out" "dev" ];
    args = [ "-c" "mkdir $out $dev; echo $dev > $out/dev; echo $out > $out/self; echo $dev > $dev/self; echo ${a} > $dev/a" ];
  };
  # A flat floating output.
  flat = mk {
    name = "ca-flat";
    outputHashMode = "flat";
    args = [ "-c" "echo flat > $out" ];
  };
in { inherit a b c multi flat; }
"#;

fn prepared() -> Option<TestDaemon> {
    prepared_with("")
}

/// A daemon with `extra` appended to [`CONF`], started after `ca.nix` and a signing
/// key pair (`inputs/sk`, `inputs/pk`, readable by all) were made.
fn prepared_with(extra: &str) -> Option<TestDaemon> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    fs::write(d.inputs().join("ca.nix"), EXPR).unwrap();
    let (sk, pk) = (d.inputs().join("sk"), d.inputs().join("pk"));
    let made = Command::new("nix-store")
        .args(["--generate-binary-cache-key", "ca-test-1"])
        .args([&sk, &pk])
        .status()
        .unwrap();
    assert!(made.success());
    fs::set_permissions(&sk, fs::Permissions::from_mode(0o644)).unwrap();
    d.set_conf(&format!(
        "{CONF}{}",
        extra.replace("@SK@", sk.to_str().unwrap())
    ));
    d.start();
    Some(d)
}

/// Every realisation in the database at `db`: id, output path and signatures.
fn realisations(db: &Path) -> String {
    let out = Command::new("sqlite3")
        .arg(db)
        .arg("select r.drvPath, r.outputName, v.path, r.signatures from Realisations r join ValidPaths v on v.id = r.outputPath order by 1, 2")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
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
    nix_builds_with(d, attr, work, "")
}

/// [`nix_builds`] with `extra` in Nix's `nix.conf`.
fn nix_builds_with(d: &TestDaemon, attr: &str, work: &Path, extra: &str) -> String {
    let conf = work.join("conf");
    fs::create_dir_all(&conf).unwrap();
    let sk = d.inputs().join("sk");
    let extra = extra.replace("@SK@", sk.to_str().unwrap());
    fs::write(
        conf.join("nix.conf"),
        format!("{CONF}substituters =\n{extra}"),
    )
    .unwrap();
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
    for attr in ["a", "b", "c", "multi.out", "multi.dev", "flat"] {
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
    let mut refs: Vec<String> = d
        .client_ok("nix-store", &["-q", "--references", &b])
        .lines()
        .map(str::to_owned)
        .collect();
    refs.sort();
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

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn realisations_and_their_signatures_are_the_ones_nix_2_8_records() {
    const SIGN: &str = "secret-key-files = @SK@\n";
    let Some(mut d) = prepared_with(SIGN) else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let ours = build(&d, "c", "");
    assert_eq!(ours, nix_builds_with(&d, "c", work.path(), SIGN));
    let nix = realisations(&work.path().join("state/db/db.sqlite"));
    // a, b (original and resolved), c (original and resolved): five realisations.
    assert_eq!(nix.lines().count(), 5, "{nix}");
    assert!(nix.lines().all(|l| l.contains("ca-test-1:")), "{nix}");
    assert_eq!(realisations(&d.state_dir().join("db/db.sqlite")), nix);
    // Nix 2.8 in local mode reads our realisations (as the store owner).
    let e = d.inputs().join("ca.nix");
    let drv = d.client_ok("nix-instantiate", &[e.to_str().unwrap(), "-A", "c"]);
    let drv = drv.trim();
    d.kill();
    let json = d.owner_ok(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command ca-derivations",
            "realisation",
            "info",
            "--json",
            drv,
        ],
    );
    assert!(json.contains(ours.rsplit('/').next().unwrap()), "{json}");
    assert!(json.contains("ca-test-1:"), "{json}");
}
