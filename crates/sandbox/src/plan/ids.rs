//! The id maps of a sandbox: one id, a slice of the store owner's subordinate ids,
//! or a whole `uid-range` slice.

use std::path::PathBuf;

use super::{BUILDER_GID, BUILDER_UID};

/// One line of a uid or gid map: `inner outer count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapEntry {
    /// First id inside the namespace.
    pub inner: u32,
    /// First id outside.
    pub outer: u32,
    /// How many ids.
    pub count: u32,
}

/// How the helper writes the maps of the sandbox's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMapMethod {
    /// Write `/proc/<pid>/{setgroups,uid_map,gid_map}` directly: only one id each, with
    /// `setgroups` = `deny` (what an unprivileged process may do).
    Direct,
    /// Run the setuid `newuidmap`/`newgidmap` with ranges from `/etc/subuid` and
    /// `/etc/subgid` (several ids; `setgroups` stays allowed).
    NewIdMap {
        /// Path of `newuidmap`.
        newuidmap: PathBuf,
        /// Path of `newgidmap`.
        newgidmap: PathBuf,
    },
    /// Enter a user namespace that already has exactly these maps: the daemon had one
    /// mapped with `newuidmap`/`newgidmap` for the slice once and keeps its descriptor,
    /// which travels with the plan (`SCM_RIGHTS`). Nothing is written and no setuid
    /// program runs, so a build pays neither. Only [`crate::Sandbox`] sets it.
    Enter,
}

/// The id maps of the sandbox's user namespace and the identity the builder runs as.
///
/// Two layouts exist:
///
/// * **single id** ([`IdMaps::single`], no subordinate ids): inner 1000 → the store
///   owner, inner 100 → its group; the builder *is* the store owner outside.
/// * **id range** ([`IdMaps::ranged`], a slice of the store owner's `/etc/subuid` and
///   `/etc/subgid` ranges, written by `newuidmap`/`newgidmap`): inner 0 → the store
///   owner (so the sandbox's `/`, `/etc` and the store directory belong to inner root,
///   which the builder is not), inner `n` → `slice + n` for `1 ≤ n < count`. The
///   setup runs as inner root, then drops to the builder's 1000/100 (supplementary
///   groups cleared) before the nested namespace. Outside, the builder's processes and
///   files belong to `slice + 1000` / `slice_gid + 100`, ids that own nothing of the
///   store. For the `uid-range` system feature ([`IdMaps::uid_range`]) inner
///   0..65535 → the slice and the store owner is inner 65536; the builder runs as root
///   with 65,536 ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// uid map lines.
    pub uid_map: Vec<IdMapEntry>,
    /// gid map lines.
    pub gid_map: Vec<IdMapEntry>,
    /// How they are written.
    pub method: IdMapMethod,
    /// The builder's uid inside (the nested namespace maps it to itself).
    pub builder_uid: u32,
    /// The builder's gid inside.
    pub builder_gid: u32,
    /// The setup does not run as the builder: it switches to `builder_uid` /
    /// `builder_gid` with no supplementary groups before entering the nested namespace.
    pub switch_ids: bool,
    /// The nested namespace maps inner 0..65535 to themselves (the `uid-range`
    /// feature) instead of the builder's own ids only.
    pub nested_range: bool,
}

/// A build's slice of the store owner's subordinate ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdSlice {
    /// First host uid of the slice.
    pub uid: u32,
    /// First host gid of the slice.
    pub gid: u32,
    /// How many ids (uids and gids each).
    pub count: u32,
    /// Path of `newuidmap`.
    pub newuidmap: PathBuf,
    /// Path of `newgidmap`.
    pub newgidmap: PathBuf,
}

/// The ids a build gets inside with the `uid-range` feature (Nix's `maxIdsPerBuild`).
pub const UID_RANGE_IDS: u32 = 65536;

