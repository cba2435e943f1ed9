//! Errors of the sandbox, each naming the step that failed.

use std::ffi::OsString;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use crate::userns::UsernsUnavailable;

/// One step of sandbox setup; the helper reports failures as a step, a path and an errno.
///
/// The numeric values are the wire encoding between the helper and the daemon, so they
/// never change meaning; new steps take new numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Step {
    /// Reading the plan from the daemon.
    ReadingPlan = 1,
    /// `clone` with the new namespaces.
    CreatingNamespaces = 2,
    /// Writing `deny` to `/proc/<pid>/setgroups`.
    WritingSetgroups = 3,
    /// Writing `/proc/<pid>/uid_map`.
    WritingUidMap = 4,
    /// Writing `/proc/<pid>/gid_map`.
    WritingGidMap = 5,
    /// Waiting for the helper to write the id maps.
    WaitingForIdMaps = 6,
    /// Making every mount private so nothing propagates back to the host.
    MakingMountsPrivate = 7,
    /// `sethostname`.
    SettingHostname = 8,
    /// `setdomainname`.
    SettingDomainname = 9,
    /// Bringing up `lo` in the new network namespace.
    BringingUpLoopback = 10,
    /// Creating a directory in the new root.
    CreatingDirectory = 11,
    /// Writing a generated file in the new root.
    WritingFile = 12,
    /// Creating a symlink in the new root.
    CreatingSymlink = 13,
    /// Reading a bind source's type or symlink target.
    InspectingBindSource = 14,
    /// Creating the empty file or directory a bind mount covers.
    CreatingMountPoint = 15,
    /// The bind mount itself.
    BindMounting = 16,
    /// Reading a mount's current flags (they must be kept when remounting).
    ReadingMountFlags = 17,
    /// Remounting a bind mount read-only.
    RemountingReadOnly = 18,
    /// Mounting a new procfs.
    MountingProc = 19,
    /// Mounting a tmpfs.
    MountingTmpfs = 20,
    /// Mounting a new devpts instance.
    MountingDevpts = 21,
    /// Setting a mode.
    Chmod = 22,
    /// `pivot_root` into the new root.
    PivotingRoot = 23,
    /// Detaching the old root after `pivot_root`.
    DetachingOldRoot = 24,
    /// Entering the nested user and mount namespace that locks the mounts.
    EnteringNestedNamespace = 25,
    /// Changing to the builder's working directory.
    ChangingDirectory = 26,
    /// `setsid`.
    StartingSession = 27,
    /// Pointing stdin at `/dev/null`.
    RedirectingStdin = 28,
    /// Clearing the ambient capability set.
    DroppingCapabilities = 29,
    /// `PR_SET_NO_NEW_PRIVS`.
    SettingNoNewPrivs = 30,
    /// Installing the seccomp filter.
    InstallingSeccomp = 31,
    /// Marking inherited descriptors close-on-exec.
    ClosingDescriptors = 32,
    /// `setrlimit`.
    SettingLimits = 33,
    /// `execve` of the builder.
    ExecutingBuilder = 34,
    /// Reading `/proc/self/mountinfo` to find submounts.
    ReadingMountinfo = 35,
    /// Running `newuidmap`/`newgidmap`.
    RunningNewIdMap = 36,
    /// Setting the parent-death signal.
    SettingParentDeathSignal = 37,
    /// Mounting the new root on itself so `pivot_root` accepts it.
    BindingRoot = 38,
    /// Changing the owner of a sandbox path (the id-range mode).
    Chown = 39,
    /// Switching from inner root to the builder's ids.
    SwitchingToBuilder = 40,
    /// Writing the nested namespace's id maps from the outer one (`uid-range`).
    WritingNestedMaps = 41,
    /// Giving a finished build's files back to the store owner.
    Reclaiming = 42,
    /// Entering the slice's user namespace that the daemon mapped before and keeps.
    EnteringPremappedNamespace = 43,
    /// Scoping the builder with Landlock (abstract Unix sockets and signals).
    ScopingWithLandlock = 44,
    /// Starting `pasta`, the user-mode network of a fixed-output build (the path is
    /// the program).
    StartingPasta = 45,
    /// Waiting, in the sandbox, for `pasta` to attach to the build's network namespace.
    WaitingForNetwork = 46,
}

