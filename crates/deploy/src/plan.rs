//! `install` and `uninstall` as data: a list of [`Step`]s computed from the options and
//! what is on disk, printed one line each by `--dry-run`, and applied by [`apply`].
//!
//! Every step is idempotent (a directory that exists gets its mode and owner checked,
//! a file is rewritten only when it differs, a subordinate range is added only when
//! the owner has none), so running `install` twice changes nothing the second time.
//!
//! Users are created only on the running system (`--root /`), with `groupadd` and
//! `useradd`. Into any other tree nothing is written to `/etc/passwd`: the owner's ids
//! are taken from the tree's or the machine's passwd file when the user exists there,
//! and otherwise the files are owned by whoever runs `install` (a packager's tree is
//! chowned by the package's own scripts). Likewise, when not run as root, files that
//! should be root's are left to the caller.

use std::fmt;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::accounts::{self, DEFAULT_MAX_BUILD_SLICES, IDS_PER_BUILD};
use crate::host::Layout;
use crate::units::{self, UnitParams};
use crate::{DeployError, Host};

/// nix-setup-systemd's tmpfiles.d entry for Nix's state directory.
const NIX_SETUP_TMPFILES: &str = "/usr/lib/tmpfiles.d/nix-daemon.conf";
/// Its name, masked under `/etc/tmpfiles.d` by `install`.
const TMPFILES_NAME: &str = "nix-daemon.conf";

/// How `install` is asked to set things up.
#[derive(Debug, Clone)]
pub struct InstallOptions {
    /// Where to install (`/`, or a tree).
    pub host: Host,
    /// The paths.
    pub layout: Layout,
    /// The store owner's user (and group) name.
    pub owner: String,
    /// The `unrooted` binary to install for the daemon.
    pub daemon_binary: PathBuf,
    /// The `unrooted-find-roots` binary to install, if found.
    pub roots_binary: Option<PathBuf>,
    /// The `unrooted-sandbox` helper to install beside the daemon's binary, if found
    /// (optional: without it the daemon starts builders through its own binary).
    pub sandbox_binary: Option<PathBuf>,
    /// Give the daemon `CAP_CHOWN` for kept build directories.
    pub chown_kept_build_dirs: bool,
    /// Use subordinate ids: `None` = when `newuidmap` is installed.
    pub subids: Option<bool>,
    /// How many builds the store owner's subordinate range lets run at once in the
    /// id-range mode (65,536 ids each): `None` = [`default_build_slices`].
    pub build_slices: Option<u32>,
    /// Write the AppArmor profile: `None` = when the kernel restricts user namespaces.
    pub apparmor: Option<bool>,
    /// Also enable the units (running system only): with systemd running, reload it,
    /// enable and start them and restart a running daemon (which then runs the binary
    /// just installed); without, enable them for the next boot. Never while the store
    /// still belongs to a root `nix-daemon` (`migrate` first). What the Debian
    /// package's `postinst` runs.
    pub enable: bool,
}

/// Who owns what: the store owner's ids and root's (both the caller's own ids when
/// the caller is not root and cannot give files away).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Owners {
    /// The store owner's uid and gid.
    pub owner: (u32, u32),
    /// root's uid and gid.
    pub root: (u32, u32),
}

