//! Builds, unsandboxed and in the single-id sandbox, through the Nix client and our
//! protocol client. Builders are `/bin/sh`: the host's unsandboxed, Debian's static
//! busybox bound in the sandbox (`sandbox-paths = /bin/sh=/bin/busybox`).

use std::fs;
use std::os::unix::fs::MetadataExt;

use unrooted_protocol::request::BuildMode;
use unrooted_protocol::{BuildStatus, DerivedPath, OutputsSpec};

use crate::harness::{lines, Harness, Mode};

/// The derivations under test; `@FLAT@` is the SHA-256 of "hello\n".
const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
  fod = name: hash: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo hello > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = hash;
  };
in rec {
  trivial = mk "trivial" "echo building trivial; echo hello > $out";
  a = mk "a" "echo a > $out";
  chain = mk "chain" "read x < ${a}; echo $x-chain > $out";
  b = mk "b" "echo ${a} > $out";
  c = mk "c" "echo c ${a} > $out";
  diamond = mk "diamond" "read x < ${b}; read y < ${c}; echo $x > $out; echo $y >> $out";
  multi = derivation {
    name = "multi"; system = builtins.currentSystem; builder = "/bin/sh";
    outputs = [ "out" "dev" ];
    args = [ "-c" "echo out > $out; echo dev $out > $dev" ];
  };
  fodFlat = fod "fod-flat" "@FLAT@";
  fodBad = fod "fod-bad" "0000000000000000000000000000000000000000000000000000000000000000";
  fail = mk "fail" "echo first line; echo about to fail; exit 3";
  whoami = mk "whoami" "echo $(id -u) $(id -g) > $out";
  probe = derivation {
    name = "probe"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "env | sort > $out; echo $$ $(id -u) $(id -g) $(hostname) >> $out; ls / >> $out; cat $bigPath >> $out" ];
    passAsFile = [ "big" ]; big = "big data";
  };
  # Unsandboxed builders have no PATH (`/path-not-set`).
  whoamiHost = mk "whoami" "echo $(/usr/bin/id -u) $(/usr/bin/id -g) > $out";
}
"#;

/// A harness in `mode` with the expression written; `None` when the mode or the Nix
/// client is unavailable here (outside CI).
fn prepared(mode: Mode) -> Option<(Harness, String)> {
    let h = Harness::new(mode)?;
    h.nix("nix-build")?;
    let flat = unrooted_format::Hash::sha256(unrooted_format::hash::sha256(b"hello\n")).to_base16();
    let expr = h.input("build.nix", &EXPR.replace("@FLAT@", &flat));
    Some((h, expr))
}

fn build(h: &Harness, expr: &str, attr: &str) -> String {
    h.nix_ok("nix-build", &[expr, "-A", attr, "--no-out-link"])
        .trim()
        .to_owned()
}

fn references(h: &Harness, p: &str) -> Vec<String> {
    lines(&h.nix_ok("nix-store", &["-q", "--references", p]))
}

