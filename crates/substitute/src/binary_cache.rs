//! One binary cache: its `nix-cache-info`, narinfo lookups (through the lookup
//! cache), and opening NARs.

use std::io::Read;
use std::thread;
use std::time::Duration;

use unrooted_format::narinfo::{CacheInfo, NarInfo, MAX_NARINFO_SIZE};
use unrooted_format::{StoreDir, StorePath};

use crate::disk_cache::{unix_now, CachedInfo, Lookup, NarInfoCache};
use crate::error::{SubstituteError, TransportError};
use crate::transport::{open_transport, Body, Transport, TransportOptions};

/// Nix's default priority of a cache that states none (`BinaryCacheStore::priority`).
pub const DEFAULT_PRIORITY: i32 = 50;

/// How often and how patiently transient failures are retried.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    /// Tries in all, at least 1 (Nix's `download-attempts`, 5).
    pub attempts: u32,
    /// The wait before the second try; it doubles for each further one.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 5,
            base_delay: Duration::from_millis(250),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed try number `attempt` (0-based), capped at 30 s.
    pub fn delay(&self, attempt: u32) -> Duration {
        self.base_delay
            .saturating_mul(1u32 << attempt.min(16))
            .min(Duration::from_secs(30))
    }

    /// Runs `op` until it succeeds, fails with a non-transient error or the tries
    /// are used up.
    pub fn run<T>(
        &self,
        mut op: impl FnMut() -> Result<T, TransportError>,
    ) -> Result<T, TransportError> {
        let mut attempt = 0;
        loop {
            match op() {
                Err(e) if e.is_transient() && attempt + 1 < self.attempts.max(1) => {
                    tracing::debug!(error = %e, attempt, "transient error, retrying");
                    thread::sleep(self.delay(attempt));
                    attempt += 1;
                }
                other => return other,
            }
        }
    }
}

/// A binary cache in use: its transport and what its `nix-cache-info` says.
#[derive(Debug)]
pub struct BinaryCache {
    url: String,
    transport: Box<dyn Transport>,
    store_dir: StoreDir,
    priority: i32,
    want_mass_query: bool,
    retry: RetryPolicy,
}

/// Splits Nix's substituter URL parameters (`?priority=N&trusted=1`) off `url`.
fn split_params(url: &str) -> (&str, Option<i32>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url, None);
    };
    let priority = query
        .split('&')
        .filter_map(|kv| kv.strip_prefix("priority="))
        .find_map(|v| v.parse().ok());
    (base, priority)
}

fn read_limited(body: Body, max: usize, url: &str) -> Result<Vec<u8>, SubstituteError> {
    let download = |source| SubstituteError::Download {
        url: url.to_owned(),
        source,
    };
    if body.length.is_some_and(|l| l > max as u64) {
        return Err(download(TransportError::TooLarge { max: max as u64 }));
    }
    let mut out = Vec::new();
    body.reader
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|source| download(TransportError::Io { source }))?;
    if out.len() > max {
        return Err(download(TransportError::TooLarge { max: max as u64 }));
    }
    Ok(out)
}

impl BinaryCache {
    /// Opens the cache at `url` (with optional `?priority=N`) for a store in
    /// `store_dir`: reads its `nix-cache-info` from `disk` when recent, otherwise
    /// from the cache, and refuses a cache for another store directory.
    pub fn open(
        url: &str,
        store_dir: &StoreDir,
        options: &TransportOptions,
        retry: RetryPolicy,
        disk: Option<&NarInfoCache>,
    ) -> Result<Self, SubstituteError> {
        let (base, priority_override) = split_params(url);
        // An s3:// cache's parameters (endpoint, region, profile) are its address.
        let transport =
            open_transport(if base.starts_with("s3://") { url } else { base }, options)?;
        // A `file://` cache's `nix-cache-info` is read afresh each time, never from
        // the lookup cache, as Nix reads a local binary cache's at each opening: it
        // is a file on this machine that may change between two requests. What was
        // read is still written to the lookup cache, whose row for the cache its
        // remembered narinfos hang on (they are remembered, as Nix does).
        let reuse_info = !base.starts_with("file://");
        Self::from_transport(
            transport,
            store_dir,
            priority_override,
            retry,
            disk,
            reuse_info,
        )
    }

