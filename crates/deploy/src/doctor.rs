//! `unrooted doctor`: every precondition for builds and garbage collection, each as a
//! one-line verdict and, when it is not fine, the command or change that fixes it.
//!
//! Checks read the host through [`Host`], so a test can stand a directory tree in for
//! `/` (a fake `/proc/sys` with user namespaces off, a store with the wrong owner).
//! Everything read from `/proc` or a socket is bounded.

use std::fmt;
use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unrooted_format::StoreDir;
use unrooted_protocol::client::Client;
use unrooted_protocol::ProtocolVersion;

use crate::accounts;
use crate::host::Layout;
use crate::plan::{has_uidmap, sysctl};
use crate::units;
use crate::Host;

/// Below this much free space in the store, builds fail.
const MIN_USABLE_FREE: u64 = 64 << 20;
/// Largest answer read from the roots helper.
const MAX_ROOTS_ANSWER: u64 = 64 << 20;
/// Largest `/proc` text file read.
const MAX_PROC_READ: u64 = 1 << 20;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but weaker or degraded (e.g. garbage collection refuses to run).
    Warn,
    /// Builds cannot work until this is fixed.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (stable, short: tests match on it).
    pub check: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not fine.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.verdict, self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

/// What the doctor examines.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The host (or tree).
    pub host: Host,
    /// The paths.
    pub layout: Layout,
    /// The store owner; `None` = the `User=` of the installed daemon unit, else `unrooted`.
    pub owner: Option<String>,
    /// How long to wait for the daemon and the helper.
    pub timeout: Duration,
}

fn finding(check: &'static str, verdict: Verdict, detail: String, fix: Option<&str>) -> Finding {
    Finding {
        check,
        verdict,
        detail,
        fix: fix.map(str::to_owned),
    }
}

