//! Computing `install`: the steps, in order, for the store owner, the store and state,
//! the binaries, subordinate ids, units, AppArmor, Debian's tmpfiles entry and the
//! client side.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    default_build_slices, enable_steps, has_uidmap, is_root, mapper_steps, own_ids, sysctl,
    systemd_running, InstallOptions, InstallPlan, Owners, Step, NIX_SETUP_TMPFILES, TMPFILES_NAME,
};
use crate::accounts::{self, IDS_PER_BUILD};
use crate::host::Layout;
use crate::units::{self, UnitParams};
use crate::{DeployError, Host};

/// Computes the installation.
pub fn install(opts: &InstallOptions) -> Result<InstallPlan, DeployError> {
    let host = &opts.host;
    let l = &opts.layout;
    l.validate()?;
    if opts.owner == "root" {
        return Err(DeployError::OwnerIsRoot);
    }
    let mut steps = Vec::new();
    let owners = owners(opts, &mut steps)?;
    // The store and state: left alone when a root nix-daemon's store is found, which
    // `migrate` hands over in an order that survives interruption.
    let foreign = foreign_store(host, l, owners.owner.0);
    match foreign {
        Some(uid) => steps.push(Step::Note(format!(
            "{} exists and belongs to uid {uid}: not changing it; run `unrooted migrate --store-owner {}` after this",
            l.store_dir.display(),
            opts.owner
        ))),
        None => {
            store_and_state_steps(l, owners.owner, &mut steps);
            socket_link_steps(l, owners.owner, &mut steps);
        }
    }
    private_dir_steps(l, owners.root, &mut steps);
    binary_steps(opts, owners, &mut steps)?;
    let subids = opts.subids.unwrap_or_else(|| has_uidmap(host));
    if subids {
        subid_steps(opts, owners, &mut steps)?;
    } else {
        steps.push(Step::Note(
            "newuidmap not installed: builds run as the store owner inside their namespaces; install uidmap and re-run for a separate id range per build".into(),
        ));
    }
    unit_steps(opts, owners, subids, &mut steps);
    apparmor_steps(opts, owners.root, &mut steps);
    if foreign.is_none() && host.path(Path::new(NIX_SETUP_TMPFILES)).is_file() {
        tmpfiles_mask_steps(host, l, owners.root, &mut steps);
    }
    client_steps(host, l, owners.root, &mut steps)?;
    let next = enabling(opts, foreign.is_some(), &mut steps);
    Ok(InstallPlan { steps, next })
}

/// The store owner's ids (a user created by the plan's first steps on the running
/// system) and root's; both the caller's own when it cannot give files away.
fn owners(opts: &InstallOptions, steps: &mut Vec<Step>) -> Result<Owners, DeployError> {
    let existing = accounts::lookup_user(&opts.host, &opts.owner)?;
    let caller_can_chown = is_root();
    let owner = match (&existing, opts.host.is_system()) {
        (Some(a), _) if a.uid == 0 => return Err(DeployError::OwnerIsRoot),
        (Some(a), _) if caller_can_chown => (a.uid, a.gid),
        (None, true) => new_owner_steps(&opts.host, opts, steps)?,
        _ => {
            steps.push(Step::Note(format!(
                "user {} does not exist here (or cannot be given files): files meant for it are owned by uid {}",
                opts.owner,
                own_ids().0
            )));
            own_ids()
        }
    };
    let root = if caller_can_chown { (0, 0) } else { own_ids() };
    Ok(Owners { owner, root })
}

/// The store, state and log directories, the store owner's.
fn store_and_state_steps(l: &Layout, o: (u32, u32), steps: &mut Vec<Step>) {
    for (dir, mode) in [
        (l.store_dir.clone(), 0o755),
        (l.state_dir.clone(), 0o755),
        (l.state_dir.join("db"), 0o755),
        (l.state_dir.join("temproots"), 0o755),
        (l.state_dir.join("profiles"), 0o755),
        (l.state_dir.join("profiles/per-user"), 0o755),
        (l.state_dir.join("gcroots"), 0o755),
        (l.state_dir.join("gcroots/per-user"), 0o755),
        (l.state_dir.join("gcroots/auto"), 0o755),
        (l.log_dir.clone(), 0o755),
        (l.log_dir.join("drvs"), 0o755),
    ] {
        steps.push(Step::Dir {
            path: dir,
            mode,
            owner: o,
        });
    }
    steps.push(Step::Symlink {
        path: l.state_dir.join("gcroots/profiles"),
        target: l.state_dir.join("profiles"),
    });
}

