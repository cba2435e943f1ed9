//! Each user's `profiles/per-user/<user>` and `gcroots/per-user/<user>`, without root,
//! in parents no user can write.
//!
//! The Nix 2.8 client does not create these itself: it expects the daemon to, and the
//! root `nix-daemon` created them and chowned them to the user. We cannot chown, so
//! the daemon creates each one, owned by the store owner, mode 0755, with a POSIX ACL
//! entry giving that one user full access (ACLs need no capability). The `per-user`
//! parents are the store owner's, mode 0755, so nobody else can create, rename or
//! remove an entry there: there is no name a user could take first.
//!
//! Stores from earlier releases had world-writable (1777) parents, where anyone could
//! have made a directory, symlink or file under another user's name. At start the
//! daemon tightens the parents to 0755 (after which the set of entries can only change
//! through the daemon) and moves aside every entry that is not verifiably its user's:
//! a directory owned by the user the name belongs to (made by a root `nix-daemon` or by
//! that user) or by the store owner (made by the daemon; its ACL is renewed). Entries
//! are moved aside under an unguessable name (`.squatted-<user>-<128 random bits>`)
//! with a no-replace rename, retried with a new name if it ever exists, so nothing a
//! user prepared in advance can make the move fail. Everything works through
//! descriptors (`O_NOFOLLOW` opens, `*at` calls, an owner check by `fstat` of what was
//! created), so no symlink is ever followed.

use std::io::{self, Read};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, RenameFlags, XattrFlags};
use rustix::io::Errno;
use thiserror::Error;

use crate::trust::Peer;

/// The parents, under the state directory.
const PARENTS: [&str; 2] = ["profiles/per-user", "gcroots/per-user"];

/// Mode of the `per-user` parents: writable only by the store owner (as Nix 2.8 has
/// them, owned by root).
const PARENT_MODE: u32 = 0o755;

/// Mode of a user's directory before its ACL is added.
const USER_DIR_MODE: u32 = 0o755;

/// Most entries of one parent examined at start (one per user is the norm; more were
/// made by somebody when the parent was world-writable). Entries past the bound are
/// still judged when their user connects.
const MAX_SCANNED: usize = 1_000_000;

/// Prefix of the names entries are moved aside to.
const ASIDE_PREFIX: &str = ".squatted-";

/// Longest part of the user's name kept in an aside name (the whole stays well
/// below `NAME_MAX`).
const ASIDE_NAME_BYTES: usize = 64;

/// Tries at a free aside name (a collision of 128 random bits never happens; the
/// bound only keeps the loop finite).
const ASIDE_ATTEMPTS: usize = 8;

/// Rounds of look, then act, for one user's directory, when a concurrent connection
/// of the same user changes it in between (each round converges).
const ENSURE_ATTEMPTS: usize = 4;

