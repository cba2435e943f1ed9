//! Which ids builders run as, and the per-build slices of the store owner's subordinate
//! ids.
//!
//! **Id-range mode** (the default whenever the host allows it): the store owner has
//! ranges in `/etc/subuid` and `/etc/subgid` and `newuidmap`/`newgidmap` are
//! installed. The pool is those ranges (narrowed by Nix's `start-id` and `id-count`),
//! cut into slices of `unrooted-ids-per-build` ids (65,536 by default, Nix's
//! `maxIdsPerBuild`); slice `i` is uids `uid_start + i·n …` and gids
//! `gid_start + i·n …`. A build holds its slice through an exclusive `flock` on
//! `<state>/userpool2/<first uid of the slice>` (Nix keeps its build-user locks in
//! `userpool`/`userpool2` too), taken before the sandbox starts and released only once
//! the build's files are the store owner's again ([`unrooted_sandbox::Sandbox::reclaim`]).
//! The lock is per open file description, so two builds of one daemon exclude each
//! other as two daemons sharing a state directory do, and a daemon that dies releases
//! its slices with its descriptors. Inside, the builder is uid 1000 / gid 100 and the
//! store owner is root (see [`unrooted_sandbox::IdMaps`]).
//!
//! A daemon killed together with its sandbox helpers (`systemctl kill -s KILL`, the
//! OOM killer taking the unit) leaves its builds' sandbox roots and build directories
//! owned by their slices, possibly unreadable to the store owner; the next daemon gives
//! them back before anything sweeps them ([`IdPool::reclaim_leftovers`]). Its slices
//! are free already: their locks went with its descriptors.
//!
//! **Single-id mode** (`auto-allocate-uids = false`, or no ranges, or no mappers): the
//! builder's 1000/100 map to the store owner, as in Nix's rootless mode; only the
//! mount restrictions stand between a builder and the store, and the daemon warns so
//! once at start.

use std::fs;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustix::fs::{flock, FlockOperation};
use unrooted_sandbox::subids::{host_subids, SubIdRange};
use unrooted_sandbox::{IdMaps, IdSlice, Sandbox, SandboxError, UID_RANGE_IDS};

use crate::error::BuildError;

/// The builder needs inner ids up to 1000 (its uid), so smaller slices are refused.
pub const MIN_IDS_PER_BUILD: u32 = 1001;

/// How often a build waiting for a free slice looks again.
const RETRY: Duration = Duration::from_millis(50);

/// How many more walks a leftover tree gets when an entry vanished under the last one
/// (see [`retry_vanished`]), [`RETRY`] apart: half a second for a killed build's last
/// processes to be gone.
const VANISHED_RETRIES: u32 = 10;

/// The settings that choose the id mode, as Nix names them where Nix has a name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdSettings {
    /// `auto-allocate-uids` (default true here): use per-build slices of the
    /// subordinate ids when the host has them.
    pub auto_allocate_uids: bool,
    /// `start-id`: the first id of the pool (default: the start of the store owner's
    /// first subordinate range); must lie in a range of both files.
    pub start_id: Option<u32>,
    /// `id-count`: how many ids the pool holds at most (default: to the end of the
    /// range `start-id` lies in).
    pub id_count: Option<u32>,
    /// `unrooted-ids-per-build`: the size of one build's slice (default 65,536; at
    /// least 1,001; the `uid-range` feature needs 65,536).
    pub ids_per_build: u32,
}

impl Default for IdSettings {
    fn default() -> Self {
        Self {
            auto_allocate_uids: true,
            start_id: None,
            id_count: None,
            ids_per_build: UID_RANGE_IDS,
        }
    }
}

/// Which ids builders run as, decided once at start.
#[derive(Debug, Clone)]
pub enum IdMode {
    /// The builder's ids map to the store owner.
    Single {
        /// Why (for the start-up warning and `unrooted doctor`).
        why: String,
    },
    /// Each build gets a slice of the pool.
    Ranges(IdPool),
}

