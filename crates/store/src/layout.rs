//! The directories and files a store needs, created on first open as Nix creates them.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use crate::config::LocalStoreConfig;
use crate::error::StoreError;

fn create_err(path: &Path) -> impl FnOnce(io::Error) -> StoreError + '_ {
    move |source| StoreError::CreateLayout {
        path: path.to_owned(),
        source,
    }
}

/// `mkdir -p` with mode 0755 for what is created (whatever the umask); returns
/// whether `path` itself was created.
fn create_dirs(path: &Path, mode: u32) -> Result<bool, StoreError> {
    if path.is_dir() {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(parent)
            .map_err(create_err(parent))?;
    }
    match fs::DirBuilder::new().mode(mode).create(path) {
        Ok(()) => {
            // The umask may have removed bits; the mode is part of the layout.
            fs::set_permissions(path, fs::Permissions::from_mode(mode))
                .map_err(create_err(path))?;
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(false),
        Err(e) => Err(create_err(path)(e)),
    }
}

/// Creates what is missing of the store and state layout (Nix's `LocalStore`
/// constructor): the store directory (0755: readable by all, writable only by its
/// owner), `.links`, `profiles`, `temproots`, `db`, `gcroots` (with its `profiles`
/// link when new), `profiles/per-user` and `gcroots/per-user`, `gc.lock` and
/// `db/reserved`.
///
/// Differences from Nix 2.8, which runs as root: the `per-user` directories get mode
/// 0755 when created (writable by the store owner alone, so no user can create
/// another's entry; the daemon makes each user's own) and are not chmod-ed here
/// afterwards (the daemon checks them at start); nothing is chown-ed to a client,
/// which an unprivileged daemon cannot do.
pub(crate) fn create_layout(config: &LocalStoreConfig) -> Result<(), StoreError> {
    let store = &config.real_store_dir;
    let state = &config.state_dir;
    create_dirs(store, 0o755)?;
    create_dirs(&store.join(".links"), 0o755)?;
    let profiles = state.join("profiles");
    create_dirs(&profiles, 0o755)?;
    create_dirs(&state.join("temproots"), 0o755)?;
    create_dirs(&state.join("db"), 0o755)?;
    let gcroots = state.join("gcroots");
    if create_dirs(&gcroots, 0o755)? {
        let link = gcroots.join("profiles");
        std::os::unix::fs::symlink(&profiles, &link).map_err(create_err(&link))?;
    }
    create_dirs(&profiles.join("per-user"), 0o755)?;
    create_dirs(&gcroots.join("per-user"), 0o755)?;
    let gc_lock = state.join("gc.lock");
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(&gc_lock)
        .map_err(create_err(&gc_lock))?;
    reserve_space(&state.join("db/reserved"), config.reserved_space);
    Ok(())
}

/// Makes `db/reserved` `size` bytes long. Failures are ignored, as in Nix: the file
/// only helps a later garbage collection on a full disk.
fn reserve_space(path: &Path, size: u64) {
    if size == 0 || fs::metadata(path).is_ok_and(|m| m.len() == size) {
        return;
    }
    let result = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .and_then(|f| {
            rustix::fs::fallocate(&f, rustix::fs::FallocateFlags::empty(), 0, size)
                .map_err(io::Error::from)
                .or_else(|_| f.set_len(size))
        });
    if let Err(e) = result {
        tracing::debug!(path = %path.display(), error = %e, "could not reserve space");
    }
}

/// Takes `db/big-lock` shared: Nix takes it exclusively only to migrate the schema,
/// so holding it shared keeps a migration from running under us.
pub(crate) fn take_big_lock(state_dir: &Path) -> Result<File, StoreError> {
    let path = state_dir.join("db/big-lock");
    let file = crate::lock::open_locked(&path, crate::lock::LockHow::Shared)?;
    Ok(file.expect("a shared lock is waited for"))
}
