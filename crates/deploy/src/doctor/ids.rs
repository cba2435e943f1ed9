//! Build ids: the store owner's subordinate ids, the id mappers, and the mode the
//! daemon's settings give builds.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::{finding, read_bounded, Finding, Verdict, MAX_PROC_READ};
use crate::accounts;
use crate::host::Layout;
use crate::plan::has_uidmap;
use crate::Host;

pub(super) fn subids(
    host: &Host,
    l: &Layout,
    owner: &str,
    account: Option<&accounts::Account>,
    out: &mut Vec<Finding>,
) {
    let uid = account.map(|a| a.uid);
    let range = |file: &str| {
        accounts::read_db(&host.path(Path::new(file)))
            .ok()
            .flatten()
            .and_then(|t| accounts::subid_range_of(&t, owner, uid))
    };
    let (u, g) = (range("/etc/subuid"), range("/etc/subgid"));
    let uidmap = has_uidmap(host);
    let unit = host.path(&l.unit_dir.join("unrooted-daemon.service"));
    let nnp = read_bounded(&unit, MAX_PROC_READ).is_some_and(|t| t.contains("NoNewPrivileges=yes"));
    out.push(match (u, g, uidmap) {
        (Some(u), Some(g), true) => {
            let nu = host.path(Path::new("/usr/bin/newuidmap"));
            let setuid = fs::metadata(&nu).is_ok_and(|m| m.mode() & 0o4000 != 0);
            if nnp {
                finding(
                    "subordinate ids",
                    Verdict::Fail,
                    format!("{owner} has {}+{} / {}+{} but the daemon unit sets NoNewPrivileges=yes, so newuidmap cannot work", u.start, u.count, g.start, g.count),
                    Some("unrooted install (rewrites the unit for subordinate ids), then systemctl daemon-reload"),
                )
            } else {
                finding(
                    "subordinate ids",
                    Verdict::Ok,
                    format!(
                        "{owner} has uids {}+{} and gids {}+{}; newuidmap {}",
                        u.start,
                        u.count,
                        g.start,
                        g.count,
                        if setuid {
                            "is setuid"
                        } else {
                            "is not setuid (fine if it has file capabilities: getcap /usr/bin/newuidmap)"
                        }
                    ),
                    None,
                )
            }
        }
        (_, _, false) => finding(
            "subordinate ids",
            Verdict::Warn,
            "newuidmap/newgidmap not installed: builds run as the store owner (inside their namespaces), not in a separate id range".into(),
            Some("apt-get install uidmap (or dnf install shadow-utils), then unrooted install"),
        ),
        _ => finding(
            "subordinate ids",
            Verdict::Warn,
            format!("no range for {owner} in /etc/subuid and /etc/subgid: builds run as the store owner"),
            Some("unrooted install (adds a free range)"),
        ),
    });
}

/// Which ids builders will run as, and why: the id-range mode (a slice of the store
/// owner's subordinate ids per build) or the single-id mode, from `nix.conf`
/// (`sandbox`, `auto-allocate-uids`, `start-id`, `id-count`, `unrooted-ids-per-build`)
/// and the subordinate-ids finding just made. The daemon's start-up log says the same
/// after also trying `newuidmap` once.
/// Which `newuidmap`/`newgidmap` the daemon will run, and whether they can work under
/// its unit: the copies beside its binary need their file capabilities (and should
/// match the system's, which get security updates); the system's setuid-root ones
/// need `CAP_SYS_ADMIN` and `CAP_DAC_OVERRIDE` in the unit's bounding set.
pub(super) fn id_mappers(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
    use crate::filecaps::{get, CAP_SETGID, CAP_SETUID};
    let reinstall =
        Some("unrooted install (puts copies with file capabilities beside the daemon's binary)");
    let copies = [("newuidmap", CAP_SETUID), ("newgidmap", CAP_SETGID)];
    let at = |name: &str| host.path(&l.libexec_dir.join(name));
    if copies.iter().all(|(name, _)| at(name).is_file()) {
        for (name, cap) in copies {
            if get(&at(name)).as_deref() != Some(&[cap][..]) {
                out.push(finding(
                    "id mappers",
                    Verdict::Fail,
                    format!(
                        "{} lacks its file capability: builds fall back to the single-id mode",
                        l.libexec_dir.join(name).display()
                    ),
                    reinstall,
                ));
                return;
            }
            let system = fs::read(host.path(&Path::new("/usr/bin").join(name))).ok();
            if system.is_some() && system != fs::read(at(name)).ok() {
                out.push(finding(
                    "id mappers",
                    Verdict::Warn,
                    format!(
                        "{} differs from /usr/bin/{name} (updated since the install?)",
                        l.libexec_dir.join(name).display()
                    ),
                    reinstall,
                ));
                return;
            }
        }
        out.push(finding(
            "id mappers",
            Verdict::Ok,
            format!(
                "{}/new{{u,g}}idmap with file capabilities cap_setuid, cap_setgid",
                l.libexec_dir.display()
            ),
            None,
        ));
        return;
    }
    let unit = read_bounded(
        &host.path(&l.unit_dir.join("unrooted-daemon.service")),
        MAX_PROC_READ,
    );
    let bounding = unit.as_deref().and_then(|u| {
        u.lines()
            .find_map(|l| l.strip_prefix("CapabilityBoundingSet=").map(str::to_owned))
    });
    match bounding {
        Some(set) if !(set.contains("CAP_SYS_ADMIN") && set.contains("CAP_DAC_OVERRIDE")) => out.push(finding(
            "id mappers",
            Verdict::Fail,
            format!("the setuid-root /usr/bin/newuidmap cannot map ids within the unit's CapabilityBoundingSet={set}: the daemon runs builds in the single-id mode"),
            reinstall,
        )),
        _ => out.push(finding(
            "id mappers",
            Verdict::Ok,
            "the system's /usr/bin/new{u,g}idmap".into(),
            None,
        )),
    }
}