    /// Opens a cache through any transport (an S3 one, or a test's).
    pub fn with_transport(
        transport: Box<dyn Transport>,
        store_dir: &StoreDir,
        priority_override: Option<i32>,
        retry: RetryPolicy,
        disk: Option<&NarInfoCache>,
    ) -> Result<Self, SubstituteError> {
        Self::from_transport(transport, store_dir, priority_override, retry, disk, true)
    }

    /// [`BinaryCache::with_transport`]; `reuse_info` says whether a `nix-cache-info`
    /// remembered in `disk` may stand in for the cache's own.
    fn from_transport(
        transport: Box<dyn Transport>,
        store_dir: &StoreDir,
        priority_override: Option<i32>,
        retry: RetryPolicy,
        disk: Option<&NarInfoCache>,
        reuse_info: bool,
    ) -> Result<Self, SubstituteError> {
        let url = transport.base_url().to_owned();
        let now = unix_now();
        let cached = disk.filter(|_| reuse_info).and_then(|d| {
            d.cache_info(&url, now)
                .inspect_err(|e| tracing::warn!(error = %e, "narinfo lookup cache"))
                .ok()
                .flatten()
        });
        let info = match cached {
            Some(c) => c,
            None => {
                let info = Self::fetch_cache_info(&*transport, retry)?;
                let theirs = info.store_dir.as_ref().map(|d| d.as_str().to_owned());
                let c = CachedInfo {
                    store_dir: theirs.unwrap_or_else(|| store_dir.as_str().to_owned()),
                    want_mass_query: info.want_mass_query,
                    priority: info.priority.unwrap_or(DEFAULT_PRIORITY),
                };
                if let Some(d) = disk {
                    if let Err(e) = d.set_cache_info(&url, &c, now) {
                        tracing::warn!(error = %e, "narinfo lookup cache");
                    }
                }
                c
            }
        };
        if info.store_dir != store_dir.as_str() {
            return Err(SubstituteError::StoreDirMismatch {
                url,
                theirs: info.store_dir,
                ours: store_dir.as_str().to_owned(),
            });
        }
        Ok(Self {
            url,
            transport,
            store_dir: store_dir.clone(),
            priority: priority_override.unwrap_or(info.priority),
            want_mass_query: info.want_mass_query,
            retry,
        })
    }

    fn fetch_cache_info(
        transport: &dyn Transport,
        retry: RetryPolicy,
    ) -> Result<CacheInfo, SubstituteError> {
        let rel = "nix-cache-info";
        let full = transport.url_of(rel);
        let text =
            Self::fetch_text(transport, retry, rel)?.ok_or_else(|| SubstituteError::NotACache {
                url: transport.base_url().to_owned(),
            })?;
        CacheInfo::parse(&text).map_err(|source| SubstituteError::CacheInfo { url: full, source })
    }

    /// Fetches a small text file (bounded by [`MAX_NARINFO_SIZE`]), retrying
    /// transient failures.
    fn fetch_text(
        transport: &dyn Transport,
        retry: RetryPolicy,
        rel: &str,
    ) -> Result<Option<String>, SubstituteError> {
        let full = transport.url_of(rel);
        let mut last = None;
        let result = retry.run(|| {
            let Some(body) = transport.get(rel)? else {
                return Ok(None);
            };
            match read_limited(body, MAX_NARINFO_SIZE, &full) {
                Ok(bytes) => Ok(Some(bytes)),
                Err(SubstituteError::Download { source, .. }) => Err(source),
                Err(other) => {
                    last = Some(other);
                    Ok(None)
                }
            }
        });
        if let Some(e) = last {
            return Err(e);
        }
        match result {
            Ok(Some(bytes)) => String::from_utf8(bytes)
                .map(Some)
                .map_err(|_| SubstituteError::NotText { url: full }),
            Ok(None) => Ok(None),
            Err(source) => Err(SubstituteError::Download { url: full, source }),
        }
    }

    /// The store directory the cache is for.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// The cache's URL (without parameters or trailing `/`).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Its priority: lower is tried first (Nix's default 50).
    pub fn priority(&self) -> i32 {
        self.priority
    }

    /// Whether it invites querying many paths at once (`WantMassQuery`).
    pub fn want_mass_query(&self) -> bool {
        self.want_mass_query
    }

    /// The narinfo of `path`, or `None` if the cache lacks it, answered from `disk`
    /// when it has a fresh entry and recorded there otherwise.
    pub fn query_narinfo(
        &self,
        path: &StorePath,
        disk: Option<&NarInfoCache>,
    ) -> Result<Option<NarInfo>, SubstituteError> {
        self.query_narinfo_noting(path, disk, &mut |_| {})
    }

