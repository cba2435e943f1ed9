//! Issue 19: every workflow of Debian 13's Nix 2.26 client run side by side against
//! `unrooted daemon` and against Debian 13's own `nix-daemon` 2.26 run as the same
//! ordinary user (what an administrator would try first), on identical stores at the
//! same paths (the store is reset between the two), as the same unprivileged client.
//! Each step's exit status and output must be equal, except for the daemon's version
//! string; "unrooted must do at least what it does".

use std::fs;
use std::process::Output;

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};
use unrooted_testkit::trixie::{trixie_root, TrixieNixDaemon};

/// Builds run in both daemons' sandboxes with busybox as `/bin/sh`, from a copy in the
/// test's inputs (the trixie root, where `nix-daemon` runs, has no busybox of its own).
const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=@BUSYBOX@\nmax-jobs = 2\n\
                    extra-experimental-features = flakes\n";

const EXPR: &str = r#"
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
}
"#;

/// The workflow, one shell command per step, run in the client's home with `$E` the
/// expression, `$I` the inputs directory.
const STEPS: &[&str] = &[
    "nix store info --json",
    "nix-store --add $I/file",
    "nix store add $I/tree",
    "nix store ls -R $(nix store add $I/tree)",
    "nix store cat $(nix store add $I/tree)/a",
    "nix store dump-path $(nix store add $I/tree) | sha256sum",
    "nix store path-from-hash-part $(basename $(nix store add $I/tree) | cut -c1-32)",
    "nix build -f $E 'multi^dev' --print-out-paths --no-link",
    "nix build -f $E 'multi^*' --print-out-paths --no-link",
    "nix build -f $E 'multi^out,doc' --print-out-paths --no-link",
    "nix build -f $E multi --json --no-link | sed 's/\"[a-zA-Z]*Time\":[0-9]*,\\?//g'",
    "nix build -f $E hello && readlink result && cat result",
    "nix build -L -f $E dep --no-link",
    "nix log -f $E hello",
    "nix build --keep-going -f $E fails fails2 pkg --no-link",
    "nix build -f $E hello --rebuild --no-link",
    "nix path-info -rsS --json $(nix build -f $E dep --print-out-paths --no-link)",
    "nix path-info -rsS $(nix build -f $E dep --print-out-paths --no-link)",
    "nix why-depends $(nix build -f $E dep --print-out-paths --no-link) $(nix build -f $E hello --print-out-paths --no-link)",
    "nix store verify $(nix build -f $E hello --print-out-paths --no-link)",
    "nix store verify --sigs-needed 1 $(nix build -f $E hello --print-out-paths --no-link)",
    "nix store verify --sigs-needed 1 $(nix store add $I/tree)",
    "nix store make-content-addressed --json $(nix build -f $E hello --print-out-paths --no-link)",
    "nix store optimise",
    "nix store delete $(readlink result)",
    "nix store delete --ignore-liveness $(readlink result)",
    "nix store repair $(readlink result)",
    "nix profile install -f $E pkg",
    "nix profile install -f $E hello",
    "nix profile list",
    "~/.nix-profile/bin/pkg",
    "nix profile history",
    "nix profile remove hello",
    "nix profile rollback",
    "nix profile list",
    "nix profile wipe-history",
    "nix profile history",
    "nix-env -q",
    "nix copy --to file://$HOME/cache $(nix build -f $E dep --print-out-paths --no-link) && ls $HOME/cache | sort",
    "nix store delete $(nix build -f $E multi --print-out-paths --no-link)",
    "nix copy --from file://$HOME/cache $(nix build -f $E dep --print-out-paths --no-link)",
    "rm result; nix store gc --dry-run | sort",
    "nix store gc",
    "nix-collect-garbage -d",
    "nix-env -f $E -iA pkg && nix-env -q",
    "nix-env --list-generations | wc -l",
];

/// One step's outcome.
#[derive(Debug, PartialEq)]
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

fn outcome(o: &Output) -> Outcome {
    let strip = |b: &[u8]| {
        String::from_utf8_lossy(b)
            // The one difference allowed: the daemon's version.
            .lines()
            .map(|l| {
                if let Some(i) = l.find("\"version\":") {
                    let rest = &l[i..];
                    let end = rest
                        .find(',')
                        .or_else(|| rest.find('}'))
                        .unwrap_or(rest.len());
                    format!("{}\"version\":V{}", &l[..i], &rest[end..])
                } else {
                    l.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    Outcome {
        success: o.status.success(),
        stdout: strip(&o.stdout),
        stderr: strip(&o.stderr),
    }
}

fn run_all(d: &TestDaemon, root: &std::path::Path) -> Vec<Outcome> {
    let e = d.inputs().join("pkgs.nix");
    STEPS
        .iter()
        .map(|step| {
            let o = d
                .trixie_client(root, "sh")
                .args(["-c", step])
                .env("E", &e)
                .env("I", d.inputs())
                .output()
                .expect("spawning");
            outcome(&o)
        })
        .collect()
}

fn clear_home(d: &TestDaemon) {
    for e in fs::read_dir(d.client_home()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            let _ = std::process::Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(&p)
                .status();
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
fn every_workflow_as_with_nix_daemon() {
    if !can_run_sandboxed_builds() {
        return;
    }
    let Some(root) = trixie_root() else { return };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let busybox = d.inputs().join("busybox");
    fs::copy("/bin/busybox", &busybox).unwrap();
    d.set_conf(&CONF.replace("@BUSYBOX@", busybox.to_str().unwrap()));
    fs::write(d.inputs().join("pkgs.nix"), EXPR).unwrap();
    fs::write(d.inputs().join("file"), "a file\n").unwrap();
    fs::create_dir(d.inputs().join("tree")).unwrap();
    fs::write(d.inputs().join("tree/a"), "A\n").unwrap();
    fs::write(d.inputs().join("tree/b"), "A\n").unwrap();

    d.start();
    d.start_roots_helper();
    let ours = run_all(&d, &root);
    let our_log = d.log();
    d.reset_store();
    clear_home(&d);
    let nd = TrixieNixDaemon::start(&d, &root);
    let theirs = run_all(&d, &root);
    let their_log = nd.log();
    drop(nd);

    let mut diffs = Vec::new();
    for ((step, a), b) in STEPS.iter().zip(&ours).zip(&theirs) {
        if a != b {
            diffs.push(format!(
                "step `{step}`:\n  unrooted:   {a:?}\n  nix-daemon: {b:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n{}\n--- unrooted log ---\n{our_log}\n--- nix-daemon log ---\n{their_log}",
        diffs.len(),
        STEPS.len(),
        diffs.join("\n")
    );
}