impl Default for IdMode {
    fn default() -> Self {
        IdMode::Single {
            why: "no id pool configured".into(),
        }
    }
}

/// The store owner's subordinate ids cut into per-build slices.
#[derive(Debug, Clone)]
pub struct IdPool {
    dir: PathBuf,
    owner_uid: u32,
    owner_gid: u32,
    user: String,
    uid_start: u32,
    gid_start: u32,
    slices: u32,
    per_build: u32,
    newuidmap: PathBuf,
    newgidmap: PathBuf,
}

/// A held slice: released (its lock file unlocked) when dropped.
#[derive(Debug)]
pub struct IdLease {
    _lock: fs::File,
    slice: IdSlice,
}

impl IdLease {
    /// The slice.
    pub fn slice(&self) -> &IdSlice {
        &self.slice
    }
}

/// `[start, start + count)` of the pool within `ranges`, or why there is none.
fn pool_in(
    ranges: &[SubIdRange],
    start_id: Option<u32>,
    id_count: Option<u32>,
) -> Option<(u32, u32)> {
    let (start, end) = match start_id {
        Some(s) => {
            let r = ranges
                .iter()
                .find(|r| s >= r.start && u64::from(s) < u64::from(r.start) + u64::from(r.count))?;
            (s, u64::from(r.start) + u64::from(r.count))
        }
        None => {
            let r = ranges.first()?;
            (r.start, u64::from(r.start) + u64::from(r.count))
        }
    };
    let count = (end - u64::from(start)).min(u64::from(id_count.unwrap_or(u32::MAX)));
    Some((start, u32::try_from(count).unwrap_or(u32::MAX)))
}

