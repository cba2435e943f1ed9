//! The pool of spare directories: build directories and sandbox roots, emptied and
//! kept for the next build.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use unrooted_format::StorePath;
use unrooted_sandbox::{empty_dir, remove_tree};
use unrooted_store::LocalStore;

use crate::error::BuildError;

/// Emptied directories kept for the next build's build directory or sandbox root,
/// which gets one by a rename instead of a `mkdir`, and gives it back instead of
/// removing it: on this kind of file system (ext4, mounted with `discard`) a new
/// directory costs an inode search that grows with recent deletions and a removed one
/// a discarded block, a millisecond or more per build between them. A directory is
/// kept only once empty, still a directory of ours, and mode 0700 again, so nothing of
/// one build reaches the next; anything else is removed as before.
///
/// Emptying happens on a thread of its own, after the build's result is out: a
/// sandbox root holds a few dozen mount points and generated files, and removing them
/// took half a millisecond of every build's latency. A directory handed over is
/// renamed to its spare name at once (so the build's own name is free) and becomes
/// takeable only once emptied; at most [`MAX_SPARES`] are kept or being emptied, and
/// past that, or if the thread cannot run, a directory is removed in place as before.
/// A daemon that dies meanwhile leaves them to the start-up sweeps of dead daemons'
/// temporary areas and build directories.
#[derive(Debug, Default)]
pub(crate) struct Spares {
    shared: std::sync::Arc<SparesShared>,
    emptier: std::sync::OnceLock<Option<std::sync::mpsc::SyncSender<PathBuf>>>,
}

#[derive(Debug, Default)]
struct SparesShared {
    /// Emptied spares, ready to be taken.
    idle: std::sync::Mutex<Vec<PathBuf>>,
    /// Spares handed to the emptier and not yet idle or removed.
    pending: std::sync::atomic::AtomicUsize,
}

/// Spare directories kept in each place; a few more than builds run at once is
/// plenty.
const MAX_SPARES: usize = 8;

impl SparesShared {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<PathBuf>> {
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Empties `spare` and keeps it if it is still a private directory of ours (the
    /// emptying leaves its mode 0700), or removes it.
    fn settle(&self, spare: PathBuf) -> Result<(), unrooted_sandbox::CleanupError> {
        let private = |p: &Path| {
            fs::symlink_metadata(p).is_ok_and(|m| {
                m.is_dir()
                    && m.uid() == rustix::process::geteuid().as_raw()
                    && m.mode() & 0o7777 == 0o700
            })
        };
        let kept = empty_dir(&spare).is_ok() && private(&spare) && {
            let mut idle = self.idle();
            let room = idle.len() < MAX_SPARES;
            if room {
                idle.push(spare.clone());
            }
            room
        };
        if kept {
            Ok(())
        } else {
            remove_tree(&spare)
        }
    }
}

impl Spares {
    /// Renames a spare to `dest` (which must not exist); false when there is none.
    fn take(&self, dest: &Path) -> bool {
        loop {
            let Some(spare) = self.shared.idle().pop() else {
                return false;
            };
            let renamed = rustix::fs::renameat_with(
                rustix::fs::CWD,
                &spare,
                rustix::fs::CWD,
                dest,
                rustix::fs::RenameFlags::NOREPLACE,
            );
            if renamed.is_ok() {
                return true;
            }
            let _ = remove_tree(&spare);
        }
    }

    /// The emptying thread's queue, started on first use; `None` if it cannot start.
    fn emptier(&self) -> Option<&std::sync::mpsc::SyncSender<PathBuf>> {
        self.emptier
            .get_or_init(|| {
                let (tx, rx) = std::sync::mpsc::sync_channel::<PathBuf>(MAX_SPARES);
                let shared = std::sync::Arc::clone(&self.shared);
                std::thread::Builder::new()
                    .name("spares".into())
                    .stack_size(256 << 10)
                    .spawn(move || {
                        for spare in rx {
                            if let Err(e) = shared.settle(spare) {
                                tracing::warn!("removing a spare directory: {e}");
                            }
                            shared.pending.fetch_sub(1, Ordering::AcqRel);
                        }
                    })
                    .ok()
                    .map(|_| tx)
            })
            .as_ref()
    }

