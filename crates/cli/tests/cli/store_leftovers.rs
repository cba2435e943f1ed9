//! A temporary leftover the store owner cannot remove does not stop the daemon.
//!
//! A daemon killed mid-build can leave a tree in its temporary area that its owner
//! cannot delete (still owned by subordinate ids when the host has since lost them,
//! or, as here, holding an entry that root owns). The next daemon's start-up sweep must
//! warn once, naming it, and go on: the daemon serves, other leftovers are still
//! removed, and no valid path is touched.

use std::fs;
use std::os::unix::fs::{chown, PermissionsExt};
use std::process::Command;

use crate::common::unrooted;
use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

/// The daemon's log lines at level WARN that mention `needle`.
fn warnings_naming(log: &str, needle: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("WARN") && l.contains(needle))
        .map(str::to_owned)
        .collect()
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn an_unremovable_leftover_is_reported_and_the_daemon_serves() {
    if !can_run_daemon_tests() {
        return;
    }
    let mut d = TestDaemon::new(unrooted(), "");
    d.start();
    let inputs = d.inputs();
    fs::write(inputs.join("before.txt"), "added before the crash\n").unwrap();
    let before = d.client_ok(
        "nix-store",
        &["--add", inputs.join("before.txt").to_str().unwrap()],
    );
    let before = before.trim().to_owned();
    d.kill();
    let valid_before = d.valid_paths_local();

    // As a dead daemon leaves it, the area's own directory the owner's (pid above any
    // pid_max), but with a directory inside that root owns: the owner can neither
    // delete the file in it nor the directory.
    let store = d.store_dir();
    let stuck = store.join(".unrooted-tmp-999999999-1-0");
    let root_dir = stuck.join("sandbox-0");
    fs::create_dir_all(&root_dir).unwrap();
    fs::write(root_dir.join("out"), "left by a build\n").unwrap();
    chown(&stuck, Some(d.daemon_uid), None).unwrap();
    fs::set_permissions(&stuck, fs::Permissions::from_mode(0o700)).unwrap();
    fs::set_permissions(&root_dir, fs::Permissions::from_mode(0o755)).unwrap();
    // A leftover the owner can remove: the sweep still removes it, whichever of the
    // two it meets first, opening up what is unreadable (mode 000, the area itself
    // too) and removing links without following them out of the leftover.
    let removable = store.join(".unrooted-tmp-999999998-1-0");
    let locked = removable.join("sandbox-0/build/locked");
    fs::create_dir_all(&locked).unwrap();
    fs::write(locked.join("nar-0"), "partial\n").unwrap();
    std::os::unix::fs::symlink(&before, locked.join("to-valid")).unwrap();
    std::os::unix::fs::symlink(&inputs, removable.join("to-inputs")).unwrap();
    let chown_r = Command::new("chown")
        .arg("-hR")
        .arg(d.daemon_uid.to_string())
        .arg(&removable)
        .status()
        .unwrap();
    assert!(chown_r.success());
    for dir in [&locked, &removable] {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o000)).unwrap();
    }

    d.start();
    let log = d.log();
    let shown = stuck.display().to_string();
    let warned = warnings_naming(&log, &shown);
    assert_eq!(warned.len(), 1, "one warning naming {shown}:\n{log}");
    let w = &warned[0];
    assert!(
        w.contains("cannot remove")
            && w.contains("as root")
            && w.contains("Permission denied")
            && w.contains(&root_dir.join("out").display().to_string()),
        "the warning says what could not be removed, why, and what to do: {w}"
    );
    assert!(
        !removable.exists(),
        "the removable leftover was swept:\n{log}"
    );
    assert!(warnings_naming(&log, &removable.display().to_string()).is_empty());
    assert!(inputs.join("before.txt").exists());
    // Nothing of the unremovable one was lost or changed beyond what the owner may
    // do, and nothing valid was touched.
    assert_eq!(
        fs::read_to_string(root_dir.join("out")).unwrap(),
        "left by a build\n"
    );

    // The daemon works: what was valid still is, and new paths can be added.
    assert_eq!(
        d.client_ok(
            "nix-store",
            &["--check-validity", "--print-invalid", &before]
        ),
        ""
    );
    fs::write(inputs.join("after.txt"), "added after the restart\n").unwrap();
    let after = d.client_ok(
        "nix-store",
        &["--add", inputs.join("after.txt").to_str().unwrap()],
    );
    assert_eq!(
        fs::read_to_string(after.trim()).unwrap(),
        "added after the restart\n"
    );
    d.kill();
    let mut valid_after = d.valid_paths_local();
    valid_after.retain(|p| p != after.trim());
    assert_eq!(valid_after, valid_before);
    d.assert_store_clean();

    // What an administrator does, as the warning says.
    fs::remove_dir_all(&stuck).unwrap();
    let name = stuck.file_name().unwrap().to_string_lossy().into_owned();
    assert!(!d.store_temporaries().contains(&name));
}
