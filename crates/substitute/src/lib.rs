//! Binary caches: substituting store paths from them, and serving the store as one.
//!
//! The client side ([`Substituter`]) reads `nix-cache-info` and `<hash>.narinfo`
//! from each configured cache through a [`Transport`] (HTTP(S) with ureq, or
//! `file://`, or `s3://` with rust-s3, see [`s3`]), remembers answers in
//! an on-disk [`NarInfoCache`] with Nix's TTLs, checks signatures against the trusted
//! keys, and streams each NAR through its decompressor (xz, zstd, bzip2 or none)
//! straight into [`LocalStore::add_to_store_nar`](unrooted_store::LocalStore), which
//! checks the hash and size before anything is registered. The server side
//! ([`server`]) is `unrooted serve`: a small, bounded HTTP/1.1 server that answers
//! from the store database and streams NARs from disk, compressed on the fly.
//!
//! Everything is synchronous and uses threads, like the rest of the store: a
//! download is blocking I/O feeding the blocking NAR restorer, and parallelism comes
//! from a fixed number of worker threads (`max-substitution-jobs`; the server's
//! `--max-connections`), which also bounds memory and open connections. An async
//! runtime would add a second copy of the NAR reader for no gain here.

mod binary_cache;
pub mod compression;
mod disk_cache;
mod error;
mod observer;
pub mod s3;
pub mod server;
mod substituter;
mod transport;
pub mod upload;

pub use binary_cache::{BinaryCache, RetryPolicy, DEFAULT_PRIORITY};
pub use disk_cache::{
    unix_now, CachedInfo, Lookup, NarInfoCache, CACHE_INFO_TTL, DEFAULT_NEGATIVE_TTL,
    DEFAULT_POSITIVE_TTL,
};
pub use error::{ServeError, SubstituteError, TransportError};
pub use substituter::{
    error_chain, to_path_info, Observer, Plan, Quiet, Substitutable, SubstituteReport, Substituter,
    SubstituterConfig,
};
pub use transport::{
    check_relative, open_transport, Body, FileTransport, HttpTransport, Transport, TransportOptions,
};
