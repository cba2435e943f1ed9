//! Garbage collection with roots the daemon can read (its own user's links; no
//! roots helper: `unrooted-gc-without-roots-helper = true`), and temporary roots.

use std::collections::BTreeSet;
use std::path::Path;

use unrooted_format::StorePathName;
use unrooted_protocol::request::ContentAddressMethod;

use crate::harness::{lines, Harness, Mode};

fn exists(p: &str) -> bool {
    Path::new(p).symlink_metadata().is_ok()
}

#[test]
fn gc_keeps_rooted_paths_and_deletes_the_rest() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let keep = h.nix_ok("nix-store", &["--add", &h.input("keep", "keep\n")]);
    let keep = keep.trim().to_owned();
    let dead = h.nix_ok("nix-store", &["--add", &h.input("dead", "dead\n")]);
    let dead = dead.trim().to_owned();
    // An indirect root: a link of the user's, registered in gcroots/auto.
    let link = h.root().join("home/keep-root");
    let link = link.to_str().unwrap();
    h.nix_ok(
        "nix-store",
        &["-r", &keep, "--add-root", link, "--indirect"],
    );
    let roots = h.nix_ok("nix-store", &["--gc", "--print-roots"]);
    assert!(roots.contains(&format!("{link} -> {keep}")), "{roots}");
    let dead_list = lines(&h.nix_ok("nix-store", &["--gc", "--print-dead"]));
    assert!(
        dead_list.contains(&dead) && !dead_list.contains(&keep),
        "{dead_list:?}"
    );
    let live = lines(&h.nix_ok("nix-store", &["--gc", "--print-live"]));
    assert!(live.contains(&keep), "{live:?}");
    // Deleting a live path is refused.
    let err = h.nix_err("nix-store", &["--delete", &keep]);
    assert!(err.contains("since it is still alive"), "{err}");
    h.nix_ok("nix-store", &["--gc"]);
    assert!(exists(&keep) && !exists(&dead));
    assert_eq!(h.valid_paths_local(), vec![keep.clone()]);
    // The link removed, the next collection deletes the path.
    std::fs::remove_file(link).unwrap();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(!exists(&keep));
    assert!(h.valid_paths_local().is_empty());
    h.assert_store_clean();
}

#[test]
fn build_results_survive_through_their_out_link() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input(
        "e.nix",
        r#"let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
           in rec { dep = mk "dep" "echo dep > $out"; top = mk "top" "echo ${dep} > $out"; }"#,
    );
    let result = h.root().join("home/result");
    let top = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "top", "-o", result.to_str().unwrap()],
    );
    let top = top.trim().to_owned();
    let closure = lines(&h.nix_ok("nix-store", &["-q", "--requisites", &top]));
    assert_eq!(closure.len(), 2, "{closure:?}");
    h.nix_ok("nix-collect-garbage", &[]);
    // The closure of the result survives; derivations (not kept without
    // keep-derivations roots of their own) do not matter here.
    for p in &closure {
        assert!(exists(p), "{p} was collected");
    }
    std::fs::remove_file(&result).unwrap();
    h.nix_ok("nix-store", &["--gc"]);
    for p in &closure {
        assert!(!exists(p), "{p} survived");
    }
    h.assert_store_clean();
}

#[test]
fn a_temporary_root_keeps_a_path_while_its_connection_lives() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let mut c = h.client();
    let info = c
        .add_to_store(
            StorePathName::new("temp").unwrap(),
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"temp\n"[..],
        )
        .unwrap();
    let p = h.store_dir().display(&info.path);
    c.add_temp_root(&info.path).unwrap();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(exists(&p), "a temporary root was collected");
    drop(c);
    // The daemon forgets the connection's roots once it has seen it close; a
    // collection started after that deletes the path. Poll for it (the close is
    // asynchronous to this thread) up to a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        h.nix_ok("nix-store", &["--gc"]);
        if !exists(&p) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the temporary root outlived its connection"
        );
    }
}

const KEEP_EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep" "echo dep > $out";
  top = mk "top" "echo ${dep} > $out";
  other = mk "other" "echo other > $out";
}
"#;

#[test]
fn keep_derivations_and_keep_outputs() {
    let mut h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input("keep.nix", KEEP_EXPR);
    // keep-derivations (default true): a rooted output keeps its .drv.
    let result = h.root().join("home/result");
    let top = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "top", "-o", result.to_str().unwrap()],
    );
    let top = top.trim().to_owned();
    let drv = h.nix_ok("nix-store", &["-q", "--deriver", &top]);
    let drv = drv.trim().to_owned();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(exists(&top) && exists(&drv));

    h.restart_with("keep-derivations = false\n");
    h.nix_ok("nix-store", &["--gc"]);
    assert!(
        exists(&top) && !exists(&drv),
        "keep-derivations = false kept {drv}"
    );

    // keep-outputs: a rooted .drv keeps its outputs.
    let drv_root = h.root().join("home/drv-root");
    let drv_root_s = drv_root.to_str().unwrap();
    h.nix_ok(
        "nix-instantiate",
        &["--add-root", drv_root_s, "--indirect", &expr, "-A", "other"],
    );
    let drv2 = std::fs::read_link(&drv_root).unwrap();
    let drv2 = drv2.to_str().unwrap().to_owned();
    let out2 = h.nix_ok("nix-store", &["-r", &drv2]).trim().to_owned();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(
        exists(&drv2) && !exists(&out2),
        "keep-outputs = false kept {out2}"
    );
    let out2 = h.nix_ok("nix-store", &["-r", &drv2]).trim().to_owned();
    h.restart_with("keep-outputs = true\n");
    h.nix_ok("nix-store", &["--gc"]);
    assert!(
        exists(&drv2) && exists(&out2),
        "keep-outputs = true lost {out2}"
    );
    h.assert_store_clean();
}

#[test]
fn max_freed_stops_early_and_the_messages_are_nixs() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let a = h.nix_ok("nix-store", &["--add", &h.input("a", "a\n")]);
    let b = h.nix_ok("nix-store", &["--add", &h.input("b", "b\n")]);
    let (a, b) = (a.trim(), b.trim());
    h.nix_ok("nix-store", &["--gc", "--max-freed", "1"]);
    assert_eq!(
        [a, b].iter().filter(|p| exists(p)).count(),
        1,
        "--max-freed 1 deletes one path"
    );
    let out = h.nix("nix-store").unwrap().arg("--gc").output().unwrap();
    assert!(out.status.success());
    // Progress on stderr, the summary on stdout.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    for expected in [
        "finding garbage collector roots...",
        "deleting garbage...",
        "deleting unused links...",
        "store paths deleted,",
        "MiB freed",
        "deleting '",
    ] {
        assert!(text.contains(expected), "missing '{expected}' in: {text}");
    }
    assert!(!exists(a) && !exists(b));
}
