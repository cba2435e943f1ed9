//! Substitution from a `file://` cache made by the real Nix (`nix copy --to`): the
//! daemon fetches instead of building. The builders only succeed while a marker
//! file exists, deleted before the daemon is asked: a success proves that nothing
//! was built.

use std::fs;
use std::path::PathBuf;

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
fn an_untrusted_key_substitutes_nothing() {
    let Some(mut f) = prepared("") else { return };
    // Another key than the cache's.
    let other_key = f.public_key.replacen("test-cache-1", "other-key", 1);
    f.h.restart_with(&format!(
        "substituters = {}\ntrusted-public-keys = {other_key}\n",
        f.cache_url
    ));
    let err = f.h.nix_err("nix-store", &["-r", &f.other]);
    assert!(!err.is_empty());
    assert!(
        !f.valid(&f.other),
        "a path signed by an untrusted key was registered"
    );
    f.h.assert_store_clean();
}
