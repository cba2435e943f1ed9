//! Queries and adds, through our protocol client and the Nix client.

use std::collections::BTreeSet;
use std::fs;

use unrooted_format::{nar, StorePathName};
use unrooted_protocol::handshake::TrustedFlag;
use unrooted_protocol::request::ContentAddressMethod;

use crate::harness::{lines, Harness, Mode};

#[test]
fn handshake_queries_and_text_adds() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    let mut c = h.client();
    let info = c.server_info().clone();
    // The kernel names the current user, the store owner: always trusted.
    assert_eq!(info.trust, Some(TrustedFlag::Trusted));
    assert!(
        info.daemon_version
            .as_deref()
            .unwrap_or("")
            .starts_with("2.8.0 (unrooted "),
        "{info:?}"
    );
    assert!(c.query_all_valid_paths().unwrap().is_empty());

    let name = StorePathName::new("hello.txt").unwrap();
    let added = c
        .add_to_store(
            name,
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"hello\n"[..],
        )
        .unwrap();
    let p = added.path.clone();
    assert!(c.is_valid_path(&p).unwrap());
    let info = c.query_path_info(&p).unwrap().expect("valid");
    assert!(info.references.is_empty() && info.nar_size > 0);
    assert!(info.ca.is_some(), "a text path is content-addressed");
    // Adding the same text again gives the same path.
    let again = c
        .add_to_store(
            StorePathName::new("hello.txt").unwrap(),
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"hello\n"[..],
        )
        .unwrap();
    assert_eq!(again.path, p);
    let all = c.query_all_valid_paths().unwrap();
    assert_eq!(all, BTreeSet::from([p.clone()]));
    let missing = h.path(&format!(
        "{}/{}-gone",
        h.store_dir().as_str(),
        "0".repeat(32)
    ));
    assert!(!c.is_valid_path(&missing).unwrap());
    assert!(c.query_path_info(&missing).unwrap().is_none());
    let valid = c
        .query_valid_paths(BTreeSet::from([p.clone(), missing]), false)
        .unwrap();
    assert_eq!(valid, BTreeSet::from([p.clone()]));
    // On disk, read-only, with the bytes added.
    let on_disk = h.store_dir().display(&p);
    assert_eq!(fs::read(&on_disk).unwrap(), b"hello\n");
}

#[test]
fn nix_store_add_query_dump_and_verify() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let file = h.input("data.txt", "some data\n");
    let dir = h.inputs().join("tree");
    fs::create_dir_all(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/f"), "f\n").unwrap();
    std::os::unix::fs::symlink("sub/f", dir.join("link")).unwrap();
    let p = h.nix_ok("nix-store", &["--add", &file]).trim().to_owned();
    let t = h
        .nix_ok("nix-store", &["--add", dir.to_str().unwrap()])
        .trim()
        .to_owned();
    // The same paths as Nix computes for them (the path of a flat/recursive add
    // depends only on the contents).
    assert!(p.ends_with("-data.txt") && t.ends_with("-tree"), "{p} {t}");
    assert_eq!(
        lines(&h.nix_ok("nix-store", &["-q", "--references", &p])),
        Vec::<String>::new()
    );
    assert_eq!(h.nix_ok("nix-store", &["-q", "--size", &t]).trim(), {
        let mut n = Vec::new();
        nar::dump_path(&dir, &mut n).unwrap();
        n.len().to_string()
    });
    // `--dump` is the NAR of the tree.
    let mut cmd = h.nix("nix-store").unwrap();
    let dump = cmd.args(["--dump", &t]).output().unwrap();
    let mut want = Vec::new();
    nar::dump_path(&dir, &mut want).unwrap();
    assert!(dump.status.success());
    assert_eq!(dump.stdout, want);
    // `nix path-info` sees both; the database is Nix's own.
    let all = lines(&h.nix_ok("nix", &["path-info", "--all"]));
    assert_eq!(all, lines(&format!("{p}\n{t}\n")));
    assert_eq!(h.valid_paths_local(), all);
    // `--add-fixed` and `--print-fixed-path` agree.
    let fixed = h
        .nix_ok(
            "nix-store",
            &[
                "--add-fixed",
                "--recursive",
                "sha256",
                dir.to_str().unwrap(),
            ],
        )
        .trim()
        .to_owned();
    let hash = h.local_ok("nix-hash", &["--type", "sha256", dir.to_str().unwrap()]);
    let printed = h.local_ok(
        "nix-store",
        &[
            "--print-fixed-path",
            "--recursive",
            "sha256",
            hash.trim(),
            "tree",
        ],
    );
    assert_eq!(fixed, printed.trim());
    h.nix_ok("nix-store", &["--verify", "--check-contents"]);
    h.assert_store_clean();
}

#[test]
fn export_import_round_trip_between_stores() {
    let a = Harness::new(Mode::Unsandboxed).unwrap();
    if a.nix("nix-store").is_none() {
        return;
    }
    let file = a.input("x", "exported\n");
    let p = a.nix_ok("nix-store", &["--add", &file]).trim().to_owned();
    let mut cmd = a.nix("nix-store").unwrap();
    let export = cmd.args(["--export", &p]).output().unwrap();
    assert!(export.status.success());
    // Into a second daemon's store (the store directory differs: re-add by import is
    // only possible into the same directory, so import into `a` after deleting).
    a.nix_ok("nix-store", &["--delete", &p]);
    assert!(a.valid_paths_local().is_empty());
    let mut cmd = a.nix("nix-store").unwrap();
    let mut child = cmd
        .arg("--import")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&export.stdout)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), p);
    assert_eq!(a.valid_paths_local(), vec![p]);
    a.assert_store_clean();
}

/// As with nix-daemon, which opens the store only for a connection, a started daemon
/// leaves nothing of its own in the store directory before a connection needs it:
/// its temporary area is made at the first add and goes when the connection ends;
/// and its narinfo cache is made in the state directory only by a substitution.
/// (Nix's test suite, run as a user other than the daemon's, changes the mode of
/// every entry of the store directory and removes the state directory while the
/// daemon waits for its first client.)
#[test]
fn a_started_daemon_makes_no_temporary_area_or_cache_until_needed() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    let store = h.root().join("store");
    let cache = h.root().join("state/binary-cache");
    assert!(!cache.exists(), "no narinfo cache before a substitution");
    let names = || {
        let mut v: Vec<String> = fs::read_dir(&store)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(), [".links"], "before any connection");
    {
        let mut c = h.client();
        c.add_to_store(
            StorePathName::new("t").unwrap(),
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"t"[..],
        )
        .unwrap();
    }
    // The connection's end (served on the daemon's thread) removes the area.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while names().iter().any(|n| n.starts_with(".unrooted-tmp-")) {
        assert!(std::time::Instant::now() < deadline, "{:?}", names());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(names().len(), 2, "{:?}", names());
    assert!(!cache.exists(), "no substituter is configured");
}
