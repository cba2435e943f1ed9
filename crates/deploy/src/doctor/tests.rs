use std::path::Path;
use std::time::Duration;

use super::daemon::roots_answer;
use super::*;

/// Regression: the roots helper refuses everyone but the store owner with an error
/// item saying so; doctor, run as root, took that for a failed scan and warned
/// "garbage collection will refuse to run" on every correct install.
#[test]
fn landlock_scoping_is_reported_by_abi() {
    assert_eq!(landlock(Some(7)).verdict, Verdict::Ok);
    assert!(landlock(Some(7))
        .detail
        .starts_with("ABI 7: every builder is scoped"));
    assert_eq!(landlock(Some(5)).verdict, Verdict::Warn);
    assert!(landlock(Some(5)).detail.contains("no scoping"));
    assert_eq!(landlock(None).verdict, Verdict::Warn);
    assert!(landlock(None).detail.starts_with("not enabled"));
}

#[test]
fn the_helpers_refusal_of_root_is_fine_and_a_cut_short_answer_is_not() {
    let sock = Path::new("/nix/var/nix/gc-roots-socket/socket");
    let t = Duration::from_millis(3);
    let judge = |buf: &[u8], me: u32| roots_answer(buf, Some(990), me, sock, t);
    let refused = judge(b"error: refusing peer 0-45-0: not uid 990\0", 0);
    assert_eq!(refused.verdict, Verdict::Ok, "{refused}");
    assert!(refused.detail.contains("refused uid 0"), "{refused}");
    assert_eq!(judge(b"", 0).verdict, Verdict::Ok);
    let full = judge(b"/nix/store/a\0/nix/store/b\0end of answer\0", 990);
    assert_eq!(full.verdict, Verdict::Ok, "{full}");
    assert!(full.detail.starts_with("answered 2 roots"), "{full}");
    let cut = judge(b"/nix/store/a\0", 990);
    assert_eq!(cut.verdict, Verdict::Warn, "{cut}");
    assert!(cut.detail.contains("cut short"), "{cut}");
    let failed = judge(
        b"/nix/store/a\0error: reading /home/x\0end of answer\0",
        990,
    );
    assert_eq!(failed.verdict, Verdict::Warn);
    assert!(
        failed.detail.starts_with("answered 1 roots and 1 errors:"),
        "{failed}"
    );
    // Anything but the refusal, to someone else, is still a problem.
    assert_eq!(judge(b"error: reading /home/x\0", 0).verdict, Verdict::Warn);
}

#[test]
fn finds_the_topmost_store_mount() {
    let info = "22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
                40 22 8:1 /nix/store /nix/.unrooted/rw-store rw,relatime - ext4 /dev/sda1 rw\n\
                41 22 8:1 /nix/store /nix/store ro,relatime shared:1 - ext4 /dev/sda1 rw\n\
                50 22 0:5 / /a\\040b rw - tmpfs x rw\n";
    assert_eq!(mount_read_only(info, Path::new("/nix/store")), Some(true));
    assert_eq!(
        mount_read_only(info, Path::new("/nix/.unrooted/rw-store")),
        Some(false)
    );
    assert_eq!(mount_read_only(info, Path::new("/a b")), Some(false));
    assert_eq!(mount_read_only(info, Path::new("/srv")), None);
}
