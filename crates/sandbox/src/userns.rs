//! Whether this kernel lets an unprivileged process create user namespaces, and if not,
//! why and how to change that.

use std::fmt;
use std::path::Path;

/// The kernel settings that decide whether unprivileged user namespaces are allowed.
const MAX_USER_NAMESPACES: &str = "/proc/sys/user/max_user_namespaces";
const UNPRIVILEGED_USERNS_CLONE: &str = "/proc/sys/kernel/unprivileged_userns_clone";
const APPARMOR_RESTRICT: &str = "/proc/sys/kernel/apparmor_restrict_unprivileged_userns";

/// The reason unprivileged user namespaces are unavailable.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum UsernsReason {
    /// `user.max_user_namespaces` is 0.
    MaxUserNamespacesZero,
    /// Debian/Ubuntu's `kernel.unprivileged_userns_clone` is 0.
    UnprivilegedCloneDisabled,
    /// Ubuntu's AppArmor policy restricts unprivileged user namespaces.
    AppArmorRestricted,
    /// The kernel refused with this errno and none of the known settings explains it
    /// (a seccomp policy of a container runtime, for instance).
    Refused(i32),
}

/// Unprivileged user namespaces are unavailable, with the reason and the remedy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct UsernsUnavailable {
    /// Why.
    pub reason: UsernsReason,
}

impl fmt::Display for UsernsReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the build sandbox needs unprivileged user namespaces, and ")?;
        match self {
            UsernsReason::MaxUserNamespacesZero => f.write_str(
                "user.max_user_namespaces is 0; enable them with `sysctl -w user.max_user_namespaces=15000` \
                 (and persist it in /etc/sysctl.d/)",
            ),
            UsernsReason::UnprivilegedCloneDisabled => f.write_str(
                "kernel.unprivileged_userns_clone is 0; enable them with \
                 `sysctl -w kernel.unprivileged_userns_clone=1` (and persist it in /etc/sysctl.d/)",
            ),
            UsernsReason::AppArmorRestricted => f.write_str(
                "AppArmor restricts them (kernel.apparmor_restrict_unprivileged_userns=1); allow the daemon \
                 with an AppArmor profile granting `userns,`, or run \
                 `sysctl -w kernel.apparmor_restrict_unprivileged_userns=0`",
            ),
            UsernsReason::Refused(errno) => write!(
                f,
                "the kernel refused to create one ({}); check sysctls, container seccomp policy and \
                 security modules",
                std::io::Error::from_raw_os_error(*errno)
            ),
        }
    }
}

/// Reads a sysctl as an integer; `None` when the file is missing or odd (the setting
/// does not exist on this kernel, which means it restricts nothing).
fn read_sysctl(path: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(path).ok()?;
    // A sysctl is one short number; anything longer is not one we understand.
    if text.len() > 32 {
        return None;
    }
    text.trim().parse().ok()
}

/// The reason the settings forbid unprivileged user namespaces, from the values of
/// `max_user_namespaces`, `unprivileged_userns_clone` and the AppArmor restriction
/// (`None` for a setting absent on this kernel). Pure, so it is unit-tested.
pub fn reason_from_settings(
    max_user_namespaces: Option<i64>,
    unprivileged_userns_clone: Option<i64>,
    apparmor_restrict: Option<i64>,
) -> Option<UsernsReason> {
    if max_user_namespaces == Some(0) {
        Some(UsernsReason::MaxUserNamespacesZero)
    } else if unprivileged_userns_clone == Some(0) {
        Some(UsernsReason::UnprivilegedCloneDisabled)
    } else if apparmor_restrict == Some(1) {
        Some(UsernsReason::AppArmorRestricted)
    } else {
        None
    }
}

/// Checks the kernel settings; `Err` says which one forbids unprivileged user
/// namespaces and how to enable them.
///
/// A passing check does not guarantee that `clone` will succeed (a container's seccomp
/// policy may still refuse); the spawn reports that as [`UsernsReason::Refused`].
pub fn check_user_namespaces() -> Result<(), UsernsUnavailable> {
    match reason_from_settings(
        read_sysctl(Path::new(MAX_USER_NAMESPACES)),
        read_sysctl(Path::new(UNPRIVILEGED_USERNS_CLONE)),
        read_sysctl(Path::new(APPARMOR_RESTRICT)),
    ) {
        Some(reason) => Err(UsernsUnavailable { reason }),
        None => Ok(()),
    }
}

/// Explains a failed `clone(CLONE_NEWUSER)` with the settings, or the errno itself.
pub(crate) fn explain_clone_failure(errno: i32) -> UsernsUnavailable {
    match check_user_namespaces() {
        Err(e) => e,
        Ok(()) => UsernsUnavailable {
            reason: UsernsReason::Refused(errno),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_setting_is_named() {
        assert_eq!(reason_from_settings(Some(15000), None, None), None);
        assert_eq!(reason_from_settings(Some(15000), Some(1), Some(0)), None);
        assert_eq!(
            reason_from_settings(Some(0), Some(1), None),
            Some(UsernsReason::MaxUserNamespacesZero)
        );
        assert_eq!(
            reason_from_settings(Some(10), Some(0), None),
            Some(UsernsReason::UnprivilegedCloneDisabled)
        );
        assert_eq!(
            reason_from_settings(None, None, Some(1)),
            Some(UsernsReason::AppArmorRestricted)
        );
    }

    #[test]
    fn messages_say_how_to_enable() {
        let e = UsernsUnavailable {
            reason: UsernsReason::MaxUserNamespacesZero,
        };
        assert!(e.to_string().contains("user.max_user_namespaces"));
        let e = UsernsUnavailable {
            reason: UsernsReason::AppArmorRestricted,
        };
        assert!(e
            .to_string()
            .contains("apparmor_restrict_unprivileged_userns=0"));
    }
}
