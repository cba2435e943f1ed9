//! Substitution from a `file://` cache made by the real Nix (`nix copy --to`): the
//! daemon fetches instead of building. The builders only succeed while a marker
//! file exists, deleted before the daemon is asked: a success proves that nothing
//! was built.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use unrooted_format::StorePath;

use crate::harness::{Harness, Mode};

const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  leaf = mk "subst-leaf" "test -e @MARKER@ && echo leaf > $out";
  top = mk "subst-top" "test -e @MARKER@ && echo ${leaf} > $out";
  other = mk "subst-other" "echo other > $out";
  absent = mk "subst-absent" "echo built here > $out";
  above = mk "subst-above" "echo ${leaf} above > $out";
}
"#;

struct Fixture {
    h: Harness,
    expr: String,
    marker: PathBuf,
    cache_url: String,
    public_key: String,
    top: String,
    leaf: String,
    other: String,
}

/// Builds `top` and `other` in local mode, copies them to a signed `file://` cache,
/// deletes them from the store, and restarts the daemon with the cache.
fn prepared(extra: &str) -> Option<Fixture> {
    let mut h = Harness::new(Mode::Unsandboxed)?;
    h.nix("nix-build")?;
    let marker = h.inputs().join("marker");
    fs::write(&marker, "").unwrap();
    let expr = h.input(
        "subst.nix",
        &EXPR.replace("@MARKER@", marker.to_str().unwrap()),
    );
    let (sk, pk) = (h.inputs().join("secret"), h.inputs().join("public"));
    h.local_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-cache-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let build = |attr: &str| {
        h.local_ok("nix-build", &[&expr, "-A", attr, "--no-out-link"])
            .trim()
            .to_owned()
    };
    let top = build("top");
    let other = build("other");
    let leaf = h
        .local_ok("nix-store", &["-q", "--references", &top])
        .trim()
        .to_owned();
    assert!(leaf.ends_with("-subst-leaf"), "{leaf}");
    let cache = h.root().join("cache");
    let to = format!(
        "file://{}?secret-key={}&compression=xz",
        cache.display(),
        sk.display()
    );
    h.local_ok("nix", &["copy", "--to", &to, &top, &other]);
    h.local_ok("nix-store", &["--delete", &top, &leaf, &other]);
    fs::remove_file(&marker).unwrap();
    let public_key = fs::read_to_string(&pk).unwrap().trim().to_owned();
    let cache_url = format!("file://{}", cache.display());
    h.restart_with(&format!(
        "substituters = {cache_url}\ntrusted-public-keys = {public_key}\n{extra}"
    ));
    Some(Fixture {
        h,
        expr,
        marker,
        cache_url,
        public_key,
        top,
        leaf,
        other,
    })
}

impl Fixture {
    fn valid(&self, p: &str) -> bool {
        self.h
            .nix("nix-store")
            .unwrap()
            .args(["--check-validity", p])
            .output()
            .unwrap()
            .status
            .success()
    }
}

#[test]
fn the_daemon_substitutes_instead_of_building() {
    let Some(f) = prepared("") else { return };
    assert!(!f.marker.exists());
    let out =
        f.h.nix("nix-build")
            .unwrap()
            .args([&f.expr, "-A", "top", "--no-out-link"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), f.top);
    assert!(
        stderr.contains("will be fetched")
            && stderr.contains(&format!("copying path '{}' from '{}'", f.leaf, f.cache_url)),
        "{stderr}"
    );
    assert!(!stderr.contains("building '"), "{stderr}");
    assert_eq!(fs::read_to_string(&f.top).unwrap().trim(), f.leaf);
    let info = f.h.nix_ok("nix", &["path-info", "--sigs", &f.top]);
    assert!(info.contains("test-cache-1:"), "{info}");
    assert_eq!(
        f.h.nix_ok("nix-store", &["-q", "--references", &f.top])
            .trim(),
        f.leaf
    );
    // EnsurePath of an opaque path substitutes it.
    assert!(!f.valid(&f.other));
    assert_eq!(f.h.nix_ok("nix-store", &["-r", &f.other]).trim(), f.other);
    // A derivation no cache has is built as usual.
    let built =
        f.h.nix_ok("nix-build", &[&f.expr, "-A", "absent", "--no-out-link"]);
    assert_eq!(fs::read_to_string(built.trim()).unwrap(), "built here\n");
    f.h.assert_store_clean();
}

