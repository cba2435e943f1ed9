//! Floating content-addressed derivations (issue 18, `ca-derivations`) built by the
//! in-process daemon, unsandboxed and in the single-id sandbox: BuildPathsWithResults'
//! `builtOutputs`, QueryDerivationOutputMap before and after (from the
//! realisation), QueryRealisation of the built output, and a deferred derivation
//! on top, through the real Nix 2.8 client. The paths themselves are compared with
//! Nix's own build in `crates/cli/tests/cli/build_ca.rs`.

use std::collections::BTreeMap;
use std::fs;

use unrooted_format::StorePath;
use unrooted_protocol::reply::{read_output_map, read_realisations, RealisationReply};
use unrooted_protocol::request::BuildMode;
use unrooted_protocol::{BuildStatus, DerivedPath, OutputsSpec, Request};

use crate::harness::{Harness, Mode, SocketClient};

const CA: &str = "experimental-features = nix-command ca-derivations";

const EXPR: &str = r#"
let
  a = derivation {
    name = "ca-a"; system = builtins.currentSystem; builder = "/bin/sh";
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = [ "-c" "echo hello > $out; echo $out >> $out" ];
  };
in {
  inherit a;
  c = derivation {
    name = "ia-c"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${a} > $out" ];
  };
}
"#;

fn output_map(c: &mut SocketClient, drv: &StorePath) -> BTreeMap<String, Option<StorePath>> {
    c.call(&Request::QueryDerivationOutputMap(drv.clone()))
        .expect("QueryDerivationOutputMap");
    let cx = c.context().clone();
    read_output_map(c.reader(), &cx).expect("reply")
}

fn ca_build(mode: Mode) {
    let Some(h) = Harness::with_conf(mode, CA) else {
        return;
    };
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input("ca.nix", EXPR);
    let ca = ["--extra-experimental-features", "ca-derivations"];
    let drv = h.nix_ok("nix-instantiate", &[&expr, "-A", "a", ca[0], ca[1]]);
    let drv = h.path(drv.trim());
    let mut c = h.client();
    assert_eq!(
        output_map(&mut c, &drv),
        BTreeMap::from([("out".to_owned(), None)])
    );
    let target = DerivedPath::Built {
        drv_path: drv.clone(),
        outputs: OutputsSpec::All,
    };
    let results = c
        .build_paths_with_results(vec![target.clone()], BuildMode::Normal)
        .unwrap();
    let r = &results[0].result;
    assert_eq!(r.status, BuildStatus::Built, "{results:?}");
    let (id, realisation) = r.built_outputs.iter().next().expect("a built output");
    assert_eq!((r.built_outputs.len(), id.output_name.as_str()), (1, "out"));
    let out = realisation.out_path.clone();
    let printed = h.store_dir().display(&out);
    assert_eq!(
        fs::read_to_string(&printed).unwrap(),
        format!("hello\n{printed}\n")
    );
    assert_eq!(
        output_map(&mut c, &drv),
        BTreeMap::from([("out".to_owned(), Some(out.clone()))])
    );
    c.call(&Request::QueryRealisation(id.clone())).unwrap();
    let cx = c.context().clone();
    match read_realisations(c.reader(), &cx).unwrap() {
        RealisationReply::Realisations(found) => assert_eq!(found, vec![realisation.clone()]),
        RealisationReply::OutPaths(p) => panic!("{p:?}"),
    }
    let info = h.nix_ok("nix-store", &["-q", "--references", &printed]);
    assert_eq!(info.trim(), printed, "refers to itself only");
    let results = c
        .build_paths_with_results(vec![target], BuildMode::Normal)
        .unwrap();
    assert_eq!(results[0].result.status, BuildStatus::AlreadyValid);
    assert_eq!(
        results[0]
            .result
            .built_outputs
            .values()
            .next()
            .map(|r| &r.out_path),
        Some(&out)
    );
    let dependent = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "c", "--no-out-link", ca[0], ca[1]],
    );
    assert_eq!(
        fs::read_to_string(dependent.trim()).unwrap(),
        format!("{printed}\n")
    );
    h.assert_store_clean();
}

#[test]
fn unsandboxed_ca_derivation_reports_and_records_its_realisation() {
    ca_build(Mode::Unsandboxed);
}

#[test]
fn single_id_sandbox_ca_derivation_reports_and_records_its_realisation() {
    ca_build(Mode::SingleId);
}

const IMPURE: &str = "experimental-features = nix-command ca-derivations impure-derivations";

/// `impure` writes the time (a new output every build); `pure` may not use it.
const IMPURE_EXPR: &str = r#"
let
  impure = derivation {
    name = "impure"; system = builtins.currentSystem; builder = "/bin/sh";
    __impure = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = [ "-c" "read t < /proc/uptime; echo $t $$ > $out" ];
  };
in {
  inherit impure;
  impureOnImpure = derivation {
    name = "impure-on-impure"; system = builtins.currentSystem; builder = "/bin/sh";
    __impure = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = [ "-c" "read x < ${impure}; echo $x > $out" ];
  };
  pure = derivation {
    name = "pure"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "cat ${impure} > $out" ];
  };
}
"#;