pub(super) fn build_ids(
    host: &Host,
    l: &Layout,
    owner: &str,
    account: Option<&accounts::Account>,
    out: &mut Vec<Finding>,
) {
    let s = match daemon_settings(host, l) {
        Ok(s) => s,
        Err(e) => {
            out.push(finding("build ids", Verdict::Fail, e, None));
            return;
        }
    };
    let subids_ok = out
        .iter()
        .rev()
        .find(|f| f.check == "subordinate ids")
        .is_some_and(|f| f.verdict == Verdict::Ok);
    out.push(build_mode(host, &s, owner, account, subids_ok));
}

/// The daemon's settings, from the host's `nix.conf`.
fn daemon_settings(host: &Host, l: &Layout) -> Result<unrooted_config::Settings, String> {
    let mut raw = unrooted_config::RawSettings::default();
    raw.apply_file(&host.path(&l.conf_dir.join("nix.conf")))
        .map_err(|e| e.to_string())
        .and_then(|()| unrooted_config::Settings::from_raw(&raw).map_err(|e| e.to_string()))
}

/// The single-id mode's warning, saying why builds are in it.
fn single_id_mode(why: String) -> Finding {
    finding(
        "build ids",
        Verdict::Warn,
        format!("single-id mode: builders are the store owner outside their sandbox, and concurrent builds share it ({why})"),
        Some("give the store owner /etc/subuid and /etc/subgid ranges and install uidmap (unrooted install does both), keep auto-allocate-uids = true"),
    )
}

/// Which ids the daemon's settings and the owner's subordinate ranges give builds.
fn build_mode(
    host: &Host,
    s: &unrooted_config::Settings,
    owner: &str,
    account: Option<&accounts::Account>,
    subids_ok: bool,
) -> Finding {
    if s.sandbox == unrooted_config::SandboxMode::Disabled {
        return finding(
            "build ids",
            Verdict::Warn,
            "sandbox = false: builders run unsandboxed as the store owner".into(),
            None,
        );
    }
    if !s.auto_allocate_uids {
        return single_id_mode("auto-allocate-uids = false".into());
    }
    if !subids_ok {
        return single_id_mode("see the subordinate ids check".into());
    }
    let uid = account.map(|a| a.uid);
    let range = |file: &str| {
        accounts::read_db(&host.path(Path::new(file)))
            .ok()
            .flatten()
            .and_then(|t| accounts::subid_range_of(&t, owner, uid))
    };
    let (Some(u), Some(g)) = (range("/etc/subuid"), range("/etc/subgid")) else {
        return single_id_mode("no subordinate ranges".into());
    };
    // The pool as the daemon computes it: from `start-id` (default: the range's start)
    // to the range's end, at most `id-count` ids.
    let pool = |r: accounts::SubidRange| -> Option<u64> {
        let start = s.start_id.map_or(r.start, u64::from);
        let end = r.start + r.count;
        (start >= r.start && start < end)
            .then(|| (end - start).min(s.id_count.map_or(u64::MAX, u64::from)))
    };
    let per = u64::from(s.ids_per_build);
    match (pool(u), pool(g)) {
        (Some(pu), Some(pg)) if per > 1000 && pu.min(pg) / per > 0 => {
            id_range_mode(s, owner, per, pu.min(pg) / per)
        }
        (None, _) | (_, None) => single_id_mode(format!(
            "start-id {} is outside {owner}'s subordinate ranges",
            s.start_id.unwrap_or(0)
        )),
        _ => single_id_mode(format!(
            "the pool holds no slice of unrooted-ids-per-build = {per} ids"
        )),
    }
}

/// The id-range mode with `slices` slices of `per` ids; the daemon runs up to
/// max-jobs builds at once, and past the slices, builds wait for one.
fn id_range_mode(s: &unrooted_config::Settings, owner: &str, per: u64, slices: u64) -> Finding {
    let mode = format!(
        "id-range mode: each build gets its own {per} uids and gids, so {owner}'s subordinate ids allow {slices} concurrent id-range build{}; the builder is 1000/100 inside, ids that own nothing of the store outside",
        if slices == 1 { "" } else { "s" }
    );
    if slices < s.max_jobs {
        finding(
            "build ids",
            Verdict::Warn,
            format!(
                "{mode}, fewer than max-jobs = {}: the others wait for a slice",
                s.max_jobs
            ),
            Some("give the store owner a range of max-jobs × 65536 ids in /etc/subuid and /etc/subgid (unrooted install --build-slices N adds one when it has none), or lower max-jobs"),
        )
    } else {
        finding(
            "build ids",
            Verdict::Ok,
            format!("{mode} (max-jobs = {})", s.max_jobs),
            None,
        )
    }
}
