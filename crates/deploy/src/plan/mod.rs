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

mod apply;
mod install;
#[cfg(test)]
mod tests;
mod uninstall;

use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use crate::accounts::DEFAULT_MAX_BUILD_SLICES;
use crate::host::Layout;
use crate::{DeployError, Host};

pub use apply::apply;
pub use install::install;
use install::read_binary;
pub use uninstall::uninstall;

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
