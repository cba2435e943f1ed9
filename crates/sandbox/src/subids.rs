//! The store owner's subordinate ids (`/etc/subuid`, `/etc/subgid`, shadow's
//! `subuid(5)` format: `user:start:count` or `uid:start:count` per line) and the setuid
//! `newuidmap`/`newgidmap` programs that let an unprivileged process map them. Whether
//! both are there decides the sandbox's id mode: a slice of the ranges per build, or
//! the single-id mode (see [`crate::IdMaps`]).

use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Largest `/etc/passwd`, `/etc/subuid` or `/etc/subgid` read.
const MAX_DB_BYTES: u64 = 16 << 20;

/// Where `newuidmap`/`newgidmap` are looked for (Debian's `uidmap`, Fedora's
/// `shadow-utils`), in order.
const MAPPER_DIRS: [&str; 4] = ["/usr/bin", "/bin", "/usr/sbin", "/sbin"];

/// One subordinate id range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubIdRange {
    /// First id.
    pub start: u32,
    /// How many.
    pub count: u32,
}

/// Most ranges [`all_ranges`] returns (a host has one or a few per user).
pub const MAX_RANGES: usize = 100_000;

/// One line of a `subuid(5)` text: its owner (a name or a decimal uid) and range;
/// `None` for malformed lines and ranges that overflow 32 bits, as shadow skips them.
fn parse_line(line: &str) -> Option<(&str, SubIdRange)> {
    let mut f = line.trim().split(':');
    let (who, start, count) = (f.next()?, f.next()?, f.next()?);
    if f.next().is_some() || who.is_empty() {
        return None;
    }
    let start: u32 = start.parse().ok()?;
    let count: u32 = count.parse().ok()?;
    (count > 0 && start.checked_add(count - 1).is_some())
        .then_some((who, SubIdRange { start, count }))
}

/// The ranges of `user` (or of its numeric `uid`) in a `subuid(5)` text, in file
/// order. Malformed lines and ranges that overflow 32 bits are skipped, as shadow does.
pub fn ranges_of(text: &str, user: &str, uid: u32) -> Vec<SubIdRange> {
    let uid = uid.to_string();
    text.lines()
        .filter_map(parse_line)
        .filter(|(who, _)| *who == user || *who == uid)
        .map(|(_, r)| r)
        .collect()
}

/// Every range of a `subuid(5)` text with its owner as written (a name or a decimal
/// uid), in file order, at most [`MAX_RANGES`].
pub fn all_ranges(text: &str) -> Vec<(String, SubIdRange)> {
    text.lines()
        .filter_map(parse_line)
        .take(MAX_RANGES)
        .map(|(who, r)| (who.to_owned(), r))
        .collect()
}

/// Reads a user database file (`/etc/subuid`, `/etc/passwd`, …), at most 16 MiB.
pub fn read_db(path: &Path) -> std::io::Result<String> {
    read_bounded(path)
}

/// The name of `uid` in a `passwd(5)` text.
pub fn user_name(passwd: &str, uid: u32) -> Option<String> {
    let uid = uid.to_string();
    passwd.lines().find_map(|line| {
        let mut f = line.split(':');
        let name = f.next()?;
        let _password = f.next()?;
        (f.next()? == uid).then(|| name.to_owned())
    })
}

fn read_bounded(path: &Path) -> std::io::Result<String> {
    let mut text = String::new();
    std::fs::File::open(path)?
        .take(MAX_DB_BYTES)
        .read_to_string(&mut text)?;
    Ok(text)
}

/// Why builds cannot get their own ids on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NoSubIds {
    /// `newuidmap` or `newgidmap` is not installed.
    NoMappers,
    /// The store owner has no name in `/etc/passwd` (ranges are listed by name).
    NoUserName {
        /// The store owner's uid.
        uid: u32,
    },
    /// No range for the store owner in this file (`/etc/subuid` or `/etc/subgid`).
    NoRange {
        /// The store owner.
        user: String,
        /// The file.
        file: PathBuf,
    },
}

impl fmt::Display for NoSubIds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NoSubIds::NoMappers => f.write_str(
                "newuidmap/newgidmap are not installed (apt-get install uidmap, or dnf install shadow-utils)",
            ),
            NoSubIds::NoUserName { uid } => {
                write!(f, "uid {uid} has no name in /etc/passwd to look up subordinate ids by")
            }
            NoSubIds::NoRange { user, file } => write!(
                f,
                "{user} has no range in {} (add one, e.g. `usermod --add-subuids 1000000-1524287 --add-subgids 1000000-1524287 {user}`)",
                file.display()
            ),
        }
    }
}

/// What the host offers the store owner for per-build id ranges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostSubIds {
    /// The store owner's name.
    pub user: String,
    /// Its ranges in `/etc/subuid`.
    pub uids: Vec<SubIdRange>,
    /// Its ranges in `/etc/subgid`.
    pub gids: Vec<SubIdRange>,
    /// Path of `newuidmap`.
    pub newuidmap: PathBuf,
    /// Path of `newgidmap`.
    pub newgidmap: PathBuf,
}