/// One test per mode for each body.
macro_rules! in_both_modes {
    ($($name:ident => $body:ident;)*) => {
        mod unsandboxed {
            $(#[test] fn $name() { super::$body(super::Mode::Unsandboxed) })*
        }
        mod single_id_sandbox {
            $(#[test] fn $name() { super::$body(super::Mode::SingleId) })*
        }
    };
}

in_both_modes! {
    trivial_build_streams_its_log_and_stores_it => trivial;
    chain_diamond_and_references_found_by_scanning => graph;
    multiple_outputs_are_registered_together => multi;
    fixed_output_and_mismatch => fixed_output;
    failing_builder_reports_exit_code_and_last_lines => failing;
    build_paths_over_the_protocol => protocol_build;
    builder_ids => builder_ids;
}

fn trivial(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let mut cmd = h.nix("nix-build").unwrap();
    let out = cmd
        .args([&expr, "-A", "trivial", "--no-out-link"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("building trivial"),
        "log line streamed: {stderr}"
    );
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(fs::read_to_string(&path).unwrap(), "hello\n");
    let meta = fs::symlink_metadata(&path).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o444, 1));
    let deriver = h.nix_ok("nix-store", &["-q", "--deriver", &path]);
    assert!(deriver.trim().ends_with("-trivial.drv"), "{deriver}");
    assert_eq!(h.nix_ok("nix-store", &["-l", &path]), "building trivial\n");
    // Built once: a second build is a no-op.
    assert_eq!(build(&h, &expr, "trivial"), path);
    h.assert_store_clean();
}

fn graph(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let chain = build(&h, &expr, "chain");
    assert_eq!(fs::read_to_string(&chain).unwrap(), "a-chain\n");
    assert!(references(&h, &chain).is_empty(), "the text holds no path");
    let diamond = build(&h, &expr, "diamond");
    let a = build(&h, &expr, "a");
    let b = build(&h, &expr, "b");
    let c = build(&h, &expr, "c");
    assert_eq!(references(&h, &c), vec![a.clone()]);
    assert_eq!(references(&h, &b), vec![a.clone()]);
    assert_eq!(
        fs::read_to_string(&diamond).unwrap(),
        format!("{a}\nc {a}\n")
    );
    assert_eq!(references(&h, &diamond), vec![a]);
    h.assert_store_clean();
}

fn multi(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let out = h.nix_ok("nix-build", &[&expr, "-A", "multi.all", "--no-out-link"]);
    let paths: Vec<&str> = out.lines().collect();
    assert_eq!(paths.len(), 2, "{out}");
    let dev = paths.iter().find(|p| p.ends_with("-multi-dev")).unwrap();
    let outp = paths.iter().find(|p| p.ends_with("-multi")).unwrap();
    assert_eq!(fs::read_to_string(dev).unwrap(), format!("dev {outp}\n"));
    assert_eq!(references(&h, dev), vec![outp.to_string()]);
    h.assert_store_clean();
}

fn fixed_output(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let flat = build(&h, &expr, "fodFlat");
    assert_eq!(fs::read_to_string(&flat).unwrap(), "hello\n");
    let info = h.nix_ok("nix", &["path-info", "--json", &flat]);
    assert!(info.contains(r#""ca":"fixed:sha256:"#), "{info}");
    let err = h.nix_err("nix-build", &[&expr, "-A", "fodBad", "--no-out-link"]);
    assert!(
        err.contains("hash mismatch in fixed-output derivation")
            && err.contains("specified: sha256-AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
            && err.contains("got:    sha256-"),
        "{err}"
    );
    h.assert_store_clean();
}

fn failing(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let err = h.nix_err("nix-build", &[&expr, "-A", "fail", "--no-out-link"]);
    let flat: Vec<&str> = err.lines().map(str::trim).collect();
    let flat = flat.join("\n");
    assert!(
        flat.contains("-fail.drv' failed with exit code 3;\nlast 2 log lines:\n> first line\n> about to fail\n"),
        "{err}"
    );
    // The daemon goes on serving.
    assert_eq!(fs::read_to_string(build(&h, &expr, "a")).unwrap(), "a\n");
}

fn protocol_build(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let drv = h.nix_ok("nix-instantiate", &[&expr, "-A", "trivial"]);
    let drv = h.path(drv.trim());
    let mut c = h.client();
    let target = DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::All,
    };
    let results = c
        .build_paths_with_results(vec![target.clone()], BuildMode::Normal)
        .unwrap();
    assert_eq!(results.len(), 1);
    assert_eq!(results[0].result.status, BuildStatus::Built, "{results:?}");
    // Again: already valid.
    let results = c
        .build_paths_with_results(vec![target], BuildMode::Normal)
        .unwrap();
    assert_eq!(
        results[0].result.status,
        BuildStatus::AlreadyValid,
        "{results:?}"
    );
    let missing = c.query_missing(vec![DerivedPath::Built {
        drv_path: drv,
        outputs: OutputsSpec::All,
    }]);
    let missing = missing.unwrap();
    assert!(missing.will_build.is_empty(), "{missing:?}");
}

fn builder_ids(mode: Mode) {
    let Some((h, expr)) = prepared(mode) else {
        return;
    };
    let attr = match mode {
        Mode::SingleId => "whoami",
        Mode::Unsandboxed => "whoamiHost",
    };
    let out = fs::read_to_string(build(&h, &expr, attr)).unwrap();
    match mode {
        // Nix's layout inside the sandbox: uid 1000, gid 100.
        Mode::SingleId => assert_eq!(out, "1000 100\n"),
        Mode::Unsandboxed => {
            let uid = rustix::process::geteuid().as_raw();
            assert!(out.starts_with(&format!("{uid} ")), "{out}");
        }
    }
}

/// The builder's environment and root in the sandbox: Nix 2.8's.
#[test]
fn single_id_sandbox_gives_the_builder_nixs_environment() {
    let Some((h, expr)) = prepared(Mode::SingleId) else {
        return;
    };
    let out = build(&h, &expr, "probe");
    let text = fs::read_to_string(&out).unwrap();
    let store = h.store_dir();
    let store = store.as_str();
    let cores = std::thread::available_parallelism().unwrap().get();
    let top = store.trim_start_matches('/').split('/').next().unwrap();
    // `ls /`: Nix's layout, the store's top directory and the sandbox-path `/bin`.
    let mut root: Vec<&str> = vec!["bin", "build", "dev", "etc", "proc", "tmp", top];
    root.sort();
    root.dedup();
    let root = root.join("\n");
    let system = format!("{}-linux", std::env::consts::ARCH);
    assert_eq!(
        text,
        format!(
            "HOME=/homeless-shelter\nNIX_BUILD_CORES={cores}\nNIX_BUILD_TOP=/build\nNIX_LOG_FD=2\n\
             NIX_STORE={store}\nPATH=/path-not-set\nPWD=/build\nSHLVL=1\nTEMP=/build\nTEMPDIR=/build\n\
             TERM=xterm-256color\nTMP=/build\nTMPDIR=/build\n\
             bigPath=/build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a\n\
             builder=/bin/sh\nname=probe\nout={out}\npassAsFile=big\nsystem={system}\n\
             1 1000 100 localhost\n{root}\nbig data"
        )
    );
}
