//! Who is connecting, and what they may do: `SO_PEERCRED`, `allowed-users` and
//! `trusted-users` matched as Nix 2.8 matches them.
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
    /// Its primary group's name, or the decimal gid.
    pub group: String,
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
        let cred = rustix::net::sockopt::socket_peercred(socket).map_err(TrustError::PeerCred)?;
        let uid = cred.uid.as_raw();
        let gid = cred.gid.as_raw();
        Ok(Self::from_ids(
            cred.pid.as_raw_nonzero().get() as u32,
            uid,
            gid,
        ))
    }

    /// A peer from raw ids, with names looked up.
    pub fn from_ids(pid: u32, uid: u32, gid: u32) -> Self {
        let user = uzers::get_user_by_uid(uid)
            .map(|u| u.name().to_string_lossy().into_owned())
            .unwrap_or_else(|| uid.to_string());
        let group = uzers::get_group_by_gid(gid)
            .map(|g| g.name().to_string_lossy().into_owned())
            .unwrap_or_else(|| gid.to_string());
        Self {
            pid,
            uid,
            gid,
            user,
            group,
        }
    }
}

/// Whether `peer` matches one of `entries` (`*`, a user name, or `@group`).
///
/// `@group` matches the peer's primary group or a group listing the user as a
/// member, as in Nix's `matchUser`.
pub fn matches(
    peer: &Peer,
    entries: &[String],
    group_members: impl Fn(&str) -> Vec<String>,
) -> bool {
    entries.iter().any(|e| match e.strip_prefix('@') {
        Some(group) => group == peer.group || group_members(group).contains(&peer.user),
        None => e == "*" || *e == peer.user,
    })
}

/// Members listed for `group` in the system's group database.
pub fn system_group_members(group: &str) -> Vec<String> {
    uzers::get_group_by_name(group)
        .map(|g| {
            g.members()
                .iter()
                .map(|m| m.to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
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
    group_members: impl Fn(&str) -> Vec<String>,
) -> Result<bool, TrustError> {
    let trusted = peer.uid == own_uid || matches(peer, trusted_users, &group_members);
    if !build_users_group.is_empty() && peer.group == build_users_group && peer.uid != own_uid {
        return Err(TrustError::BuildUser {
            user: peer.user.clone(),
            group: build_users_group.to_owned(),
        });
    }
    if !trusted && !matches(peer, allowed_users, &group_members) {
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
            group: group.into(),
        }
    }

    fn list(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    fn members(g: &str) -> Vec<String> {
        if g == "wheel" {
            vec!["carol".into()]
        } else {
            vec![]
        }
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
