//! Deduplicating identical files by hard links (Nix's `optimiseStore`).
//!
//! Each regular file and symlink of a valid path is hashed as a NAR of its own (so
//! the executable bit is part of the identity and executable and plain copies are
//! never merged); `<store>/.links/<base32 hash>` is the first copy seen, and later
//! copies are replaced by hard links to it. A file is replaced atomically: a new
//! link is made under a temporary name and renamed over it. Store directories are
//! read-only, so the directory holding the file is made writable for the rename
//! and then read-only again with its mtime reset, exactly as Nix does.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use unrooted_format::StorePath;

use crate::canonicalise::set_store_mtime;
use crate::error::StoreError;
use crate::store::LocalStore;

/// What an optimisation run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OptimiseStats {
    /// Files replaced by a hard link.
    pub files_linked: u64,
    /// Bytes no longer stored twice (sizes of the replaced files).
    pub bytes_freed: u64,
}

impl LocalStore {
    /// Hard-links identical files across all valid paths (OptimiseStore,
    /// `nix-store --optimise`).
    pub fn optimise(&self) -> Result<OptimiseStats, StoreError> {
        let mut stats = OptimiseStats::default();
        let mut seen = HashSet::new();
        for path in self.query_all_valid_paths()? {
            // Hold the path's lock so a concurrent repair does not swap the tree
            // while its files are being replaced.
            let real = self.real_path(&path);
            let _lock = self.locks.lock(&real)?;
            if !self.is_valid_path(&path)? {
                continue;
            }
            tracing::debug!(path = %real.display(), "optimising path");
            self.optimise_tree(&real, &mut seen, &mut stats)?;
        }
        Ok(stats)
    }

    /// Hard-links the files of one valid path through `.links` (`auto-optimise-store`,
    /// as Nix does for each path it registers).
    /// `held`: the caller's locks, when they include `path`'s.
    pub fn optimise_path(
        &self,
        path: &StorePath,
        held: Option<&crate::OutputLocks<'_>>,
    ) -> Result<OptimiseStats, StoreError> {
        let mut stats = OptimiseStats::default();
        let real = self.real_path(path);
        let _lock = match held {
            Some(h) if h.holds(path) => None,
            _ => Some(self.locks.lock(&real)?),
        };
        if self.is_valid_path(path)? {
            self.optimise_tree(&real, &mut HashSet::new(), &mut stats)?;
        }
        Ok(stats)
    }

    fn optimise_tree(
        &self,
        root: &Path,
        seen: &mut HashSet<u64>,
        stats: &mut OptimiseStats,
    ) -> Result<(), StoreError> {
        let mut stack = vec![root.to_path_buf()];
        while let Some(p) = stack.pop() {
            let meta = fs::symlink_metadata(&p).map_err(|source| StoreError::Read {
                path: p.clone(),
                source,
            })?;
            if meta.is_dir() {
                let entries = fs::read_dir(&p).map_err(|source| StoreError::Read {
                    path: p.clone(),
                    source,
                })?;
                for e in entries {
                    let e = e.map_err(|source| StoreError::Read {
                        path: p.clone(),
                        source,
                    })?;
                    stack.push(e.path());
                }
                continue;
            }
            self.optimise_file(&p, &meta, seen, stats)?;
        }
        Ok(())
    }

    fn optimise_file(
        &self,
        path: &Path,
        meta: &fs::Metadata,
        seen: &mut HashSet<u64>,
        stats: &mut OptimiseStats,
    ) -> Result<(), StoreError> {
        let ft = meta.file_type();
        if !(ft.is_file() || ft.is_symlink()) {
            return Ok(());
        }
        let err = |source| StoreError::Optimise {
            path: path.to_owned(),
            source,
        };
        if ft.is_file() && meta.mode() & 0o200 != 0 {
            tracing::warn!(path = %path.display(), "skipping suspicious writable file");
            return Ok(());
        }
        if meta.nlink() > 1 && seen.contains(&meta.ino()) {
            return Ok(());
        }
        let (hash, _) = self.nar_hash_of(path)?;
        let link = self
            .config
            .real_store_dir
            .join(".links")
            .join(hash.to_base32());
        if let Ok(link_meta) = fs::symlink_metadata(&link) {
            if link_meta.len() != meta.len() {
                tracing::warn!(link = %link.display(), "removing corrupted link");
                fs::remove_file(&link).map_err(err)?;
            }
        }
        match fs::hard_link(path, &link) {
            Ok(()) => {
                seen.insert(meta.ino());
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            // A full directory index on ext4: just leave this file unshared.
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()) => {
                return Ok(())
            }
            Err(e) => return Err(err(e)),
        }
        let link_meta = fs::symlink_metadata(&link).map_err(err)?;
        if link_meta.ino() == meta.ino() {
            return Ok(());
        }
        let parent = path.parent().map(Path::to_path_buf).unwrap_or_default();
        let toggle = parent != self.config.real_store_dir;
        let temp = self.tmp.new_path("link");
        if let Err(e) = fs::hard_link(&link, &temp) {
            // Too many links to one inode (typical for empty files): leave it.
            if e.raw_os_error() == Some(rustix::io::Errno::MLINK.raw_os_error()) {
                return Ok(());
            }
            return Err(err(e));
        }
        let _restore = toggle
            .then(|| ReadOnlyAgain::make_writable(&parent, &self.config.state_dir))
            .transpose()
            .map_err(err)?;
        if let Err(e) = fs::rename(&temp, path) {
            let _ = fs::remove_file(&temp);
            return Err(err(e));
        }
        stats.files_linked += 1;
        stats.bytes_freed += meta.len();
        Ok(())
    }
}

