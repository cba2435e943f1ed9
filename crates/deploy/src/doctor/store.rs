//! The store: its ownership, its read-only mount, and free space.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{finding, read_bounded, Finding, Verdict, MIN_USABLE_FREE};
use crate::accounts;
use crate::host::Layout;
use crate::units;
use crate::Host;

pub(super) fn ownership(
    host: &Host,
    l: &Layout,
    owner: &accounts::Account,
    out: &mut Vec<Finding>,
) {
    let mut problems = Vec::new();
    let mut worst = Verdict::Ok;
    let mut note = |v: Verdict, s: String| {
        worst = worst.max(v);
        problems.push(s);
    };
    let owned = [
        (&l.store_dir, true),
        (&l.state_dir, true),
        (&l.log_dir, true),
        (&l.state_dir.join("db"), false),
        (&l.state_dir.join("db/db.sqlite"), false),
    ];
    for (path, required) in owned {
        match fs::symlink_metadata(host.path(path)) {
            Ok(m) => {
                if m.uid() != owner.uid {
                    note(
                        Verdict::Fail,
                        format!(
                            "{} is owned by uid {}, not {} ({})",
                            path.display(),
                            m.uid(),
                            owner.name,
                            owner.uid
                        ),
                    );
                } else if m.is_dir() && m.mode() & 0o022 != 0 {
                    note(
                        Verdict::Fail,
                        format!(
                            "{} is mode {:04o}: writable by others",
                            path.display(),
                            m.mode() & 0o7777
                        ),
                    );
                }
            }
            Err(_) if required => note(Verdict::Fail, format!("{} is missing", path.display())),
            Err(_) => {}
        }
    }
    for p in ["profiles/per-user", "gcroots/per-user"] {
        let path = l.state_dir.join(p);
        match fs::symlink_metadata(host.path(&path)) {
            Ok(m) if m.is_dir() && m.mode() & 0o7777 == 0o755 => {}
            Ok(m) => note(
                Verdict::Warn,
                format!(
                    "{} is mode {:04o}, not 0755: users could take each other's profiles (the daemon sets 0755 when it starts)",
                    path.display(),
                    m.mode() & 0o7777
                ),
            ),
            Err(_) => note(Verdict::Warn, format!("{} is missing", path.display())),
        }
    }
    out.push(if problems.is_empty() {
        finding(
            "store ownership",
            Verdict::Ok,
            format!(
                "{}, {} and {} belong to {}",
                l.store_dir.display(),
                l.state_dir.display(),
                l.log_dir.display(),
                owner.name
            ),
            None,
        )
    } else {
        let fix = format!(
            "unrooted migrate --store-owner {} (hands a root-owned store over), then unrooted install",
            owner.name
        );
        Finding {
            check: "store ownership",
            verdict: worst,
            detail: problems.join("; "),
            fix: Some(fix),
        }
    });
}

/// Unescapes a mountinfo path field (`\040` for a space, ...).
fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether the topmost mount at `mount_point` in `mountinfo` is read-only, `None`
/// when nothing is mounted there.
pub fn mount_read_only(mountinfo: &str, mount_point: &Path) -> Option<bool> {
    // Later lines are mounted on top of earlier ones at the same point.
    mountinfo.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.split(' ').collect();
        let point = unescape_mountinfo(f.get(4)?);
        (Path::new(&point) == mount_point)
            .then(|| f.get(5).is_some_and(|o| o.split(',').any(|x| x == "ro")))
    })
}

pub(super) fn store_mount(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
    let fix = format!("systemctl enable --now {}", units::STORE_UNIT);
    let info = read_bounded(&host.path(Path::new("/proc/self/mountinfo")), 16 << 20);
    out.push(match info.map(|i| mount_read_only(&i, &l.store_dir)) {
        Some(Some(true)) => finding(
            "store mount",
            Verdict::Ok,
            format!("{} is read-only outside the daemon", l.store_dir.display()),
            None,
        ),
        Some(Some(false)) => finding(
            "store mount",
            Verdict::Warn,
            format!("{} is mounted read-write: other processes of the store owner (and root) can change it", l.store_dir.display()),
            Some(&fix),
        ),
        Some(None) => finding(
            "store mount",
            Verdict::Warn,
            format!("{} is not a read-only mount: other processes of the store owner (and root) can change it", l.store_dir.display()),
            Some(&fix),
        ),
        None => finding(
            "store mount",
            Verdict::Warn,
            "cannot read /proc/self/mountinfo".into(),
            None,
        ),
    });
}

pub(super) fn free_space(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
    let mut raw = unrooted_config::RawSettings::default();
    let conf = host.path(&l.conf_dir.join("nix.conf"));
    let min_free = raw
        .apply_file(&conf)
        .ok()
        .and_then(|()| unrooted_config::Settings::from_raw(&raw).ok())
        .map_or(0, |s| s.min_free);
    let store = host.path(&l.store_dir);
    let stat = match rustix::fs::statvfs(&store) {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                "free space",
                Verdict::Fail,
                format!("statvfs {}: {e}", store.display()),
                None,
            ));
            return;
        }
    };
    let free = stat.f_bavail.saturating_mul(stat.f_frsize);
    let mib = |b: u64| b >> 20;
    out.push(if free < MIN_USABLE_FREE {
        finding(
            "free space",
            Verdict::Fail,
            format!("{} MiB free in {}", mib(free), l.store_dir.display()),
            Some("nix-collect-garbage, or grow the file system"),
        )
    } else if free < min_free {
        finding(
            "free space",
            Verdict::Warn,
            format!(
                "{} MiB free, below min-free ({} MiB): every build starts a garbage collection",
                mib(free),
                mib(min_free)
            ),
            Some("nix-collect-garbage, or lower min-free in nix.conf"),
        )
    } else {
        finding(
            "free space",
            Verdict::Ok,
            format!(
                "{} MiB free in {}{}",
                mib(free),
                l.store_dir.display(),
                if min_free > 0 {
                    format!(" (min-free {} MiB)", mib(min_free))
                } else {
                    String::new()
                }
            ),
            None,
        )
    });
}