const IMPURE_FLAGS: [&str; 2] = [
    "--extra-experimental-features",
    "ca-derivations impure-derivations",
];

/// `nix build --json` of `attr` (nix-build 2.8 itself aborts on impure outputs,
/// whose paths it looks up in the output map), its `out` path.
fn impure_build(h: &Harness, expr: &str, attr: &str) -> String {
    let args = ["build", "--json", "--no-link", "--file", expr, attr];
    let json = h.nix_ok("nix", &[&args[..], &IMPURE_FLAGS[..]].concat());
    let (_, rest) = json.split_once("\"out\":\"").expect("an out path");
    rest.split('"').next().unwrap_or_default().to_owned()
}

#[test]
fn impure_derivations_are_built_afresh_content_addressed_and_never_realised() {
    let Some(h) = Harness::with_conf(Mode::Unsandboxed, IMPURE) else {
        return;
    };
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input("impure.nix", IMPURE_EXPR);
    let first = impure_build(&h, &expr, "impure");
    let second = impure_build(&h, &expr, "impure");
    assert_ne!(first, second, "built afresh");
    let on = impure_build(&h, &expr, "impureOnImpure");
    assert_ne!(on, second, "its input built afresh too");
    let info = h.nix_ok("nix", &["path-info", "--json", &first]);
    assert!(info.contains("\"ca\":\"fixed:r:sha256:"), "{info}");
    // Impure outputs are never realisations (Nix's impureOutputHash, H("impure")).
    let id = unrooted_protocol::DrvOutput {
        drv_hash: unrooted_format::Hash::sha256(unrooted_format::hash::sha256(b"impure")),
        output_name: "out".into(),
    };
    let mut c = h.client();
    c.call(&Request::QueryRealisation(id)).unwrap();
    let cx = c.context().clone();
    match read_realisations(c.reader(), &cx).unwrap() {
        RealisationReply::Realisations(found) => assert!(found.is_empty(), "{found:?}"),
        RealisationReply::OutPaths(p) => panic!("{p:?}"),
    }
    let mut cmd = h.nix("nix").unwrap();
    let out = cmd
        .args(["build", "--no-link", "--file", &expr, "pure"])
        .args(IMPURE_FLAGS)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("-pure.drv' depends on impure derivation '"),
        "{stderr}"
    );
    assert!(!stderr.contains("building '"), "nothing built: {stderr}");
}

#[test]
fn impure_derivations_need_the_daemons_impure_derivations_feature() {
    let Some(h) = Harness::with_conf(Mode::Unsandboxed, CA) else {
        return;
    };
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input("impure.nix", IMPURE_EXPR);
    let mut cmd = h.nix("nix").unwrap();
    let out = cmd
        .args(["build", "--no-link", "--file", &expr, "impure"])
        .args(IMPURE_FLAGS)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("impure derivations need the experimental features 'impure-derivations' and 'ca-derivations'"),
        "{stderr}"
    );
}

/// `a` → `b` (floating) → `c` (deferred): realisations with dependent realisations.
const CHAIN_EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh";
    __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256";
    args = [ "-c" script ];
  };
  a = mk "ca-a" "echo a > $out";
  b = mk "ca-b" "echo ${a} > $out";
in {
  c = derivation {
    name = "ia-c"; system = builtins.currentSystem; builder = "/bin/sh";
    args = [ "-c" "echo ${b} > $out" ];
  };
}
"#;

#[test]
fn collected_outputs_take_their_realisations_with_them() {
    let Some(h) = Harness::with_conf(Mode::Unsandboxed, CA) else {
        return;
    };
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input("chain.nix", CHAIN_EXPR);
    let ca = ["--extra-experimental-features", "ca-derivations"];
    let drv = h.nix_ok("nix-instantiate", &[&expr, "-A", "c", ca[0], ca[1]]);
    let drv = h.path(drv.trim());
    let out = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "c", "--no-out-link", ca[0], ca[1]],
    );
    let mut c = h.client();
    let before = output_map(&mut c, &drv);
    assert_eq!(
        before["out"].as_ref().map(|p| h.store_dir().display(p)),
        Some(out.trim().to_owned())
    );
    drop(c);
    // Nothing is a root: every output goes, and with it every realisation (some of
    // which others depend on), without a constraint getting in the way.
    h.nix_ok("nix-store", &["--gc"]);
    assert!(!std::path::Path::new(out.trim()).exists());
    let mut c = h.client();
    let drv_still = h.nix_ok("nix-instantiate", &[&expr, "-A", "c", ca[0], ca[1]]);
    assert_eq!(h.path(drv_still.trim()), drv);
    assert_eq!(
        output_map(&mut c, &drv),
        BTreeMap::from([("out".to_owned(), None)])
    );
    // And it builds again to the same path.
    let again = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "c", "--no-out-link", ca[0], ca[1]],
    );
    assert_eq!(again, out);
}