/// One effect of `install` or `uninstall`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// `groupadd --system NAME` (running system only).
    CreateGroup {
        /// The group.
        name: String,
        /// Its gid, chosen free when the plan was made.
        gid: u32,
    },
    /// `useradd --system` with the group of the same name (running system only).
    CreateUser {
        /// The user.
        name: String,
        /// Its uid, chosen free when the plan was made, so that everything the
        /// plan writes (units naming the uid among them) has the real one.
        uid: u32,
        /// Its primary group's gid.
        gid: u32,
        /// Its home directory.
        home: PathBuf,
    },
    /// A directory with this mode and owner (parents made root-owned 0755).
    Dir {
        /// The path (absolute, on the running system).
        path: PathBuf,
        /// Permission bits, including sticky.
        mode: u32,
        /// Owner uid and gid.
        owner: (u32, u32),
    },
    /// A regular file with these contents, mode and owner.
    File {
        /// The path.
        path: PathBuf,
        /// Contents.
        contents: Vec<u8>,
        /// Permission bits.
        mode: u32,
        /// Owner uid and gid.
        owner: (u32, u32),
        /// What it is, for the printout.
        what: String,
    },
    /// The mount point of the store's writable view: made like [`Step::Dir`] when
    /// missing or empty, left alone while the store is mounted on it (changing its
    /// owner or mode then would change the store directory's own).
    MountPoint {
        /// The mount point.
        path: PathBuf,
        /// The directory mounted there when the store's units run.
        source: PathBuf,
        /// Permission bits.
        mode: u32,
        /// Owner uid and gid.
        owner: (u32, u32),
    },
    /// File capabilities on a file written earlier in the plan (see [`crate::filecaps`]).
    FileCaps {
        /// The file.
        path: PathBuf,
        /// The capabilities, permitted and effective.
        caps: Vec<u32>,
    },
    /// A symbolic link (replacing an existing link, never a file).
    Symlink {
        /// The link.
        path: PathBuf,
        /// Its target.
        target: PathBuf,
    },
    /// Remove a file or link if present.
    RemoveFile {
        /// The path.
        path: PathBuf,
    },
    /// Remove a directory if present and empty.
    RemoveEmptyDir {
        /// The path.
        path: PathBuf,
    },
    /// Remove a directory tree (only the store and state when asked to).
    RemoveTree {
        /// The path.
        path: PathBuf,
    },
    /// Run a command (running system only; printed otherwise).
    Run {
        /// argv.
        argv: Vec<String>,
    },
    /// Something the admin must know or do; nothing is changed.
    Note(String),
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateGroup { name, gid } => write!(f, "create system group {name} (gid {gid})"),
            Step::CreateUser {
                name,
                uid,
                gid,
                home,
            } => write!(
                f,
                "create system user {name} (uid {uid}, gid {gid}, home {}, no login shell)",
                home.display()
            ),
            Step::Dir { path, mode, owner } => write!(
                f,
                "directory {} mode {mode:04o} owner {}:{}",
                path.display(),
                owner.0,
                owner.1
            ),
            Step::MountPoint {
                path, mode, owner, ..
            } => write!(
                f,
                "mount point {} mode {mode:04o} owner {}:{} (unless the store is mounted there)",
                path.display(),
                owner.0,
                owner.1
            ),
            Step::File {
                path,
                mode,
                owner,
                what,
                ..
            } => write!(
                f,
                "file {} ({what}) mode {mode:04o} owner {}:{}",
                path.display(),
                owner.0,
                owner.1
            ),
            Step::FileCaps { path, caps } => {
                write!(f, "file capabilities {caps:?} (+ep) on {}", path.display())
            }
            Step::Symlink { path, target } => {
                write!(f, "link {} -> {}", path.display(), target.display())
            }
            Step::RemoveFile { path } => write!(f, "remove {}", path.display()),
            Step::RemoveEmptyDir { path } => {
                write!(f, "remove directory {} if empty", path.display())
            }
            Step::RemoveTree { path } => {
                write!(f, "remove {} and everything in it", path.display())
            }
            Step::Run { argv } => write!(f, "run {}", argv.join(" ")),
            Step::Note(text) => write!(f, "note: {text}"),
        }
    }
}

/// A computed installation or removal.
#[derive(Debug, Clone)]
pub struct InstallPlan {
    /// The steps, in order.
    pub steps: Vec<Step>,
    /// What the admin runs afterwards (enable and start the units).
    pub next: Vec<String>,
}

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn own_ids() -> (u32, u32) {
    (
        rustix::process::geteuid().as_raw(),
        rustix::process::getegid().as_raw(),
    )
}

/// Reads a sysctl under the host's `/proc/sys`, `None` when absent.
pub fn sysctl(host: &Host, name: &str) -> Option<String> {
    let path = host.path(&Path::new("/proc/sys").join(name.replace('.', "/")));
    fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().chars().take(64).collect())
}

/// Whether systemd is the running init system (`sd_booted()`: `/run/systemd/system`
/// exists). In a chroot, an image being built or a container without systemd,
/// `systemctl` can still enable units offline, but `--now`, `start` and
/// `daemon-reload` fail.
pub fn systemd_running(host: &Host) -> bool {
    host.is_system() && host.path(Path::new("/run/systemd/system")).is_dir()
}

