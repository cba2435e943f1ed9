use std::path::PathBuf;

use thiserror::Error;

/// Why an installation, removal or migration step failed.
#[derive(Debug, Error)]
pub enum DeployError {
    /// Reading a file or directory of the host.
    #[error("reading {path}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating or replacing a file, directory or link.
    #[error("writing {path}")]
    Write {
        /// What was written.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Changing an owner or a mode.
    #[error("changing owner or mode of {path}")]
    Chown {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Removing a file or directory.
    #[error("removing {path}")]
    Remove {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// An external command (useradd, groupadd, apparmor_parser) failed.
    #[error("running {command}: {detail}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status or spawn error.
        detail: String,
    },
    /// The store owner named on the command line does not exist.
    #[error("no user named {name} in {passwd}")]
    NoSuchUser {
        /// The name.
        name: String,
        /// The passwd file searched.
        passwd: PathBuf,
    },
    /// The store owner would be root, which defeats the point.
    #[error("the store owner must not be root (uid 0)")]
    OwnerIsRoot,
    /// No id of the system range (`SYS_UID_MIN`..`SYS_UID_MAX`) is free both as a
    /// uid and as a gid for a new store owner.
    #[error("no system id is free for the store owner (create the user yourself and re-run)")]
    NoFreeSystemId,
    /// A path given as an option is not absolute.
    #[error("{path} is not an absolute path")]
    NotAbsolute {
        /// The path.
        path: PathBuf,
    },
    /// A root nix-daemon is still running, so migration would race with it.
    #[error("a root nix-daemon is running ({evidence}); stop it first: systemctl stop nix-daemon.socket nix-daemon.service")]
    NixDaemonRunning {
        /// What showed it (a pid or the socket).
        evidence: String,
    },
    /// No free subordinate id range below the limit.
    #[error("no free subordinate id range of {count} ids in {path}")]
    NoFreeSubids {
        /// /etc/subuid or /etc/subgid.
        path: PathBuf,
        /// The size wanted.
        count: u32,
    },
    /// More concurrent builds asked for than 32-bit ids can hold.
    #[error("{slices} concurrent builds of 65536 ids each do not fit in 32-bit ids")]
    TooManyBuildSlices {
        /// The number asked for.
        slices: u32,
    },
}
