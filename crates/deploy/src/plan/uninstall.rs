//! Computing `uninstall`.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{disable_steps, systemd_running, InstallPlan, Step, TMPFILES_NAME};
use crate::accounts;
use crate::host::Layout;
use crate::units::{self, UnitParams};
use crate::{DeployError, Host};

/// Computes `uninstall`: units, binaries, profile and client configuration go; the
/// store, state and logs stay unless `remove_store` (and the user always stays: files
/// elsewhere may still belong to it).
pub fn uninstall(
    host: &Host,
    layout: &Layout,
    remove_store: bool,
) -> Result<InstallPlan, DeployError> {
    layout.validate()?;
    let mut steps = Vec::new();
    let mut units: Vec<String> = units::units_to_enable();
    units.push("unrooted-daemon.service".into());
    let (disable, reload) = disable_steps(&units, systemd_running(host));
    if host.is_system() {
        steps.extend(disable);
    }
    let params = UnitParams {
        layout: layout.clone(),
        owner: String::new(),
        group: String::new(),
        owner_uid: 0,
        chown_kept_build_dirs: false,
        subids: false,
    };
    for u in units::unit_files(&params) {
        steps.push(Step::RemoveFile {
            path: layout.unit_dir.join(u.name),
        });
    }
    for p in [
        layout.admin_command(),
        layout.daemon_binary(),
        layout.sandbox_binary(),
        layout.roots_binary(),
        layout.libexec_dir.join("newuidmap"),
        layout.libexec_dir.join("newgidmap"),
        Path::new("/etc/apparmor.d").join(units::APPARMOR_PROFILE),
        "/etc/profile.d/unrooted.sh".into(),
        layout.daemon_socket(),
        layout.roots_socket(),
    ] {
        steps.push(Step::RemoveFile { path: p });
    }
    let conf = layout.conf_dir.join("nix.conf");
    if let Some(old) = accounts::read_db(&host.path(&conf))? {
        let new = units::with_conf_block(&old, None);
        if new != old {
            let meta = fs::metadata(host.path(&conf)).map_err(|source| DeployError::Read {
                path: conf.clone(),
                source,
            })?;
            steps.push(Step::File {
                path: conf,
                contents: new.into_bytes(),
                mode: meta.mode() & 0o7777,
                owner: (meta.uid(), meta.gid()),
                what: "client configuration without unrooted's block".into(),
            });
        }
    }
    // The mask of nix-setup-systemd's tmpfiles entry, if it is ours (a link to /dev/null).
    let mask = Path::new("/etc/tmpfiles.d").join(TMPFILES_NAME);
    if fs::read_link(host.path(&mask)).is_ok_and(|t| t == Path::new("/dev/null")) {
        steps.push(Step::RemoveFile { path: mask });
    }
    steps.push(Step::RemoveEmptyDir {
        path: layout.libexec_dir.clone(),
    });
    steps.push(Step::RemoveEmptyDir {
        path: layout.rw_store(),
    });
    steps.push(Step::RemoveEmptyDir {
        path: layout.private_dir(),
    });
    if remove_store {
        for p in [&layout.store_dir, &layout.state_dir, &layout.log_dir] {
            steps.push(Step::RemoveTree { path: p.clone() });
        }
    } else {
        steps.push(Step::Note(format!(
            "kept {}, {} and {} (pass --remove-store to delete them)",
            layout.store_dir.display(),
            layout.state_dir.display(),
            layout.log_dir.display()
        )));
    }
    if host.is_system() {
        steps.extend(reload);
    }
    Ok(InstallPlan {
        steps,
        next: Vec::new(),
    })
}