impl IdMaps {
    /// Nix's rootless mapping: inner 1000 → `host_uid`, inner 100 → `host_gid`.
    pub fn single(host_uid: u32, host_gid: u32) -> Self {
        IdMaps {
            uid_map: vec![IdMapEntry {
                inner: BUILDER_UID,
                outer: host_uid,
                count: 1,
            }],
            gid_map: vec![IdMapEntry {
                inner: BUILDER_GID,
                outer: host_gid,
                count: 1,
            }],
            method: IdMapMethod::Direct,
            builder_uid: BUILDER_UID,
            builder_gid: BUILDER_GID,
            switch_ids: false,
            nested_range: false,
        }
    }

    fn new_id_map(slice: &IdSlice) -> IdMapMethod {
        IdMapMethod::NewIdMap {
            newuidmap: slice.newuidmap.clone(),
            newgidmap: slice.newgidmap.clone(),
        }
    }

    /// The id-range layout: inner 0 → the store owner, inner `n` → `slice + n` for
    /// `1 ≤ n < slice.count`; the builder is 1000/100. `None` when the slice is too small
    /// to hold the builder's ids.
    pub fn ranged(owner_uid: u32, owner_gid: u32, slice: &IdSlice) -> Option<Self> {
        if slice.count <= BUILDER_UID.max(BUILDER_GID) {
            return None;
        }
        let map = |owner: u32, first: u32| {
            vec![
                IdMapEntry {
                    inner: 0,
                    outer: owner,
                    count: 1,
                },
                IdMapEntry {
                    inner: 1,
                    outer: first + 1,
                    count: slice.count - 1,
                },
            ]
        };
        Some(IdMaps {
            uid_map: map(owner_uid, slice.uid),
            gid_map: map(owner_gid, slice.gid),
            method: Self::new_id_map(slice),
            builder_uid: BUILDER_UID,
            builder_gid: BUILDER_GID,
            switch_ids: true,
            nested_range: false,
        })
    }

    /// The `uid-range` layout: inner 0..65535 → the slice, the store owner → inner
    /// 65536; the builder is root. `None` when the slice holds fewer than 65,536 ids.
    pub fn uid_range(owner_uid: u32, owner_gid: u32, slice: &IdSlice) -> Option<Self> {
        if slice.count < UID_RANGE_IDS {
            return None;
        }
        let map = |owner: u32, first: u32| {
            vec![
                IdMapEntry {
                    inner: 0,
                    outer: first,
                    count: UID_RANGE_IDS,
                },
                IdMapEntry {
                    inner: UID_RANGE_IDS,
                    outer: owner,
                    count: 1,
                },
            ]
        };
        Some(IdMaps {
            uid_map: map(owner_uid, slice.uid),
            gid_map: map(owner_gid, slice.gid),
            method: Self::new_id_map(slice),
            builder_uid: 0,
            builder_gid: 0,
            switch_ids: true,
            nested_range: true,
        })
    }

    /// The maps of the namespace that reclaims a finished build's files: inner 0 → the
    /// store owner and inner `1 + k` → `slice + k` for the whole slice, so every id the
    /// build could have used is mapped and inner root may chown it back to the owner.
    pub fn reclaim(owner_uid: u32, owner_gid: u32, slice: &IdSlice) -> Self {
        let map = |owner: u32, first: u32| {
            vec![
                IdMapEntry {
                    inner: 0,
                    outer: owner,
                    count: 1,
                },
                IdMapEntry {
                    inner: 1,
                    outer: first,
                    count: slice.count,
                },
            ]
        };
        IdMaps {
            uid_map: map(owner_uid, slice.uid),
            gid_map: map(owner_gid, slice.gid),
            method: Self::new_id_map(slice),
            builder_uid: 0,
            builder_gid: 0,
            switch_ids: false,
            nested_range: false,
        }
    }

    /// The text written to `uid_map` or `gid_map`.
    pub fn map_text(entries: &[IdMapEntry]) -> String {
        entries
            .iter()
            .map(|e| format!("{} {} {}\n", e.inner, e.outer, e.count))
            .collect()
    }
}