/// The well-known socket paths are links to the root-owned runtime directory, whose
/// sockets systemd creates (see `units`). A foreign store's state keeps its live
/// socket until `migrate`; the next `install` makes the links.
fn socket_link_steps(l: &Layout, o: (u32, u32), steps: &mut Vec<Step>) {
    let links = [
        (
            l.state_dir.join("daemon-socket"),
            l.daemon_socket(),
            l.daemon_socket_real(),
        ),
        (
            l.state_dir.join("gc-roots-socket"),
            l.roots_socket(),
            l.roots_socket_real(),
        ),
    ];
    for (link_dir, link, target) in links {
        steps.push(Step::Dir {
            path: link_dir,
            mode: 0o755,
            owner: o,
        });
        steps.push(Step::Symlink { path: link, target });
    }
}

/// root's private directory and the mount point of the store's writable view.
fn private_dir_steps(l: &Layout, r: (u32, u32), steps: &mut Vec<Step>) {
    steps.push(Step::Dir {
        path: l.private_dir(),
        mode: 0o700,
        owner: r,
    });
    steps.push(Step::MountPoint {
        path: l.rw_store(),
        source: l.store_dir.clone(),
        mode: 0o755,
        owner: r,
    });
}

/// Binaries outside the store, owned by root: the store owner can replace nothing
/// root runs. The daemon's copy is executable only by the owner's group, so an
/// AppArmor profile attached to it grants user namespaces to nobody else.
fn binary_steps(
    opts: &InstallOptions,
    owners: Owners,
    steps: &mut Vec<Step>,
) -> Result<(), DeployError> {
    let (l, o, r) = (&opts.layout, owners.owner, owners.root);
    steps.push(Step::Dir {
        path: l.libexec_dir.clone(),
        mode: 0o755,
        owner: r,
    });
    steps.push(Step::File {
        path: l.daemon_binary(),
        contents: read_binary(&opts.daemon_binary)?,
        mode: 0o750,
        owner: (r.0, o.1),
        what: "the daemon's unrooted binary".into(),
    });
    if let Some(dir) = l.admin_command().parent() {
        steps.push(Step::Dir {
            path: dir.to_owned(),
            mode: 0o755,
            owner: r,
        });
    }
    steps.push(Step::Symlink {
        path: l.admin_command(),
        target: l.daemon_binary(),
    });
    if let Some(src) = &opts.sandbox_binary {
        steps.push(Step::File {
            path: l.sandbox_binary(),
            contents: read_binary(src)?,
            mode: 0o750,
            owner: (r.0, o.1),
            what: "the sandbox helper".into(),
        });
    }
    match &opts.roots_binary {
        Some(src) => steps.push(Step::File {
            path: l.roots_binary(),
            contents: read_binary(src)?,
            mode: 0o755,
            owner: r,
            what: "the roots helper".into(),
        }),
        None => steps.push(Step::Note(format!(
            "unrooted-find-roots not found beside this binary: install it as {} (root, 0755) or pass --find-roots-binary; until then garbage collection refuses to run",
            l.roots_binary().display()
        ))),
    }
    Ok(())
}

