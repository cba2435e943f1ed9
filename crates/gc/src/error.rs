//! Errors of the collector.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use unrooted_store::StoreError;

/// Why a collection, a roots query or a root registration failed.
#[derive(Debug, Error)]
pub enum GcError {
    /// A root the daemon cannot read, with no helper configured that resolves it:
    /// collecting could delete what it keeps alive.
    #[error("refusing to collect garbage: cannot read potential root '{link}' and no roots helper resolves it")]
    UnresolvedRoot {
        /// The link or directory that could not be read.
        link: PathBuf,
        /// Why it could not be read.
        #[source]
        source: io::Error,
    },
    /// The roots helper could not be asked (not running, refused, timed out, or its
    /// answer was cut short).
    #[error("refusing to collect garbage: cannot get the roots from the roots helper at {socket}")]
    AskHelper {
        /// The helper's socket.
        socket: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// The helper answered but said its scan was incomplete.
    #[error("refusing to collect garbage: the roots helper at {socket} could not resolve every root: {message}")]
    HelperIncomplete {
        /// The helper's socket.
        socket: PathBuf,
        /// The helper's first error item.
        message: String,
    },
    /// Taking `<state>/gc.lock`.
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Removing a dangling link under `gcroots/auto`.
    #[error("removing stale link {path}")]
    RemoveStaleLink {
        /// The link.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Reading or removing a Nix temporary roots file (`<state>/temproots/<pid>`).
    #[error("reading temporary roots {path}")]
    ReadTempRoots {
        /// The file or directory.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Creating a root link (AddIndirectRoot, AddPermRoot).
    #[error("creating root {path}")]
    CreateRoot {
        /// The link being created.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// DeleteSpecific named a path that is still reachable from a root.
    #[error("Cannot delete path '{path}' since it is still alive. To find out why, use: nix-store --query --roots")]
    StillAlive {
        /// The path.
        path: String,
    },
    /// DeleteSpecific named a path that a path not being deleted refers to.
    #[error("Cannot delete path '{path}' because it's referenced by the path '{referrer}'.")]
    Referenced {
        /// The path.
        path: String,
        /// One valid referrer.
        referrer: String,
    },
    /// `ignore-liveness` was asked for; nobody may.
    #[error("you are not allowed to ignore liveness")]
    IgnoreLiveness,
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}
