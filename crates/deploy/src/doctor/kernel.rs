//! The kernel's side: unprivileged user namespaces and Landlock.

use std::path::Path;

use super::{finding, read_bounded, Finding, Verdict};
use crate::host::Layout;
use crate::plan::sysctl;
use crate::units;
use crate::Host;

pub(super) fn userns(host: &Host, l: &Layout, out: &mut Vec<Finding>) {
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
pub(super) fn landlock(abi: Option<i64>) -> Finding {
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
