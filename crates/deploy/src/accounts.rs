//! Users, groups and subordinate id ranges, read from the host's `/etc` files.
//!
//! Only reading is done here: users are created with `useradd`/`groupadd` (which
//! handle locking, nscd and shadow files) and subordinate ranges are appended by the
//! install plan. Files are small system databases; each is read with a size bound.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::{DeployError, Host};

/// Largest `/etc/passwd`-like file read.
const MAX_DB_SIZE: u64 = 16 << 20;
/// First subordinate id handed out, as shadow's `SUB_UID_MIN`.
pub const SUB_ID_MIN: u64 = 100_000;
/// The ids one build maps (the daemon's `unrooted-ids-per-build` default, Nix's
/// `maxIdsPerBuild`): the store owner's range holds this many per concurrent build.
pub const IDS_PER_BUILD: u32 = 65_536;
/// Most concurrent builds a range is sized for by default: Nix's `id-count` default
/// is 128 × 65,536 ids.
pub const DEFAULT_MAX_BUILD_SLICES: u32 = 128;
/// Highest id usable in a range (`SUB_UID_MAX` of shadow is 600100000; ids are u32).
const SUB_ID_MAX: u64 = u32::MAX as u64 - 1;

/// A user account's name and ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    /// The login name.
    pub name: String,
    /// The uid.
    pub uid: u32,
    /// The primary gid.
    pub gid: u32,
}

/// Reads a system database file, `Ok(None)` when it does not exist.
pub fn read_db(path: &Path) -> Result<Option<String>, DeployError> {
    let file = match fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => {
            return Err(DeployError::Read {
                path: path.into(),
                source,
            })
        }
    };
    let mut text = String::new();
    file.take(MAX_DB_SIZE)
        .read_to_string(&mut text)
        .map_err(|source| DeployError::Read {
            path: path.into(),
            source,
        })?;
    Ok(Some(text))
}

/// Finds `name` in passwd-format `text`.
pub fn parse_user(text: &str, name: &str) -> Option<Account> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        if f.next()? != name {
            return None;
        }
        let _password = f.next()?;
        let uid = f.next()?.parse().ok()?;
        let gid = f.next()?.parse().ok()?;
        Some(Account {
            name: name.to_owned(),
            uid,
            gid,
        })
    })
}

/// The uids of every user whose primary group is `group`, or who is listed in it
/// (Nix's `nixbld1`..`nixbld32`).
pub fn group_users(passwd: &str, group_db: &str, group: &str) -> Vec<u32> {
    let Some(gline) = group_db
        .lines()
        .find(|l| l.split(':').next() == Some(group))
    else {
        return Vec::new();
    };
    let mut f = gline.split(':');
    let gid: Option<u32> = f.nth(2).and_then(|g| g.parse().ok());
    let members: Vec<&str> = f.next().unwrap_or("").split(',').collect();
    passwd
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            let uid: u32 = f.get(2)?.parse().ok()?;
            let pgid: Option<u32> = f.get(3).and_then(|g| g.parse().ok());
            (members.contains(&f[0]) || (gid.is_some() && pgid == gid)).then_some(uid)
        })
        .collect()
}

/// Looks the store owner up: in the host tree's `/etc/passwd`, and for a tree that
/// is not the running system also in the running system's (tests install into a tree
/// for a user that exists on the machine running them).
pub fn lookup_user(host: &Host, name: &str) -> Result<Option<Account>, DeployError> {
    let mut files = vec![host.path(Path::new("/etc/passwd"))];
    if !host.is_system() {
        files.push("/etc/passwd".into());
    }
    for f in files {
        if let Some(a) = read_db(&f)?.and_then(|t| parse_user(&t, name)) {
            return Ok(Some(a));
        }
    }
    Ok(None)
}

/// The gid of `group` in group-format `text`.
pub fn group_id(text: &str, group: &str) -> Option<u32> {
    text.lines().find_map(|line| {
        let mut f = line.split(':');
        (f.next()? == group).then_some(())?;
        f.nth(1)?.parse().ok()
    })
}

/// The ids of the third field of every line of a passwd- or group-format `text`.
fn ids_in(text: &str) -> BTreeSet<u32> {
    text.lines()
        .filter_map(|l| l.split(':').nth(2)?.parse().ok())
        .collect()
}

/// `SYS_UID_MIN`/`SYS_UID_MAX` of a `login.defs` text, or useradd's defaults
/// (101..999).
fn system_id_range(login_defs: &str) -> (u32, u32) {
    let value = |key: &str| {
        login_defs.lines().find_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == key).then_some(())?;
            f.next()?.parse::<u32>().ok()
        })
    };
    (
        value("SYS_UID_MIN").unwrap_or(101),
        value("SYS_UID_MAX").unwrap_or(999),
    )
}