/// Makes a store directory writable and, on drop, read-only again with the store's
/// mtime (a rename inside it changed the mtime).
///
/// A marker under `<state>/optimise-writable/` names the directory while it is
/// writable, so that if the process is killed in between, the next
/// [`LocalStore::open`] makes it read-only again ([`restore_interrupted`]).
struct ReadOnlyAgain {
    dir: PathBuf,
    marker: PathBuf,
}

/// Where the markers of directories made writable by the optimiser live.
fn marker_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("optimise-writable")
}

impl ReadOnlyAgain {
    fn make_writable(dir: &Path, state_dir: &Path) -> io::Result<Self> {
        let markers = marker_dir(state_dir);
        fs::create_dir_all(&markers)?;
        let name = unrooted_format::base32::encode(
            unrooted_format::HashAlgo::Sha1
                .digest(dir.as_os_str().as_encoded_bytes())
                .digest(),
        );
        let marker = markers.join(name);
        fs::write(&marker, dir.as_os_str().as_encoded_bytes())?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        Ok(Self {
            dir: dir.to_owned(),
            marker,
        })
    }
}

impl Drop for ReadOnlyAgain {
    fn drop(&mut self) {
        let result = fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o555))
            .and_then(|()| set_store_mtime(&self.dir));
        match result {
            Ok(()) => {
                let _ = fs::remove_file(&self.marker);
            }
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "could not make directory read-only again")
            }
        }
    }
}

/// Makes read-only again the store directories an optimiser killed mid-way left
/// writable. Only directories strictly inside `real_store_dir` are touched, and
/// never through a symlink.
pub(crate) fn restore_interrupted(state_dir: &Path, real_store_dir: &Path) {
    let Ok(entries) = fs::read_dir(marker_dir(state_dir)) else {
        return;
    };
    for entry in entries.flatten() {
        let marker = entry.path();
        let Ok(bytes) = fs::read(&marker) else {
            continue;
        };
        let dir = PathBuf::from(std::ffi::OsString::from_vec(bytes));
        let inside = dir.starts_with(real_store_dir)
            && dir != real_store_dir
            && dir.components().all(|c| {
                matches!(
                    c,
                    std::path::Component::RootDir | std::path::Component::Normal(_)
                )
            });
        let is_dir = fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
        if inside && is_dir {
            let restored = fs::set_permissions(&dir, fs::Permissions::from_mode(0o555))
                .and_then(|()| set_store_mtime(&dir));
            if let Err(e) = restored {
                tracing::warn!(dir = %dir.display(), error = %e, "could not make directory read-only again");
                continue;
            }
        }
        let _ = fs::remove_file(&marker);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_optimise_is_made_read_only_again_and_only_inside_the_store() {
        let tmp = tempfile::tempdir().unwrap();
        let store = tmp.path().join("store");
        let state = tmp.path().join("state");
        let dir = store.join("00000000000000000000000000000000-x/sub");
        let outside = tmp.path().join("outside");
        fs::create_dir_all(&dir).unwrap();
        fs::create_dir_all(&outside).unwrap();
        // What a process killed between make_writable and drop leaves behind.
        std::mem::forget(ReadOnlyAgain::make_writable(&dir, &state).unwrap());
        // A hostile marker naming a directory outside the store.
        fs::write(
            marker_dir(&state).join("evil"),
            outside.as_os_str().as_encoded_bytes(),
        )
        .unwrap();
        fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
        restore_interrupted(&state, &store);
        let mode = |p: &Path| fs::metadata(p).unwrap().mode() & 0o7777;
        assert_eq!(mode(&dir), 0o555);
        assert_eq!(fs::metadata(&dir).unwrap().mtime(), 1);
        assert_eq!(mode(&outside), 0o755, "outside the store: untouched");
        assert_eq!(fs::read_dir(marker_dir(&state)).unwrap().count(), 0);
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
}