    /// Keeps `dir` under the unused name `spare` (in the same directory) once emptied,
    /// or removes it. Returns before the emptying when the emptier takes it.
    fn give(&self, dir: &Path, spare: PathBuf) -> Result<(), unrooted_sandbox::CleanupError> {
        let ours = fs::symlink_metadata(dir)
            .is_ok_and(|m| m.is_dir() && m.uid() == rustix::process::geteuid().as_raw());
        let shared = &self.shared;
        let room = || shared.idle().len() + shared.pending.load(Ordering::Acquire) < MAX_SPARES;
        if !ours || !room() || fs::rename(dir, &spare).is_err() {
            return remove_tree(dir);
        }
        shared.pending.fetch_add(1, Ordering::AcqRel);
        let handed = match self.emptier() {
            Some(tx) => tx.try_send(spare).map_err(|e| match e {
                std::sync::mpsc::TrySendError::Full(p)
                | std::sync::mpsc::TrySendError::Disconnected(p) => p,
            }),
            None => Err(spare),
        };
        match handed {
            Ok(()) => Ok(()),
            Err(spare) => {
                let r = shared.settle(spare);
                shared.pending.fetch_sub(1, Ordering::AcqRel);
                r
            }
        }
    }
}

/// A daemon-private directory (0700) holding build directories while they are used.
#[derive(Debug)]
pub(crate) struct BuildDirs {
    parent: PathBuf,
    counter: AtomicU64,
    /// Emptied build directories, in `parent`.
    spare_dirs: Spares,
    /// Emptied sandbox roots, in the store's temporary area.
    spare_roots: Spares,
}

impl BuildDirs {
    pub(crate) fn create(tmp_dir: &Path) -> Result<Self, BuildError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        sweep_dead(tmp_dir);
        let parent = tmp_dir.join(format!("unrooted-builds-{}-{nanos:x}", std::process::id()));
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&parent)
            .map_err(BuildError::io(
                "creating the private build directory",
                &parent,
            ))?;
        Ok(Self {
            parent,
            counter: AtomicU64::new(0),
            spare_dirs: Spares::default(),
            spare_roots: Spares::default(),
        })
    }

    /// A new sandbox root in the store's temporary area, a spare one if there is one.
    pub(super) fn new_root<'a>(&'a self, store: &LocalStore) -> Result<RootGuard<'a>, BuildError> {
        let root = store.new_temp_path("chroot");
        if !self.spare_roots.take(&root) {
            fs::DirBuilder::new()
                .mode(0o700)
                .create(&root)
                .map_err(BuildError::io("creating the sandbox root", &root))?;
        }
        Ok(RootGuard {
            path: root,
            spare: store.new_temp_path("spare"),
            spares: &self.spare_roots,
        })
    }

    /// A new build directory for `drv`, a spare one if there is one.
    pub(super) fn new_dir(&self, drv: &StorePath) -> Result<PathBuf, BuildError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let dir = self
            .parent
            .join(format!("nix-build-{}-{n}", drv.name().as_str()));
        if self.spare_dirs.take(&dir) {
            return Ok(dir);
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(BuildError::io("creating the build directory", &dir))?;
        Ok(dir)
    }

    /// Empties a build directory that is no longer used and keeps it for the next
    /// build, or removes it.
    pub(super) fn release(&self, dir: &Path) -> Result<(), unrooted_sandbox::CleanupError> {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        self.spare_dirs
            .give(dir, self.parent.join(format!("spare-{n}")))
    }
}

/// Removes the private build parents of daemons that died without cleaning up
/// (`unrooted-builds-<pid>-…` whose process is gone), as long as they are ours.
fn sweep_dead(tmp_dir: &Path) {
    let Ok(entries) = fs::read_dir(tmp_dir) else {
        return;
    };
    let own_uid = rustix::process::geteuid().as_raw();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name
            .to_str()
            .and_then(|n| n.strip_prefix("unrooted-builds-"))
        else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        // A live process with that pid (ours or a reused one) keeps the directory.
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }
        let path = entry.path();
        let ours = fs::symlink_metadata(&path)
            .is_ok_and(|m| m.is_dir() && std::os::unix::fs::MetadataExt::uid(&m) == own_uid);
        if ours {
            if let Err(e) = remove_tree(&path) {
                tracing::debug!(path = %path.display(), error = %e, "removing a dead daemon's build directories");
            }
        }
    }
}

