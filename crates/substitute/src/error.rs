//! What can go wrong talking to a binary cache, substituting from it or serving one.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use unrooted_format::narinfo::{CacheInfoError, NarInfoError};
use unrooted_store::StoreError;

/// Why a request to a cache failed (below the level of what was asked for).
#[derive(Debug, Error)]
pub enum TransportError {
    /// The server answered with an HTTP error status other than "not found".
    #[error("HTTP status {status}")]
    Status {
        /// The status code.
        status: u16,
    },
    /// The connection could not be made or broke (DNS, refused, TLS, timeout, reset).
    #[error("network error")]
    Network {
        /// The client library's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Reading a local (`file://`) cache or a response body failed.
    #[error("I/O error")]
    Io {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The file is larger than what may be accepted for it.
    #[error("response is larger than {max} bytes")]
    TooLarge {
        /// The limit.
        max: u64,
    },
}

impl TransportError {
    /// Whether trying again may help (Nix's transient errors): 5xx, 408 and 429
    /// statuses, network errors, timeouts and bodies that ended early.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Status { status } => *status >= 500 || *status == 408 || *status == 429,
            Self::Network { .. } => true,
            Self::Io { source } => matches!(
                source.kind(),
                io::ErrorKind::TimedOut
                    | io::ErrorKind::ConnectionReset
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::UnexpectedEof
                    | io::ErrorKind::Interrupted
                    | io::ErrorKind::BrokenPipe
            ),
            Self::TooLarge { .. } => false,
        }
    }
}

/// Why a substitution, a query of a cache, or opening the lookup cache failed. Each
/// variant names the URL or store path concerned.
#[derive(Debug, Error)]
pub enum SubstituteError {
    /// The substituter URL is not one we can use.
    #[error("invalid substituter URL '{url}': {reason}")]
    InvalidUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A file could not be fetched from a cache.
    #[error("cannot download '{url}'")]
    Download {
        /// The full URL.
        url: String,
        /// Why.
        #[source]
        source: TransportError,
    },
    /// An `s3://` cache could not be set up (credentials, region, bucket).
    #[error("setting up the S3 cache '{url}'")]
    S3Setup {
        /// The cache URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The cache has no `nix-cache-info`.
    #[error("'{url}' is not a binary cache: it has no nix-cache-info")]
    NotACache {
        /// The cache URL.
        url: String,
    },
    /// `nix-cache-info` does not parse.
    #[error("invalid nix-cache-info in '{url}'")]
    CacheInfo {
        /// The cache URL.
        url: String,
        /// Why.
        #[source]
        source: CacheInfoError,
    },
    /// The cache is for another store directory.
    #[error("binary cache '{url}' is for store directory '{theirs}', not '{ours}'")]
    StoreDirMismatch {
        /// The cache URL.
        url: String,
        /// The cache's store directory.
        theirs: String,
        /// Ours.
        ours: String,
    },
    /// A narinfo does not parse.
    #[error("invalid narinfo '{url}'")]
    NarInfo {
        /// The full URL.
        url: String,
        /// Why.
        #[source]
        source: NarInfoError,
    },
    /// A narinfo (or a text file) is not UTF-8.
    #[error("'{url}' is not UTF-8 text")]
    NotText {
        /// The full URL.
        url: String,
    },
    /// The narinfo fetched for one path describes another.
    #[error("narinfo '{url}' describes '{found}' instead of '{path}'")]
    WrongPath {
        /// The full URL.
        url: String,
        /// The path asked for.
        path: String,
        /// The path described.
        found: String,
    },
    /// The narinfo's `URL` could escape the cache (absolute, `..`, odd bytes).
    #[error("narinfo for '{path}' in '{cache}' has an unsafe NAR URL '{nar_url}'")]
    UnsafeNarUrl {
        /// The store path.
        path: String,
        /// The cache URL.
        cache: String,
        /// The offending URL.
        nar_url: String,
    },
    /// The NAR's compression is one we cannot decompress.
    #[error("path '{path}' in '{cache}' is compressed with {compression}, which is not supported")]
    UnsupportedCompression {
        /// The store path.
        path: String,
        /// The cache URL.
        cache: String,
        /// Nix's name of the method.
        compression: &'static str,
    },
    /// `require-sigs` is on and no signature is by a trusted key (and the path is not
    /// content-addressed).
    #[error("path '{path}' from '{cache}' lacks a valid signature")]
    Untrusted {
        /// The store path.
        path: String,
        /// The cache URL.
        cache: String,
    },
    /// The NAR's hash or size is not what the narinfo says.
    #[error("hash mismatch importing path '{path}' from '{url}'")]
    HashMismatch {
        /// The store path.
        path: String,
        /// The NAR URL.
        url: String,
        /// The store's check that failed.
        #[source]
        source: Box<StoreError>,
    },
    /// Unpacking or registering the NAR failed (corrupt compressed data, a malformed
    /// NAR, a full disk).
    #[error("importing path '{path}' from '{url}'")]
    Import {
        /// The store path.
        path: String,
        /// The NAR URL.
        url: String,
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// No substituter has the path.
    #[error("path '{path}' is required, but there is no substituter that can provide it")]
    NotSubstitutable {
        /// The store path.
        path: String,
    },
    /// A path was not substituted because one of its references could not be.
    #[error("cannot substitute '{path}': its reference '{reference}' could not be substituted")]
    DependencyFailed {
        /// The store path.
        path: String,
        /// The reference that failed.
        reference: String,
    },
    /// Querying the local store failed.
    #[error("querying the local store")]
    Store {
        /// Why.
        #[source]
        source: Box<StoreError>,
    },
    /// The on-disk lookup cache could not be opened or used.
    #[error("using the narinfo lookup cache '{path}'")]
    DiskCache {
        /// Its file.
        path: PathBuf,
        /// Why.
        #[source]
        source: rusqlite::Error,
    },
}

/// Why `serve` could not start or serve.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The listening socket could not be made.
    #[error("listening on {addr}")]
    Listen {
        /// The address.
        addr: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The store database is missing or unusable.
    #[error("opening the store database in '{path}'")]
    Database {
        /// The database directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: Box<unrooted_store::StoreError>,
    },
    /// A worker thread could not be started.
    #[error("starting a server thread")]
    Thread {
        /// Why.
        #[source]
        source: io::Error,
    },
}
