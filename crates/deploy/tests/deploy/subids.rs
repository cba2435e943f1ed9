//! The store owner's subordinate range as `install` plans it, from a directory tree
//! standing in for `/` (nothing is applied, so no privilege is needed): sized for the
//! concurrent builds asked for, free in both `/etc/subuid` and `/etc/subgid`, kept
//! when the owner already has one, refused when it cannot fit 32-bit ids.

use std::fs;
use std::path::Path;

use unrooted_deploy::host::Layout;
use unrooted_deploy::plan::{self, InstallOptions, Step};
use unrooted_deploy::{DeployError, Host};

const OWNER: &str = "unrooted-subids-test";

/// A tree with the id mappers, `subuid`/`subgid` texts and a `nix.conf`.
fn tree(subuid: &str, subgid: &str, nix_conf: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let r = tmp.path();
    for d in ["usr/bin", "etc/nix"] {
        fs::create_dir_all(r.join(d)).unwrap();
    }
    for b in ["newuidmap", "newgidmap"] {
        fs::write(r.join("usr/bin").join(b), "").unwrap();
    }
    fs::write(r.join("etc/subuid"), subuid).unwrap();
    fs::write(r.join("etc/subgid"), subgid).unwrap();
    fs::write(r.join("etc/nix/nix.conf"), nix_conf).unwrap();
    fs::write(r.join("unrooted"), "binary").unwrap();
    tmp
}

fn plan(root: &Path, slices: Option<u32>) -> Result<Vec<Step>, DeployError> {
    let opts = InstallOptions {
        host: Host::new(root).unwrap(),
        layout: Layout::default(),
        owner: OWNER.into(),
        daemon_binary: root.join("unrooted"),
        roots_binary: None,
        sandbox_binary: None,
        chown_kept_build_dirs: false,
        subids: Some(true),
        apparmor: Some(false),
        build_slices: slices,
        enable: false,
    };
    plan::install(&opts).map(|p| p.steps)
}

/// The new contents of `file` in the plan, if it writes it.
fn written(steps: &[Step], file: &str) -> Option<String> {
    steps.iter().find_map(|s| match s {
        Step::File { path, contents, .. } if path == Path::new(file) => {
            Some(String::from_utf8(contents.clone()).unwrap())
        }
        _ => None,
    })
}

fn notes(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Note(n) => Some(n.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn the_range_holds_a_slice_per_build_and_is_free_in_both_files() {
    let t = tree("alice:100000:65536\n", "bob:200000:65536\n", "");
    let steps = plan(t.path(), Some(4)).unwrap();
    // Past alice's uids (to 196608) and then bob's gids (to 265536), 65536-aligned.
    let line = format!("{OWNER}:327680:262144\n");
    assert_eq!(
        written(&steps, "/etc/subuid").unwrap(),
        format!("alice:100000:65536\n{line}")
    );
    assert_eq!(
        written(&steps, "/etc/subgid").unwrap(),
        format!("bob:200000:65536\n{line}")
    );
}

#[test]
fn the_default_follows_max_jobs_and_the_cpus_up_to_128() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    for (conf, want) in [
        ("", cpus.min(128)),
        ("max-jobs = 3\n", cpus.clamp(3, 128)),
        ("max-jobs = 1000\n", 128),
        ("max-jobs = auto\n", cpus.min(128)),
    ] {
        let t = tree("", "", conf);
        let steps = plan(t.path(), None).unwrap();
        assert_eq!(
            written(&steps, "/etc/subuid").unwrap(),
            format!("{OWNER}:131072:{}\n", want * 65536),
            "{conf:?}"
        );
    }
}

#[test]
fn an_existing_range_is_kept_with_a_note_when_it_is_too_small() {
    let have = format!("{OWNER}:500000:131072\n");
    let t = tree(&have, &have, "");
    let steps = plan(t.path(), Some(2)).unwrap();
    assert_eq!(written(&steps, "/etc/subuid"), None);
    assert!(notes(&steps).iter().all(|n| !n.contains("already has")));
    let steps = plan(t.path(), Some(5)).unwrap();
    assert_eq!(written(&steps, "/etc/subuid"), None);
    assert_eq!(written(&steps, "/etc/subgid"), None);
    let n = notes(&steps);
    for file in ["/etc/subuid", "/etc/subgid"] {
        assert!(
            n.iter().any(|n| n.starts_with(&format!(
                "{OWNER} already has 131072 ids in {file}, enough for 2 concurrent builds in the id-range mode (not 5)"
            ))),
            "{n:?}"
        );
    }
}

#[test]
fn more_builds_than_32_bit_ids_hold_are_refused() {
    let t = tree("", "", "");
    match plan(t.path(), Some(65536)) {
        Err(e @ DeployError::TooManyBuildSlices { slices: 65536 }) => {
            assert!(e.to_string().contains("65536 concurrent builds"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    // Fits in 32 bits but not above the first 100000 ids.
    match plan(t.path(), Some(65535)) {
        Err(DeployError::NoFreeSubids { .. }) => {}
        other => panic!("{other:?}"),
    }
}
