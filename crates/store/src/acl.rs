//! POSIX access ACLs as the kernel stores them (`system.posix_acl_access`,
//! `include/uapi/linux/posix_acl_xattr.h`): how the unprivileged daemon gives one
//! user access to a directory it cannot `chown` (per-user profile and GC-root
//! directories, kept build directories). ACLs need no capability.

/// The extended attribute holding a file's access ACL.
pub const ACCESS_ACL: &str = "system.posix_acl_access";

/// A version word, then 8-byte entries of tag (u16), permissions (u16), id (u32).
const ACL_VERSION: u32 = 2;
const ACL_USER_OBJ: u16 = 0x01;
const ACL_USER: u16 = 0x02;
const ACL_GROUP_OBJ: u16 = 0x04;
const ACL_MASK: u16 = 0x10;
const ACL_OTHER: u16 = 0x20;
const ACL_UNDEFINED_ID: u32 = u32::MAX;

/// The access ACL of a file with permission bits `mode` that also grants `uid` the
/// permissions `user_perm` (`rwx` as 0..=7): owner, that user, group, the mask
/// (group bits plus the user's) and other, in the order the kernel requires.
pub fn access_acl_granting(mode: u32, uid: u32, user_perm: u16) -> Vec<u8> {
    // Each value is masked to three bits, so the casts cannot truncate.
    let bits = |shift: u32| ((mode >> shift) & 7) as u16;
    let (owner, group, other) = (bits(6), bits(3), bits(0));
    let user_perm = user_perm & 7;
    let mut out = Vec::with_capacity(4 + 5 * 8);
    out.extend_from_slice(&ACL_VERSION.to_le_bytes());
    for (tag, perm, id) in [
        (ACL_USER_OBJ, owner, ACL_UNDEFINED_ID),
        (ACL_USER, user_perm, uid),
        (ACL_GROUP_OBJ, group, ACL_UNDEFINED_ID),
        (ACL_MASK, group | user_perm, ACL_UNDEFINED_ID),
        (ACL_OTHER, other, ACL_UNDEFINED_ID),
    ] {
        out.extend_from_slice(&tag.to_le_bytes());
        out.extend_from_slice(&perm.to_le_bytes());
        out.extend_from_slice(&id.to_le_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layout_is_the_kernels() {
        let v = access_acl_granting(0o750, 1234, 5);
        assert_eq!(v.len(), 4 + 5 * 8);
        assert_eq!(&v[..4], &[2, 0, 0, 0]);
        assert_eq!(&v[4..12], &[1, 0, 7, 0, 0xff, 0xff, 0xff, 0xff]);
        // user:1234 r-x.
        assert_eq!(&v[12..20], &[2, 0, 5, 0, 0xd2, 0x04, 0, 0]);
        // mask = group r-x | user r-x; other ---.
        assert_eq!(&v[28..32], &[0x10, 0, 5, 0]);
        assert_eq!(&v[36..40], &[0x20, 0, 0, 0]);
        // A user granted rwx widens the mask to rwx.
        assert_eq!(&access_acl_granting(0o755, 7, 7)[28..32], &[0x10, 0, 7, 0]);
    }
}
