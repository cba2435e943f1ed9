//! File capabilities (`security.capability`, `capabilities(7)`), for the copies of
//! `newuidmap`/`newgidmap` that `install` puts beside the daemon's binary.
//!
//! Debian's `newuidmap` is setuid root. Run by the daemon under its unit's capability
//! bounding set (`CAP_SETUID CAP_SETGID`), a setuid-root program keeps euid 0 but
//! gets only those two capabilities; writing another process's `uid_map` then also
//! needs `CAP_DAC_OVERRIDE` (the file is the store owner's) and `CAP_SYS_ADMIN` over
//! the new namespace (euid 0 does not own it): measured, it fails with EACCES, then
//! EPERM. A copy with the file capability `cap_setuid` (Fedora ships it so) switches
//! back to the caller's uid, which owns both, and needs nothing else. Written here as
//! the 20-byte version-2 record `setcap` writes, so installing does not depend on
//! `libcap2-bin`.

use std::io;
use std::path::Path;

/// `CAP_SETGID`.
pub const CAP_SETGID: u32 = 6;
/// `CAP_SETUID`.
pub const CAP_SETUID: u32 = 7;

/// `VFS_CAP_REVISION_2`.
const REVISION_2: u32 = 0x0200_0000;
/// `VFS_CAP_FLAGS_EFFECTIVE`: the permitted capabilities are also effective at exec.
const FLAG_EFFECTIVE: u32 = 0x0000_0001;

/// The `security.capability` value granting `caps` (permitted and effective).
pub fn record(caps: &[u32]) -> [u8; 20] {
    let bits: u64 = caps.iter().fold(0, |b, &c| b | (1u64 << c));
    let words = [
        REVISION_2 | FLAG_EFFECTIVE,
        bits as u32,         // permitted, low word
        0,                   // inheritable, low word
        (bits >> 32) as u32, // permitted, high word
        0,                   // inheritable, high word
    ];
    let mut out = [0u8; 20];
    for (chunk, w) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    out
}

/// Gives the file at `path` the capabilities `caps` (as `setcap cap_…+ep`). Needs
/// root; the kernel clears them again whenever the file is written.
pub fn set(path: &Path, caps: &[u32]) -> io::Result<()> {
    rustix::fs::setxattr(
        path,
        "security.capability",
        &record(caps),
        rustix::fs::XattrFlags::empty(),
    )
    .map_err(io::Error::from)
}

/// The capabilities the file at `path` carries, if any.
pub fn get(path: &Path) -> Option<Vec<u32>> {
    let mut buf = [0u8; 24];
    let n = rustix::fs::getxattr(path, "security.capability", &mut buf).ok()?;
    let word = |i: usize| u32::from_le_bytes(buf[i * 4..i * 4 + 4].try_into().unwrap_or_default());
    (n >= 20).then_some(())?;
    let bits = u64::from(word(1)) | (u64::from(word(3)) << 32);
    Some((0..64).filter(|c| bits & (1 << c) != 0).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `setcap cap_setuid+ep` writes (read back with `getfattr -n
    /// security.capability` on Debian 12: 0x0100000280000000000000000000000000000000).
    #[test]
    fn record_matches_what_setcap_writes() {
        let r = record(&[CAP_SETUID]);
        assert_eq!(
            r,
            [1, 0, 0, 2, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]
        );
    }
}
