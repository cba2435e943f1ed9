//! Each user's `profiles/per-user/<user>` and `gcroots/per-user/<user>`, without root.
//!
//! The Nix 2.8 client does not create these itself: it expects the daemon to, and the
//! root `nix-daemon` created them and chowned them to the user. We cannot chown, so
//! the directory is created by the store owner with a POSIX ACL entry giving that one
//! user full access (ACLs need no capability). The `per-user` parents are mode 1777
//! so users can also create their own; because anyone can create any name there, a
//! directory named after a user but owned by somebody else (a squatter who could then
//! redirect that user's profile) is moved aside before the real one is made. As the
//! owner of the sticky parent, the daemon may rename it.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::trust::Peer;

/// Mode of the shared `per-user` parents: sticky and writable by everyone, like /tmp.
const PER_USER_MODE: u32 = 0o1777;

/// Restores the mode of the `per-user` parents, at start-up and on every connection:
/// Nix 2.8 run in local mode by the store owner (`nix-store --store local`, the
/// documented way to maintain the store) resets them to 0755, which would lock every
/// other user out of making their own directories.
pub(crate) fn repair_parents(state_dir: &Path, own_uid: u32) {
    for parent in ["profiles/per-user", "gcroots/per-user"] {
        let dir = state_dir.join(parent);
        match fs::symlink_metadata(&dir) {
            Ok(m) if m.is_dir() && m.uid() == own_uid && m.mode() & 0o7777 != PER_USER_MODE => {
                if let Err(e) = fs::set_permissions(&dir, fs::Permissions::from_mode(PER_USER_MODE))
                {
                    tracing::warn!("restoring mode 1777 of {}: {e}", dir.display());
                }
            }
            _ => {}
        }
    }
}

/// Makes sure `peer` has its own directories under both `per-user` parents.
pub(crate) fn ensure(state_dir: &Path, peer: &Peer, own_uid: u32) {
    repair_parents(state_dir, own_uid);
    // Names come from the user database; refuse anything that is not one component.
    if peer.user.is_empty() || peer.user.contains('/') || peer.user == "." || peer.user == ".." {
        return;
    }
    for parent in ["profiles/per-user", "gcroots/per-user"] {
        let dir = state_dir.join(parent).join(&peer.user);
        if let Err(e) = ensure_one(&dir, peer.uid, own_uid) {
            tracing::warn!("preparing {} for user '{}': {e}", dir.display(), peer.user);
        }
    }
}

fn ensure_one(dir: &Path, uid: u32, own_uid: u32) -> io::Result<()> {
    match fs::symlink_metadata(dir) {
        Ok(m)
            if m.is_dir() && (m.uid() == uid || (m.uid() == own_uid && has_user_acl(dir, uid))) =>
        {
            return Ok(())
        }
        Ok(_) => {
            // Squatted (or a stray file): move it aside, keeping it for inspection.
            let aside = dir.with_file_name(format!(
                ".squatted-{}-{}",
                dir.file_name().and_then(|n| n.to_str()).unwrap_or("user"),
                std::process::id()
            ));
            tracing::warn!(
                "moving {} aside to {}: not owned by its user",
                dir.display(),
                aside.display()
            );
            fs::rename(dir, aside)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    fs::create_dir(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    if uid != own_uid {
        rustix::fs::setxattr(
            dir,
            ACCESS_ACL,
            &acl_granting(uid),
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    Ok(())
}

/// The extended attribute holding a file's access ACL.
const ACCESS_ACL: &str = "system.posix_acl_access";

/// Tags and the layout of the kernel's POSIX ACL xattr (`posix_acl_xattr.h`):
/// a version word, then 8-byte entries of tag (u16), permissions (u16), id (u32).
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// `u::rwx,u:<uid>:rwx,g::r-x,m::rwx,o::r-x`, entries in the order the kernel requires.
fn acl_granting(uid: u32) -> Vec<u8> {
    let mut out = ACL_VERSION.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (ACL_USER_OBJ, 7u16, ACL_UNDEFINED_ID),
        (ACL_USER, 7, uid),
        (ACL_GROUP_OBJ, 5, ACL_UNDEFINED_ID),
        (ACL_MASK, 7, ACL_UNDEFINED_ID),
        (ACL_OTHER, 5, ACL_UNDEFINED_ID),
    ] {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

/// Whether `dir`'s ACL grants `uid` write access (i.e. the daemon made it for them).
fn has_user_acl(dir: &Path, uid: u32) -> bool {
    let mut buf = [0u8; 256];
    let Ok(n) = rustix::fs::getxattr(dir, ACCESS_ACL, &mut buf) else {
        return false;
    };
    buf[4..n.min(buf.len())].chunks_exact(8).any(|e| {
        u16::from_le_bytes([e[0], e[1]]) == ACL_USER
            && u16::from_le_bytes([e[2], e[3]]) & 2 != 0
            && u32::from_le_bytes([e[4], e[5], e[6], e[7]]) == uid
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acl_bytes_follow_the_kernel_layout() {
        let acl = acl_granting(1234);
        assert_eq!(acl.len(), 4 + 5 * 8);
        assert_eq!(&acl[..4], &[2, 0, 0, 0]);
        // The named-user entry: tag 2, rwx, id 1234.
        assert_eq!(&acl[12..20], &[2, 0, 7, 0, 0xd2, 0x04, 0, 0]);
    }

    #[test]
    fn a_fresh_directory_grants_its_user() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("alice");
        let own = rustix::process::geteuid().as_raw();
        // Filesystems without ACL support refuse the xattr; then there is nothing to test.
        match ensure_one(&dir, own + 1, own) {
            Ok(()) => assert!(has_user_acl(&dir, own + 1) && !has_user_acl(&dir, own + 2)),
            Err(e) => assert_eq!(e.raw_os_error(), Some(95), "{e}"),
        }
    }
}
