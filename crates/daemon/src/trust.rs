//! Who is connecting, and what they may do: `SO_PEERCRED` and `SO_PEERGROUPS`,
//! `allowed-users` and `trusted-users` matched as Nix 2.8 matches them, and
//! `@group` also by the supplementary groups the kernel reports.
//!
//! Identity comes only from the kernel (the peer's credentials at `connect`), never
//! from anything the client says. Names are looked up through the system's user
//! database (NSS), so directory users on a cluster match too.

use std::os::fd::AsFd;

use thiserror::Error;
use uzers::os::unix::GroupExt;

/// The connecting process, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    /// Its process id (in the daemon's pid namespace).
    pub pid: u32,
    /// Its user id.
    pub uid: u32,
    /// Its primary group id.
    pub gid: u32,
    /// Its user name, or the decimal uid if it has none.
    pub user: String,
    /// Whether the uid has an account (a name in the user database).
    pub account: bool,
    /// When the uid is in a user's subordinate range (`/etc/subuid`), who that is.
    pub subordinate_of: Option<String>,
    /// Its primary group's name, or the decimal gid.
    pub group: String,
    /// Its supplementary group ids as the kernel recorded them at `connect`
    /// (`SO_PEERGROUPS`; at most [`unrooted_sandbox::MAX_PEER_GROUPS`]), empty when
    /// the kernel cannot say.
    pub groups: Vec<u32>,
}

/// A group of the system's group database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupEntry {
    /// Its id.
    pub gid: u32,
    /// The user names it lists as members.
    pub members: Vec<String>,
}

/// Why a peer was not let in.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TrustError {
    /// The kernel would not tell who is connecting.
    #[error("reading the peer credentials of a connection")]
    PeerCred(#[source] rustix::io::Errno),
    /// Not in `allowed-users` (nor trusted).
    #[error("user '{user}' is not allowed to connect to the Nix daemon")]
    NotAllowed {
        /// The peer's user name.
        user: String,
    },
    /// In `build-users-group`, whose members are builders, not clients.
    #[error("user '{user}' is in the build users group '{group}' and may not connect")]
    BuildUser {
        /// The peer's user name.
        user: String,
        /// The group.
        group: String,
    },
}

impl Peer {
    /// Reads the credentials of the process at the other end of `socket`.
    pub fn of_socket(socket: impl AsFd) -> Result<Self, TrustError> {
        let cred = rustix::net::sockopt::socket_peercred(&socket).map_err(TrustError::PeerCred)?;
        let uid = cred.uid.as_raw();
        let gid = cred.gid.as_raw();
        let mut peer = Self::from_ids(cred.pid.as_raw_nonzero().get() as u32, uid, gid);
        // Linux before 4.13 has no SO_PEERGROUPS: then `@group` matches as in Nix,
        // by the primary group and the group database only.
        match unrooted_sandbox::peer_groups(&socket) {
            Ok(groups) => peer.groups = groups,
            Err(e) => tracing::debug!("reading the peer's groups (SO_PEERGROUPS): {e}"),
        }
        Ok(peer)
    }

    /// A peer from raw ids, with names looked up.
    pub fn from_ids(pid: u32, uid: u32, gid: u32) -> Self {
        let name = uzers::get_user_by_uid(uid).map(|u| u.name().to_string_lossy().into_owned());
        let account = name.is_some();
        let user = name.unwrap_or_else(|| uid.to_string());
        let group = uzers::get_group_by_gid(gid)
            .map(|g| g.name().to_string_lossy().into_owned())
            .unwrap_or_else(|| gid.to_string());
        Self {
            pid,
            uid,
            gid,
            user,
            account,
            subordinate_of: None,
            group,
            groups: Vec::new(),
        }
    }
}

/// Whether `peer` matches one of `entries` (`*`, a user name, or `@group`).
///
/// `*` matches a peer with an account or a user's subordinate id (charged to that
/// user); a uid that is neither, which only root can give a process, must be
/// listed by number.
///
/// `@group` matches the peer's primary group or a group listing the user as a
/// member, as in Nix's `matchUser`, and also a group among the peer's
/// supplementary groups as the kernel reports them, which covers memberships
/// the group database does not list by name (a user's groups from a directory
/// service, `newgrp`, groups set by a login manager).
pub fn matches(
    peer: &Peer,
    entries: &[String],
    groups: impl Fn(&str) -> Option<GroupEntry>,
) -> bool {
    entries.iter().any(|e| match e.strip_prefix('@') {
        Some(group) => {
            group == peer.group
                || groups(group).is_some_and(|g| {
                    g.gid == peer.gid
                        || peer.groups.contains(&g.gid)
                        || g.members.contains(&peer.user)
                })
        }
        None => (e == "*" && (peer.account || peer.subordinate_of.is_some())) || *e == peer.user,
    })
}