impl Drop for BuildDirs {
    fn drop(&mut self) {
        let _ = remove_tree(&self.parent);
    }
}

/// Empties a sandbox root when dropped, keeping it as a spare (named `spare`) or
/// removing it.
pub(super) struct RootGuard<'a> {
    /// The sandbox root.
    pub(super) path: PathBuf,
    spare: PathBuf,
    spares: &'a Spares,
}

impl Drop for RootGuard<'_> {
    fn drop(&mut self) {
        if let Err(e) = self
            .spares
            .give(&self.path, std::mem::take(&mut self.spare))
        {
            tracing::warn!("removing the sandbox root {}: {e}", self.path.display());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// Waits until the emptier has dealt with everything handed to it.
    fn settled(spares: &Spares) {
        let t0 = std::time::Instant::now();
        while spares.shared.pending.load(Ordering::Acquire) > 0 {
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(10),
                "emptier stuck"
            );
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
    }

    #[test]
    fn spares_come_back_empty_and_private_and_are_bounded() {
        let tmp = tempfile::tempdir().unwrap();
        let spares = Spares::default();
        // Nothing kept yet: the caller makes its own directory.
        assert!(!spares.take(&tmp.path().join("a")));

        // A used directory, with what a builder may leave: files, a read-only and an
        // unreadable subdirectory, a symlink out, an odd mode on the top.
        let used = tmp.path().join("used");
        fs::create_dir(&used).unwrap();
        fs::write(used.join("f"), b"x").unwrap();
        fs::create_dir_all(used.join("ro/deep")).unwrap();
        fs::write(used.join("ro/deep/g"), b"y").unwrap();
        fs::set_permissions(used.join("ro"), fs::Permissions::from_mode(0o555)).unwrap();
        fs::create_dir(used.join("locked")).unwrap();
        fs::set_permissions(used.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let outside = tmp.path().join("outside");
        fs::write(&outside, b"kept").unwrap();
        std::os::unix::fs::symlink(&outside, used.join("link")).unwrap();
        fs::set_permissions(&used, fs::Permissions::from_mode(0o755)).unwrap();

        spares.give(&used, tmp.path().join("spare-1")).unwrap();
        assert!(!used.exists());
        settled(&spares);
        assert_eq!(fs::read(&outside).unwrap(), b"kept");
        let next = tmp.path().join("next");
        assert!(spares.take(&next));
        assert_eq!(fs::read_dir(&next).unwrap().count(), 0, "handed out empty");
        let mode = fs::symlink_metadata(&next).unwrap().mode() & 0o7777;
        assert_eq!(mode, 0o700);
        assert!(!tmp.path().join("spare-1").exists());

        // At most MAX_SPARES are kept; the rest are removed.
        for i in 0..MAX_SPARES + 2 {
            let d = tmp.path().join(format!("d{i}"));
            fs::create_dir(&d).unwrap();
            spares.give(&d, tmp.path().join(format!("s{i}"))).unwrap();
            assert!(!d.exists());
        }
        settled(&spares);
        let kept = (0..MAX_SPARES + 2)
            .filter(|i| tmp.path().join(format!("s{i}")).exists())
            .count();
        assert_eq!(kept, MAX_SPARES);

        // A path that is not a directory is removed, not kept.
        let file = tmp.path().join("file");
        fs::write(&file, b"z").unwrap();
        let taken = (0..MAX_SPARES)
            .filter(|i| spares.take(&tmp.path().join(format!("t{i}"))))
            .count();
        assert_eq!(taken, MAX_SPARES);
        spares.give(&file, tmp.path().join("s-file")).unwrap();
        assert!(!file.exists() && !tmp.path().join("s-file").exists());
    }
}
