//! `unrooted migrate`: hand a store made by a root `nix-daemon` (Nix 2.x: root-owned
//! store and state, `nixbld` build users) to the store owner, keeping every path valid.
//!
//! Nothing is copied or re-registered: the database, the store paths, the profiles and
//! the roots stay where they are; only owners change. The order makes an interrupted
//! run safe to repeat: the state directory first, then every store path, and the store
//! directory itself last, so that a store directory owned by the store owner means the
//! migration finished. Entries already owned by the store owner are skipped, so a
//! second run only does what the first did not.
//!
//! Only what root or the build users own changes hands. The per-user directories
//! (`profiles/per-user/<user>`, `gcroots/per-user/<user>`) stay with their users:
//! Nix 2.8 clients write their profile generations there themselves. Their parents
//! go to the store owner, mode 0755 as the root daemon had them: the daemon makes a
//! new user's directory itself, so no user can create one under another's name.

use std::collections::BTreeSet;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{lchown, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::accounts::{self, Account};
use crate::host::Layout;
use crate::nixconf;
use crate::{DeployError, Host};

/// How `migrate` is asked to run.
#[derive(Debug, Clone)]
pub struct MigrateOptions {
    /// The host (or tree).
    pub host: Host,
    /// The paths.
    pub layout: Layout,
    /// The store owner's name (must exist).
    pub owner: String,
    /// The build users' group of the old daemon.
    pub build_group: String,
    /// Print what would change, change nothing.
    pub dry_run: bool,
}

/// What a migration did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrateReport {
    /// Entries of the state and log directories given to the store owner.
    pub state_chowned: u64,
    /// Entries of the store given to the store owner.
    pub store_chowned: u64,
    /// Entries left alone because another user owns them (per-user directories).
    pub kept: u64,
    /// What the admin should disable or remove now.
    pub to_disable: Vec<String>,
    /// Every line of `nix.conf` that matters, changed or kept ([`nixconf::adapt`]).
    pub conf: Vec<String>,
}

/// Evidence that a `nix-daemon` runs: a process named so under the host's `/proc`.
pub fn running_nix_daemon(host: &Host) -> Option<String> {
    let proc = host.path(Path::new("/proc"));
    let entries = fs::read_dir(proc).ok()?;
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let mut comm = String::new();
        if let Ok(f) = fs::File::open(e.path().join("comm")) {
            use std::io::Read;
            let _ = f.take(64).read_to_string(&mut comm);
        }
        if comm.trim() == "nix-daemon" {
            return Some(format!("pid {pid}"));
        }
    }
    None
}

/// Evidence that something still listens on the old daemon socket (systemd's
/// `nix-daemon.socket` accepts even while no `nix-daemon` process runs).
pub fn listening_socket(host: &Host, layout: &Layout) -> Option<String> {
    let socket = host.path(&layout.daemon_socket());
    let is_link = fs::symlink_metadata(&socket).is_ok_and(|m| m.file_type().is_symlink());
    // Our own link (a re-run after install) points at unrooted's socket, not Nix's.
    (!is_link && std::os::unix::net::UnixStream::connect(&socket).is_ok())
        .then(|| format!("{} accepts connections", layout.daemon_socket().display()))
}

/// Runs (or with `dry_run`, describes) the migration, printing each phase to `log`.
pub fn migrate(
    opts: &MigrateOptions,
    log: &mut dyn FnMut(&str),
) -> Result<MigrateReport, DeployError> {
    let host = &opts.host;
    let l = &opts.layout;
    l.validate()?;
    if let Some(evidence) = running_nix_daemon(host).or_else(|| listening_socket(host, l)) {
        return Err(DeployError::NixDaemonRunning { evidence });
    }
    let owner =
        accounts::lookup_user(host, &opts.owner)?.ok_or_else(|| DeployError::NoSuchUser {
            name: opts.owner.clone(),
            passwd: host.path(Path::new("/etc/passwd")),
        })?;
    if owner.uid == 0 {
        return Err(DeployError::OwnerIsRoot);
    }
    let old_owners = old_owners(host, &opts.build_group)?;
    let mut report = MigrateReport::default();
    let mut walker = Walker {
        owner: &owner,
        old: &old_owners,
        dry_run: opts.dry_run,
        chowned: 0,
        kept: 0,
    };
    migrate_state(opts, &mut walker, log)?;
    report.state_chowned = walker.chowned;
    walker.chowned = 0;
    migrate_store(opts, &mut walker, log)?;
    report.store_chowned = walker.chowned;
    report.kept = walker.kept;

    report.conf = migrate_conf(host, l, opts.dry_run)?;
    report.to_disable = vec!["systemctl disable --now nix-daemon.socket nix-daemon.service".into()];
    if !old_owners.is_empty() && old_owners.len() > 1 {
        report.to_disable.push(format!(
            "the build users can go: for u in $(getent group {0} | cut -d: -f4 | tr , ' '); do userdel $u; done; groupdel {0}",
            opts.build_group
        ));
    }
    report
        .to_disable
        .push("unrooted install (again: finishes the socket links), then systemctl enable --now the units it lists".into());
    Ok(report)
}

