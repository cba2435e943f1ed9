use std::fs;

use super::*;
use crate::units;

fn argvs(steps: &[Step]) -> Vec<String> {
    steps
        .iter()
        .filter_map(|s| match s {
            Step::Run { argv } => Some(argv.join(" ")),
            _ => None,
        })
        .collect()
}

/// Regression: `uninstall` ran `systemctl disable --now` and `daemon-reload`
/// whatever the init system; without systemd running (a chroot, an image being
/// built, a container booted without it) both fail, so the Debian package's
/// `prerm` failed and the package could not be removed.
#[test]
fn without_systemd_running_units_are_disabled_offline() {
    let units = units::units_to_enable();
    let (before, after) = disable_steps(&units, false);
    assert_eq!(
        argvs(&before),
        ["systemctl disable unrooted-daemon.socket unrooted-find-roots.socket unrooted-store.service"]
    );
    assert!(after.is_empty());
    let (before, after) = disable_steps(&units, true);
    assert!(argvs(&before)[0].starts_with("systemctl disable --now "));
    assert_eq!(argvs(&after), ["systemctl daemon-reload"]);
    assert_eq!(
        argvs(&enable_steps(&units, false)),
        ["systemctl enable unrooted-store.service unrooted-find-roots.socket unrooted-daemon.socket"]
    );
    assert_eq!(
        argvs(&enable_steps(&units, true)),
        [
            "systemctl daemon-reload",
            "systemctl enable --now unrooted-store.service unrooted-find-roots.socket unrooted-daemon.socket",
            "systemctl try-restart unrooted-daemon.service"
        ]
    );
    // Only the running system has an init system to ask.
    let tree = Host::new(Path::new("/tmp")).unwrap();
    assert!(!systemd_running(&tree));
}

/// Regression (found by scripts/systemd-test.sh): after a migration with Debian's
/// nix-setup-systemd still installed, its tmpfiles.d entry made the socket links'
/// directory root:nix-users 0770 at the next boot, so users outside nix-users
/// could no longer reach the daemon. `install` masks it; `uninstall` unmasks.
#[test]
fn nix_setup_systemds_tmpfiles_entry_is_masked_and_unmasked() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    fs::create_dir_all(root.join("usr/lib/tmpfiles.d")).unwrap();
    fs::write(
        root.join("usr/lib/tmpfiles.d/nix-daemon.conf"),
        "d /nix/var/nix/daemon-socket 770 root nix-users\n",
    )
    .unwrap();
    fs::write(root.join("unrooted"), "binary").unwrap();
    let opts = InstallOptions {
        host: Host::new(root).unwrap(),
        layout: Layout::default(),
        owner: "nobody-such".into(),
        daemon_binary: root.join("unrooted"),
        roots_binary: None,
        sandbox_binary: None,
        chown_kept_build_dirs: false,
        subids: Some(false),
        build_slices: None,
        apparmor: Some(false),
        enable: false,
    };
    let plan = install(&opts).unwrap();
    let mask = Step::Symlink {
        path: "/etc/tmpfiles.d/nix-daemon.conf".into(),
        target: "/dev/null".into(),
    };
    assert!(plan.steps.contains(&mask), "{:?}", plan.steps);
    apply(&opts.host, &plan, &mut |_| {}).unwrap();
    let link = root.join("etc/tmpfiles.d/nix-daemon.conf");
    assert_eq!(fs::read_link(&link).unwrap(), Path::new("/dev/null"));
    // Installed again: nothing more to do.
    assert!(!install(&opts).unwrap().steps.contains(&mask));
    let removal = uninstall(&opts.host, &opts.layout, false).unwrap();
    apply(&opts.host, &removal, &mut |_| {}).unwrap();
    assert!(fs::symlink_metadata(&link).is_err());
    // An administrator's own file there is left alone.
    fs::write(&link, "# mine\n").unwrap();
    let plan = install(&opts).unwrap();
    assert!(!plan.steps.contains(&mask));
    assert!(plan
        .steps
        .iter()
        .any(|s| matches!(s, Step::Note(n) if n.contains("exists: check"))));
    let removal = uninstall(&opts.host, &opts.layout, false).unwrap();
    apply(&opts.host, &removal, &mut |_| {}).unwrap();
    assert_eq!(fs::read_to_string(&link).unwrap(), "# mine\n");
}