/// Why a `per-user` directory could not be made safe.
#[derive(Debug, Error)]
pub(crate) enum UserDirError {
    /// A parent could not be opened (missing, or a symlink).
    #[error("opening {dir}")]
    OpenParent {
        /// The parent.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A parent or a directory just made is not the store owner's.
    #[error("{path} belongs to uid {uid}, not to the store owner")]
    NotOurs {
        /// The directory.
        path: PathBuf,
        /// Its owner.
        uid: u32,
    },
    /// Reading metadata failed.
    #[error("examining {path}")]
    Stat {
        /// What was examined.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A parent could not be made writable only by the store owner.
    #[error("setting the mode of {dir} to {PARENT_MODE:o}")]
    Tighten {
        /// The parent.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A parent's entries could not be listed.
    #[error("listing {dir}")]
    List {
        /// The parent.
        dir: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// No random name could be drawn.
    #[error("reading /dev/urandom for a name to move {path} aside to")]
    Random {
        /// The entry.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// An entry could not be moved aside.
    #[error("moving {path} aside")]
    MoveAside {
        /// The entry.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// A user's directory could not be created or opened.
    #[error("creating {path}")]
    Create {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The ACL granting the user access could not be set.
    #[error("granting uid {uid} access to {path}")]
    Grant {
        /// The directory.
        path: PathBuf,
        /// The user.
        uid: u32,
        /// The cause.
        #[source]
        source: Errno,
    },
    /// The directory kept changing while it was being prepared.
    #[error("{path} changed {ENSURE_ATTEMPTS} times while being prepared")]
    Unsettled {
        /// The directory.
        path: PathBuf,
    },
}

/// At start-up, for each `per-user` parent: sets its mode to 0755 (it was 1777 in
/// earlier releases; Nix 2.8 in local mode also sets 0755), then moves aside every
/// entry that does not belong to the user it is named after, and renews the ACL of
/// the daemon's own. Failures are logged: the daemon serves anyway.
pub(crate) fn repair_parents(state_dir: &Path, own_uid: u32) {
    for parent in PARENTS {
        let dir = state_dir.join(parent);
        match repair_parent(&dir, own_uid, &user_of_entry) {
            Ok(0) => {}
            Ok(n) => tracing::warn!(
                "moved {n} entries of {} aside: not made for the user they are named after",
                dir.display()
            ),
            Err(e) => tracing::warn!("{}", unrooted_builder::error_chain(&e)),
        }
    }
}

/// Makes sure `peer` has its own directory under both `per-user` parents. Failures
/// are logged: the client then sees the file system's error when it writes there.
pub(crate) fn ensure(state_dir: &Path, peer: &Peer, own_uid: u32) {
    // Names come from the user database; refuse anything that is not one component.
    if peer.user.is_empty() || peer.user.contains('/') || peer.user == "." || peer.user == ".." {
        return;
    }
    for parent in PARENTS {
        let dir = state_dir.join(parent);
        let result = open_parent(&dir, own_uid)
            .and_then(|fd| ensure_one(&fd, &dir, &peer.user, peer.uid, own_uid));
        if let Err(e) = result {
            tracing::warn!(
                "preparing the directory of user '{}': {}",
                peer.user,
                unrooted_builder::error_chain(&e)
            );
        }
    }
}

/// Opens a parent without following a symlink, checks that the store owner owns it,
/// and sets its mode to [`PARENT_MODE`] if it differs.
fn open_parent(dir: &Path, own_uid: u32) -> Result<OwnedFd, UserDirError> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd =
        rustix::fs::open(dir, flags, Mode::empty()).map_err(|source| UserDirError::OpenParent {
            dir: dir.into(),
            source,
        })?;
    let st = rustix::fs::fstat(&fd).map_err(|source| UserDirError::Stat {
        path: dir.into(),
        source,
    })?;
    if st.st_uid != own_uid {
        return Err(UserDirError::NotOurs {
            path: dir.into(),
            uid: st.st_uid,
        });
    }
    if st.st_mode & 0o7777 != PARENT_MODE {
        tracing::warn!(
            "{} was mode {:04o}: setting {PARENT_MODE:04o}, so that no user can create another's directory there",
            dir.display(),
            st.st_mode & 0o7777
        );
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(PARENT_MODE)).map_err(|source| {
            UserDirError::Tighten {
                dir: dir.into(),
                source,
            }
        })?;
    }
    Ok(fd)
}

/// What to do with an existing entry named after a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It is that user's.
    Keep,
    /// The daemon's (the store owner's) directory for that user: renew the ACL
    /// granting `uid` access.
    Grant(u32),
    /// Not verifiably that user's: move it aside.
    Aside,
}

/// Judges an entry: `is_dir` and `owner` from `lstat`, `user` the uid its name
/// belongs to (if known).
fn judge(is_dir: bool, owner: u32, own_uid: u32, user: Option<u32>) -> Verdict {
    match user {
        _ if !is_dir => Verdict::Aside,
        Some(u) if owner == own_uid && u != own_uid => Verdict::Grant(u),
        _ if owner == own_uid => Verdict::Keep,
        Some(u) if owner == u => Verdict::Keep,
        _ => Verdict::Aside,
    }
}

/// `lstat` of `name` in `parent`: whether it is a directory, and its owner; `None`
/// when there is no such entry.
fn entry(parent: &OwnedFd, dir: &Path, name: &str) -> Result<Option<(bool, u32)>, UserDirError> {
    match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some((
            FileType::from_raw_mode(st.st_mode) == FileType::Directory,
            st.st_uid,
        ))),
        Err(Errno::NOENT) => Ok(None),
        Err(source) => Err(UserDirError::Stat {
            path: dir.join(name),
            source,
        }),
    }
}

/// Brings the entry `name` of `parent` to a directory of the store owner's granting
/// `uid` access (or `uid`'s own directory).
fn ensure_one(
    parent: &OwnedFd,
    dir: &Path,
    name: &str,
    uid: u32,
    own_uid: u32,
) -> Result<(), UserDirError> {
    for _ in 0..ENSURE_ATTEMPTS {
        let Some((is_dir, owner)) = entry(parent, dir, name)? else {
            match rustix::fs::mkdirat(parent, name, Mode::from_raw_mode(USER_DIR_MODE)) {
                Ok(()) => return prepare(parent, dir, name, uid, own_uid, true),
                // Made by a concurrent connection of the same user: judge it.
                Err(Errno::EXIST) => continue,
                Err(source) => {
                    return Err(UserDirError::Create {
                        path: dir.join(name),
                        source,
                    })
                }
            }
        };
        match judge(is_dir, owner, own_uid, Some(uid)) {
            Verdict::Keep => return Ok(()),
            Verdict::Grant(u) => return prepare(parent, dir, name, u, own_uid, false),
            Verdict::Aside => {
                move_aside(parent, dir, name)?;
            }
        }
    }
    Err(UserDirError::Unsettled {
        path: dir.join(name),
    })
}

/// Opens the directory `name` (never through a symlink), checks through the
/// descriptor that it is a directory of the store owner's, then sets its mode when
/// `fresh` and the ACL granting `uid` access unless `uid` is the store owner.
fn prepare(
    parent: &OwnedFd,
    dir: &Path,
    name: &str,
    uid: u32,
    own_uid: u32,
    fresh: bool,
) -> Result<(), UserDirError> {
    let path = dir.join(name);
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(parent, name, flags, Mode::empty()).map_err(|source| {
        UserDirError::Create {
            path: path.clone(),
            source,
        }
    })?;
    let st = rustix::fs::fstat(&fd).map_err(|source| UserDirError::Stat {
        path: path.clone(),
        source,
    })?;
    if st.st_uid != own_uid {
        return Err(UserDirError::NotOurs {
            path,
            uid: st.st_uid,
        });
    }
    if fresh {
        // The umask may have removed bits.
        rustix::fs::fchmod(&fd, Mode::from_raw_mode(USER_DIR_MODE)).map_err(|source| {
            UserDirError::Create {
                path: path.clone(),
                source,
            }
        })?;
    }
    if uid == own_uid {
        return Ok(());
    }
    let want = acl_granting(uid);
    let mut have = [0u8; 256];
    if rustix::fs::fgetxattr(&fd, ACCESS_ACL, &mut have[..]).is_ok_and(|n| have[..n] == want[..]) {
        return Ok(());
    }
    rustix::fs::fsetxattr(&fd, ACCESS_ACL, &want, XattrFlags::empty())
        .map_err(|source| UserDirError::Grant { path, uid, source })
}

/// Renames `name` to an unguessable `.squatted-<name>-<hex>` in the same parent,
/// never replacing anything. Returns the new name, or `None` if `name` was gone.
fn move_aside(parent: &OwnedFd, dir: &Path, name: &str) -> Result<Option<String>, UserDirError> {
    for _ in 0..ASIDE_ATTEMPTS {
        let aside = aside_name(name).map_err(|source| UserDirError::Random {
            path: dir.join(name),
            source,
        })?;
        match rustix::fs::renameat_with(parent, name, parent, &aside, RenameFlags::NOREPLACE) {
            Ok(()) => {
                tracing::warn!(
                    "moved {} aside to {aside}: not made for user '{name}'",
                    dir.join(name).display()
                );
                return Ok(Some(aside));
            }
            Err(Errno::EXIST) => continue,
            Err(Errno::NOENT) => return Ok(None),
            Err(source) => {
                return Err(UserDirError::MoveAside {
                    path: dir.join(name),
                    source,
                })
            }
        }
    }
    Err(UserDirError::MoveAside {
        path: dir.join(name),
        source: Errno::EXIST,
    })
}

/// `.squatted-<name>-<32 hex digits from /dev/urandom>`.
fn aside_name(name: &str) -> io::Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    let mut cut = name.len().min(ASIDE_NAME_BYTES);
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{ASIDE_PREFIX}{}-{hex}", &name[..cut]))
}

/// The uid an entry's name belongs to, from the user database: the user of that
/// name, else the entry's owner when the owner's name is that name.
fn user_of_entry(name: &str, owner: u32) -> Option<u32> {
    uzers::get_user_by_name(name).map(|u| u.uid()).or_else(|| {
        uzers::get_user_by_uid(owner)
            .filter(|u| u.name() == std::ffi::OsStr::new(name))
            .map(|u| u.uid())
    })
}

/// Tightens one parent and judges each of its entries (at most [`MAX_SCANNED`]);
/// returns how many were moved aside. `user_of(name, owner)` gives the uid `name`
/// belongs to.
fn repair_parent(
    dir: &Path,
    own_uid: u32,
    user_of: &dyn Fn(&str, u32) -> Option<u32>,
) -> Result<usize, UserDirError> {
    let parent = open_parent(dir, own_uid)?;
    let list_err = |source| UserDirError::List {
        dir: dir.into(),
        source,
    };
    let entries = rustix::fs::Dir::read_from(&parent).map_err(list_err)?;
    let mut moved = 0;
    for (i, e) in entries.enumerate() {
        if i >= MAX_SCANNED {
            tracing::warn!(
                "{} has more than {MAX_SCANNED} entries: the rest are judged when their users connect",
                dir.display()
            );
            break;
        }
        let e = e.map_err(list_err)?;
        let Ok(name) = e.file_name().to_str() else {
            // Not UTF-8, so no user's name (names come from the user database as
            // UTF-8); whoever made it cannot use it against anyone.
            continue;
        };
        if name == "." || name == ".." {
            continue;
        }
        let Some((is_dir, owner)) = entry(&parent, dir, name)? else {
            continue;
        };
        let user = user_of(name, owner);
        // What was moved aside (now or before) stays, for inspection.
        if user.is_none() && name.starts_with(ASIDE_PREFIX) {
            continue;
        }
        match judge(is_dir, owner, own_uid, user) {
            Verdict::Keep => {}
            Verdict::Grant(u) => {
                if let Err(e) = prepare(&parent, dir, name, u, own_uid, false) {
                    tracing::warn!("{}", unrooted_builder::error_chain(&e));
                }
            }
            Verdict::Aside => {
                if move_aside(&parent, dir, name)?.is_some() {
                    moved += 1;
                }
            }
        }
    }
    Ok(moved)
}

use unrooted_store::acl::ACCESS_ACL;

/// `u::rwx,u:<uid>:rwx,g::r-x,m::rwx,o::r-x`.
fn acl_granting(uid: u32) -> Vec<u8> {
    unrooted_store::acl::access_acl_granting(0o755, uid, 7)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    /// Whether `dir`'s ACL grants `uid` write access.
    fn has_user_acl(dir: &Path, uid: u32) -> bool {
        let mut buf = [0u8; 256];
        let Ok(n) = rustix::fs::getxattr(dir, ACCESS_ACL, &mut buf[..]) else {
            return false;
        };
        buf[4..n.min(buf.len())].chunks_exact(8).any(|e| {
            u16::from_le_bytes([e[0], e[1]]) == 0x02 // ACL_USER
                && u16::from_le_bytes([e[2], e[3]]) & 2 != 0
                && u32::from_le_bytes([e[4], e[5], e[6], e[7]]) == uid
        })
    }

    fn own() -> u32 {
        rustix::process::geteuid().as_raw()
    }

    /// A parent as an earlier release left it: mode 1777.
    fn old_parent() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("per-user");
        fs::create_dir(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o1777)).unwrap();
        (tmp, dir)
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn acl_bytes_follow_the_kernel_layout() {
        let acl = acl_granting(1234);
        assert_eq!(acl.len(), 4 + 5 * 8);
        assert_eq!(&acl[..4], &[2, 0, 0, 0]);
        // The named-user entry: tag 2, rwx, id 1234.
        assert_eq!(&acl[12..20], &[2, 0, 7, 0, 0xd2, 0x04, 0, 0]);
    }