fn read_bounded(path: &Path, max: u64) -> Option<String> {
    let mut s = String::new();
    fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The `User=` of the installed daemon unit.
pub fn installed_owner(host: &Host, layout: &Layout) -> Option<String> {
    let unit = host.path(&layout.unit_dir.join("unrooted-daemon.service"));
    read_bounded(&unit, MAX_PROC_READ)?
        .lines()
        .find_map(|l| l.strip_prefix("User=").map(|u| u.trim().to_owned()))
}

/// Runs every check, in order.
pub fn run(opts: &DoctorOptions) -> Vec<Finding> {
    let host = &opts.host;
    let l = &opts.layout;
    let owner_name = opts
        .owner
        .clone()
        .or_else(|| installed_owner(host, l))
        .unwrap_or_else(|| "unrooted".into());
    let mut out = Vec::new();
    userns(host, l, &mut out);
    out.push(landlock(unrooted_sandbox::landlock_abi()));
    let owner = match accounts::lookup_user(host, &owner_name) {
        Ok(Some(a)) => Some(a),
        Ok(None) => {
            out.push(finding(
                "store owner",
                Verdict::Fail,
                format!("no user named {owner_name}"),
                Some("unrooted install (creates it), or pass --store-owner NAME"),
            ));
            None
        }
        Err(e) => {
            out.push(finding("store owner", Verdict::Fail, e.to_string(), None));
            None
        }
    };
    subids(host, l, &owner_name, owner.as_ref(), &mut out);
    build_ids(host, l, &owner_name, owner.as_ref(), &mut out);
    let id_ranges = out
        .last()
        .is_some_and(|f| f.check == "build ids" && f.detail.starts_with("id-range mode"));
    if id_ranges {
        id_mappers(host, l, &mut out);
    }
    if let Some(a) = &owner {
        ownership(host, l, a, &mut out);
    }
    store_mount(host, l, &mut out);
    daemon(host, l, opts.timeout, &mut out);
    roots_helper(host, l, owner.as_ref(), opts.timeout, &mut out);
    free_space(host, l, &mut out);
    out
}

fn userns(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
    let max = sysctl(host, "user.max_user_namespaces");
    let clone = sysctl(host, "kernel.unprivileged_userns_clone");
    let (v, detail, fix) = match (max.as_deref(), clone.as_deref()) {
        (None, _) => (
            Verdict::Fail,
            "user.max_user_namespaces is missing: a kernel without user namespaces (CONFIG_USER_NS)".to_owned(),
            Some("use a kernel built with CONFIG_USER_NS=y"),
        ),
        (Some("0"), _) => (
            Verdict::Fail,
            "user.max_user_namespaces = 0: user namespaces are off, no build can start".to_owned(),
            Some("echo user.max_user_namespaces=15000 > /etc/sysctl.d/50-unrooted.conf && sysctl --system"),
        ),
        (_, Some("0")) => (
            Verdict::Fail,
            "kernel.unprivileged_userns_clone = 0: unprivileged user namespaces are off".to_owned(),
            Some("echo kernel.unprivileged_userns_clone=1 > /etc/sysctl.d/50-unrooted.conf && sysctl --system"),
        ),
        (Some(n), c) => (
            Verdict::Ok,
            format!(
                "enabled (user.max_user_namespaces = {n}{})",
                c.map(|c| format!(", kernel.unprivileged_userns_clone = {c}"))
                    .unwrap_or_default()
            ),
            None,
        ),
    };
    out.push(finding("user namespaces", v, detail, fix));

    let profile = host.path(&Path::new("/etc/apparmor.d").join(units::APPARMOR_PROFILE));
    let f = match sysctl(host, "kernel.apparmor_restrict_unprivileged_userns").as_deref() {
        Some("1") if profile.is_file() => finding(
            "AppArmor",
            Verdict::Ok,
            format!(
                "user namespaces restricted, allowed for {} by {}",
                l.daemon_binary().display(),
                profile.display()
            ),
            None,
        ),
        Some("1") => finding(
            "AppArmor",
            Verdict::Fail,
            "kernel.apparmor_restrict_unprivileged_userns = 1 and no profile allows the daemon user namespaces".into(),
            Some("unrooted install (writes /etc/apparmor.d/unrooted-daemon), then apparmor_parser -r /etc/apparmor.d/unrooted-daemon"),
        ),
        _ => finding(
            "AppArmor",
            Verdict::Ok,
            "does not restrict user namespaces".into(),
            None,
        ),
    };
    out.push(f);

    let enforce = read_bounded(&host.path(Path::new("/sys/fs/selinux/enforce")), 16);
    out.push(match enforce.as_deref().map(str::trim) {
        Some("1") => finding(
            "SELinux",
            Verdict::Warn,
            "enforcing: the daemon's domain must be allowed to create user namespaces (unconfined_service_t is; a confined domain needs `allow ... self:user_namespace create`)".into(),
            Some("check `ausearch -m avc -c unrooted` after a build; add a policy module if denials show"),
        ),
        Some(_) => finding("SELinux", Verdict::Ok, "not enforcing".into(), None),
        None => finding("SELinux", Verdict::Ok, "not enabled".into(), None),
    });
}

/// Whether builders get Landlock's scoping, from the running kernel's Landlock ABI
/// (`None` when Landlock is absent or not in the boot's `lsm=` list).
fn landlock(abi: Option<i64>) -> Finding {
    let scoped = unrooted_sandbox::LANDLOCK_SCOPE_ABI;
    match abi {
        Some(v) if v >= scoped => finding(
            "Landlock",
            Verdict::Ok,
            format!("ABI {v}: every builder is scoped (no abstract Unix socket or signal outside its build)"),
            None,
        ),
        Some(v) => finding(
            "Landlock",
            Verdict::Warn,
            format!("ABI {v} has no scoping (ABI {scoped}, Linux 6.12): builders are confined by their namespaces and the output copy only"),
            Some("boot a kernel >= 6.12"),
        ),
        None => finding(
            "Landlock",
            Verdict::Warn,
            "not enabled: builders are confined by their namespaces and the output copy only".into(),
            Some("boot a kernel >= 6.12 with landlock in its lsm= list (/sys/kernel/security/lsm)"),
        ),
    }
}

fn subids(
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
fn id_mappers(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
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

fn build_ids(
    host: &Host,
    l: &Layout,
    owner: &str,
    account: Option<&accounts::Account>,
    out: &mut Vec<Finding>,
) {
    let mut raw = unrooted_config::RawSettings::default();
    let settings = raw
        .apply_file(&host.path(&l.conf_dir.join("nix.conf")))
        .map_err(|e| e.to_string())
        .and_then(|()| unrooted_config::Settings::from_raw(&raw).map_err(|e| e.to_string()));
    let s = match settings {
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
    let single = |why: String| {
        finding(
            "build ids",
            Verdict::Warn,
            format!("single-id mode: builders are the store owner outside their sandbox, and concurrent builds share it ({why})"),
            Some("give the store owner /etc/subuid and /etc/subgid ranges and install uidmap (unrooted install does both), keep auto-allocate-uids = true"),
        )
    };
    if s.sandbox == unrooted_config::SandboxMode::Disabled {
        out.push(finding(
            "build ids",
            Verdict::Warn,
            "sandbox = false: builders run unsandboxed as the store owner".into(),
            None,
        ));
        return;
    }
    if !s.auto_allocate_uids {
        out.push(single("auto-allocate-uids = false".into()));
        return;
    }
    if !subids_ok {
        out.push(single("see the subordinate ids check".into()));
        return;
    }
    let uid = account.map(|a| a.uid);
    let range = |file: &str| {
        accounts::read_db(&host.path(Path::new(file)))
            .ok()
            .flatten()
            .and_then(|t| accounts::subid_range_of(&t, owner, uid))
    };
    let (Some(u), Some(g)) = (range("/etc/subuid"), range("/etc/subgid")) else {
        out.push(single("no subordinate ranges".into()));
        return;
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
            let slices = pu.min(pg) / per;
            let mode = format!(
                "id-range mode: each build gets its own {per} uids and gids, so {owner}'s subordinate ids allow {slices} concurrent id-range build{}; the builder is 1000/100 inside, ids that own nothing of the store outside",
                if slices == 1 { "" } else { "s" }
            );
            // The daemon runs up to max-jobs builds at once; past the slices, builds
            // wait for one.
            out.push(if slices < s.max_jobs {
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
            });
        }
        (None, _) | (_, None) => out.push(single(format!(
            "start-id {} is outside {owner}'s subordinate ranges",
            s.start_id.unwrap_or(0)
        ))),
        _ => out.push(single(format!(
            "the pool holds no slice of unrooted-ids-per-build = {per} ids"
        ))),
    }
}

fn ownership(host: &Host, l: &Layout, owner: &accounts::Account, out: &mut Vec<Finding>) {
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

fn store_mount(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
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

fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// A `Uid:` or `CapEff:` line of `/proc/PID/status`.
fn proc_status(host: &Host, pid: i32, key: &str) -> Option<String> {
    let text = read_bounded(
        &host.path(&PathBuf::from(format!("/proc/{pid}/status"))),
        MAX_PROC_READ,
    )?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

fn daemon(host: &Host, l: &Layout, timeout: Duration, out: &mut Vec<Finding>) {
    let socket = host.path(&l.daemon_socket());
    let start_fix = "systemctl enable --now unrooted-daemon.socket; journalctl -u unrooted-daemon";
    let stream = match connect(&socket, timeout) {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                "daemon socket",
                Verdict::Fail,
                format!("cannot connect to {}: {e}", socket.display()),
                Some(start_fix),
            ));
            return;
        }
    };
    let Ok(store_dir) = StoreDir::new(&l.store_dir.to_string_lossy()) else {
        out.push(finding(
            "daemon socket",
            Verdict::Fail,
            "invalid store directory".into(),
            None,
        ));
        return;
    };
    // Peer credentials before the handshake: on socket activation the pid is the
    // daemon's once it accepted, which happens by the time the handshake answers.
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            out.push(finding("daemon socket", Verdict::Fail, e.to_string(), None));
            return;
        }
    };
    match Client::handshake(reader, &stream, store_dir, ProtocolVersion::NIX_2_8) {
        Ok(c) => out.push(finding(
            "daemon socket",
            Verdict::Ok,
            format!(
                "{} answers (protocol {}.{}{})",
                l.daemon_socket().display(),
                c.server_info().version.major(),
                c.server_info().version.minor(),
                c.server_info()
                    .daemon_version
                    .as_ref()
                    .map(|v| format!(", daemon {v}"))
                    .unwrap_or_default()
            ),
            None,
        )),
        Err(e) => {
            out.push(finding(
                "daemon socket",
                Verdict::Fail,
                format!("{} accepts but the handshake failed: {e}", socket.display()),
                Some(start_fix),
            ));
            return;
        }
    }
    // SO_PEERCRED names whoever created the listening socket: under socket
    // activation that is systemd (pid 1, root), not the daemon. The daemon is the
    // process holding the listening socket (pid 1 aside), found through
    // /proc/net/unix and /proc/*/fd; the peer's pid is the fallback.
    let holders = fs::canonicalize(&socket)
        .ok()
        .and_then(|real| listening_inode(host, &real))
        .map(|inode| socket_holders(host, inode))
        .unwrap_or_default();
    let pids: Vec<i32> = match (
        holders.is_empty(),
        rustix::net::sockopt::socket_peercred(&stream),
    ) {
        (false, _) => holders,
        (true, Ok(c)) => vec![c.pid.as_raw_nonzero().get()],
        (true, Err(e)) => {
            out.push(finding(
                "daemon identity",
                Verdict::Warn,
                format!("no process holds the socket, and SO_PEERCRED: {e}"),
                None,
            ));
            return;
        }
    };
    for pid in pids {
        out.push(identity(host, pid));
    }
}

/// The finding for the daemon process `pid`: root is a failure, capabilities a warning.
fn identity(host: &Host, pid: i32) -> Finding {
    let uids = proc_status(host, pid, "Uid").unwrap_or_default();
    let cap_eff = proc_status(host, pid, "CapEff");
    if uids.is_empty() || uids.split_whitespace().any(|x| x == "0") {
        return finding(
            "daemon identity",
            Verdict::Fail,
            format!("the daemon (pid {pid}) runs as root (Uid: {uids})"),
            Some("stop nix-daemon (systemctl disable --now nix-daemon.socket nix-daemon.service) and start unrooted-daemon.socket"),
        );
    }
    let uid = uids.split_whitespace().next().unwrap_or("?");
    let caps = cap_eff.unwrap_or_else(|| "?".into());
    let v = if caps.trim_start_matches('0').is_empty() {
        Verdict::Ok
    } else {
        Verdict::Warn
    };
    finding(
        "daemon identity",
        v,
        format!("pid {pid}, uid {uid}, effective capabilities {caps}"),
        (v != Verdict::Ok).then_some("the daemon should hold no capabilities: check AmbientCapabilities= in unrooted-daemon.service"),
    )
}

/// Most `/proc` entries, and descriptors of one process, examined.
const MAX_PROC_ENTRIES: usize = 1 << 20;

/// The socket-file system inode of the listening Unix socket bound at `path`, from
/// `/proc/net/unix` (`Num RefCount Protocol Flags Type St Inode Path`; state 01 is
/// listening).
fn listening_inode(host: &Host, path: &Path) -> Option<u64> {
    let table = read_bounded(&host.path(Path::new("/proc/net/unix")), 64 << 20)?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let listening = f.get(5) == Some(&"01");
        (listening && f.get(7).map(Path::new) == Some(path)).then_some(())?;
        f.get(6)?.parse().ok()
    })
}