#[test]
fn inputs_no_cache_has_are_substituted_before_building() {
    let Some(f) = prepared("") else { return };
    assert!(!f.valid(&f.leaf));
    let out =
        f.h.nix("nix-build")
            .unwrap()
            .args([&f.expr, "-A", "above", "--no-out-link"])
            .output()
            .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let building: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("building '"))
        .collect();
    assert!(
        building.len() == 1 && building[0].contains("-subst-above.drv"),
        "{stderr}"
    );
    let above = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(
        fs::read_to_string(&above).unwrap(),
        format!("{} above\n", f.leaf)
    );
    let info = f.h.nix_ok("nix", &["path-info", "--sigs", &f.leaf]);
    assert!(info.contains("test-cache-1:"), "{info}");
    f.h.assert_store_clean();
}

#[test]
fn untrusted_keys_and_corrupted_nars_register_nothing() {
    let Some(mut f) = prepared("") else { return };
    // Signed by a key the daemon does not trust.
    let stranger = "stranger-1:".to_owned() + f.public_key.split_once(':').unwrap().1;
    f.h.restart_with(&format!(
        "substituters = {}\ntrusted-public-keys = {stranger}\n",
        f.cache_url
    ));
    let err = f.h.nix_err("nix-store", &["-r", &f.leaf]);
    assert!(err.contains("lacks a valid signature"), "{err}");
    assert!(!f.valid(&f.leaf));
    f.h.restart_with(&format!(
        "substituters = {}\ntrusted-public-keys = {}\n",
        f.cache_url, f.public_key
    ));
    // Swap the NAR files of `other` and `leaf`: both valid xz NARs, wrong hashes.
    let cache = f.h.root().join("cache");
    let nar_of = |p: &str| -> PathBuf {
        let hash = std::path::Path::new(p)
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()[..32]
            .to_owned();
        let ni = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
        let rel = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        cache.join(rel)
    };
    let (leaf_nar, other_nar) = (nar_of(&f.leaf), nar_of(&f.other));
    let saved = fs::read(&other_nar).unwrap();
    fs::copy(&leaf_nar, &other_nar).unwrap();
    let err = f.h.nix_err("nix-store", &["-r", &f.other]);
    assert!(
        err.contains("hash mismatch importing path") && err.contains(&f.other),
        "{err}"
    );
    assert!(!f.valid(&f.other));
    // With a derivation: no fallback → the error names --fallback; with it, built.
    let err =
        f.h.nix_err("nix-build", &[&f.expr, "-A", "other", "--no-out-link"]);
    assert!(err.contains("--fallback"), "{err}");
    assert!(!f.valid(&f.other));
    let out = f.h.nix_ok(
        "nix-build",
        &[&f.expr, "-A", "other", "--no-out-link", "--fallback"],
    );
    assert_eq!(out.trim(), f.other);
    fs::write(&other_nar, saved).unwrap();
    // A truncated NAR file.
    let top_nar = nar_of(&f.top);
    let bytes = fs::read(&top_nar).unwrap();
    fs::write(&top_nar, &bytes[..bytes.len() / 2]).unwrap();
    let err = f.h.nix_err("nix-store", &["-r", &f.top]);
    assert!(err.contains(&f.top), "{err}");
    assert!(!f.valid(&f.top));
    f.h.assert_store_clean();
}

#[test]
fn query_valid_paths_with_substitute_fetches_what_the_caches_have() {
    let Some(f) = prepared("") else { return };
    let parse = |p: &str| f.h.path(p);
    let mut client = f.h.client();
    // Not in any cache: a made-up path of the same store.
    let absent = parse(&format!(
        "{}/00000000000000000000000000000000-nowhere",
        f.h.store_dir().as_str()
    ));
    let asked: BTreeSet<StorePath> = [parse(&f.other), absent.clone()].into();
    // Without the flag only validity is asked: nothing is fetched.
    let valid = client.query_valid_paths(asked.clone(), false).unwrap();
    assert!(valid.is_empty(), "{valid:?}");
    assert!(!f.valid(&f.other));
    // With it, what the cache has is substituted first (Nix's substitutePaths),
    // and what no cache has is just not valid.
    let valid = client.query_valid_paths(asked, true).unwrap();
    assert_eq!(valid, BTreeSet::from([parse(&f.other)]));
    assert!(f.valid(&f.other));
    assert_eq!(fs::read_to_string(&f.other).unwrap(), "other\n");
    assert!(!f.valid(&f.h.store_dir().display(&absent)));
    f.h.assert_store_clean();
}