    #[test]
    fn verdicts() {
        let (own, alice, mallory) = (10, 20, 30);
        assert_eq!(judge(true, alice, own, Some(alice)), Verdict::Keep);
        assert_eq!(judge(true, own, own, Some(alice)), Verdict::Grant(alice));
        assert_eq!(judge(true, own, own, Some(own)), Verdict::Keep);
        assert_eq!(judge(true, own, own, None), Verdict::Keep);
        assert_eq!(judge(true, mallory, own, Some(alice)), Verdict::Aside);
        assert_eq!(judge(true, mallory, own, None), Verdict::Aside);
        // Symlinks, files, sockets: never a user's directory, whoever owns them.
        assert_eq!(judge(false, alice, own, Some(alice)), Verdict::Aside);
        assert_eq!(judge(false, own, own, Some(alice)), Verdict::Aside);
    }

    #[test]
    fn aside_names_are_unguessable_and_bounded() {
        let a = aside_name("alice").unwrap();
        let b = aside_name("alice").unwrap();
        assert!(a.starts_with(".squatted-alice-") && a.len() == ".squatted-alice-".len() + 32);
        assert_ne!(a, b);
        let long = "é".repeat(200);
        assert!(aside_name(&long).unwrap().len() <= ASIDE_PREFIX.len() + 64 + 33);
    }