/// The `systemctl` steps `uninstall` runs on the running system: `disable --now` and a
/// reload with systemd running, a plain (offline) `disable` without (`--now` would fail
/// there, and with it the Debian package's removal).
fn disable_steps(units: &[String], systemd: bool) -> (Vec<Step>, Vec<Step>) {
    let mut argv: Vec<String> = vec!["systemctl".into(), "disable".into()];
    if systemd {
        argv.push("--now".into());
    }
    argv.extend(units.iter().rev().cloned());
    let before = vec![Step::Run { argv }];
    let after = if systemd {
        vec![Step::Run {
            argv: vec!["systemctl".into(), "daemon-reload".into()],
        }]
    } else {
        Vec::new()
    };
    (before, after)
}

/// The `systemctl` steps of `install --enable` (see [`InstallOptions::enable`]).
fn enable_steps(units: &[String], systemd: bool) -> Vec<Step> {
    let argv = |words: &[&str]| -> Vec<String> {
        words
            .iter()
            .map(|w| (*w).to_owned())
            .chain(units.iter().cloned())
            .collect()
    };
    if systemd {
        vec![
            Step::Run {
                argv: vec!["systemctl".into(), "daemon-reload".into()],
            },
            Step::Run {
                argv: argv(&["systemctl", "enable", "--now"]),
            },
            // A daemon already running (an upgrade) restarts on the new binary and unit.
            Step::Run {
                argv: vec![
                    "systemctl".into(),
                    "try-restart".into(),
                    "unrooted-daemon.service".into(),
                ],
            },
        ]
    } else {
        vec![Step::Run {
            argv: argv(&["systemctl", "enable"]),
        }]
    }
}

/// Whether `newuidmap` and `newgidmap` are installed on the host.
pub fn has_uidmap(host: &Host) -> bool {
    ["newuidmap", "newgidmap"]
        .iter()
        .all(|b| host.path(&Path::new("/usr/bin").join(b)).is_file())
}

/// Copies of the host's `newuidmap` and `newgidmap` beside the daemon's binary, which
/// the daemon uses first: executable only by the store owner's group, with the file
/// capability each needs instead of setuid root (see [`crate::filecaps`] for why the
/// setuid programs fail within the unit's bounding set). A new `install` refreshes
/// them after an update of the system's (`unrooted doctor` warns when they differ).
fn mapper_steps(
    host: &Host,
    l: &Layout,
    owner: (u32, u32),
    steps: &mut Vec<Step>,
) -> Result<(), DeployError> {
    use crate::filecaps::{CAP_SETGID, CAP_SETUID};
    for (name, cap) in [("newuidmap", CAP_SETUID), ("newgidmap", CAP_SETGID)] {
        let path = l.libexec_dir.join(name);
        steps.push(Step::File {
            path: path.clone(),
            contents: read_binary(&host.path(&Path::new("/usr/bin").join(name)))?,
            mode: 0o750,
            owner,
            what: format!("the daemon's {name}: a copy of /usr/bin/{name} with a file capability instead of setuid root"),
        });
        steps.push(Step::FileCaps {
            path,
            caps: vec![cap],
        });
    }
    Ok(())
}

/// How many concurrent builds the store owner's subordinate range is sized for when
/// `install` is not told: `max-jobs` as the daemon will read it from the host's
/// `nix.conf` (`auto` is the number of CPUs), but no fewer than the CPUs (so that
/// `max-jobs = auto` set later needs no new range) and at most
/// [`DEFAULT_MAX_BUILD_SLICES`] (Nix's default `id-count`).
pub fn default_build_slices(host: &Host, l: &Layout) -> u32 {
    let mut raw = unrooted_config::RawSettings::default();
    let max_jobs = raw
        .apply_file(&host.path(&l.conf_dir.join("nix.conf")))
        .ok()
        .and_then(|()| unrooted_config::Settings::from_raw(&raw).ok())
        .map_or(1, |s| s.max_jobs);
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
    let slices = max_jobs
        .max(cpus)
        .clamp(1, u64::from(DEFAULT_MAX_BUILD_SLICES));
    u32::try_from(slices).unwrap_or(DEFAULT_MAX_BUILD_SLICES)
}

