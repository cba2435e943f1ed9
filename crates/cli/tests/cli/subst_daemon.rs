//! Substitution end to end with the real Nix 2.8 tools: a cache made by
//! `nix copy --to file://` and served by Python's `http.server` on loopback, the
//! daemon (as an unprivileged user) substituting from it for the client (another
//! unprivileged user) instead of building; and `unrooted serve` answering
//! `nix copy --from http://…`. The builders below only succeed while a marker file
//! exists, and it is deleted before the daemon is asked: a success proves that
//! nothing was built.

use std::fs;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::{chown, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};
use unrooted_testkit::http::PythonServer;

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

/// A child process killed when dropped.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Reads lines of `child`'s stdout until one contains `http://127.0.0.1:`; the URL.
fn url_from(child: &mut Child, find: impl Fn(&str) -> Option<String>) -> String {
    let out = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(out).lines();
    loop {
        let line = lines
            .next()
            .expect("the server exited before listening")
            .expect("reading the server's output");
        if let Some(url) = find(&line) {
            return url;
        }
    }
}

struct Fixture {
    d: TestDaemon,
    expr: String,
    marker: PathBuf,
    cache: PathBuf,
    public_key: String,
    top: String,
    leaf: String,
    other: String,
}

fn owner_dir(d: &TestDaemon, name: &str) -> PathBuf {
    let p = d.root().join(name);
    fs::create_dir(&p).unwrap();
    chown(&p, Some(d.daemon_uid), None).unwrap();
    p
}

/// Builds `top` (and `other`) as the store owner in local mode, copies them to a
/// signed `file://` cache, and deletes them from the store again.
fn prepared() -> Option<Fixture> {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-build").is_none() {
        return None;
    }
    let d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let marker = d.inputs().join("marker");
    fs::write(&marker, "").unwrap();
    let expr_path = d.inputs().join("subst.nix");
    fs::write(
        &expr_path,
        EXPR.replace("@MARKER@", marker.to_str().unwrap()),
    )
    .unwrap();
    let expr = expr_path.to_str().unwrap().to_owned();
    let keys = owner_dir(&d, "keys");
    let sk = keys.join("secret");
    let pk = keys.join("public");
    d.owner_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-cache-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let build = |attr: &str| {
        d.owner_ok("nix-build", &[&expr, "-A", attr, "--no-out-link"])
            .trim()
            .to_owned()
    };
    let top = build("top");
    let other = build("other");
    let leaf = d
        .owner_ok("nix-store", &["-q", "--references", &top])
        .trim()
        .to_owned();
    assert!(leaf.ends_with("-subst-leaf"), "{leaf}");
    let cache = owner_dir(&d, "cache");
    let to = format!(
        "file://{}?secret-key={}&compression=xz",
        cache.display(),
        sk.display()
    );
    d.owner_ok("nix", &["copy", "--to", &to, &top, &other]);
    d.owner_ok("nix-store", &["--delete", &top, &leaf, &other]);
    fs::remove_file(&marker).unwrap();
    let public_key = fs::read_to_string(&pk).unwrap().trim().to_owned();
    Some(Fixture {
        d,
        expr,
        marker,
        cache,
        public_key,
        top,
        leaf,
        other,
    })
}

impl Fixture {
    fn start(&mut self, url: &str, key: &str, extra: &str) {
        self.d.kill();
        self.d.set_conf(&format!(
            "substituters = {url}\ntrusted-public-keys = {key}\nnarinfo-cache-negative-ttl = 0\n{extra}"
        ));
        self.d.start();
    }