/// The processes other than pid 1 (systemd, under socket activation) holding a
/// descriptor of the socket with `inode`.
fn socket_holders(host: &Host, inode: u64) -> Vec<i32> {
    let wanted = format!("socket:[{inode}]");
    let Ok(procs) = fs::read_dir(host.path(Path::new("/proc"))) else {
        return Vec::new();
    };
    let pids = procs
        .take(MAX_PROC_ENTRIES)
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != 1);
    pids.filter(|pid| {
        let fds = host.path(&PathBuf::from(format!("/proc/{pid}/fd")));
        fs::read_dir(fds).is_ok_and(|fds| {
            fds.take(MAX_PROC_ENTRIES)
                .filter_map(Result::ok)
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == wanted.as_str()))
        })
    })
    .collect()
}

fn roots_helper(
    host: &Host,
    l: &Layout,
    owner: Option<&accounts::Account>,
    timeout: Duration,
    out: &mut Vec<Finding>,
) {
    let bin = l.roots_binary();
    match fs::symlink_metadata(host.path(&bin)) {
        Ok(m) if m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0 => {}
        Ok(m) if m.is_file() => out.push(finding(
            "roots helper binary",
            Verdict::Fail,
            format!(
                "{} is owned by uid {} mode {:04o}: whoever can write it runs code as root",
                bin.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
            Some(&format!(
                "chown root:root {0} && chmod 0755 {0}",
                bin.display()
            )),
        )),
        _ => out.push(finding(
            "roots helper binary",
            Verdict::Warn,
            format!("{} is missing", bin.display()),
            Some("unrooted install --find-roots-binary PATH"),
        )),
    }
    let socket = host.path(&l.roots_socket());
    let started = Instant::now();
    let answer = connect(&socket, timeout).and_then(|s| {
        let mut buf = Vec::new();
        (&s).take(MAX_ROOTS_ANSWER).read_to_end(&mut buf)?;
        Ok(buf)
    });
    out.push(match answer {
        Ok(buf) => roots_answer(
            &buf,
            owner.map(|o| o.uid),
            rustix::process::geteuid().as_raw(),
            &l.roots_socket(),
            started.elapsed(),
        ),
        Err(e) => finding(
            "roots helper",
            Verdict::Warn,
            format!("cannot reach {}: {e}; garbage collection will refuse to run (builds are unaffected)", socket.display()),
            Some("systemctl enable --now unrooted-find-roots.socket"),
        ),
    });
}

/// The verdict on the roots helper's answer `buf` to uid `me`. The helper answers the
/// store owner only: anyone else (root running doctor) is refused with one error item
/// (`error: refusing peer …`, or nothing from an older helper), which shows it runs
/// and checks its peer. The owner gets roots, errors and the end-of-answer item.
fn roots_answer(
    buf: &[u8],
    owner_uid: Option<u32>,
    me: u32,
    socket: &Path,
    took: Duration,
) -> Finding {
    use unrooted_roots::{END_OF_ANSWER, ERROR_PREFIX};
    let items: Vec<&[u8]> = buf.split(|&b| b == 0).filter(|i| !i.is_empty()).collect();
    let not_owner = owner_uid.is_some_and(|o| o != me);
    let refusal = [ERROR_PREFIX.as_bytes(), b"refusing peer"].concat();
    if not_owner && (items.is_empty() || (items.len() == 1 && items[0].starts_with(&refusal))) {
        return finding(
            "roots helper",
            Verdict::Ok,
            format!(
                "{} accepts connections (it answers only the store owner, and refused uid {me})",
                socket.display()
            ),
            None,
        );
    }
    let complete = items.last() == Some(&END_OF_ANSWER);
    let roots = items.iter().filter(|i| i.first() == Some(&b'/')).count();
    let errors = items.len() - roots - usize::from(complete);
    if errors > 0 || !complete {
        finding(
            "roots helper",
            Verdict::Warn,
            format!(
                "answered {roots} roots and {errors} errors{}: garbage collection will refuse to run",
                if complete { "" } else { ", cut short (no end-of-answer item)" }
            ),
            Some("journalctl -u 'unrooted-find-roots@*' shows what it could not read"),
        )
    } else {
        finding(
            "roots helper",
            Verdict::Ok,
            format!("answered {roots} roots in {} ms", took.as_millis()),
            None,
        )
    }
}

fn free_space(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
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

#[cfg(test)]
mod tests {
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
}