/// The first directory holding both `newuidmap` and `newgidmap` under `root` (`/`
/// on a real host): `preferred` (the daemon's own directory, where `unrooted install`
/// puts copies carrying file capabilities, which work within a capability bounding
/// set of `CAP_SETUID CAP_SETGID` where Debian's setuid-root programs also need
/// `CAP_SYS_ADMIN` and `CAP_DAC_OVERRIDE`), then the system's directories.
/// `preferred` is a path of this machine, not of `root`.
pub fn find_id_mappers(root: &Path, preferred: Option<&Path>) -> Option<(PathBuf, PathBuf)> {
    let both = |dir: &Path, at: &dyn Fn(&Path) -> PathBuf| {
        let (u, g) = (dir.join("newuidmap"), dir.join("newgidmap"));
        (at(&u).is_file() && at(&g).is_file()).then_some((u, g))
    };
    let under = |p: &Path| root.join(p.strip_prefix("/").unwrap_or(p));
    preferred
        .and_then(|dir| both(dir, &|p| p.to_owned()))
        .or_else(|| MAPPER_DIRS.iter().find_map(|d| both(Path::new(d), &under)))
}

/// Looks up the subordinate ids of `uid` and the mappers (see [`find_id_mappers`]),
/// under `root` (`/` on a real host; a test may stand a directory in for it).
pub fn host_subids(
    root: &Path,
    uid: u32,
    preferred_mappers: Option<&Path>,
) -> Result<HostSubIds, NoSubIds> {
    let (newuidmap, newgidmap) =
        find_id_mappers(root, preferred_mappers).ok_or(NoSubIds::NoMappers)?;
    let passwd = read_bounded(&root.join("etc/passwd")).unwrap_or_default();
    let user = user_name(&passwd, uid).ok_or(NoSubIds::NoUserName { uid })?;
    let ranges = |file: &str| {
        let text = read_bounded(&root.join(file)).unwrap_or_default();
        let r = ranges_of(&text, &user, uid);
        if r.is_empty() {
            Err(NoSubIds::NoRange {
                user: user.clone(),
                file: Path::new("/").join(file),
            })
        } else {
            Ok(r)
        }
    };
    let uids = ranges("etc/subuid")?;
    let gids = ranges("etc/subgid")?;
    Ok(HostSubIds {
        user,
        uids,
        gids,
        newuidmap,
        newgidmap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_by_name_or_uid_in_file_order() {
        let text = "alice:100000:65536\nbob:165536:65536\n# x\n1001:300000:10\nbob:1:0\nbob:4294967295:2\nbob:x:1\n";
        assert_eq!(
            ranges_of(text, "bob", 1001),
            [
                SubIdRange {
                    start: 165536,
                    count: 65536
                },
                SubIdRange {
                    start: 300000,
                    count: 10
                }
            ]
        );
        assert!(ranges_of(text, "carol", 5).is_empty());
        let all = all_ranges(text);
        let owners: Vec<&str> = all.iter().map(|(w, _)| w.as_str()).collect();
        assert_eq!(owners, ["alice", "bob", "1001"]);
        assert_eq!(
            all[0].1,
            SubIdRange {
                start: 100000,
                count: 65536
            }
        );
    }

    #[test]
    fn names_from_passwd() {
        let pw = "root:x:0:0:root:/root:/bin/sh\nnix:x:998:998::/var/empty:/usr/sbin/nologin\n";
        assert_eq!(user_name(pw, 998).as_deref(), Some("nix"));
        assert_eq!(user_name(pw, 5), None);
    }

    #[test]
    fn host_lookup_says_what_is_missing() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        assert_eq!(host_subids(r, 998, None), Err(NoSubIds::NoMappers));
        std::fs::create_dir_all(r.join("usr/bin")).unwrap();
        std::fs::create_dir_all(r.join("etc")).unwrap();
        std::fs::write(r.join("usr/bin/newuidmap"), "").unwrap();
        std::fs::write(r.join("usr/bin/newgidmap"), "").unwrap();
        assert_eq!(
            host_subids(r, 998, None),
            Err(NoSubIds::NoUserName { uid: 998 })
        );
        std::fs::write(r.join("etc/passwd"), "nix:x:998:998::/:/bin/sh\n").unwrap();
        std::fs::write(r.join("etc/subuid"), "nix:100000:65536\n").unwrap();
        let e = host_subids(r, 998, None).unwrap_err();
        assert!(e.to_string().contains("/etc/subgid"), "{e}");
        std::fs::write(r.join("etc/subgid"), "998:200000:65536\n").unwrap();
        let ok = host_subids(r, 998, None).unwrap();
        assert_eq!(ok.user, "nix");
        assert_eq!(ok.gids[0].start, 200000);
        assert_eq!(ok.newuidmap, Path::new("/usr/bin/newuidmap"));
        // The daemon's own directory comes first when it holds both mappers (the
        // preferred path is absolute on the host, like the daemon's executable).
        let mine = r.join("libexec");
        std::fs::create_dir_all(&mine).unwrap();
        std::fs::write(mine.join("newuidmap"), "").unwrap();
        let ok = host_subids(r, 998, Some(&mine)).unwrap();
        assert_eq!(
            ok.newuidmap,
            Path::new("/usr/bin/newuidmap"),
            "one is not both"
        );
        std::fs::write(mine.join("newgidmap"), "").unwrap();
        let ok = host_subids(r, 998, Some(&mine)).unwrap();
        assert_eq!(ok.newgidmap, mine.join("newgidmap"));
    }
}
