//! Atomicity: a child process adding large paths is killed with SIGKILL at random
//! moments; after each kill the store must have no valid path with missing or wrong
//! contents, and reopening must sweep the dead process's temporaries.

use crate::common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::*;
use unrooted_format::{FileIngestionMethod, HashAlgo};
use unrooted_testkit::{generate_tree, Rng};

const CHILD_ENV: &str = "UNROOTED_CRASH_CHILD_ROOT";

/// The child's body: add large trees forever (the parent kills it). Does nothing
/// when run as an ordinary test.
#[test]
fn crash_child() {
    let Some(root) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let root = std::path::PathBuf::from(root);
    let mut config = config_at(&root);
    config.fsync_paths = true;
    let store = unrooted_store::LocalStore::open(config).unwrap();
    let seed: u64 = std::env::var("UNROOTED_CRASH_SEED")
        .unwrap()
        .parse()
        .unwrap();
    for i in 0.. {
        let src = root.join(format!("src-{seed}-{i}"));
        generate_tree(&src, seed * 1000 + i, 40, 4_000_000);
        let big = src.join("big");
        unrooted_testkit::write_random_file(&big, &mut Rng::new(seed + i), 8_000_000);
        let nar = nar_of(&src);
        store
            .add_ca(
                &format!("big-{i}"),
                FileIngestionMethod::Recursive,
                HashAlgo::Sha256,
                &mut &nar[..],
                &BTreeSet::new(),
                false,
            )
            .unwrap();
        let _ = std::fs::remove_dir_all(&src);
    }
}

#[test]
fn sigkill_at_random_moments_never_leaves_a_broken_valid_path() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    drop(open_at(root));
    let exe = std::env::current_exe().unwrap();
    let mut rng = Rng::new(42);
    let mut total_valid = 0;
    for round in 0..6u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash::crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, root)
            .env("UNROOTED_CRASH_SEED", round.to_string())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(150 + rng.below(900)));
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();

        let store = open_at(root);
        // Only our own fresh area remains, and it is empty: the dead one was swept.
        assert_eq!(temp_entries(&root.join("store")).len(), 1, "round {round}");
        assert!(
            temp_contents(&root.join("store")).is_empty(),
            "round {round}"
        );
        let mut log = Vec::new();
        let errors = store.verify(true, false, &mut |m| log.push(m)).unwrap();
        assert!(!errors, "round {round}: {log:?}");
        assert_eq!(log.len(), 4, "round {round}: {log:?}");
        total_valid = store.query_all_valid_paths().unwrap().len();
    }
    eprintln!("{total_valid} paths valid after the kills");
}
