//! Applying a plan: the one small executor of [`Step`]s.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::{InstallPlan, Step};
use crate::{DeployError, Host};

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