    #[test]
    fn a_fresh_directory_grants_its_user() {
        let (_tmp, dir) = old_parent();
        let own = own();
        let parent = open_parent(&dir, own).unwrap();
        assert_eq!(
            fs::metadata(&dir).unwrap().mode() & 0o7777,
            0o755,
            "tightened"
        );
        // Filesystems without ACL support refuse the xattr; then there is nothing to test.
        match ensure_one(&parent, &dir, "alice", own + 1, own) {
            Ok(()) => {
                let made = dir.join("alice");
                assert!(has_user_acl(&made, own + 1) && !has_user_acl(&made, own + 2));
                assert_eq!(fs::symlink_metadata(&made).unwrap().uid(), own);
            }
            Err(UserDirError::Grant { source, .. }) => assert_eq!(source, Errno::OPNOTSUPP),
            Err(e) => panic!("{e}"),
        }
    }

    /// Squatters' entries of every kind, made by another uid (needs root to make
    /// them), are moved aside at start; the daemon's and the users' own are kept.
    #[test]
    fn start_up_moves_every_squatter_aside() {
        if own() != 0 {
            return;
        }
        let (_tmp, dir) = old_parent();
        let (alice, bob, carol, mallory) = (60001, 60002, 60003, 60004);
        let user_of = |name: &str, _owner: u32| match name {
            "alice" => Some(alice),
            "bob" => Some(bob),
            "carol" => Some(carol),
            "dave" => Some(60005),
            "erin" => Some(60006),
            _ => None,
        };
        let lchown = |p: &Path, uid| std::os::unix::fs::lchown(p, Some(uid), Some(uid)).unwrap();
        // alice's own directory (a root nix-daemon's, kept with its user by migrate).
        fs::create_dir(dir.join("alice")).unwrap();
        lchown(&dir.join("alice"), alice);
        // bob's, squatted by mallory: a directory.
        fs::create_dir(dir.join("bob")).unwrap();
        fs::write(dir.join("bob/profile"), "").unwrap();
        lchown(&dir.join("bob"), mallory);
        // carol's: a symlink to mallory's directory.
        fs::create_dir(dir.join("mallory-dir")).unwrap();
        lchown(&dir.join("mallory-dir"), mallory);
        std::os::unix::fs::symlink("mallory-dir", dir.join("carol")).unwrap();
        lchown(&dir.join("carol"), mallory);
        // dave's: a file.
        fs::write(dir.join("dave"), "").unwrap();
        lchown(&dir.join("dave"), mallory);
        // erin's: the daemon's, without its ACL yet (a crash between mkdir and ACL).
        fs::create_dir(dir.join("erin")).unwrap();
        // A pre-made aside name, non-empty, for the old pid-based naming.
        fs::create_dir_all(dir.join(".squatted-bob-1234/x")).unwrap();
        lchown(&dir.join(".squatted-bob-1234"), mallory);

        let moved = repair_parent(&dir, 0, &user_of).unwrap();
        assert_eq!(fs::metadata(&dir).unwrap().mode() & 0o7777, 0o755);
        // bob, carol, dave, and mallory-dir (nobody's name: a squatter's leftover).
        assert_eq!(moved, 4, "{:?}", names(&dir));
        let all = names(&dir);
        for kept in ["alice", "erin", ".squatted-bob-1234"] {
            assert!(all.contains(&kept.to_owned()), "{kept}: {all:?}");
        }
        for gone in ["bob", "carol", "dave", "mallory-dir"] {
            assert!(!all.contains(&gone.to_owned()), "{gone}: {all:?}");
            let prefix = format!(".squatted-{gone}-");
            let asides = all
                .iter()
                .filter(|n| n.starts_with(&prefix) && n.len() == prefix.len() + 32);
            assert_eq!(asides.count(), 1, "{gone}: {all:?}");
        }
        let acl_ok = has_user_acl(&dir.join("erin"), 60006);
        assert!(
            acl_ok
                || rustix::fs::getxattr(&dir, ACCESS_ACL, &mut [0u8; 8][..])
                    == Err(Errno::OPNOTSUPP)
        );
        // A second start moves nothing more.
        assert_eq!(repair_parent(&dir, 0, &user_of).unwrap(), 0);
        // Then each user gets a directory of the daemon's at their connection.
        let parent = open_parent(&dir, 0).unwrap();
        for (name, uid) in [("bob", bob), ("carol", carol), ("dave", 60005)] {
            if ensure_one(&parent, &dir, name, uid, 0).is_ok() {
                let m = fs::symlink_metadata(dir.join(name)).unwrap();
                assert!(m.is_dir() && m.uid() == 0, "{name}");
            }
        }
        assert_eq!(
            fs::symlink_metadata(dir.join("alice")).unwrap().uid(),
            alice
        );
    }

    /// Several first connections of one user at once: each one ends with the same
    /// directory, which the first made.
    #[test]
    fn concurrent_first_connections_agree() {
        let (_tmp, dir) = old_parent();
        let own = own();
        let results: Vec<Result<(), String>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let parent = open_parent(&dir, own).map_err(|e| e.to_string())?;
                        ensure_one(&parent, &dir, "alice", own + 1, own)
                            .map_err(|e| unrooted_builder::error_chain(&e))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for r in results {
            if let Err(e) = r {
                assert!(e.contains("Operation not supported"), "{e}");
            }
        }
        assert_eq!(names(&dir), ["alice"], "nothing moved aside");
        assert_eq!(fs::symlink_metadata(dir.join("alice")).unwrap().uid(), own);
    }

    /// A parent that is not the store owner's, or a symlink, is refused.
    #[test]
    fn parents_must_be_the_store_owners() {
        let (tmp, dir) = old_parent();
        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&dir, &link).unwrap();
        assert!(matches!(
            open_parent(&link, own()),
            Err(UserDirError::OpenParent { .. })
        ));
        assert!(matches!(
            open_parent(&dir, own() + 1),
            Err(UserDirError::NotOurs { .. })
        ));
    }
}
