//! `unrooted hash` and `unrooted store-path` against the real `nix-hash` and
//! `nix-store` 2.8 on generated trees, and their behaviour on bad input.

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use unrooted_testkit::{expect_success, generate_tree, nix_tool, write_random_file, NixEnv, Rng};

fn unrooted() -> Command {
    Command::new(env!("CARGO_BIN_EXE_unrooted"))
}

fn stdout_of(cmd: &mut Command) -> String {
    let out = cmd.output().expect("spawning");
    expect_success(&format!("{cmd:?}"), &out);
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// The vector inputs (hello.txt, tree/) shipped with the formats crate.
fn vector_input(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../format/tests/vectors/inputs")
        .join(name)
}

/// Trees with every shape the NAR format has, plus a single large file.
fn fixtures(dir: &Path) -> Vec<PathBuf> {
    let mut paths = Vec::new();
    for seed in [1u64, 2, 3] {
        let p = dir.join(format!("tree{seed}"));
        generate_tree(&p, seed, 300, 3 << 20);
        paths.push(p);
    }
    let big = dir.join("big.bin");
    write_random_file(&big, &mut Rng::new(9), (5 << 20) + 3);
    paths.push(big);
    let empty = dir.join("empty");
    fs::write(&empty, b"").unwrap();
    paths.push(empty);
    let link = dir.join("toplink");
    std::os::unix::fs::symlink("big.bin", &link).unwrap();
    paths.push(link);
    paths
}

#[test]
fn hash_path_matches_nix_hash_for_every_algorithm_and_encoding() {
    let Some(nix_hash) = nix_tool("nix-hash") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = fixtures(tmp.path());
    paths.push(vector_input("tree"));
    paths.push(vector_input("hello.txt"));
    let mut compared = 0;
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        for base32 in [false, true] {
            let mut ours = unrooted();
            ours.args(["hash", "path", "--type", algo]);
            let mut theirs = Command::new(&nix_hash);
            theirs.args(["--type", algo]);
            if base32 {
                ours.arg("--base32");
                theirs.arg("--base32");
            }
            ours.args(&paths);
            theirs.args(&paths);
            assert_eq!(
                stdout_of(&mut ours),
                stdout_of(&mut theirs),
                "{algo} base32={base32}"
            );
            compared += paths.len();
        }
    }
    assert_eq!(compared, 8 * 8);
}

#[test]
fn hash_file_matches_nix_hash_flat() {
    let Some(nix_hash) = nix_tool("nix-hash") else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let files: Vec<PathBuf> = fixtures(tmp.path())
        .into_iter()
        .filter(|p| p.is_file())
        .chain([vector_input("hello.txt")])
        .collect();
    assert_eq!(
        files.len(),
        4,
        "big.bin, empty, toplink (followed), hello.txt"
    );
    for algo in ["md5", "sha1", "sha256", "sha512"] {
        for (flag, nix_flag) in [("--base16", None), ("--base32", Some("--base32"))] {
            let ours = stdout_of(
                unrooted()
                    .args(["hash", "file", "--type", algo, flag])
                    .args(&files),
            );
            let mut theirs = Command::new(&nix_hash);
            theirs
                .args(["--flat", "--type", algo])
                .args(nix_flag)
                .args(&files);
            assert_eq!(ours, stdout_of(&mut theirs), "{algo} {flag}");
        }
        let ours = stdout_of(
            unrooted()
                .args(["hash", "file", "--truncate", "--type", algo])
                .args(&files),
        );
        let mut theirs = Command::new(&nix_hash);
        theirs
            .args(["--flat", "--truncate", "--type", algo])
            .args(&files);
        assert_eq!(ours, stdout_of(&mut theirs), "{algo} --truncate");
    }
}

#[test]
fn sri_and_base64_match_the_spec_vectors() {
    let hello = vector_input("hello.txt");
    let sri = stdout_of(unrooted().args(["hash", "file", "--sri"]).arg(&hello));
    assert_eq!(sri, "sha256-WJG1tSLV3whtD/CxEPvZ0hu0/HFjrzTQgoai6Eb2vgM=\n");
    let b64 = stdout_of(unrooted().args(["hash", "path", "--base64"]).arg(&hello));
    assert_eq!(b64, "HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM=\n");
    let tree = stdout_of(
        unrooted()
            .args(["hash", "path", "--base32"])
            .arg(vector_input("tree")),
    );
    assert_eq!(
        tree,
        "11js7lj3n1m2z7kchzgack60xdix5aj0ar0dg36zzjmgvifiqvla\n"
    );
}

fn add_to_store(env: &NixEnv, args: &[&OsStr]) -> String {
    String::from_utf8(env.run("nix-store", args)).unwrap()
}

#[test]
fn store_path_matches_nix_store_add_in_a_private_store() {
    if nix_tool("nix-store").is_none() {
        return;
    }
    let env = NixEnv::new();
    let store = env.store_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut paths = fixtures(tmp.path());
    paths.retain(|p| p.file_name() != Some(OsStr::new("toplink")));
    let mut compared = 0;
    for path in &paths {
        let ours = stdout_of(
            unrooted()
                .arg("store-path")
                .arg("--store-dir")
                .arg(&store)
                .arg(path),
        );
        let theirs = add_to_store(&env, &[OsStr::new("--add"), path.as_os_str()]);
        assert_eq!(ours, theirs, "--add {}", path.display());
        compared += 1;
        for algo in ["sha1", "sha256", "sha512"] {
            let mut args = vec![OsStr::new("--add-fixed"), OsStr::new(algo)];
            let mut ours_cmd = unrooted();
            ours_cmd
                .arg("store-path")
                .arg("--store-dir")
                .arg(&store)
                .args(["--fixed", algo]);
            if path.is_dir() {
                args.push(OsStr::new("--recursive"));
                ours_cmd.arg("--recursive");
            }
            args.push(path.as_os_str());
            let theirs = add_to_store(&env, &args);
            assert_eq!(
                stdout_of(ours_cmd.arg(path)),
                theirs,
                "--add-fixed {algo} {}",
                path.display()
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 5 * 4);
}

fn expect_one_line_error(out: &Output, needle: &str) {
    assert!(!out.status.success(), "expected failure");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one line expected, got: {err}");
    assert!(err.starts_with("unrooted: error: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn bad_input_gives_one_clear_line() {
    let tmp = tempfile::tempdir().unwrap();
    let bad_name = tmp.path().join("bad name");
    fs::write(&bad_name, b"x").unwrap();
    let out = unrooted()
        .args(["store-path", "--store-dir", "/nix/store"])
        .arg(&bad_name)
        .output()
        .unwrap();
    expect_one_line_error(&out, "forbidden character ' '");

    let missing = tmp.path().join("missing");
    let out = unrooted()
        .args(["hash", "file"])
        .arg(&missing)
        .output()
        .unwrap();
    expect_one_line_error(&out, "missing");

    let fifo = tmp.path().join("fifo");
    let status = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(status.success());
    let out = unrooted()
        .args(["hash", "path"])
        .arg(&fifo)
        .output()
        .unwrap();
    expect_one_line_error(&out, "fifo");

    let out = unrooted()
        .args(["store-path", "--store-dir", "relative/store"])
        .arg(&missing)
        .output()
        .unwrap();
    expect_one_line_error(&out, "relative/store");
}