    fn valid(&self, p: &str) -> bool {
        self.d
            .client("nix-store")
            .args(["--check-validity", p])
            .output()
            .unwrap()
            .status
            .success()
    }
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn the_daemon_substitutes_from_a_nix_made_cache_instead_of_building() {
    let Some(mut f) = prepared() else { return };
    let server = PythonServer::start(&f.cache, None);
    let url = server.url();
    let key = f.public_key.clone();
    f.start(&url, &key, "");
    assert!(!f.marker.exists());

    // QueryMissing reports what will be fetched, then BuildPaths fetches it.
    let out =
        f.d.client("nix-build")
            .args([&f.expr, "-A", "top", "--no-out-link"])
            .output()
            .unwrap();
    let stdout = f.d.expect_ok("nix-build top", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.trim(), f.top);
    assert!(
        stderr.contains("will be fetched")
            && stderr.contains(&format!("copying path '{}' from '{url}'", f.leaf)),
        "{stderr}"
    );
    assert!(!stderr.contains("building '"), "{stderr}");
    assert_eq!(
        fs::read_to_string(&f.top).unwrap().trim(),
        f.leaf,
        "the output is the one built before"
    );
    // Registered with the cache's signature and the references.
    let info = f.d.client_ok("nix", &["path-info", "--sigs", &f.top]);
    assert!(info.contains("test-cache-1:"), "{info}");
    let refs = f.d.client_ok("nix-store", &["-q", "--references", &f.top]);
    assert_eq!(refs.trim(), f.leaf);

    // QuerySubstitutablePaths / PathInfos, through `nix-store -q --size`-free means:
    // `nix path-info --store` of the daemon does not use them, `nix-env -qas` does not
    // exist for paths; EnsurePath (`nix-store -r` of an opaque path) does.
    assert!(!f.valid(&f.other));
    let r = f.d.client_ok("nix-store", &["-r", &f.other]);
    assert_eq!(r.trim(), f.other);
    f.d.assert_store_clean();

    // A derivation no cache has is built as usual.
    let built =
        f.d.client_ok("nix-build", &[&f.expr, "-A", "absent", "--no-out-link"]);
    assert_eq!(fs::read_to_string(built.trim()).unwrap(), "built here\n");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn inputs_of_a_derivation_no_cache_has_are_substituted_before_it_is_built() {
    let Some(mut f) = prepared() else { return };
    let server = PythonServer::start(&f.cache, None);
    let url = server.url();
    let key = f.public_key.clone();
    f.start(&url, &key, "");
    assert!(!f.marker.exists() && !f.valid(&f.leaf));

    // `above` is in no cache; its input `leaf` is (in `top`'s closure), and leaf's
    // builder fails without the marker: only substituting it lets `above` build.
    let out =
        f.d.client("nix-build")
            .args([&f.expr, "-A", "above", "--no-out-link"])
            .output()
            .unwrap();
    let stdout = f.d.expect_ok("nix-build above", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let building: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("building '"))
        .collect();
    assert!(
        building.len() == 1 && building[0].contains("-subst-above.drv"),
        "{stderr}"
    );
    // QueryMissing told it so: one derivation to build, the input to fetch.
    let (build_part, fetch_part) = stderr
        .split_once("will be fetched")
        .unwrap_or_else(|| panic!("{stderr}"));
    let will_build = build_part
        .split_once("will be built")
        .unwrap_or_else(|| panic!("{stderr}"))
        .1;
    assert!(
        will_build.contains("-subst-above.drv") && !will_build.contains("-subst-leaf.drv"),
        "{stderr}"
    );
    assert!(fetch_part.contains(&f.leaf), "{stderr}");
    assert!(
        stderr.contains(&format!("copying path '{}' from '{url}'", f.leaf)),
        "{stderr}"
    );
    let above = stdout.trim();
    assert!(above.ends_with("-subst-above"), "{above}");
    assert_eq!(
        fs::read_to_string(above).unwrap(),
        format!("{} above\n", f.leaf)
    );
    assert!(f.valid(&f.leaf));
    // Registered as the cache had it (signed), not as built here.
    let info = f.d.client_ok("nix", &["path-info", "--sigs", &f.leaf]);
    assert!(info.contains("test-cache-1:"), "{info}");
    f.d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn corrupted_nars_wrong_keys_and_unreachable_caches_register_nothing() {
    let Some(mut f) = prepared() else { return };
    let server = PythonServer::start(&f.cache, None);
    let url = server.url();
    // Signed by a key the daemon does not trust.
    let key = f.public_key.clone();
    let stranger = "stranger-1:".to_owned() + key.split_once(':').unwrap().1;
    f.start(&url, &stranger, "");
    let err = f.d.client_err("nix-store", &["-r", &f.leaf]);
    assert!(err.contains("lacks a valid signature"), "{err}");
    assert!(!f.valid(&f.leaf));

    // A cache nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    f.start(
        &format!("http://127.0.0.1:{port}"),
        &key,
        "download-attempts = 2\n",
    );
    let err = f.d.client_err("nix-store", &["-r", &f.leaf]);
    assert!(
        err.contains("cannot download") && err.contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert!(!f.valid(&f.leaf) && !f.valid(&f.top));
    let key = f.public_key.clone();
    // Swap the NAR files of `other` and `leaf`: both valid xz NARs, wrong hashes.
    let cache = f.cache.clone();
    let nar_of = |p: &str| -> PathBuf {
        let hash = Path::new(p).file_name().unwrap().to_str().unwrap()[..32].to_owned();
        let ni = fs::read_to_string(cache.join(format!("{hash}.narinfo"))).unwrap();
        let rel = ni.lines().find_map(|l| l.strip_prefix("URL: ")).unwrap();
        cache.join(rel)
    };
    let (leaf_nar, other_nar) = (nar_of(&f.leaf), nar_of(&f.other));
    let saved = fs::read(&other_nar).unwrap();
    fs::copy(&leaf_nar, &other_nar).unwrap();
    f.start(&url, &key, "");
    let err = f.d.client_err("nix-store", &["-r", &f.other]);
    assert!(
        err.contains("hash mismatch importing path") && err.contains(&f.other),
        "{err}"
    );
    assert!(!f.valid(&f.other));
    // With a derivation: no fallback → the error names --fallback; with it, built.
    let err =
        f.d.client_err("nix-build", &[&f.expr, "-A", "other", "--no-out-link"]);
    assert!(err.contains("--fallback"), "{err}");
    assert!(!f.valid(&f.other));
    let out = f.d.client_ok(
        "nix-build",
        &[&f.expr, "-A", "other", "--no-out-link", "--fallback"],
    );
    assert_eq!(out.trim(), f.other);
    fs::write(&other_nar, saved).unwrap();

    // A truncated NAR file.
    let top_nar = nar_of(&f.top);
    let bytes = fs::read(&top_nar).unwrap();
    fs::write(&top_nar, &bytes[..bytes.len() / 2]).unwrap();
    let err = f.d.client_err("nix-store", &["-r", &f.top]);
    assert!(err.contains(&f.top), "{err}");
    assert!(!f.valid(&f.top));
    fs::write(&top_nar, &bytes).unwrap();

    f.d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn nix_copy_from_unrooted_serve() {
    let Some(mut f) = prepared() else { return };
    let server = PythonServer::start(&f.cache, None);
    let url = server.url();
    let key = f.public_key.clone();
    f.start(&url, &key, "");
    f.d.client_ok("nix-store", &["-r", &f.top]);
    f.d.kill();
    // Serve the daemon's store as its owner, signing with a key of its own.
    let keys = f.d.root().join("keys");
    let sk = keys.join("serve-secret");
    let pk = keys.join("serve-public");
    f.d.owner_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "serve-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    for compression in ["none", "zstd", "xz"] {
        let mut child =
            f.d.owner_local(env!("CARGO_BIN_EXE_unrooted"))
                .args([
                    "serve",
                    "--listen",
                    "127.0.0.1:0",
                    "--compression",
                    compression,
                ])
                .arg("--secret-key-file")
                .arg(&sk)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("starting unrooted serve");
        let serve_url = url_from(&mut child, |l| {
            l.strip_prefix("listening on ").map(str::to_owned)
        });
        let _serve = Killed(child);
        let dest = tempfile::tempdir().unwrap();
        let out = Command::new("nix")
            .args(["copy", "--from", &serve_url, "--to"])
            .arg(format!("local?root={}", dest.path().display()))
            .arg(&f.top)
            .args(["--option", "trusted-public-keys"])
            .arg(fs::read_to_string(&pk).unwrap().trim())
            .args(["--option", "experimental-features", "nix-command"])
            .env("NIX_STORE_DIR", f.d.store_dir())
            .env("NIX_CONF_DIR", dest.path())
            .env("HOME", dest.path())
            .env_remove("NIX_REMOTE")
            .output()
            .unwrap();
        unrooted_testkit::expect_success("nix copy --from unrooted serve", &out);
        // A chroot store keeps its files in `<root>/nix/store` whatever its store dir.
        let copied = dest
            .path()
            .join("nix/store")
            .join(Path::new(&f.top).file_name().unwrap());
        assert_eq!(
            fs::read_to_string(&copied).unwrap().trim(),
            f.leaf,
            "{compression}"
        );
        let sigs = Command::new("nix")
            .args(["path-info", "--sigs", "-r", "--store"])
            .arg(format!("local?root={}", dest.path().display()))
            .arg(&f.top)
            .args(["--option", "experimental-features", "nix-command"])
            .env("NIX_STORE_DIR", f.d.store_dir())
            .env("NIX_CONF_DIR", dest.path())
            .env("HOME", dest.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&sigs.stdout);
        assert_eq!(text.lines().count(), 2, "{text}");
        assert!(text.lines().all(|l| l.contains("serve-1:")), "{text}");
        // Nothing outside the valid paths is served.
        let hp = &Path::new(&f.top).file_name().unwrap().to_str().unwrap()[..32];
        let get = |path: &str| -> String {
            use std::io::{Read, Write};
            let addr = serve_url.trim_start_matches("http://");
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            write!(
                s,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )
            .unwrap();
            let mut r = String::new();
            let _ = s.read_to_string(&mut r);
            r.lines().next().unwrap_or_default().to_owned()
        };
        assert!(get(&format!("/{hp}.narinfo")).contains("200"));
        assert!(get("/nar/../../etc/passwd").contains("404"));
        assert!(get("/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo").contains("404"));
        assert!(get("/0000000000000000000000000000000e.narinfo").contains("404"));
        let _ = fs::set_permissions(dest.path(), fs::Permissions::from_mode(0o755));
    }
    // The python server was only needed for the first substitution.
    drop(server);
}