    /// [`BinaryCache::query_narinfo`], calling `asking(true)` before the cache itself
    /// is asked (`disk` remembers nothing fresh of `path`) and `asking(false)` after,
    /// as Nix's `queryPathInfoUncached` runs its `query-path-info` activity.
    pub fn query_narinfo_noting(
        &self,
        path: &StorePath,
        disk: Option<&NarInfoCache>,
        asking: &mut dyn FnMut(bool),
    ) -> Result<Option<NarInfo>, SubstituteError> {
        let hash_part = path.hash_part();
        let rel = format!("{hash_part}.narinfo");
        let full = self.transport.url_of(&rel);
        let now = unix_now();
        let remembered = disk.map_or(Lookup::Unknown, |d| {
            d.lookup(&self.url, hash_part, now).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "narinfo lookup cache");
                Lookup::Unknown
            })
        });
        let (text, fresh) = match remembered {
            Lookup::Absent => return Ok(None),
            Lookup::Present(text) => (Some(text), false),
            Lookup::Unknown => {
                asking(true);
                let text = Self::fetch_text(&*self.transport, self.retry, &rel);
                asking(false);
                (text?, true)
            }
        };
        let info = match &text {
            None => None,
            Some(text) => {
                let info = NarInfo::parse(&self.store_dir, text).map_err(|source| {
                    SubstituteError::NarInfo {
                        url: full.clone(),
                        source,
                    }
                })?;
                if info.store_path != *path {
                    return Err(SubstituteError::WrongPath {
                        url: full,
                        path: self.store_dir.display(path),
                        found: self.store_dir.display(&info.store_path),
                    });
                }
                Some(info)
            }
        };
        if fresh {
            if let Some(d) = disk {
                if let Err(e) = d.insert(&self.url, hash_part, text.as_deref(), now) {
                    tracing::warn!(error = %e, "narinfo lookup cache");
                }
            }
        }
        Ok(info)
    }

    /// Opens the (compressed) NAR a narinfo points to. Retries transient failures
    /// to connect; a missing NAR is an error.
    pub fn open_nar(&self, info: &NarInfo) -> Result<Body, SubstituteError> {
        if !crate::transport::check_relative(&info.url) {
            return Err(SubstituteError::UnsafeNarUrl {
                path: self.store_dir.display(&info.store_path),
                cache: self.url.clone(),
                nar_url: info.url.chars().take(200).collect(),
            });
        }
        let full = self.nar_url(info);
        self.retry
            .run(|| {
                self.transport
                    .get(&info.url)?
                    .ok_or(TransportError::Status { status: 404 })
            })
            .map_err(|source| SubstituteError::Download { url: full, source })
    }

    /// The full URL of a narinfo's NAR.
    pub fn nar_url(&self, info: &NarInfo) -> String {
        self.transport.url_of(&info.url)
    }

    /// The retry policy in force.
    pub fn retry(&self) -> RetryPolicy {
        self.retry
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_parameters() {
        assert_eq!(split_params("http://x"), ("http://x", None));
        assert_eq!(
            split_params("http://x?trusted=1&priority=10"),
            ("http://x", Some(10))
        );
        assert_eq!(split_params("file:///c?priority=bad"), ("file:///c", None));
    }

    #[test]
    fn back_off_doubles_and_is_capped() {
        let p = RetryPolicy {
            attempts: 5,
            base_delay: Duration::from_millis(100),
        };
        assert_eq!(p.delay(0), Duration::from_millis(100));
        assert_eq!(p.delay(2), Duration::from_millis(400));
        assert_eq!(p.delay(30), Duration::from_secs(30));
    }

    #[test]
    fn retries_only_transient_errors() {
        let p = RetryPolicy {
            attempts: 3,
            base_delay: Duration::from_millis(1),
        };
        let mut n = 0;
        let r: Result<(), _> = p.run(|| {
            n += 1;
            Err(TransportError::Status { status: 503 })
        });
        assert!(r.is_err());
        assert_eq!(n, 3);
        let mut n = 0;
        let r: Result<(), _> = p.run(|| {
            n += 1;
            Err(TransportError::Status { status: 400 })
        });
        assert!(r.is_err());
        assert_eq!(n, 1);
        let mut n = 0;
        let r = p.run(|| {
            n += 1;
            if n < 2 {
                Err(TransportError::Status { status: 502 })
            } else {
                Ok(7)
            }
        });
        assert_eq!(r.unwrap(), 7);
    }
}