impl IdMode {
    /// Decides the mode for the store owner `owner_uid`/`owner_gid` from the settings and
    /// the host, keeping lock files in `<state_dir>/userpool2`. With ranges, `helper`
    /// maps a namespace with the first slice once (an empty reclaim), so a host where
    /// `newuidmap` cannot work (not setuid, `NoNewPrivileges`) falls back now, with the
    /// reason, rather than failing every build.
    pub fn detect(
        settings: &IdSettings,
        owner_uid: u32,
        owner_gid: u32,
        state_dir: &Path,
        helper: &Sandbox,
    ) -> IdMode {
        let single = |why: String| IdMode::Single { why };
        if !settings.auto_allocate_uids {
            return single("auto-allocate-uids = false".into());
        }
        if settings.ids_per_build < MIN_IDS_PER_BUILD {
            return single(format!(
                "unrooted-ids-per-build = {} is below {MIN_IDS_PER_BUILD}",
                settings.ids_per_build
            ));
        }
        // Copies of the mappers beside the daemon's binary (with file capabilities,
        // from `unrooted install`) come first.
        let exe = std::env::current_exe().ok();
        let own_dir = exe.as_deref().and_then(Path::parent);
        let host = match host_subids(Path::new("/"), owner_uid, own_dir) {
            Ok(h) => h,
            Err(e) => return single(e.to_string()),
        };
        let shown = |r: &[SubIdRange]| {
            r.iter()
                .map(|r| format!("{}+{}", r.start, r.count))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let Some((uid_start, uid_count)) =
            pool_in(&host.uids, settings.start_id, settings.id_count)
        else {
            return single(format!(
                "start-id {} is not in {}'s /etc/subuid ranges ({})",
                settings.start_id.unwrap_or(0),
                host.user,
                shown(&host.uids)
            ));
        };
        let Some((gid_start, gid_count)) =
            pool_in(&host.gids, settings.start_id, settings.id_count)
        else {
            return single(format!(
                "start-id {} is not in {}'s /etc/subgid ranges ({})",
                settings.start_id.unwrap_or(0),
                host.user,
                shown(&host.gids)
            ));
        };
        let slices = uid_count.min(gid_count) / settings.ids_per_build;
        if slices == 0 {
            return single(format!(
                "{}'s subordinate ids ({} uids from {uid_start}, {} gids from {gid_start}) hold no slice of unrooted-ids-per-build = {} ids",
                host.user, uid_count, gid_count, settings.ids_per_build
            ));
        }
        let dir = state_dir.join("userpool2");
        // The state directory with the default mode (this may run before the store
        // makes it, and clients reach the socket through it); the locks 0700.
        let made = fs::create_dir_all(state_dir).and_then(|()| {
            match fs::DirBuilder::new().mode(0o700).create(&dir) {
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
                other => other,
            }
        });
        if let Err(e) = made {
            return single(format!("cannot create {}: {e}", dir.display()));
        }
        let pool = IdPool {
            dir,
            owner_uid,
            owner_gid,
            user: host.user,
            uid_start,
            gid_start,
            slices,
            per_build: settings.ids_per_build,
            newuidmap: host.newuidmap,
            newgidmap: host.newgidmap,
        };
        let probe = IdMaps::reclaim(owner_uid, owner_gid, &pool.slice(0));
        if let Err(e) = helper.reclaim(&probe, &[]) {
            return single(format!(
                "{} has subordinate ids but mapping them with {} failed: {} (a setuid-root newuidmap also needs CAP_SYS_ADMIN and CAP_DAC_OVERRIDE in the capability bounding set; `unrooted install` puts copies with file capabilities beside the daemon's binary, which need only CAP_SETUID and CAP_SETGID)",
                pool.user,
                pool.newuidmap.display(),
                crate::error_chain(&e)
            ));
        }
        IdMode::Ranges(pool)
    }

    /// One line for the start-up log and `unrooted doctor`: the mode and why.
    pub fn describe(&self) -> String {
        match self {
            IdMode::Single { why } => format!(
                "builds run in the single-id mode: the builder's uid 1000 is the store owner outside its sandbox, and concurrent builds share it ({why})"
            ),
            IdMode::Ranges(p) => format!(
                "builds run in the id-range mode (auto-allocate-uids, and {} has subordinate ids and {} works): each build gets its own {} uids and gids, so {} id-range builds can run at once (uids {}..{}, gids {}..{} of its subordinate ids; locks in {}); the builder is uid 1000 / gid 100 inside and the store owner is root",
                p.user,
                p.newuidmap.display(),
                p.per_build,
                p.slices,
                p.uid_start,
                u64::from(p.uid_start) + u64::from(p.slices) * u64::from(p.per_build) - 1,
                p.gid_start,
                u64::from(p.gid_start) + u64::from(p.slices) * u64::from(p.per_build) - 1,
                p.dir.display()
            ),
        }
    }
}

impl IdPool {
    /// The store owner's uid and gid.
    pub fn owner(&self) -> (u32, u32) {
        (self.owner_uid, self.owner_gid)
    }

    /// The size of one slice.
    pub fn ids_per_build(&self) -> u32 {
        self.per_build
    }

    fn slice(&self, i: u32) -> IdSlice {
        IdSlice {
            uid: self.uid_start + i * self.per_build,
            gid: self.gid_start + i * self.per_build,
            count: self.per_build,
            newuidmap: self.newuidmap.clone(),
            newgidmap: self.newgidmap.clone(),
        }
    }

    /// Takes a free slice, or `None` when all are held.
    pub fn try_acquire(&self) -> Result<Option<IdLease>, BuildError> {
        for i in 0..self.slices {
            let slice = self.slice(i);
            let path = self.dir.join(slice.uid.to_string());
            let file = fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
                .open(&path)
                .map_err(BuildError::io("opening the id slice lock", &path))?;
            match flock(&file, FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => return Ok(Some(IdLease { _lock: file, slice })),
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => {
                    return Err(BuildError::io("locking the id slice", &path)(e.into()));
                }
            }
        }
        Ok(None)
    }

    /// Takes a free slice, waiting while all are held; `None` when `cancelled` says
    /// nobody wants the build any more.
    pub fn acquire(&self, cancelled: &dyn Fn() -> bool) -> Result<Option<IdLease>, BuildError> {
        loop {
            if let Some(lease) = self.try_acquire()? {
                return Ok(Some(lease));
            }
            if cancelled() {
                return Ok(None);
            }
            std::thread::sleep(RETRY);
        }
    }