impl Step {
    const ALL: [Step; 46] = [
        Step::ReadingPlan,
        Step::CreatingNamespaces,
        Step::WritingSetgroups,
        Step::WritingUidMap,
        Step::WritingGidMap,
        Step::WaitingForIdMaps,
        Step::MakingMountsPrivate,
        Step::SettingHostname,
        Step::SettingDomainname,
        Step::BringingUpLoopback,
        Step::CreatingDirectory,
        Step::WritingFile,
        Step::CreatingSymlink,
        Step::InspectingBindSource,
        Step::CreatingMountPoint,
        Step::BindMounting,
        Step::ReadingMountFlags,
        Step::RemountingReadOnly,
        Step::MountingProc,
        Step::MountingTmpfs,
        Step::MountingDevpts,
        Step::Chmod,
        Step::PivotingRoot,
        Step::DetachingOldRoot,
        Step::EnteringNestedNamespace,
        Step::ChangingDirectory,
        Step::StartingSession,
        Step::RedirectingStdin,
        Step::DroppingCapabilities,
        Step::SettingNoNewPrivs,
        Step::InstallingSeccomp,
        Step::ClosingDescriptors,
        Step::SettingLimits,
        Step::ExecutingBuilder,
        Step::ReadingMountinfo,
        Step::RunningNewIdMap,
        Step::SettingParentDeathSignal,
        Step::BindingRoot,
        Step::Chown,
        Step::SwitchingToBuilder,
        Step::WritingNestedMaps,
        Step::Reclaiming,
        Step::EnteringPremappedNamespace,
        Step::ScopingWithLandlock,
        Step::StartingPasta,
        Step::WaitingForNetwork,
    ];

    /// The wire code of this step.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// The step with this wire code.
    pub fn from_code(code: u8) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.code() == code)
    }

    fn describe(self) -> &'static str {
        match self {
            Step::ReadingPlan => "reading the sandbox plan",
            Step::CreatingNamespaces => {
                "creating the user, mount, PID, IPC, UTS and network namespaces"
            }
            Step::WritingSetgroups => "writing setgroups",
            Step::WritingUidMap => "writing uid_map",
            Step::WritingGidMap => "writing gid_map",
            Step::WaitingForIdMaps => "waiting for the id maps",
            Step::MakingMountsPrivate => "making all mounts private",
            Step::SettingHostname => "setting the hostname",
            Step::SettingDomainname => "setting the domain name",
            Step::BringingUpLoopback => "bringing up the loopback interface",
            Step::CreatingDirectory => "creating directory",
            Step::WritingFile => "writing",
            Step::CreatingSymlink => "creating symlink",
            Step::InspectingBindSource => "inspecting bind source",
            Step::CreatingMountPoint => "creating mount point",
            Step::BindMounting => "bind-mounting",
            Step::ReadingMountFlags => "reading the mount flags of",
            Step::RemountingReadOnly => "remounting read-only",
            Step::MountingProc => "mounting proc on",
            Step::MountingTmpfs => "mounting tmpfs on",
            Step::MountingDevpts => "mounting devpts on",
            Step::Chmod => "setting the mode of",
            Step::PivotingRoot => "pivot_root into",
            Step::DetachingOldRoot => "detaching the old root",
            Step::EnteringNestedNamespace => "entering the nested user and mount namespace",
            Step::ChangingDirectory => "changing directory to",
            Step::StartingSession => "starting a new session",
            Step::RedirectingStdin => "redirecting stdin to /dev/null",
            Step::DroppingCapabilities => "clearing the ambient capabilities",
            Step::SettingNoNewPrivs => "setting no_new_privs",
            Step::InstallingSeccomp => "installing the seccomp filter",
            Step::ClosingDescriptors => "closing inherited file descriptors",
            Step::SettingLimits => "setting resource limits",
            Step::ExecutingBuilder => "executing the builder",
            Step::ReadingMountinfo => "reading /proc/self/mountinfo",
            Step::RunningNewIdMap => "running newuidmap/newgidmap",
            Step::SettingParentDeathSignal => "setting the parent-death signal",
            Step::BindingRoot => "bind-mounting the new root onto itself",
            Step::Chown => "changing the owner of",
            Step::SwitchingToBuilder => "switching to the builder's ids",
            Step::WritingNestedMaps => "writing the nested namespace's id maps",
            Step::Reclaiming => "giving the build's files back to the store owner:",
            Step::ScopingWithLandlock => "scoping the builder with Landlock",
            Step::StartingPasta => {
                "starting the fixed-output build's user-mode network (pasta's own message is in the build log) with"
            }
            Step::WaitingForNetwork => "waiting for pasta to attach the build's network",
            Step::EnteringPremappedNamespace => {
                "entering the id slice's user namespace (mapped once, kept by the daemon)"
            }
        }
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

fn step_at(step: &Step, path: &Option<PathBuf>) -> String {
    match path {
        Some(p) => format!("{step} {}", p.display()),
        None => step.to_string(),
    }
}

