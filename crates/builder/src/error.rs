//! Why a build could not be carried out at all (as opposed to a builder that ran and
//! failed, which is a [`crate::BuildResult`]).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

/// A failure of the machinery around a builder.
#[derive(Debug, Error)]
pub enum BuildError {
    /// The `.drv` file could not be read or parsed.
    #[error("reading the derivation '{drv}'")]
    LoadDerivation {
        /// The `.drv` path.
        drv: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The derivation is of a kind this daemon does not build.
    #[error("cannot build '{drv}': {reason}")]
    Unsupported {
        /// The `.drv` path.
        drv: String,
        /// What is missing.
        reason: String,
    },
    /// `__json` is not a JSON object.
    #[error("the structured attributes of '{drv}' are invalid: {reason}")]
    StructuredAttrs {
        /// The derivation name.
        drv: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A file-system step of setting up or tearing down a build failed.
    #[error("{action} {}", path.display())]
    Io {
        /// What was being done ("creating the build directory", …).
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A tree the build left could not be removed.
    #[error("removing {}", path.display())]
    Remove {
        /// The tree.
        path: PathBuf,
        /// Why.
        #[source]
        source: unrooted_sandbox::CleanupError,
    },
    /// The store refused something (a query, canonicalisation, registration).
    #[error(transparent)]
    Store(#[from] unrooted_store::StoreError),
    /// The sandbox could not be set up (including missing user namespaces).
    #[error(transparent)]
    Sandbox(#[from] unrooted_sandbox::SandboxError),
    /// The builder could not be started without the sandbox.
    #[error("starting the builder {}", builder.display())]
    Spawn {
        /// The builder.
        builder: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// Hashing the derivation (for its output paths or realisation ids) failed.
    #[error("hashing the derivation '{drv}'")]
    Hash {
        /// The `.drv` path.
        drv: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BuildError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

pub use unrooted_format::error_chain;