    /// The maps of the namespace that gives `slice`'s files back to the store owner.
    pub fn reclaim_maps(&self, slice: &IdSlice) -> IdMaps {
        IdMaps::reclaim(self.owner_uid, self.owner_gid, slice)
    }

    /// How many builds can hold a slice at once.
    pub fn slices(&self) -> u32 {
        self.slices
    }

    /// The whole pool as one slice: a namespace mapping it may chown what any build
    /// left, whichever slice it held.
    fn whole(&self) -> IdSlice {
        IdSlice {
            count: self.slices * self.per_build,
            ..self.slice(0)
        }
    }

    /// Gives back to the store owner what the builds of daemons that died without
    /// cleaning up (killed with their sandbox helpers, so nothing reclaimed their
    /// files) left owned by the pool's ids: their sandbox roots in the store's
    /// temporary areas (`<store_dir>/.unrooted-tmp-<pid>-…`, unlocked) and their build
    /// directories (`<tmp_dir>/unrooted-builds-<pid>-…`), both of a process that is
    /// gone. The builder may have left directories the owner cannot enter or empty
    /// (`chmod 000`, owned by its ids), so the store's sweep of old temporary areas
    /// and the sweep of dead build directories, which run after this, could not
    /// remove them.
    ///
    /// Call it at start-up, before the store is opened: the trees are chowned, in one
    /// user namespace mapping the owner and the whole pool, never removed here. A
    /// live daemon's trees (its pid alive, its area locked) are left alone. Returns
    /// the trees given back; a tree that could not be is logged and skipped (the
    /// sweeps then keep what they cannot remove, with a warning, and the next start
    /// tries again).
    ///
    /// When only the old daemon was killed, its sandbox helpers outlive it and race
    /// with this: each sees its socket close, kills its build and, once the build's
    /// PID namespace is empty, chowns the same trees back to the owner itself. Two
    /// chowns to the same owner are harmless, whichever runs first or whether they
    /// interleave, and the helpers delete nothing (removing the trees was the dead
    /// daemon's job, left to the sweeps after this). The one thing that can move under
    /// this walk is a build whose helper has not killed it yet: its builder may
    /// delete its own files, and a walk that meets a vanished entry stops with ENOENT.
    /// Such a tree is walked again (`retry_vanished`): a vanished entry is one
    /// less to give back, not a failure. What such a build still creates behind the
    /// walk stays its ids'; the store's sweep keeps it with a warning, never failing
    /// the start, and the next start gives it back and removes it.
    pub fn reclaim_leftovers(
        &self,
        helper: &Sandbox,
        store_dir: &Path,
        tmp_dir: &Path,
    ) -> Vec<PathBuf> {
        // A store instance creates and locks its temporary area under the store
        // directory's lock, as its sweep of dead ones runs: under that lock, an area
        // nobody holds is dead.
        let store_lock = open_dir(store_dir)
            .ok()
            .filter(|l| flock(l, FlockOperation::LockExclusive).is_ok());
        let mut found = Vec::new();
        if store_lock.is_some() {
            found = dead_trees(
                store_dir,
                unrooted_store::TEMP_PREFIX,
                self.owner_uid,
                Liveness::Lock,
            );
        }
        found.extend(dead_trees(
            tmp_dir,
            "unrooted-builds-",
            self.owner_uid,
            Liveness::Pid,
        ));
        if found.is_empty() {
            return Vec::new();
        }
        let maps = self.reclaim_maps(&self.whole());
        let mut done = Vec::new();
        for (path, _held) in found {
            match retry_vanished(|| helper.reclaim(&maps, std::slice::from_ref(&path)), RETRY) {
                Ok(()) => {
                    tracing::info!(
                        "gave {} (left by a daemon that died mid-build) back to {}",
                        path.display(),
                        self.user
                    );
                    done.push(path);
                }
                Err(e) => tracing::warn!(
                    "giving {} (left by a daemon that died mid-build) back to {}: {}",
                    path.display(),
                    self.user,
                    crate::error_chain(&e)
                ),
            }
        }
        done
    }
}

/// Runs `walk` (one reclaim of a tree) again, up to [`VANISHED_RETRIES`] more times,
/// `pause` apart, while it fails only because an entry it listed was gone when it got
/// there (ENOENT).
///
/// The entry was deleted by what still ran in the tree (a killed daemon's build in its
/// last moments), so there is nothing left to give back for it; the walk stopped there,
/// though, so the rest of the tree is walked again as it is now. Chowning is
/// idempotent, so walking twice what was done already costs time only. Any other
/// failure, or ENOENT once the retries are spent (something keeps deleting), is
/// returned for the caller to report.
fn retry_vanished(
    mut walk: impl FnMut() -> Result<(), SandboxError>,
    pause: Duration,
) -> Result<(), SandboxError> {
    let mut left = VANISHED_RETRIES;
    loop {
        match walk() {
            Err(SandboxError::Setup { source, .. })
                if left > 0
                    && source.raw_os_error() == Some(rustix::io::Errno::NOENT.raw_os_error()) =>
            {
                left -= 1;
                std::thread::sleep(pause);
            }
            done => return done,
        }
    }
}

/// How [`dead_trees`] tells a live owner's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Liveness {
    /// Its owner holds an exclusive `flock` on it (the store's temporary areas).
    Lock,
    /// A process with the pid in its name runs (the daemons' build directories).
    /// This process's own pid counts as gone: nothing of ours exists yet when this
    /// runs, and a restarted container may reuse the pid.
    Pid,
}