/// Subordinate ids: only useful with newuidmap, which is also what the units must
/// allow for (see `units`). Each concurrent build holds its own slice of 65,536 ids,
/// so the range is sized for as many builds as the daemon runs at once; a range free
/// in both files, so that uids and gids start alike.
fn subid_steps(
    opts: &InstallOptions,
    owners: Owners,
    steps: &mut Vec<Step>,
) -> Result<(), DeployError> {
    let (host, l, o, r) = (&opts.host, &opts.layout, owners.owner, owners.root);
    let slices = opts
        .build_slices
        .unwrap_or_else(|| default_build_slices(host, l));
    let count = slices
        .checked_mul(IDS_PER_BUILD)
        .ok_or(DeployError::TooManyBuildSlices { slices })?;
    let files = ["/etc/subuid", "/etc/subgid"];
    let mut texts = Vec::new();
    for file in files {
        let path = host.path(Path::new(file));
        texts.push((path.clone(), accounts::read_db(&path)?.unwrap_or_default()));
    }
    let both = format!("{}\n{}", texts[0].1, texts[1].1);
    for (file, (path, text)) in files.iter().zip(&texts) {
        if let Some(have) = accounts::subid_range_of(text, &opts.owner, Some(o.0)) {
            let fits = have.count / u64::from(IDS_PER_BUILD);
            if fits < u64::from(slices) {
                steps.push(Step::Note(format!(
                    "{} already has {} ids in {file}, enough for {fits} concurrent builds in the id-range mode (not {slices}): the others wait for a slice; for more, replace that line with a range of {count} ids (unrooted doctor shows what the daemon will use)",
                    opts.owner, have.count
                )));
            }
            continue;
        }
        let range = accounts::free_subid_range(&both, count, path)?;
        let mut new = text.clone();
        if !new.is_empty() && !new.ends_with('\n') {
            new.push('\n');
        }
        new.push_str(&format!("{}:{}:{}\n", opts.owner, range.start, range.count));
        steps.push(Step::File {
            path: PathBuf::from(file),
            contents: new.into_bytes(),
            mode: 0o644,
            owner: r,
            what: format!(
                "subordinate ids {}..{} for {} ({slices} concurrent builds of 65536 ids)",
                range.start,
                range.start + range.count - 1,
                opts.owner
            ),
        });
    }
    if has_uidmap(host) {
        mapper_steps(host, l, (r.0, o.1), steps)?;
    } else {
        steps.push(Step::Note(
            "subordinate ids requested but newuidmap/newgidmap are missing: apt-get install uidmap (dnf install shadow-utils)".into(),
        ));
    }
    Ok(())
}

/// The systemd units.
fn unit_steps(opts: &InstallOptions, owners: Owners, subids: bool, steps: &mut Vec<Step>) {
    let l = &opts.layout;
    let params = UnitParams {
        layout: l.clone(),
        owner: opts.owner.clone(),
        group: opts.owner.clone(),
        owner_uid: owners.owner.0,
        chown_kept_build_dirs: opts.chown_kept_build_dirs,
        subids,
    };
    steps.push(Step::Dir {
        path: l.unit_dir.clone(),
        mode: 0o755,
        owner: owners.root,
    });
    for u in units::unit_files(&params) {
        steps.push(Step::File {
            path: l.unit_dir.join(&u.name),
            contents: u.text.into_bytes(),
            mode: 0o644,
            owner: owners.root,
            what: "systemd unit".into(),
        });
    }
}