/// Why a plan could not be made from a [`crate::SandboxSpec`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlanError {
    /// A path that must be absolute is not.
    #[error("{} is not an absolute path", path.display())]
    NotAbsolute {
        /// The offending path.
        path: PathBuf,
    },
    /// A path has `.`/`..` components or is not in normal form.
    #[error("{} must not contain `.` or `..` components", path.display())]
    NotNormal {
        /// The offending path.
        path: PathBuf,
    },
    /// An input path is not directly inside the store directory.
    #[error("input {} is not a path in the store {}", path.display(), store_dir.display())]
    InputOutsideStore {
        /// The input path.
        path: PathBuf,
        /// The store directory.
        store_dir: PathBuf,
    },
    /// A `sandbox-paths` entry does not parse.
    #[error("invalid sandbox-paths entry {entry:?}")]
    InvalidSandboxPath {
        /// The entry as written.
        entry: OsString,
    },
    /// The `uid-range` feature needs a slice of subordinate ids, and there is none.
    #[error("the uid-range feature needs subordinate ids (/etc/subuid and /etc/subgid ranges for the store owner, and newuidmap/newgidmap)")]
    UidRangeUnavailable,
    /// The build's slice of subordinate ids is too small for its layout.
    #[error("a slice of {count} subordinate ids is too small: this build needs {needed}")]
    IdSliceTooSmall {
        /// The slice's size.
        count: u32,
        /// What the layout needs.
        needed: u32,
    },
    /// Two entries want the same place in the sandbox.
    #[error("{} is mounted twice in the sandbox", path.display())]
    Duplicate {
        /// The sandbox path.
        path: PathBuf,
    },
}

/// A failure to start, run or stop a sandboxed builder.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SandboxError {
    /// The kernel refuses unprivileged user namespaces; the sandbox never falls back to
    /// running without one.
    #[error(transparent)]
    UserNamespacesUnavailable(#[from] UsernsUnavailable),
    /// A setup step inside the helper or the sandboxed child failed.
    #[error("{}", step_at(step, path))]
    Setup {
        /// The step that failed.
        step: Step,
        /// The path it acted on, if any.
        path: Option<PathBuf>,
        /// The kernel's answer.
        #[source]
        source: io::Error,
    },
    /// `umount("/proc")` before exec did not fail with EINVAL, so the mounts are not
    /// locked and the builder could uncover what lies beneath them.
    #[error("the sandbox's mounts are not locked: umount /proc gave {outcome} instead of EINVAL; refusing to run the builder")]
    MountsNotLocked {
        /// What `umount` returned ("success" or the errno's text).
        outcome: MountLockOutcome,
    },
    /// The helper program could not be started.
    #[error("starting the sandbox helper {}", helper.display())]
    SpawningHelper {
        /// The helper program.
        helper: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Talking to the helper failed (it died, or the connection broke).
    #[error("talking to the sandbox helper")]
    HelperIo {
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The helper said something outside its small vocabulary.
    #[error("the sandbox helper sent a malformed message: {what}")]
    HelperProtocol {
        /// What was wrong.
        what: &'static str,
    },
    /// The plan itself is invalid.
    #[error(transparent)]
    Plan(#[from] PlanError),
}

/// What `umount("/proc")` did when it should have failed with EINVAL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountLockOutcome {
    /// The unmount succeeded.
    Unmounted,
    /// It failed with another errno.
    Errno(i32),
}

impl fmt::Display for MountLockOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MountLockOutcome::Unmounted => f.write_str("success"),
            MountLockOutcome::Errno(e) => write!(f, "{}", io::Error::from_raw_os_error(*e)),
        }
    }
}

/// A failure to remove a sandbox root or build directory.
#[derive(Debug, thiserror::Error)]
#[error("removing {}", path.display())]
pub struct CleanupError {
    /// The entry that could not be removed or opened.
    pub path: PathBuf,
    /// Why.
    #[source]
    pub source: io::Error,
}

impl CleanupError {
    pub(crate) fn new(path: &Path, source: impl Into<io::Error>) -> Self {
        CleanupError {
            path: path.to_path_buf(),
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_codes_round_trip_and_are_unique() {
        for s in Step::ALL {
            assert_eq!(Step::from_code(s.code()), Some(s));
        }
        let mut codes: Vec<u8> = Step::ALL.iter().map(|s| s.code()).collect();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Step::ALL.len());
        assert_eq!(Step::from_code(0), None);
    }

    #[test]
    fn messages_name_the_step_and_path() {
        let e = SandboxError::Setup {
            step: Step::RemountingReadOnly,
            path: Some("/nix/store/abc-x".into()),
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(e.to_string(), "remounting read-only /nix/store/abc-x");
        let e = SandboxError::Setup {
            step: Step::WritingUidMap,
            path: None,
            source: io::Error::from_raw_os_error(libc::EPERM),
        };
        assert_eq!(e.to_string(), "writing uid_map");
    }
}
