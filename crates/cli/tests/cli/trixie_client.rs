//! Issue 19: Debian 13's Nix 2.26 client (a Debian 13 root made by
//! `scripts/trixie-root.sh`, entered with `unshare --mount` and `chroot`, see
//! `unrooted_testkit::trixie`) against `unrooted daemon` run unprivileged outside, as an
//! unprivileged user other than the store owner: the new CLI's workflows
//! (`nix build` with output selection, `nix profile`, `nix path-info`, `nix log`,
//! `nix copy`, `nix store …`) with profiles kept client-side in
//! `~/.local/state/nix/profiles`. Under `CI=true` a missing root fails; elsewhere the
//! tests skip.

use std::fs;
use std::path::{Path, PathBuf};

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};
use unrooted_testkit::trixie::{trixie_root, workflow_expr};

const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nmax-jobs = 2\n\
                    extra-experimental-features = flakes\n";

/// What this test adds to the derivations of [`workflow_expr`].
const EXTRA: &str = r#"  random = mk "random" "echo $RANDOM$RANDOM > $out" {};
"#;

struct Fixture {
    d: TestDaemon,
    root: PathBuf,
    expr: String,
}

impl Fixture {
    fn ok(&self, program: &str, args: &[&str]) -> String {
        self.d.trixie_ok(&self.root, program, args)
    }
    fn err(&self, program: &str, args: &[&str]) -> String {
        self.d.trixie_err(&self.root, program, args)
    }
}

fn prepared() -> Option<Fixture> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let root = trixie_root()?;
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), CONF);
    let expr = d.inputs().join("pkgs.nix");
    fs::write(&expr, workflow_expr(EXTRA)).unwrap();
    d.start();
    d.start_roots_helper();
    let expr = expr.to_str().unwrap().to_owned();
    Some(Fixture { d, root, expr })
}