/// Computes the installation.
pub fn install(opts: &InstallOptions) -> Result<InstallPlan, DeployError> {
    let host = &opts.host;
    let l = &opts.layout;
    l.validate()?;
    if opts.owner == "root" {
        return Err(DeployError::OwnerIsRoot);
    }
    let mut steps = Vec::new();
    let existing = accounts::lookup_user(host, &opts.owner)?;
    let caller_can_chown = is_root();
    let owner_ids = match (&existing, host.is_system()) {
        (Some(a), _) if a.uid == 0 => return Err(DeployError::OwnerIsRoot),
        (Some(a), _) if caller_can_chown => (a.uid, a.gid),
        (None, true) => new_owner_steps(host, opts, &mut steps)?,
        _ => {
            steps.push(Step::Note(format!(
                "user {} does not exist here (or cannot be given files): files meant for it are owned by uid {}",
                opts.owner,
                own_ids().0
            )));
            own_ids()
        }
    };
    let root_ids = if caller_can_chown { (0, 0) } else { own_ids() };
    let owners = Owners {
        owner: owner_ids,
        root: root_ids,
    };
    let o = owners.owner;
    let r = owners.root;

    // The store and state: left alone when a root nix-daemon's store is found, which
    // `migrate` hands over in an order that survives interruption.
    let foreign = foreign_store(host, l, o.0);
    if let Some(uid) = foreign {
        steps.push(Step::Note(format!(
            "{} exists and belongs to uid {uid}: not changing it; run `unrooted migrate --store-owner {}` after this",
            l.store_dir.display(),
            opts.owner
        )));
    } else {
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
    // The well-known socket paths are links to the root-owned runtime directory, whose
    // sockets systemd creates (see `units`). A foreign store's state keeps its live
    // socket until `migrate`; the next `install` makes the links.
    let links = if foreign.is_some() {
        Vec::new()
    } else {
        vec![
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
        ]
    };
    for (link_dir, link, target) in links {
        steps.push(Step::Dir {
            path: link_dir,
            mode: 0o755,
            owner: o,
        });
        steps.push(Step::Symlink { path: link, target });
    }
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

    // Binaries outside the store, owned by root: the store owner can replace nothing
    // root runs. The daemon's copy is executable only by the owner's group, so an
    // AppArmor profile attached to it grants user namespaces to nobody else.
    steps.push(Step::Dir {
        path: l.libexec_dir.clone(),
        mode: 0o755,
        owner: r,
    });
    let daemon_bin = read_binary(&opts.daemon_binary)?;
    steps.push(Step::File {
        path: l.daemon_binary(),
        contents: daemon_bin,
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

    // Subordinate ids: only useful with newuidmap, which is also what the units must
    // allow for (see `units`).
    let subids = opts.subids.unwrap_or_else(|| has_uidmap(host));
    if subids {
        // Each concurrent build holds its own slice of 65,536 ids, so the range is
        // sized for as many builds as the daemon runs at once; a range free in both
        // files, so that uids and gids start alike.
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
        let uid = Some(o.0);
        for (file, (path, text)) in files.iter().zip(&texts) {
            if let Some(have) = accounts::subid_range_of(text, &opts.owner, uid) {
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
            mapper_steps(host, l, (r.0, o.1), &mut steps)?;
        } else {
            steps.push(Step::Note(
                "subordinate ids requested but newuidmap/newgidmap are missing: apt-get install uidmap (dnf install shadow-utils)".into(),
            ));
        }
    } else {
        steps.push(Step::Note(
            "newuidmap not installed: builds run as the store owner inside their namespaces; install uidmap and re-run for a separate id range per build".into(),
        ));
    }

    let params = UnitParams {
        layout: l.clone(),
        owner: opts.owner.clone(),
        group: opts.owner.clone(),
        owner_uid: o.0,
        chown_kept_build_dirs: opts.chown_kept_build_dirs,
        subids,
    };
    steps.push(Step::Dir {
        path: l.unit_dir.clone(),
        mode: 0o755,
        owner: r,
    });
    for u in units::unit_files(&params) {
        steps.push(Step::File {
            path: l.unit_dir.join(&u.name),
            contents: u.text.into_bytes(),
            mode: 0o644,
            owner: r,
            what: "systemd unit".into(),
        });
    }

    let apparmor = opts.apparmor.unwrap_or_else(|| {
        sysctl(host, "kernel.apparmor_restrict_unprivileged_userns").as_deref() == Some("1")
    });
    if apparmor {
        let path = Path::new("/etc/apparmor.d").join(units::APPARMOR_PROFILE);
        steps.push(Step::File {
            path: path.clone(),
            contents: units::apparmor_profile(l).into_bytes(),
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

    // Debian's nix-setup-systemd (the root nix-daemon, often left installed after a
    // migration) resets the socket links' directory to root:nix-users 0770 at every
    // boot through tmpfiles.d: after a reboot only members of nix-users could reach
    // unrooted. Masked here (who may use the daemon is `allowed-users` in nix.conf).
    if foreign.is_none() && host.path(Path::new(NIX_SETUP_TMPFILES)).is_file() {
        let mask = Path::new("/etc/tmpfiles.d").join(TMPFILES_NAME);
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
                    "masked {NIX_SETUP_TMPFILES} (nix-setup-systemd): it made {} root:nix-users 0770 at every boot; to keep only nix-users on the daemon, set `allowed-users = @nix-users` in nix.conf",
                    l.daemon_socket().parent().unwrap_or(Path::new("/")).display()
                )));
            }
            _ => steps.push(Step::Note(format!(
                "{} exists: check it does not change {} (nix-setup-systemd's makes it root:nix-users 0770 at boot)",
                mask.display(),
                l.daemon_socket().parent().unwrap_or(Path::new("/")).display()
            ))),
        }
    }

    // Client side.
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

    let mut next = Vec::new();
    let enabled = opts.enable && host.is_system() && foreign.is_none();
    if enabled {
        let systemd = systemd_running(host);
        steps.extend(enable_steps(&units::units_to_enable(), systemd));
        if !systemd {
            steps.push(Step::Note(
                "systemd is not running here: the units are enabled for the next boot".into(),
            ));
        }
    } else {
        if opts.enable && foreign.is_some() {
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
    next.push(format!("{} doctor", l.admin_command().display()));
    Ok(InstallPlan { steps, next })
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

fn read_binary(path: &Path) -> Result<Vec<u8>, DeployError> {
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

/// Applies a plan, printing each step to `log` as it goes.
pub fn apply(
    host: &Host,
    plan: &InstallPlan,
    log: &mut dyn FnMut(&Step),
) -> Result<(), DeployError> {
    for step in &plan.steps {
        log(step);
        match step {
            Step::CreateGroup { name, gid } => {
                if host.is_system() {
                    run(&["groupadd", "--system", "--gid", &gid.to_string(), name])?;
                }
            }
            Step::CreateUser {
                name,
                uid,
                gid,
                home,
            } => {
                if host.is_system() {
                    let home = home.display().to_string();
                    run(&[
                        "useradd",
                        "--system",
                        "--uid",
                        &uid.to_string(),
                        "--gid",
                        &gid.to_string(),
                        "--home-dir",
                        &home,
                        "--no-create-home",
                        "--shell",
                        "/usr/sbin/nologin",
                        "--comment",
                        "unrooted Nix store owner",
                        name,
                    ])?;
                }
            }
            Step::Dir { path, mode, owner } => ensure_dir(&host.path(path), *mode, *owner)?,
            Step::MountPoint {
                path,
                source,
                mode,
                owner,
            } => {
                let path = host.path(path);
                if !same_inode(&path, &host.path(source)) {
                    ensure_dir(&path, *mode, *owner)?
                }
            }
            Step::File {
                path,
                contents,
                mode,
                owner,
                ..
            } => write_file(&host.path(path), contents, *mode, *owner)?,
            Step::Symlink { path, target } => ensure_symlink(&host.path(path), target)?,
            Step::FileCaps { path, caps } => {
                let p = host.path(path);
                if crate::filecaps::get(&p).as_deref() != Some(caps.as_slice()) {
                    crate::filecaps::set(&p, caps)
                        .map_err(|source| DeployError::Write { path: p, source })?;
                }
            }
            Step::RemoveFile { path } => {
                let p = host.path(path);
                match fs::remove_file(&p) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {
                        return Err(DeployError::Remove { path: p, source: e })
                    }
                    _ => {}
                }
            }
            Step::RemoveEmptyDir { path } => {
                // Not empty (or absent) means someone put something there: keep it.
                let _ = fs::remove_dir(host.path(path));
            }
            Step::RemoveTree { path } => {
                let p = host.path(path);
                if p.exists() {
                    make_writable(&p);
                    fs::remove_dir_all(&p)
                        .map_err(|source| DeployError::Remove { path: p, source })?;
                }
            }
            Step::Run { argv } => {
                if host.is_system() {
                    let args: Vec<&str> = argv.iter().map(String::as_str).collect();
                    run(&args)?;
                }
            }
            Step::Note(_) => {}
        }
    }
    Ok(())
}

fn make_writable(p: &Path) {
    // Store paths are read-only directories; deleting their entries needs u+w.
    let Ok(meta) = fs::symlink_metadata(p) else {
        return;
    };
    if meta.is_dir() {
        let _ = fs::set_permissions(p, fs::Permissions::from_mode(meta.mode() | 0o700));
        if let Ok(rd) = fs::read_dir(p) {
            for e in rd.flatten() {
                make_writable(&e.path());
            }
        }
    }
}

fn run(argv: &[&str]) -> Result<(), DeployError> {
    let status = Command::new(argv[0]).args(&argv[1..]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(DeployError::Command {
            command: argv.join(" "),
            detail: s.to_string(),
        }),
        Err(e) => Err(DeployError::Command {
            command: argv.join(" "),
            detail: e.to_string(),
        }),
    }
}

fn set_owner_mode(path: &Path, mode: u32, owner: (u32, u32)) -> Result<(), DeployError> {
    let meta = fs::symlink_metadata(path).map_err(|source| DeployError::Read {
        path: path.into(),
        source,
    })?;
    let chown_err = |source| DeployError::Chown {
        path: path.into(),
        source,
    };
    if (meta.uid(), meta.gid()) != owner {
        std::os::unix::fs::lchown(path, Some(owner.0), Some(owner.1)).map_err(chown_err)?;
    }
    // After chown: changing the owner clears setuid/setgid bits, and sets nothing.
    if meta.mode() & 0o7777 != mode || (meta.uid(), meta.gid()) != owner {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(chown_err)?;
    }
    Ok(())
}

/// Whether `a` and `b` are the same directory (a bind mount of `b` on `a`).
fn same_inode(a: &Path, b: &Path) -> bool {
    match (fs::symlink_metadata(a), fs::symlink_metadata(b)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

fn ensure_dir(path: &Path, mode: u32, owner: (u32, u32)) -> Result<(), DeployError> {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(DeployError::Write {
                path: path.into(),
                source: std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    "exists and is not a directory",
                ),
            })
        }
        Err(_) => {
            if let Some(parent) = path.parent() {
                // Missing parents (/nix, /nix/var, ...) are root's, 0755, as Nix's installer makes them.
                fs::create_dir_all(parent).map_err(|source| DeployError::Write {
                    path: parent.into(),
                    source,
                })?;
            }
            fs::create_dir(path).map_err(|source| DeployError::Write {
                path: path.into(),
                source,
            })?;
        }
    }
    set_owner_mode(path, mode, owner)
}

fn write_file(
    path: &Path,
    contents: &[u8],
    mode: u32,
    owner: (u32, u32),
) -> Result<(), DeployError> {
    if fs::read(path).ok().as_deref() != Some(contents) {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(|source| DeployError::Write {
                path: parent.into(),
                source,
            })?;
        }
        // Write beside and rename, so a running binary or a half-read unit is never
        // seen truncated, and the new file is never briefly world-writable.
        let tmp = path.with_extension("unrooted-new");
        let _ = fs::remove_file(&tmp);
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(contents)?;
            f.sync_all()
        };
        write().map_err(|source| DeployError::Write {
            path: tmp.clone(),
            source,
        })?;
        set_owner_mode(&tmp, mode, owner)?;
        fs::rename(&tmp, path).map_err(|source| DeployError::Write {
            path: path.into(),
            source,
        })?;
        return Ok(());
    }
    set_owner_mode(path, mode, owner)
}

fn ensure_symlink(path: &Path, target: &Path) -> Result<(), DeployError> {
    match fs::read_link(path) {
        Ok(t) if t == target => return Ok(()),
        Ok(_) => fs::remove_file(path).map_err(|source| DeployError::Remove {
            path: path.into(),
            source,
        })?,
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(source) => {
            // Something that is not a link (an old socket left by a daemon run by hand):
            // replace a socket, refuse anything else.
            let meta = fs::symlink_metadata(path).map_err(|_| DeployError::Read {
                path: path.into(),
                source,
            })?;
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(DeployError::Write {
                    path: path.into(),
                    source: std::io::Error::new(
                        ErrorKind::AlreadyExists,
                        "exists and is not a link",
                    ),
                });
            }
            fs::remove_file(path).map_err(|source| DeployError::Remove {
                path: path.into(),
                source,
            })?;
        }
    }
    symlink(target, path).map_err(|source| DeployError::Write {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