/// The highest id in the system range free both as a uid and as a gid (what
/// `useradd --system` would pick), so the store owner and its group match.
pub fn free_system_id(passwd: &str, group: &str, login_defs: &str) -> Option<u32> {
    let (low, high) = system_id_range(login_defs);
    let (users, groups) = (ids_in(passwd), ids_in(group));
    (low..=high)
        .rev()
        .find(|id| !users.contains(id) && !groups.contains(id))
}

/// A subordinate id range, one line of `/etc/subuid` or `/etc/subgid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubidRange {
    /// First id.
    pub start: u64,
    /// Number of ids.
    pub count: u64,
}

/// The range `name` (or its uid written as a number) already has in `text`.
pub fn subid_range_of(text: &str, name: &str, uid: Option<u32>) -> Option<SubidRange> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        let who = f.next()?;
        let matches = who == name || uid.is_some_and(|u| who == u.to_string());
        if !matches {
            return None;
        }
        Some(SubidRange {
            start: f.next()?.parse().ok()?,
            count: f.next()?.parse().ok()?,
        })
    })
}

/// The lowest range of `count` ids at or above [`SUB_ID_MIN`], aligned to 65536,
/// overlapping no range in `text` (which may hold other users' ranges; pass both
/// files' texts to find one free in both).
pub fn free_subid_range(text: &str, count: u32, path: &Path) -> Result<SubidRange, DeployError> {
    let taken: Vec<SubidRange> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.trim().split(':').skip(1);
            Some(SubidRange {
                start: f.next()?.parse().ok()?,
                count: f.next()?.parse().ok()?,
            })
        })
        .collect();
    let count = u64::from(count);
    let align = 65_536;
    let mut start = SUB_ID_MIN.div_ceil(align) * align;
    loop {
        if start + count > SUB_ID_MAX {
            return Err(DeployError::NoFreeSubids {
                path: PathBuf::from(path),
                count: count as u32,
            });
        }
        match taken
            .iter()
            .find(|r| r.start < start + count && start < r.start.saturating_add(r.count))
        {
            Some(r) => start = r.start.saturating_add(r.count).div_ceil(align) * align,
            None => return Ok(SubidRange { start, count }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_users_and_build_users() {
        let passwd = "root:x:0:0::/root:/bin/sh\nnixbld1:x:30001:30000::/var/empty:/sbin/nologin\nnixbld2:x:30002:65534::/:/x\nalice:x:1000:1000::/home/alice:/bin/sh\n";
        let group = "root:x:0:\nnixbld:x:30000:nixbld2\n";
        assert_eq!(parse_user(passwd, "alice").unwrap().uid, 1000);
        assert!(parse_user(passwd, "alic").is_none());
        assert_eq!(group_users(passwd, group, "nixbld"), vec![30001, 30002]);
        assert!(group_users(passwd, group, "none").is_empty());
    }

    /// Regression: a new store owner's ids are chosen when the plan is made, never a
    /// placeholder (`--owner-uid 4294967295` in the roots helper's unit made the
    /// helper refuse the daemon, and GC fail open).
    #[test]
    fn new_store_owner_gets_a_free_system_id_for_both_uid_and_gid() {
        let passwd = "root:x:0:0::/root:/bin/sh\nsys:x:999:999::/:/x\nnobody:x:65534:65534::/:/x\n";
        let group = "root:x:0:\nlate:x:998:\nnix:x:42:\n";
        assert_eq!(free_system_id(passwd, group, ""), Some(997));
        let defs = "# comment\nSYS_UID_MIN  200\nSYS_UID_MAX\t300\n";
        assert_eq!(free_system_id(passwd, group, defs), Some(300));
        let full: String = (101..=999)
            .map(|i| format!("u{i}:x:{i}:{i}::/:/x\n"))
            .collect();
        assert_eq!(free_system_id(&full, "", ""), None);
        assert_eq!(group_id(group, "nix"), Some(42));
        assert_eq!(group_id(group, "ni"), None);
    }

    #[test]
    fn free_subid_range_skips_taken_ranges() {
        let p = Path::new("/etc/subuid");
        assert_eq!(
            free_subid_range("", 65536, p).unwrap(),
            SubidRange {
                start: 131072,
                count: 65536
            }
        );
        let text = "alice:100000:65536\nbob:131072:65536\ncarol:200000:10\n";
        assert_eq!(free_subid_range(text, 65536, p).unwrap().start, 262144);
        assert_eq!(
            subid_range_of(text, "bob", None),
            Some(SubidRange {
                start: 131072,
                count: 65536
            })
        );
        assert_eq!(
            subid_range_of("1001:5:6\n", "x", Some(1001)).unwrap().start,
            5
        );
        assert!(free_subid_range("x:0:4294967000\n", 65536, p).is_err());
        // Eight builds' worth, past both files' ranges (an overlap with either moves
        // it on), aligned.
        let both = "alice:100000:65536\nbob:800000:10\nalice:300000:65536\n";
        let r = free_subid_range(both, 8 * 65536, p).unwrap();
        assert_eq!(r.start, 851968);
        assert_eq!(r.count, 524288);
    }
}
