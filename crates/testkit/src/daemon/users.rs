//! The test users and their subordinate ids: created when the tests run as root,
//! and what a test needs before it can run.

use std::fs;
use std::path::Path;
use std::process::Command;

/// The user the daemon runs as in tests.
pub const DAEMON_USER: &str = "unrooted-test-daemon";
/// The user the Nix client runs as in tests.
pub const CLIENT_USER: &str = "unrooted-test-client";
/// A third user, for tests where one user collects garbage while another holds roots.
pub const OTHER_USER: &str = "unrooted-test-other";

/// A system user's uid and primary gid, creating the user when running as root.
pub fn test_user(name: &str) -> Option<(u32, u32)> {
    let lookup = || {
        let id = |flag: &str| -> Option<u32> {
            let out = Command::new("id").args([flag, name]).output().ok()?;
            String::from_utf8(out.stdout).ok()?.trim().parse().ok()
        };
        Some((id("-u")?, id("-g")?))
    };
    if let Some(ids) = lookup() {
        return Some(ids);
    }
    if is_root() {
        let status = Command::new("useradd")
            .args([
                "--system",
                "--create-home",
                "--shell",
                "/usr/sbin/nologin",
                name,
            ])
            .status()
            .ok()?;
        if status.success() {
            return lookup();
        }
    }
    None
}

/// How many subordinate ids [`ensure_subids`] gives a user: eight slices of 65,536,
/// so concurrent builds each get their own.
pub const TEST_SUBID_COUNT: u32 = 8 * 65536;

/// The first range of `user` in a `subuid(5)` text.
fn subid_range(text: &str, user: &str) -> Option<(u32, u32)> {
    text.lines().find_map(|l| {
        let mut f = l.trim().split(':');
        (f.next()? == user).then_some(())?;
        Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
    })
}

/// Gives `user` a range of [`TEST_SUBID_COUNT`] ids in `/etc/subuid` and
/// `/etc/subgid` (the same start in both), after every range already there so it
/// overlaps nobody's; idempotent, and only as root. Returns the user's first range
/// in `/etc/subuid`, if any.
pub fn ensure_subids(user: &str) -> Option<(u32, u32)> {
    // Test threads and test binaries run at once: one writer at a time (the lock is
    // per open file, so it excludes threads of this process too).
    let lock = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::env::temp_dir().join("unrooted-test-subids.lock"))
        .ok();
    if let Some(l) = &lock {
        let _ = rustix::fs::flock(l, rustix::fs::FlockOperation::LockExclusive);
    }
    let read = |f: &str| fs::read_to_string(f).unwrap_or_default();
    let (subuid, subgid) = (read("/etc/subuid"), read("/etc/subgid"));
    if let (Some(u), Some(_)) = (subid_range(&subuid, user), subid_range(&subgid, user)) {
        return Some(u);
    }
    if !is_root() {
        return subid_range(&subuid, user);
    }
    let end = |text: &str| {
        text.lines()
            .filter_map(|l| {
                let mut f = l.trim().split(':').skip(1);
                let start: u64 = f.next()?.parse().ok()?;
                let count: u64 = f.next()?.parse().ok()?;
                Some(start + count)
            })
            .max()
            .unwrap_or(0)
    };
    let start = end(&subuid).max(end(&subgid)).max(100_000);
    let start = u32::try_from(start).ok()?;
    for (file, text) in [("/etc/subuid", &subuid), ("/etc/subgid", &subgid)] {
        if subid_range(text, user).is_none() {
            let mut new = text.clone();
            if !new.is_empty() && !new.ends_with('\n') {
                new.push('\n');
            }
            new.push_str(&format!("{user}:{start}:{TEST_SUBID_COUNT}\n"));
            fs::write(file, new).ok()?;
        }
    }
    subid_range(&read("/etc/subuid"), user)
}

/// Whether this process is root (the only case in which users can be switched).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Whether daemon tests can run here; under `CI=true` they must.
pub fn can_run_daemon_tests() -> bool {
    let ok = is_root()
        && test_user(DAEMON_USER).is_some()
        && test_user(CLIENT_USER).is_some()
        && test_user(OTHER_USER).is_some();
    crate::require(
        ok,
        &format!("daemon tests need root to create {DAEMON_USER}/{CLIENT_USER} and switch to them"),
    )
}

/// Whether sandboxed builds can be tested here: the daemon tests' users, the Nix
/// client, Debian's static busybox (the builders' `/bin/sh`) and unprivileged user
/// namespaces. Under `CI=true` each missing piece is a failure, never a skip.
pub fn can_run_sandboxed_builds() -> bool {
    can_run_daemon_tests() && crate::nix_tool("nix-build").is_some() && can_sandbox_as_this_user()
}

/// Whether builders can run in the sandbox as the current user, in the single-id
/// mode: Debian's static busybox (the builders' `/bin/sh`) and unprivileged user
/// namespaces. Under `CI=true` each missing piece is a failure, never a skip.
pub fn can_sandbox_as_this_user() -> bool {
    if !crate::require(
        Path::new("/bin/busybox").exists(),
        "/bin/busybox is missing (busybox-static)",
    ) {
        return false;
    }
    match unrooted_sandbox::check_user_namespaces() {
        Ok(()) => true,
        Err(e) => crate::require(false, &e.to_string()),
    }
}
