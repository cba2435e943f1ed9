//! Who a connection is charged to, for the per-user connection bound.
//!
//! A user with subordinate ids (`/etc/subuid`) can connect from any of them without
//! privilege (`unshare --user` and the setuid `newuidmap` map them), so counting raw
//! peer uids would give that user tens of thousands of budgets. A uid inside some
//! user's subordinate range is charged to that user; any other uid to itself. The
//! file is read when the daemon starts and again whenever it changes (one `stat` per
//! accepted connection), and lookups are a binary search, so the accept loop never
//! waits on the user database for a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use unrooted_sandbox::subids::{all_ranges, read_db};

/// Where subordinate uids are listed.
pub const SUBUID_FILE: &str = "/etc/subuid";

/// The account a connection is charged to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Payer {
    /// A uid: the peer's own, or the owner of the subordinate range it is in.
    Uid(u32),
    /// The owner of a subordinate range, by the name `/etc/subuid` gives, when the
    /// user database does not know it.
    Name(Arc<str>),
}

impl std::fmt::Display for Payer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Payer::Uid(u) => write!(f, "uid {u}"),
            Payer::Name(n) => write!(f, "user '{n}'"),
        }
    }
}

/// What a connection from one uid is charged to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Charge {
    /// The peer's uid.
    pub uid: u32,
    /// Who pays.
    pub payer: Payer,
    /// Whether `uid` is a subordinate id of the payer (rather than the payer itself).
    pub subordinate: bool,
}

/// One subordinate range and its owner.
#[derive(Debug, Clone)]
struct Range {
    start: u32,
    /// Last id, inclusive.
    end: u32,
    owner: Payer,
}

/// The file's identity and version, to notice a change.
type Stamp = (u64, u64, u64, i64, i64);

/// The owners of the subordinate uid ranges, re-read when the file changes.
#[derive(Debug)]
pub struct SubUidOwners {
    path: PathBuf,
    stamp: Option<Stamp>,
    /// Sorted by `start`.
    ranges: Vec<Range>,
    /// `max_end[i]`: the largest `end` among `ranges[..=i]` (ranges may overlap).
    max_end: Vec<u32>,
}

impl SubUidOwners {
    /// Owners from `path` (normally [`SUBUID_FILE`]), read now; a missing or
    /// unreadable file means no ranges.
    pub fn load(path: &Path) -> Self {
        let mut owners = Self {
            path: path.into(),
            stamp: None,
            ranges: Vec::new(),
            max_end: Vec::new(),
        };
        owners.refresh();
        owners
    }

    /// Re-reads the file if it changed since it was last read.
    pub fn refresh(&mut self) {
        let stamp = std::fs::metadata(&self.path).ok().map(|m| {
            use std::os::unix::fs::MetadataExt;
            (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec())
        });
        if stamp == self.stamp {
            return;
        }
        self.stamp = stamp;
        let text = read_db(&self.path).unwrap_or_default();
        self.set_ranges(&text, &|name| {
            uzers::get_user_by_name(name).map(|u| uzers::User::uid(&u))
        });
    }

    /// Replaces the ranges with those of `text`, resolving owners' names with
    /// `uid_of` (owners written as a decimal uid need no lookup).
    fn set_ranges(&mut self, text: &str, uid_of: &dyn Fn(&str) -> Option<u32>) {
        let mut ranges: Vec<Range> = all_ranges(text)
            .into_iter()
            .map(|(who, r)| {
                let owner = match who.parse::<u32>().ok().or_else(|| uid_of(&who)) {
                    Some(uid) => Payer::Uid(uid),
                    None => Payer::Name(who.into()),
                };
                Range {
                    start: r.start,
                    end: r.start + (r.count - 1),
                    owner,
                }
            })
            .collect();
        ranges.sort_by_key(|r| r.start);
        self.max_end = ranges
            .iter()
            .scan(0u32, |m, r| {
                *m = (*m).max(r.end);
                Some(*m)
            })
            .collect();
        self.ranges = ranges;
    }

    /// The owner of the range holding `uid`, if any.
    fn owner_of(&self, uid: u32) -> Option<&Payer> {
        let mut i = self.ranges.partition_point(|r| r.start <= uid);
        while i > 0 {
            i -= 1;
            if self.max_end[i] < uid {
                return None;
            }
            if self.ranges[i].end >= uid {
                return Some(&self.ranges[i].owner);
            }
        }
        None
    }

    /// Who pays for a connection from `uid`.
    pub fn charge(&self, uid: u32) -> Charge {
        match self.owner_of(uid) {
            // An owner's own uid inside its range (a misconfiguration) is itself.
            Some(owner) if *owner != Payer::Uid(uid) => Charge {
                uid,
                payer: owner.clone(),
                subordinate: true,
            },
            _ => Charge {
                uid,
                payer: Payer::Uid(uid),
                subordinate: false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owners(text: &str) -> SubUidOwners {
        let mut o = SubUidOwners {
            path: PathBuf::new(),
            stamp: None,
            ranges: Vec::new(),
            max_end: Vec::new(),
        };
        o.set_ranges(text, &|name| match name {
            "alice" => Some(1000),
            "bob" => Some(1001),
            _ => None,
        });
        o
    }

    #[test]
    fn subordinate_ids_are_charged_to_their_owner() {
        let o = owners(
            "alice:100000:65536\nbob:165536:65536\n2000:300000:10\nghost:400000:5\n# x\nbad\n",
        );
        let payer = |uid| o.charge(uid).payer;
        assert_eq!(payer(1000), Payer::Uid(1000));
        assert_eq!(payer(99_999), Payer::Uid(99_999));
        assert_eq!(payer(100_000), Payer::Uid(1000));
        assert_eq!(payer(165_535), Payer::Uid(1000));
        assert_eq!(payer(165_536), Payer::Uid(1001));
        assert_eq!(payer(231_071), Payer::Uid(1001));
        assert_eq!(payer(231_072), Payer::Uid(231_072));
        assert_eq!(payer(300_009), Payer::Uid(2000));
        assert_eq!(payer(300_010), Payer::Uid(300_010));
        assert_eq!(payer(400_004), Payer::Name("ghost".into()));
        assert!(o.charge(100_000).subordinate);
        assert!(!o.charge(1000).subordinate);
    }

    #[test]
    fn overlapping_and_unsorted_ranges() {
        let o = owners("bob:150:10\nalice:100:1000\n");
        assert_eq!(o.charge(155).payer, Payer::Uid(1001));
        assert_eq!(o.charge(170).payer, Payer::Uid(1000), "inside alice's only");
        assert_eq!(o.charge(1099).payer, Payer::Uid(1000));
        assert_eq!(o.charge(1100).payer, Payer::Uid(1100));
    }

    #[test]
    fn a_changed_file_is_read_again() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("subuid");
        let mut o = SubUidOwners::load(&path);
        assert_eq!(o.charge(100_000).payer, Payer::Uid(100_000));
        std::fs::write(&path, "4242:100000:10\n").unwrap();
        o.refresh();
        assert_eq!(o.charge(100_000).payer, Payer::Uid(4242));
        std::fs::remove_file(&path).unwrap();
        o.refresh();
        assert_eq!(o.charge(100_000).payer, Payer::Uid(100_000));
    }
}