/// The AppArmor profile allowing user namespaces to the daemon, when asked for or
/// when the kernel restricts them.
fn apparmor_steps(opts: &InstallOptions, r: (u32, u32), steps: &mut Vec<Step>) {
    let apparmor = opts.apparmor.unwrap_or_else(|| {
        sysctl(&opts.host, "kernel.apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    });
    if !apparmor {
        return;
    }
    let path = Path::new("/etc/apparmor.d").join(units::APPARMOR_PROFILE);
    steps.push(Step::File {
        path: path.clone(),
        contents: units::apparmor_profile(&opts.layout).into_bytes(),
        mode: 0o644,
        owner: r,
        what: "AppArmor profile allowing user namespaces to the daemon".into(),
    });
    steps.push(Step::Run {
        argv: vec![
            "apparmor_parser".into(),
            "-r".into(),
            path.display().to_string(),
        ],
    });
}

/// Debian's nix-setup-systemd (the root nix-daemon, often left installed after a
/// migration) resets the socket links' directory to root:nix-users 0770 at every
/// boot through tmpfiles.d: after a reboot only members of nix-users could reach
/// unrooted. Masked here (who may use the daemon is `allowed-users` in nix.conf).
fn tmpfiles_mask_steps(host: &Host, l: &Layout, r: (u32, u32), steps: &mut Vec<Step>) {
    let mask = Path::new("/etc/tmpfiles.d").join(TMPFILES_NAME);
    let socket_dir = l
        .daemon_socket()
        .parent()
        .unwrap_or(Path::new("/"))
        .display()
        .to_string();
    match fs::read_link(host.path(&mask)) {
        Ok(t) if t == Path::new("/dev/null") => {}
        Err(_) if fs::symlink_metadata(host.path(&mask)).is_err() => {
            steps.push(Step::Dir {
                path: "/etc/tmpfiles.d".into(),
                mode: 0o755,
                owner: r,
            });
            steps.push(Step::Symlink {
                path: mask,
                target: "/dev/null".into(),
            });
            steps.push(Step::Note(format!(
                "masked {NIX_SETUP_TMPFILES} (nix-setup-systemd): it made {socket_dir} root:nix-users 0770 at every boot; to keep only nix-users on the daemon, set `allowed-users = @nix-users` in nix.conf"
            )));
        }
        _ => steps.push(Step::Note(format!(
            "{} exists: check it does not change {socket_dir} (nix-setup-systemd's makes it root:nix-users 0770 at boot)",
            mask.display()
        ))),
    }
}

/// The client side: `nix.conf`'s block and the login shells' profile script.
fn client_steps(
    host: &Host,
    l: &Layout,
    r: (u32, u32),
    steps: &mut Vec<Step>,
) -> Result<(), DeployError> {
    let conf = l.conf_dir.join("nix.conf");
    let old = accounts::read_db(&host.path(&conf))?.unwrap_or_default();
    steps.push(Step::Dir {
        path: l.conf_dir.clone(),
        mode: 0o755,
        owner: r,
    });
    steps.push(Step::File {
        path: conf,
        contents: units::with_conf_block(&old, Some(&units::nix_conf_block())).into_bytes(),
        mode: 0o644,
        owner: r,
        what: "client configuration: store = daemon".into(),
    });
    steps.push(Step::File {
        path: "/etc/profile.d/unrooted.sh".into(),
        contents: units::profile_script(l).into_bytes(),
        mode: 0o644,
        owner: r,
        what: "login shells: NIX_REMOTE=daemon".into(),
    });
    Ok(())
}

/// Enables the units when asked to (running system, store no longer a root
/// daemon's); returns the commands left for the administrator.
fn enabling(opts: &InstallOptions, foreign: bool, steps: &mut Vec<Step>) -> Vec<String> {
    let host = &opts.host;
    let mut next = Vec::new();
    if opts.enable && host.is_system() && !foreign {
        let systemd = systemd_running(host);
        steps.extend(enable_steps(&units::units_to_enable(), systemd));
        if !systemd {
            steps.push(Step::Note(
                "systemd is not running here: the units are enabled for the next boot".into(),
            ));
        }
    } else {
        if opts.enable && foreign {
            steps.push(Step::Note(format!(
                "not enabling the units: the store still belongs to a root nix-daemon; stop it, run `unrooted migrate --store-owner {}`, then `unrooted install --enable`",
                opts.owner
            )));
        }
        next.push("systemctl daemon-reload".to_owned());
        next.push(format!(
            "systemctl enable --now {}",
            units::units_to_enable().join(" ")
        ));
    }
    next.push(format!("{} doctor", opts.layout.admin_command().display()));
    next
}

/// The steps creating the store owner and its group on the running system, with ids
/// chosen now (free as both a uid and a gid in the system range, or the existing
/// group's gid), so every later step and unit names the real ids; returns them.
fn new_owner_steps(
    host: &Host,
    opts: &InstallOptions,
    steps: &mut Vec<Step>,
) -> Result<(u32, u32), DeployError> {
    let passwd = accounts::read_db(&host.path(Path::new("/etc/passwd")))?.unwrap_or_default();
    let groups = accounts::read_db(&host.path(Path::new("/etc/group")))?.unwrap_or_default();
    let defs = accounts::read_db(&host.path(Path::new("/etc/login.defs")))?.unwrap_or_default();
    let uid =
        accounts::free_system_id(&passwd, &groups, &defs).ok_or(DeployError::NoFreeSystemId)?;
    let gid = match accounts::group_id(&groups, &opts.owner) {
        Some(gid) => gid,
        None => {
            steps.push(Step::CreateGroup {
                name: opts.owner.clone(),
                gid: uid,
            });
            uid
        }
    };
    steps.push(Step::CreateUser {
        name: opts.owner.clone(),
        uid,
        gid,
        home: opts.layout.state_dir.clone(),
    });
    Ok((uid, gid))
}

pub(super) fn read_binary(path: &Path) -> Result<Vec<u8>, DeployError> {
    fs::read(path).map_err(|source| DeployError::Read {
        path: path.into(),
        source,
    })
}

/// The owner uid of an existing store that is not the store owner's (a root
/// nix-daemon's), if any.
fn foreign_store(host: &Host, l: &Layout, owner_uid: u32) -> Option<u32> {
    // A store owner created by this plan owns nothing yet: any store is another's.
    let uid = fs::symlink_metadata(host.path(&l.store_dir)).ok()?.uid();
    (uid != owner_uid).then_some(uid)
}
