//! What a substitution reports as it goes (progress for the client's activities).

use unrooted_format::StorePath;

/// What a substitution reports as it goes; every method has a do-nothing default.
/// Called from several threads at once.
pub trait Observer: Sync {
    /// A warning for the user (a cache that cannot be used, a failed query).
    fn warn(&self, _message: &str) {}
    /// A download of `path` from the cache at `cache_url` begins, of the file at
    /// `nar_url`; `expected` bytes (compressed size when known, else the NAR size).
    /// Returns an id for the calls below.
    fn download_started(
        &self,
        _path: &StorePath,
        _cache_url: &str,
        _nar_url: &str,
        _expected: u64,
    ) -> u64 {
        0
    }
    /// `done` of `expected` bytes have arrived.
    fn download_progress(&self, _id: u64, _done: u64, _expected: u64) {}
    /// The download ended, successfully (`ok`) or not.
    fn download_finished(&self, _id: u64, _ok: bool) {}
    /// The cache at `cache_url` is asked for the narinfo of `path` (shown in the
    /// cache's store directory), nothing fresh being remembered of it. Returns an id
    /// for [`Observer::query_finished`].
    fn query_started(&self, _path: &str, _cache_url: &str) -> u64 {
        0
    }
    /// The cache answered (or failed) the query `id`.
    fn query_finished(&self, _id: u64) {}
}

/// An [`Observer`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {}