fn open_dir(path: &Path) -> std::io::Result<fs::File> {
    fs::OpenOptions::new()
        .read(true)
        .custom_flags((rustix::fs::OFlags::DIRECTORY | rustix::fs::OFlags::NOFOLLOW).bits() as i32)
        .open(path)
}

/// The directories `<dir>/<prefix><pid>-…` owned by `owner_uid` whose owner is gone,
/// each with its `flock` held when it is told by one.
fn dead_trees(
    dir: &Path,
    prefix: &str,
    owner_uid: u32,
    live: Liveness,
) -> Vec<(PathBuf, Option<fs::File>)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let own = std::process::id();
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if live == Liveness::Pid && pid != own && Path::new("/proc").join(pid.to_string()).exists()
        {
            continue;
        }
        let path = entry.path();
        let ours = fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == owner_uid);
        if !ours {
            continue;
        }
        let mut lock = None;
        if live == Liveness::Lock {
            let Ok(l) = open_dir(&path) else { continue };
            if flock(&l, FlockOperation::NonBlockingLockExclusive).is_err() {
                continue;
            }
            lock = Some(l);
        }
        out.push((path, lock));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(start: u32, count: u32) -> SubIdRange {
        SubIdRange { start, count }
    }

    #[test]
    fn pool_follows_start_id_and_id_count() {
        let ranges = [r(100_000, 65536), r(500_000, 524_288)];
        assert_eq!(pool_in(&ranges, None, None), Some((100_000, 65536)));
        assert_eq!(
            pool_in(&ranges, Some(600_000), None),
            Some((600_000, 424_288))
        );
        assert_eq!(
            pool_in(&ranges, Some(500_000), Some(131_072)),
            Some((500_000, 131_072))
        );
        assert_eq!(pool_in(&ranges, Some(99_999), None), None);
        assert_eq!(pool_in(&[], None, None), None);
    }

    #[test]
    fn dead_trees_are_unlocked_areas_and_directories_of_gone_pids() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let me = rustix::process::geteuid().as_raw();
        let t = unrooted_store::TEMP_PREFIX;
        let b = "unrooted-builds-";
        // Above any pid_max (at most 2^22); pid 1 always runs.
        let own = std::process::id();
        let names = [
            format!("{t}999999001-5-0"),
            format!("{t}999999002-5-0"),
            format!("{t}1-5-0"),
            format!("{b}999999001-a"),
            format!("{b}1-a"),
            format!("{b}{own}-a"),
            "unrelated".into(),
        ];
        for name in &names {
            fs::create_dir(d.join(name)).unwrap();
        }
        fs::write(d.join(format!("{t}999999003-5-0")), "").unwrap();
        fs::write(d.join(format!("{b}999999003-a")), "").unwrap();
        // A live store instance holds its area's lock.
        let held = fs::File::open(d.join(&names[1])).unwrap();
        flock(&held, FlockOperation::LockExclusive).unwrap();
        let found = |prefix, live| -> Vec<PathBuf> {
            let mut v: Vec<PathBuf> = dead_trees(d, prefix, me, live)
                .into_iter()
                .map(|(p, _)| p)
                .collect();
            v.sort();
            v
        };
        // Areas by their lock alone: a live pid 1 does not keep an unlocked area.
        assert_eq!(
            found(t, Liveness::Lock),
            [d.join(&names[2]), d.join(&names[0])]
        );
        // Build directories by their pid, this process's own counting as gone.
        let mut want = vec![d.join(&names[3]), d.join(&names[5])];
        want.sort();
        assert_eq!(found(b, Liveness::Pid), want);
        // Someone else's directory is never taken.
        assert!(dead_trees(d, t, me + 1, Liveness::Lock).is_empty());
        assert!(dead_trees(d, b, me + 1, Liveness::Pid).is_empty());
    }

    fn failed(errno: rustix::io::Errno) -> SandboxError {
        SandboxError::Setup {
            step: unrooted_sandbox::Step::Reclaiming,
            path: Some("/store/.unrooted-tmp-1-2-0/root/x".into()),
            source: std::io::Error::from_raw_os_error(errno.raw_os_error()),
        }
    }

    #[test]
    fn a_walk_is_repeated_only_while_entries_vanish_under_it() {
        use rustix::io::Errno;
        // Entries vanish twice (a dying build deleting its files), then the walk
        // gets through: given back.
        let mut walks = 0;
        let outcome = retry_vanished(
            || {
                walks += 1;
                if walks <= 2 {
                    Err(failed(Errno::NOENT))
                } else {
                    Ok(())
                }
            },
            Duration::ZERO,
        );
        assert!(outcome.is_ok(), "{outcome:?}");
        assert_eq!(walks, 3);
        // Any other failure is reported at once.
        let mut walks = 0;
        let outcome = retry_vanished(
            || {
                walks += 1;
                Err(failed(Errno::ACCESS))
            },
            Duration::ZERO,
        );
        assert!(
            matches!(&outcome, Err(SandboxError::Setup { source, .. }) if source.raw_os_error() == Some(Errno::ACCESS.raw_os_error())),
            "{outcome:?}"
        );
        assert_eq!(walks, 1);
        // Something that never stops deleting is reported once the retries are spent.
        let mut walks = 0;
        let outcome = retry_vanished(
            || {
                walks += 1;
                Err(failed(Errno::NOENT))
            },
            Duration::ZERO,
        );
        assert!(outcome.is_err());
        assert_eq!(walks, VANISHED_RETRIES + 1);
    }

    #[test]
    fn slices_are_exclusive_and_released_on_drop() {
        let dir = tempfile::tempdir().unwrap();
        let pool = IdPool {
            dir: dir.path().to_path_buf(),
            owner_uid: 1,
            owner_gid: 1,
            user: "u".into(),
            uid_start: 100_000,
            gid_start: 200_000,
            slices: 2,
            per_build: 65536,
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        };
        let a = pool.try_acquire().unwrap().unwrap();
        let b = pool.try_acquire().unwrap().unwrap();
        assert_eq!(a.slice().uid, 100_000);
        assert_eq!(b.slice().uid, 165_536);
        assert_eq!(b.slice().gid, 265_536);
        assert!(pool.try_acquire().unwrap().is_none());
        assert!(pool.acquire(&|| true).unwrap().is_none());
        drop(a);
        assert_eq!(pool.try_acquire().unwrap().unwrap().slice().uid, 100_000);
    }
}
