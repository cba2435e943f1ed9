//! The read-only store design of `unrooted-store.service`, run for real in a throw-away
//! mount namespace (root only): the unit's own `ExecStart=` script makes the store
//! read-only, and a namespace set up as systemd sets up the daemon's
//! (`BindPaths=<rw-store>:<store>`) sees it writable, on the first start and on a
//! restart alike (the Guix restart problem).

use std::fs;
use std::path::Path;
use std::process::Command;

use unrooted_deploy::host::Layout;
use unrooted_deploy::units::{unit_files, UnitParams, STORE_UNIT};

#[test]
#[ignore = "needs root; CI runs it with --include-ignored"]
fn store_is_read_only_outside_and_writable_in_every_daemon_namespace() {
    if !unrooted_testkit::require(
        rustix::process::geteuid().is_root(),
        "this test needs root (mount namespaces)",
    ) {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let base = tmp.path();
    let layout = Layout {
        store_dir: base.join("nix/store"),
        state_dir: base.join("nix/var/nix"),
        log_dir: base.join("nix/var/log/nix"),
        ..Layout::default()
    };
    fs::create_dir_all(&layout.store_dir).unwrap();
    fs::create_dir_all(layout.rw_store()).unwrap();
    let unit = unit_files(&UnitParams {
        layout: layout.clone(),
        owner: "x".into(),
        group: "x".into(),
        owner_uid: 1,
        chown_kept_build_dirs: false,
        subids: false,
    })
    .into_iter()
    .find(|u| u.name == STORE_UNIT)
    .unwrap()
    .text;
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart=/bin/sh -euc '"))
        .unwrap();
    let script = exec[..exec.rfind('\'').unwrap()].replace("$$", "$");
    let store = layout.store_dir.display().to_string();
    let rw = layout.rw_store().display().to_string();
    // The daemon's namespace as systemd makes it: private, the writable view bound
    // over the store. Run twice: a first start and a restart.
    let daemon = format!(
        "unshare -m --propagation private sh -euc 'mount --bind {rw} {store}; touch {store}/written-$0' "
    );
    let outer = format!(
        "mount --make-rshared / 2>/dev/null || true
         sh -euc '{script}' {store} {rw}
         if touch {store}/outside 2>/dev/null; then echo 'store writable outside'; exit 1; fi
         {daemon} 1
         {daemon} 2
         grep -q ' {store} ro,' /proc/self/mountinfo"
    );
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-euc", &outer])
        .output()
        .expect("unshare (util-linux)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // What the daemon wrote is in the real store directory, and nothing else is.
    let mut names: Vec<String> = fs::read_dir(Path::new(&store))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["written-1", "written-2"]);
}