/// `s` without ANSI escape sequences (`nix profile history` colours even into a pipe).
fn plain(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn lines(s: &str) -> Vec<&str> {
    s.lines().collect()
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn client_is_nix_2_26_and_talks_to_the_daemon() {
    let Some(f) = prepared() else { return };
    let v = f.ok("nix", &["--version"]);
    assert!(v.starts_with("nix (Nix) 2.26."), "{v}");
    let info = f.ok("nix", &["store", "info", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&info).expect(&info);
    assert_eq!(v["url"], "daemon", "{info}");
    assert_eq!(v["trusted"], 0, "{info}");
    // The daemon's version string is the one thing allowed to differ from nix-daemon's.
    assert!(v["version"].is_string(), "{info}");
    let file = f.d.inputs().join("added.txt");
    fs::write(&file, "added by nix 2.26\n").unwrap();
    let added = f.ok("nix-store", &["--add", file.to_str().unwrap()]);
    let added = added.trim();
    assert!(
        added.starts_with(f.d.store_dir().to_str().unwrap()),
        "{added}"
    );
    assert_eq!(f.ok("nix", &["store", "cat", added]), "added by nix 2.26\n");
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn build_with_output_selection() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    let out = f.ok(
        "nix",
        &[
            "build",
            "-f",
            e,
            "multi^dev",
            "--print-out-paths",
            "--no-link",
        ],
    );
    let dev = lines(&out);
    assert_eq!(dev.len(), 1, "{out}");
    assert!(dev[0].ends_with("-multi-dev"), "{out}");
    let out = f.ok(
        "nix",
        &[
            "build",
            "-f",
            e,
            "multi^*",
            "--print-out-paths",
            "--no-link",
        ],
    );
    let mut all = lines(&out);
    all.sort();
    assert_eq!(all.len(), 3, "{out}");
    assert!(all.iter().any(|p| p.ends_with("-multi")));
    assert!(all.iter().any(|p| p.ends_with("-multi-doc")));
    let out = f.ok(
        "nix",
        &[
            "build",
            "-f",
            e,
            "multi^out,doc",
            "--print-out-paths",
            "--no-link",
        ],
    );
    assert_eq!(lines(&out).len(), 2, "{out}");
    // --json: one object per installable with drvPath and outputs.
    let json = f.ok("nix", &["build", "-f", e, "multi", "--json", "--no-link"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
    let o = &v[0];
    assert!(
        o["drvPath"].as_str().unwrap().ends_with("-multi.drv"),
        "{json}"
    );
    assert!(
        o["outputs"]["out"].as_str().unwrap().ends_with("-multi"),
        "{json}"
    );
    // A result link in the client's home, made by the client.
    f.ok("nix", &["build", "-f", e, "hello"]);
    let link = fs::read_link(f.d.client_home().join("result")).unwrap();
    assert!(link.to_str().unwrap().ends_with("-hello"), "{link:?}");
    assert_eq!(fs::read_to_string(&link).unwrap(), "hello\n");
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn build_log_keep_going_and_rebuild() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    // -L: the builder's output reaches the client, prefixed with the derivation's name.
    let out =
        f.d.trixie_client(&f.root, "nix")
            .args(["build", "-L", "-f", e, "hello", "--no-link"])
            .output()
            .unwrap();
    let err = f.d.expect_ok("nix build -L", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("hello> building hello"), "{err}{stderr}");
    // nix log: the log the daemon kept.
    let log = f.ok("nix", &["log", "-f", e, "hello"]);
    assert!(log.contains("building hello"), "{log}");
    // --keep-going: both failures reported, the good one still built.
    let err = f.err(
        "nix",
        &[
            "build",
            "--keep-going",
            "-f",
            e,
            "fails",
            "fails2",
            "dep",
            "--no-link",
        ],
    );
    assert!(
        err.contains("fails.drv") && err.contains("fails2.drv"),
        "{err}"
    );
    assert!(err.contains("about to fail"), "{err}");
    let dep = f.ok("nix", &["path-info", "-f", e, "dep"]);
    assert!(dep.trim().ends_with("-dep"), "{dep}");
    // --rebuild: a deterministic build checks out; a non-deterministic one is refused.
    f.ok(
        "nix",
        &["build", "-f", e, "hello", "--rebuild", "--no-link"],
    );
    f.ok("nix", &["build", "-f", e, "random", "--no-link"]);
    let err = f.err(
        "nix",
        &["build", "-f", e, "random", "--rebuild", "--no-link"],
    );
    assert!(err.contains("may not be deterministic"), "{err}");
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn path_info_closure_sizes_json() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    let dep = f.ok(
        "nix",
        &["build", "-f", e, "dep", "--print-out-paths", "--no-link"],
    );
    let dep = dep.trim();
    let hello = f.ok(
        "nix",
        &["build", "-f", e, "hello", "--print-out-paths", "--no-link"],
    );
    let hello = hello.trim();
    let json = f.ok("nix", &["path-info", "-rsS", "--json", dep]);
    let v: serde_json::Value = serde_json::from_str(&json).expect(&json);
    // 2.26 prints an object keyed by path.
    let obj = v.as_object().expect(&json);
    assert_eq!(obj.len(), 2, "{json}");
    let d = &obj[dep];
    assert!(
        d["references"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == hello),
        "{json}"
    );
    assert!(d["narSize"].as_u64().unwrap() > 0, "{json}");
    assert!(
        d["closureSize"].as_u64().unwrap() > d["narSize"].as_u64().unwrap(),
        "{json}"
    );
    assert!(
        d["narHash"].as_str().unwrap().starts_with("sha256-"),
        "{json}"
    );
    assert!(
        d["deriver"].as_str().unwrap().ends_with("-dep.drv"),
        "{json}"
    );
    let why = f.ok("nix", &["why-depends", dep, hello]);
    assert!(why.contains("-dep") && why.contains("-hello"), "{why}");
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn profiles_are_client_side() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    let home = f.d.client_home();
    f.ok("nix", &["profile", "install", "-f", e, "pkg"]);
    let profiles = home.join(".local/state/nix/profiles");
    let link = fs::read_link(profiles.join("profile")).unwrap();
    assert_eq!(link, Path::new("profile-1-link"));
    let list = f.ok("nix", &["profile", "list"]);
    assert!(list.contains("-pkg-1.0"), "{list}");
    f.ok("nix", &["profile", "install", "-f", e, "hello"]);
    let out = f.ok("sh", &["-c", "~/.nix-profile/bin/pkg"]);
    assert_eq!(out, "pkg 1.0\n");
    let hist = plain(&f.ok("nix", &["profile", "history"]));
    assert!(
        hist.contains("Version 1 ") && hist.contains("Version 2 "),
        "{hist}"
    );
    f.ok("nix", &["profile", "remove", "hello"]);
    let list = f.ok("nix", &["profile", "list"]);
    assert!(!list.contains("-hello"), "{list}");
    f.ok("nix", &["profile", "rollback"]);
    let list = f.ok("nix", &["profile", "list"]);
    assert!(list.contains("-hello"), "{list}");
    f.ok("nix", &["profile", "wipe-history"]);
    let hist = plain(&f.ok("nix", &["profile", "history"]));
    // Rollback made generation 2 current again; wipe-history keeps only it.
    assert!(
        !hist.contains("Version 1 ") && hist.contains("Version 2 ") && !hist.contains("Version 3 "),
        "{hist}"
    );
    // Nothing of it went to the daemon's per-user profile directory (which the daemon
    // makes for 2.8 clients at connection; 2.26 never writes there).
    let per_user =
        f.d.state_dir()
            .join("profiles/per-user/unrooted-test-client");
    let entries = fs::read_dir(&per_user).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "{}", per_user.display());
    // The profile generations are GC roots the daemon honours (via the client's
    // indirect roots or the roots helper): nothing the profile holds is collected.
    f.ok("nix", &["store", "gc"]);
    let out = f.ok("sh", &["-c", "~/.nix-profile/bin/pkg"]);
    assert_eq!(out, "pkg 1.0\n");
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn nix_env_with_client_side_profiles() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    f.ok("nix-env", &["-f", e, "-iA", "pkg"]);
    let q = f.ok("nix-env", &["-q"]);
    assert_eq!(q.trim(), "pkg-1.0");
    let home = f.d.client_home();
    assert!(home.join(".local/state/nix/profiles/profile").exists());
    f.ok("nix-env", &["-e", "pkg"]);
    assert_eq!(f.ok("nix-env", &["-q"]).trim(), "");
    f.ok("nix-env", &["--rollback"]);
    assert_eq!(f.ok("nix-env", &["-q"]).trim(), "pkg-1.0");
    f.ok("nix-collect-garbage", &["-d"]);
    assert_eq!(f.ok("nix-env", &["--list-generations"]).lines().count(), 1);
    assert_eq!(f.ok("nix-env", &["-q"]).trim(), "pkg-1.0");
    // The daemon's per-user profile directory was never needed.
    let per_user =
        f.d.state_dir()
            .join("profiles/per-user/unrooted-test-client");
    let entries = fs::read_dir(&per_user).map(|d| d.count()).unwrap_or(0);
    assert_eq!(entries, 0, "{}", per_user.display());
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn store_subcommands() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    let inputs = f.d.inputs();
    let dir = inputs.join("tree");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("a"), "A\n").unwrap();
    fs::write(dir.join("b"), "A\n").unwrap();
    let added = f.ok("nix", &["store", "add", dir.to_str().unwrap()]);
    let added = added.trim();
    assert!(added.ends_with("-tree"), "{added}");
    let ls = f.ok("nix", &["store", "ls", "-R", added]);
    assert!(ls.contains("./a") && ls.contains("./b"), "{ls}");
    assert_eq!(f.ok("nix", &["store", "cat", &format!("{added}/a")]), "A\n");
    let nar =
        f.d.trixie_client(&f.root, "nix")
            .args(["store", "dump-path", added])
            .output()
            .unwrap();
    assert!(nar.status.success());
    assert!(nar.stdout.len() > 100);
    // path-from-hash-part
    let base = Path::new(added).file_name().unwrap().to_str().unwrap();
    let hash = &base[..32];
    assert_eq!(
        f.ok("nix", &["store", "path-from-hash-part", hash]).trim(),
        added
    );
    // verify: contents fine; a content-addressed path needs no signature (as in Nix's
    // verify.cc), a built input-addressed one without signatures fails --sigs-needed.
    let hello = f.ok(
        "nix",
        &["build", "-f", e, "hello", "--print-out-paths", "--no-link"],
    );
    let hello = hello.trim();
    f.ok("nix", &["store", "verify", added, hello]);
    f.ok("nix", &["store", "verify", "--sigs-needed", "1", added]);
    let err = f.err("nix", &["store", "verify", "--sigs-needed", "1", hello]);
    assert!(err.contains("is untrusted"), "{err}");
    let ca = f.ok("nix", &["store", "make-content-addressed", hello, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&ca).expect(&ca);
    let rewritten = v["rewrites"][hello].as_str().expect(&ca);
    assert!(rewritten.ends_with("-hello"), "{ca}");
    let info = f.ok("nix", &["path-info", "--json", rewritten]);
    assert!(info.contains("\"ca\":\"fixed:r:sha256:"), "{info}");
    // optimise: any user may ask, as with nix-daemon.
    let opt =
        f.d.trixie_client(&f.root, "nix")
            .args(["store", "optimise"])
            .output()
            .unwrap();
    f.d.expect_ok("nix store optimise", &opt);
    let (a, b) = (
        fs::metadata(format!("{added}/a")).unwrap(),
        fs::metadata(format!("{added}/b")).unwrap(),
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        a.ino(),
        b.ino(),
        "equal files are hard-linked after optimise"
    );
    // delete: a live path is refused, a dead one deleted; --ignore-liveness is refused
    // for an untrusted user.
    let dep = f.ok("nix", &["build", "-f", e, "dep", "--print-out-paths"]);
    let dep = dep.trim();
    let err = f.err("nix", &["store", "delete", dep]);
    assert!(err.contains("alive") || err.contains("live"), "{err}");
    let err = f.err("nix", &["store", "delete", "--ignore-liveness", dep]);
    assert!(err.contains("trusted") || err.contains("ignore"), "{err}");
    assert!(Path::new(dep).exists());
    f.ok("nix", &["store", "delete", added]);
    assert!(!Path::new(added).exists());
    // gc: the result link (an indirect root made by the client) keeps dep.
    let gc = f.ok("nix", &["store", "gc"]);
    eprintln!("{gc}");
    assert!(Path::new(dep).exists());
    // repair: a trusted-only operation in Nix; an untrusted user gets an error.
    let err = f.err("nix", &["store", "repair", dep]);
    assert!(err.contains("trusted") || err.contains("repair"), "{err}");
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn copy_to_and_from_a_file_cache() {
    let Some(f) = prepared() else { return };
    let e = f.expr.as_str();
    let dep = f.ok(
        "nix",
        &["build", "-f", e, "dep", "--print-out-paths", "--no-link"],
    );
    let dep = dep.trim();
    let cache = f.d.client_home().join("cache");
    let url = format!("file://{}", cache.display());
    f.ok("nix", &["copy", "--to", &url, dep]);
    assert!(cache.join("nix-cache-info").exists());
    let narinfos = fs::read_dir(&cache)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".narinfo")
        })
        .count();
    assert_eq!(narinfos, 2);
    // Delete both from the store, then copy them back: unsigned paths are refused for
    // an untrusted user, even with --no-check-sigs (nix-daemon ignores it from them).
    f.ok("nix", &["store", "delete", dep]);
    assert!(!Path::new(dep).exists());
    for extra in [&[][..], &["--no-check-sigs"][..]] {
        let mut args = vec!["copy"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--from", &url, dep]);
        let err = f.err("nix", &args);
        assert!(err.contains("lacks a signature by a trusted key"), "{err}");
    }
    // Signed by the client with a key the daemon trusts, the copy back is accepted.
    let sk = f.ok("nix", &["key", "generate-secret", "--key-name", "test-1"]);
    let sk_file = f.d.client_home().join("sk");
    fs::write(&sk_file, &sk).unwrap();
    let pk =
        f.d.trixie_client(&f.root, "sh")
            .args(["-c", "nix key convert-secret-to-public < sk"])
            .output()
            .unwrap();
    let pk = f.d.expect_ok("nix key convert-secret-to-public", &pk);
    let mut f = f;
    f.d.kill();
    f.d.set_conf(&format!("{CONF}trusted-public-keys = {}\n", pk.trim()));
    f.d.start();
    let signed = f.d.client_home().join("signed");
    let url = format!(
        "file://{}?secret-key={}",
        signed.display(),
        sk_file.display()
    );
    f.ok(
        "nix",
        &[
            "copy",
            "--from",
            &format!("file://{}", cache.display()),
            "--to",
            &url,
            "--no-check-sigs",
            dep,
        ],
    );
    let back = format!("file://{}", signed.display());
    f.ok("nix", &["copy", "--from", &back, dep]);
    assert!(Path::new(dep).exists());
    let info = f.ok("nix", &["path-info", "--json", dep]);
    assert!(info.contains("test-1:"), "{info}");
}

/// A local flake whose only input is a path (no network, no registry): `nix build`,
/// `nix shell -c`, and `nix profile install` / `upgrade` of a flake element.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn local_flake_build_shell_and_profile_upgrade() {
    let Some(f) = prepared() else { return };
    let inputs = f.d.inputs();
    let src = inputs.join("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("version"), "1.0").unwrap();
    let flake = f.d.client_home().join("flake");
    fs::create_dir(&flake).unwrap();
    let text = format!(
        r#"{{
  inputs.src = {{ url = "path:{}"; flake = false; }};
  outputs = {{ self, src }}: {{
    packages.x86_64-linux.default = derivation {{
      name = "tool-${{builtins.readFile (src + "/version")}}";
      system = "x86_64-linux"; builder = "/bin/sh";
      args = [ "-c" "mkdir -p $out/bin; printf '#!/bin/sh\necho tool %s\n' ${{builtins.readFile (src + "/version")}} > $out/bin/tool; chmod +x $out/bin/tool" ];
    }};
  }};
}}
"#,
        src.display()
    );
    fs::write(flake.join("flake.nix"), text).unwrap();
    let (uid, gid) = f.d.client_ids();
    std::os::unix::fs::chown(&flake, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(flake.join("flake.nix"), Some(uid), Some(gid)).unwrap();
    let r = format!("path:{}", flake.display());
    let out = f.ok("nix", &["build", &r, "--print-out-paths", "--no-link"]);
    assert!(out.trim().ends_with("-tool-1.0"), "{out}");
    let out = f.ok("nix", &["shell", &r, "-c", "tool"]);
    assert_eq!(out, "tool 1.0\n");
    f.ok("nix", &["profile", "install", &r]);
    assert_eq!(f.ok("sh", &["-c", "~/.nix-profile/bin/tool"]), "tool 1.0\n");
    fs::write(src.join("version"), "2.0").unwrap();
    f.ok("nix", &["flake", "update", "--flake", &r]);
    f.ok("nix", &["profile", "upgrade", "--all"]);
    assert_eq!(f.ok("sh", &["-c", "~/.nix-profile/bin/tool"]), "tool 2.0\n");
}

/// Issue 19, item 5: a temporary root a connection added (twice, as a client that
/// does not skip repeats would) keeps its path alive against another user's
/// `nix store delete` until that connection closes, and not after; and nothing of
/// it is left in `<state>/temproots` (nix-daemon's connection keeps its roots in
/// `temproots/<pid>` and removes the file as it exits; unrooted keeps a
/// connection's roots in memory and writes no file).
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn temp_roots_last_for_the_connections_life() {
    let Some(f) = prepared() else { return };
    let file = f.d.inputs().join("temp.txt");
    fs::write(&file, "held by a temp root\n").unwrap();
    let p = f.ok("nix-store", &["--add", file.to_str().unwrap()]);
    let p = p.trim().to_owned();
    let base = Path::new(&p).file_name().unwrap().to_str().unwrap();
    let path = unrooted_format::StorePath::from_base_name(base).unwrap();
    let dir = unrooted_format::StoreDir::new(f.d.store_dir().to_str().unwrap()).unwrap();
    let (uid, gid) = f.d.other_ids();
    let stream = f.d.connect_as(uid, gid).unwrap();
    let mut holder = unrooted_protocol::client::Client::handshake(
        stream.try_clone().unwrap(),
        stream,
        dir,
        unrooted_protocol::ProtocolVersion::new(1, 38),
    )
    .unwrap();
    holder.add_temp_root(&path).unwrap();
    holder.add_temp_root(&path).unwrap();
    let err = f.err("nix", &["store", "delete", &p]);
    assert!(err.contains("since it is still alive"), "{err}");
    // Still alive after the other user's attempt: the root is the holder's, for its
    // connection's whole life.
    let err = f.err("nix", &["store", "delete", &p]);
    assert!(err.contains("since it is still alive"), "{err}");
    drop(holder);
    // The daemon notices the closed connection and drops its roots.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let out =
            f.d.trixie_client(&f.root, "nix")
                .args(["store", "delete", &p])
                .output()
                .unwrap();
        if out.status.success() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still alive after the holder disconnected: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(!Path::new(&p).exists());
    let temproots = f.d.state_dir().join("temproots");
    let left: Vec<_> = fs::read_dir(&temproots)
        .unwrap_or_else(|e| panic!("{}: {e}", temproots.display()))
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left in {}: {left:?}", temproots.display());
}

/// A private sshd on 127.0.0.1 letting `unrooted-test-ssh` in with one key (the
/// set-up of `remote_ssh.rs`), killed on drop.
pub(crate) struct Sshd {
    pub(crate) dir: tempfile::TempDir,
    child: std::process::Child,
    pub(crate) port: u16,
}

impl Sshd {
    pub(crate) fn start(user: &str, client_pub: &str) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::Builder::new()
            .prefix("unrooted-sshd-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let key = dir.path().join("host_ed25519");
        let ok = std::process::Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-f"])
            .arg(&key)
            .status()
            .unwrap();
        assert!(ok.success());
        fs::write(dir.path().join("authorized_keys"), client_pub).unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let conf = dir.path().join("sshd_config");
        fs::write(
            &conf,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {key}\nPidFile {pid}\n\
                 AuthorizedKeysFile {keys}\nStrictModes no\nUsePAM no\n\
                 PasswordAuthentication no\nKbdInteractiveAuthentication no\n\
                 PermitRootLogin no\nAllowUsers {user}\nX11Forwarding no\n\
                 AllowTcpForwarding no\nPrintMotd no\n",
                key = key.display(),
                pid = dir.path().join("sshd.pid").display(),
                keys = dir.path().join("authorized_keys").display(),
            ),
        )
        .unwrap();
        fs::create_dir_all("/run/sshd").unwrap();
        let child = std::process::Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(fs::File::create(dir.path().join("sshd.log")).unwrap())
            .spawn()
            .expect("starting sshd");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(std::time::Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Self { dir, child, port }
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("sshd.log")).unwrap_or_default()
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 19, item 2: `nix copy --to ssh-ng://` with the 2.26 client, as an
/// unprivileged user, from a store of its own to a second store served by `unrooted
/// daemon --stdio` (the SSH user's remote program, relaying to the test daemon) over
/// a private sshd; and back with `--from`. The client side is all Debian 13: Nix
/// 2.26 runs the trixie root's own `ssh` (`openssh-client`, which
/// `scripts/trixie-root.sh` installs there); the sshd is the host's.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn copy_to_ssh_ng_store_served_by_unrooted_stdio() {
    use std::os::unix::fs::{chown, PermissionsExt};
    const SSH_USER: &str = "unrooted-test-ssh";
    if !unrooted_testkit::require(
        Path::new("/usr/sbin/sshd").exists() && Path::new("/usr/bin/ssh-keygen").exists(),
        "sshd is not installed (apt-get install openssh-server, scripts/setup.sh)",
    ) {
        return;
    }
    if !unrooted_testkit::require(
        crate::remote_ssh::ssh_user().is_some(),
        "the SSH test user could not be made",
    ) {
        return;
    }
    let Some(f) = prepared() else { return };
    if !unrooted_testkit::require(
        f.root.join("usr/bin/ssh").is_file(),
        "the Debian 13 root has no ssh (scripts/trixie-root.sh installs openssh-client)",
    ) {
        return;
    }
    let d = &f.d;
    let home = d.client_home();
    let (uid, gid) = d.client_ids();
    let ssh_dir = home.join("ssh");
    fs::create_dir(&ssh_dir).unwrap();
    let key = ssh_dir.join("id_ed25519");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let sshd = Sshd::start(
        SSH_USER,
        &fs::read_to_string(ssh_dir.join("id_ed25519.pub")).unwrap(),
    );
    let host_key = fs::read_to_string(sshd.dir.path().join("host_ed25519.pub")).unwrap();
    let known = ssh_dir.join("known_hosts");
    fs::write(&known, format!("[127.0.0.1]:{} {host_key}", sshd.port)).unwrap();
    for p in [&ssh_dir, &key, &known, &ssh_dir.join("id_ed25519.pub")] {
        chown(p, Some(uid), Some(gid)).unwrap();
    }
    let program = d.root().join("remote-program");
    fs::write(
        &program,
        format!(
            "#!/bin/sh\nexport NIX_DAEMON_SOCKET_PATH={}\nexec {} daemon \"$@\"\n",
            d.socket().display(),
            env!("CARGO_BIN_EXE_unrooted")
        ),
    )
    .unwrap();
    fs::set_permissions(&program, fs::Permissions::from_mode(0o755)).unwrap();
    let uri = format!(
        "ssh-ng://{SSH_USER}@127.0.0.1?remote-program={}&ssh-key={}",
        program.display(),
        key.display()
    );
    let sshopts = format!(
        "-p {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        sshd.port,
        known.display()
    );
    let local = format!(
        "local?store={}&real={h}/real&state={h}/state&log={h}/log",
        d.store_dir().display(),
        h = home.display()
    );
    let run = |args: &[&str]| {
        let out = d
            .trixie_client(&f.root, "nix")
            .env("NIX_SSHOPTS", &sshopts)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "(nix 2.26) nix {} failed:\n{}\n--- sshd ---\n{}\n--- daemon ---\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr),
            sshd.log(),
            d.log()
        );
        out
    };
    let info = run(&["store", "info", "--store", &uri]);
    let said =
        String::from_utf8_lossy(&info.stdout).into_owned() + &String::from_utf8_lossy(&info.stderr);
    assert!(said.contains("unrooted"), "{said}");
    let file = home.join("hello.txt");
    fs::write(&file, "hello over ssh-ng from nix 2.26\n").unwrap();
    chown(&file, Some(uid), Some(gid)).unwrap();
    let added = run(&[
        "store",
        "add-file",
        "--store",
        &local,
        file.to_str().unwrap(),
    ]);
    let path = String::from_utf8_lossy(&added.stdout).trim().to_owned();
    assert!(path.starts_with(d.store_dir().to_str().unwrap()), "{path}");
    assert!(!Path::new(&path).exists());
    run(&["copy", "--from", &local, "--to", &uri, &path]);
    assert_eq!(
        fs::read_to_string(&path).unwrap(),
        "hello over ssh-ng from nix 2.26\n"
    );
    let verify = run(&["path-info", "--json", &path]);
    assert!(
        String::from_utf8_lossy(&verify.stdout).contains("\"ca\":\"fixed:"),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    // And back into another store of the client's (QueryPathInfo, NarFromPath).
    let back = local
        .replace("/real&", "/real2&")
        .replace("/state&", "/state2&");
    run(&["copy", "--from", &uri, "--to", &back, &path]);
    eprintln!("copied {path} to {uri} and back ({said})");
    let copied = home
        .join("real2")
        .join(Path::new(&path).file_name().unwrap());
    assert_eq!(
        fs::read_to_string(copied).unwrap(),
        "hello over ssh-ng from nix 2.26\n"
    );
}
