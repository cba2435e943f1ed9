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
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

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
            .then(|| ReadOnlyAgain::make_writable(&parent))
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
struct ReadOnlyAgain(PathBuf);

impl ReadOnlyAgain {
    fn make_writable(dir: &Path) -> io::Result<Self> {
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        Ok(Self(dir.to_owned()))
    }
}

impl Drop for ReadOnlyAgain {
    fn drop(&mut self) {
        let result = fs::set_permissions(&self.0, fs::Permissions::from_mode(0o555))
            .and_then(|()| set_store_mtime(&self.0));
        if let Err(e) = result {
            tracing::warn!(dir = %self.0.display(), error = %e, "could not make directory read-only again");
        }
    }
}