/// The uids whose files become the store owner's: root and the build users (members
/// of `build_group`).
fn old_owners(host: &Host, build_group: &str) -> Result<BTreeSet<u32>, DeployError> {
    let passwd = accounts::read_db(&host.path(Path::new("/etc/passwd")))?.unwrap_or_default();
    let groups = accounts::read_db(&host.path(Path::new("/etc/group")))?.unwrap_or_default();
    let mut old: BTreeSet<u32> = accounts::group_users(&passwd, &groups, build_group)
        .into_iter()
        .collect();
    old.insert(0);
    Ok(old)
}

/// The state first: the database and its lock files, roots and profiles (the
/// per-user subdirectories belong to their users and stay theirs), the old daemon's
/// leftovers removed, then the logs.
fn migrate_state(
    opts: &MigrateOptions,
    walker: &mut Walker<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<(), DeployError> {
    let (host, l) = (&opts.host, &opts.layout);
    let state = host.path(&l.state_dir);
    log(&format!("state: {}", l.state_dir.display()));
    let per_user: Vec<PathBuf> = ["profiles/per-user", "gcroots/per-user"]
        .iter()
        .map(|p| state.join(p))
        .collect();
    walker.walk(&state, &per_user, true)?;
    for p in &per_user {
        if p.is_dir() {
            // Writable by the store owner alone: the daemon makes each user's directory.
            walker.chown_one(
                p,
                &fs::symlink_metadata(p).map_err(|source| DeployError::Read {
                    path: p.clone(),
                    source,
                })?,
            )?;
            if !opts.dry_run {
                fs::set_permissions(p, fs::Permissions::from_mode(0o755)).map_err(|source| {
                    DeployError::Chown {
                        path: p.clone(),
                        source,
                    }
                })?;
            }
        }
    }
    remove_stale(opts, &state, log)?;
    let log_dir = host.path(&l.log_dir);
    if log_dir.exists() {
        log(&format!("logs: {}", l.log_dir.display()));
        walker.walk(&log_dir, &[], true)?;
    }
    Ok(())
}

/// The old daemon's socket and its build-user lock files are of no use any more.
fn remove_stale(
    opts: &MigrateOptions,
    state: &Path,
    log: &mut dyn FnMut(&str),
) -> Result<(), DeployError> {
    for stale in ["daemon-socket/socket", "userpool"] {
        let p = state.join(stale);
        if let Ok(m) = fs::symlink_metadata(&p) {
            log(&format!(
                "remove {}",
                opts.layout.state_dir.join(stale).display()
            ));
            if !opts.dry_run {
                let r = if m.is_dir() {
                    fs::remove_dir_all(&p)
                } else {
                    fs::remove_file(&p)
                };
                r.map_err(|source| DeployError::Remove { path: p, source })?;
            }
        }
    }
    Ok(())
}

/// Then every store path, and the store directory itself last: its owner is the mark
/// of a finished migration.
fn migrate_store(
    opts: &MigrateOptions,
    walker: &mut Walker<'_>,
    log: &mut dyn FnMut(&str),
) -> Result<(), DeployError> {
    let l = &opts.layout;
    let store = opts.host.path(&l.store_dir);
    log(&format!(
        "store: {} (every path; the directory itself last)",
        l.store_dir.display()
    ));
    walker.walk(&store, &[], false)?;
    let meta = fs::symlink_metadata(&store).map_err(|source| DeployError::Read {
        path: store.clone(),
        source,
    })?;
    walker.chown_one(&store, &meta)?;
    if !opts.dry_run && meta.mode() & 0o7777 != 0o755 {
        // Nix's 1775 root:nixbld let build users write; the owner is now the only writer.
        fs::set_permissions(&store, fs::Permissions::from_mode(0o755)).map_err(|source| {
            DeployError::Chown {
                path: store.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Adapts the shared `nix.conf` to unrooted (see [`nixconf::adapt`]), keeping its
/// owner and mode; returns what was changed or kept.
fn migrate_conf(host: &Host, l: &Layout, dry_run: bool) -> Result<Vec<String>, DeployError> {
    let path = host.path(&l.conf_dir.join("nix.conf"));
    let Some(old) = accounts::read_db(&path)? else {
        return Ok(Vec::new());
    };
    let adapted = nixconf::adapt(&old);
    if !dry_run && adapted.text != old {
        let write_err = |source| DeployError::Write {
            path: path.clone(),
            source,
        };
        let tmp = path.with_extension("conf.unrooted-new");
        let mode = fs::metadata(&path).map_err(write_err)?.permissions();
        fs::write(&tmp, &adapted.text)
            .and_then(|()| fs::set_permissions(&tmp, mode))
            .and_then(|()| fs::rename(&tmp, &path))
            .map_err(write_err)?;
    }
    Ok(adapted.report)
}

struct Walker<'a> {
    owner: &'a Account,
    old: &'a BTreeSet<u32>,
    dry_run: bool,
    chowned: u64,
    kept: u64,
}

impl Walker<'_> {
    /// Gives `path` to the store owner when root or a build user owns it. lchown never
    /// follows a link (a user's link must not make us chown its target) and keeps the
    /// mode (store files are never setuid, which chown would clear).
    fn chown_one(&mut self, path: &Path, meta: &fs::Metadata) -> Result<(), DeployError> {
        if meta.uid() == self.owner.uid && meta.gid() == self.owner.gid {
            return Ok(());
        }
        if !self.old.contains(&meta.uid()) && meta.uid() != self.owner.uid {
            self.kept += 1;
            return Ok(());
        }
        self.chowned += 1;
        if self.dry_run {
            return Ok(());
        }
        match lchown(path, Some(self.owner.uid), Some(self.owner.gid)) {
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            r => r.map_err(|source| DeployError::Chown {
                path: path.into(),
                source,
            }),
        }
    }

    /// Walks `root`'s contents (not `root` itself unless `include_root`), children
    /// before their directory, skipping `skip` subtrees' contents. Iterative, so a deep
    /// tree cannot exhaust the stack.
    fn walk(
        &mut self,
        root: &Path,
        skip: &[PathBuf],
        include_root: bool,
    ) -> Result<(), DeployError> {
        let read = |p: &Path| {
            fs::read_dir(p).map_err(|source| DeployError::Read {
                path: p.into(),
                source,
            })
        };
        // (directory, its entries still to visit)
        let mut stack = vec![(root.to_path_buf(), read(root)?)];
        while let Some((dir, mut entries)) = stack.pop() {
            match entries.next() {
                Some(entry) => {
                    let entry = entry.map_err(|source| DeployError::Read {
                        path: dir.clone(),
                        source,
                    })?;
                    let path = entry.path();
                    let meta = fs::symlink_metadata(&path).map_err(|source| DeployError::Read {
                        path: path.clone(),
                        source,
                    })?;
                    stack.push((dir, entries));
                    if meta.is_dir() && !skip.contains(&path) {
                        stack.push((path.clone(), read(&path)?));
                    } else {
                        self.chown_one(&path, &meta)?;
                    }
                }
                None => {
                    if dir != root || include_root {
                        if skip.contains(&dir) {
                            continue;
                        }
                        let meta =
                            fs::symlink_metadata(&dir).map_err(|source| DeployError::Read {
                                path: dir.clone(),
                                source,
                            })?;
                        self.chown_one(&dir, &meta)?;
                    }
                }
            }
        }
        Ok(())
    }
}
