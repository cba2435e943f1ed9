//! Live comparisons with the real `nix-store` (Nix 2.8) on generated trees: our dump
//! is its dump, its restore of our archive dumps back identically, and our restore
//! makes the same tree (contents and modes) as its restore.
//!
//! Under `CI=true` a missing `nix-store` fails these tests instead of skipping them.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use unrooted_format::nar;
use unrooted_testkit::{
    file_modes as modes, nix_dump, nix_restore, nix_tool, seeded_tree, write_random_file, Rng,
};

const SEEDS: [u64; 4] = [1, 7, 42, 2024];

/// A generated tree plus one file of a few MiB, so large contents are always covered.
fn tree(dir: &Path, seed: u64) -> PathBuf {
    seeded_tree(dir, seed, 250, 3 * 1024 * 1024 + 5, 4 * 1024 * 1024 + 3)
}

fn our_dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    nar::dump_path(path, &mut out).unwrap_or_else(|e| panic!("dumping {}: {e}", path.display()));
    out
}

#[test]
fn dump_matches_nix_store_dump() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for seed in SEEDS {
        let root = tree(dir.path(), seed);
        let ours = our_dump(&root);
        let theirs = nix_dump(&nix_store, &root);
        assert!(
            ours == theirs,
            "seed {seed}: our NAR ({} bytes) differs from nix-store --dump ({} bytes)",
            ours.len(),
            theirs.len()
        );
    }
}

#[test]
fn dump_of_a_single_file_and_a_symlink_matches_nix() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("exe");
    write_random_file(&exe, &mut Rng::new(3), 70_001);
    fs::set_permissions(&exe, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink("/some/where/else", &link).unwrap();
    for path in [&exe, &link] {
        assert_eq!(
            our_dump(path),
            nix_dump(&nix_store, path),
            "{}",
            path.display()
        );
    }
}

#[test]
fn nix_store_restore_of_our_nar_dumps_back_identically() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for seed in SEEDS {
        let root = tree(dir.path(), seed);
        let ours = our_dump(&root);
        let restored = dir.path().join(format!("nix-restored-{seed}"));
        nix_restore(&nix_store, &ours, &restored);
        assert!(nix_dump(&nix_store, &restored) == ours, "seed {seed}");
    }
}

#[test]
fn our_restore_makes_the_tree_nix_store_restore_makes() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    for seed in SEEDS {
        let root = tree(dir.path(), seed);
        let nar_bytes = nix_dump(&nix_store, &root);
        let theirs = dir.path().join(format!("theirs-{seed}"));
        let ours = dir.path().join(format!("ours-{seed}"));
        nix_restore(&nix_store, &nar_bytes, &theirs);
        let size = nar::restore(&nar_bytes[..], &ours).expect("restoring");
        assert_eq!(size, nar_bytes.len() as u64);
        assert!(
            nix_dump(&nix_store, &ours) == nar_bytes,
            "seed {seed}: nix dump of our restore"
        );
        assert!(
            our_dump(&theirs) == nar_bytes,
            "seed {seed}: our dump of nix's restore"
        );
        assert_eq!(modes(&ours), modes(&theirs), "seed {seed}: modes differ");
    }
}

#[test]
fn dump_refuses_a_fifo_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("t");
    fs::create_dir(&root).unwrap();
    fs::write(root.join("a"), "x").unwrap();
    let fifo = root.join("pipe");
    let status = Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("running mkfifo");
    assert!(status.success());
    let err = nar::dump_path(&root, &mut Vec::new()).unwrap_err();
    match &err {
        nar::NarError::UnsupportedFileType { path, kind } => {
            assert_eq!(path, &fifo);
            assert_eq!(*kind, "fifo");
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn dump_of_a_missing_path_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let err = nar::dump_path(&missing, &mut Vec::new()).unwrap_err();
    assert!(
        matches!(&err, nar::NarError::Dump { path, source } if path == &missing && source.kind() == std::io::ErrorKind::NotFound),
        "{err:?}"
    );
}