/// `group` in the system's group database.
pub fn system_group(group: &str) -> Option<GroupEntry> {
    uzers::get_group_by_name(group).map(|g| GroupEntry {
        gid: g.gid(),
        members: g
            .members()
            .iter()
            .map(|m| m.to_string_lossy().into_owned())
            .collect(),
    })
}

/// Decides whether `peer` may connect and whether it is trusted.
///
/// The store owner (the daemon's own uid) is always trusted: it can change the store
/// directly, so refusing it anything over the socket would protect nothing.
pub fn authorize(
    peer: &Peer,
    allowed_users: &[String],
    trusted_users: &[String],
    build_users_group: &str,
    own_uid: u32,
    groups: impl Fn(&str) -> Option<GroupEntry>,
) -> Result<bool, TrustError> {
    let trusted = peer.uid == own_uid || matches(peer, trusted_users, &groups);
    if !build_users_group.is_empty() && peer.group == build_users_group && peer.uid != own_uid {
        return Err(TrustError::BuildUser {
            user: peer.user.clone(),
            group: build_users_group.to_owned(),
        });
    }
    if !trusted && !matches(peer, allowed_users, &groups) {
        return Err(TrustError::NotAllowed {
            user: peer.user.clone(),
        });
    }
    Ok(trusted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(user: &str, group: &str) -> Peer {
        Peer {
            pid: 1,
            uid: 1001,
            gid: 1001,
            user: user.into(),
            account: true,
            subordinate_of: None,
            group: group.into(),
            groups: vec![1001],
        }
    }

    /// A uid without an account is admitted by `*` only as a user's subordinate id,
    /// else only when listed by number.
    #[test]
    fn accountless_uids_must_be_listed() {
        let mut p = peer("200000", "200000");
        p.account = false;
        assert!(!matches(&p, &list("*"), members));
        assert!(matches(&p, &list("200000"), members));
        p.subordinate_of = Some("uid 1000".into());
        assert!(matches(&p, &list("*"), members));
    }

    fn list(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn members(g: &str) -> Option<GroupEntry> {
        let (gid, members) = match g {
            "wheel" => (10, vec!["carol".into()]),
            "users" => (100, vec![]),
            "kvm" => (500, vec![]),
            _ => return None,
        };
        Some(GroupEntry { gid, members })
    }

    /// `@group` by the kernel's supplementary groups: a membership no group
    /// database lists by name.
    #[test]
    fn supplementary_groups_match() {
        let mut dave = peer("dave", "dave");
        assert!(!matches(&dave, &list("@kvm"), members));
        dave.groups = vec![1001, 500];
        assert!(matches(&dave, &list("@kvm"), members));
        assert!(!matches(&dave, &list("@wheel @nosuch"), members));
        assert_eq!(
            authorize(&dave, &list("root"), &list("@kvm"), "", 999, members),
            Ok(true)
        );
    }

    /// The kernel's answer for a socket pair is this process's own groups.
    #[test]
    fn peer_groups_come_from_the_kernel() {
        let (a, _b) = std::os::unix::net::UnixStream::pair().unwrap();
        let peer = Peer::of_socket(&a).unwrap();
        let mut want: Vec<u32> = rustix::process::getgroups()
            .unwrap()
            .iter()
            .map(|g| g.as_raw())
            .collect();
        let mut got = peer.groups.clone();
        want.sort_unstable();
        got.sort_unstable();
        assert_eq!(got, want);
    }

    #[test]
    fn matching_follows_nix() {
        assert!(matches(&peer("alice", "users"), &list("*"), members));
        assert!(matches(
            &peer("alice", "users"),
            &list("bob alice"),
            members
        ));
        assert!(matches(&peer("alice", "users"), &list("@users"), members));
        assert!(matches(&peer("carol", "users"), &list("@wheel"), members));
        assert!(!matches(
            &peer("alice", "users"),
            &list("@wheel bob"),
            members
        ));
        assert!(!matches(&peer("alice", "users"), &list(""), members));
    }

    #[test]
    fn authorization_decisions() {
        let alice = peer("alice", "users");
        assert_eq!(
            authorize(&alice, &list("*"), &list("root"), "", 999, members),
            Ok(false)
        );
        assert_eq!(
            authorize(&alice, &list("bob"), &list("alice"), "", 999, members),
            Ok(true)
        );
        assert_eq!(
            authorize(&alice, &list("bob"), &list("root"), "", 999, members),
            Err(TrustError::NotAllowed {
                user: "alice".into()
            })
        );
        assert!(matches!(
            authorize(&alice, &list("*"), &list("root"), "users", 999, members),
            Err(TrustError::BuildUser { .. })
        ));
        assert_eq!(
            authorize(&alice, &list(""), &list(""), "", 1001, members),
            Ok(true)
        );
    }
}
