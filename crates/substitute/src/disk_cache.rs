//! The on-disk cache of what binary caches said, like Nix's `binary-cache-v6.sqlite`:
//! each cache's `nix-cache-info`, and per store path either the narinfo text (a
//! positive entry, trusted for `narinfo-cache-positive-ttl`) or the fact that the
//! cache lacks it (negative, for `narinfo-cache-negative-ttl`). It spares a round trip
//! per path on every query, across daemon restarts.
//!
//! The file is our own (`narinfo-cache-v1.sqlite`, not Nix's schema) so that the two
//! never disturb each other. It is only a cache: callers treat its errors as misses.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension};

use crate::error::SubstituteError;

const SCHEMA: &str = "
create table if not exists BinaryCaches (
    id            integer primary key autoincrement not null,
    url           text unique not null,
    timestamp     integer not null,
    storeDir      text not null,
    wantMassQuery integer not null,
    priority      integer not null
);
create table if not exists NARs (
    cache     integer not null,
    hashPart  text not null,
    timestamp integer not null,
    present   integer not null,
    narinfo   text,
    primary key (cache, hashPart),
    foreign key (cache) references BinaryCaches(id) on delete cascade
);
";

/// How long `nix-cache-info` is trusted (Nix's `cacheInfoTtl`, 7 days).
pub const CACHE_INFO_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// Nix's `narinfo-cache-negative-ttl` default: one hour.
pub const DEFAULT_NEGATIVE_TTL: Duration = Duration::from_secs(3600);
/// Nix's `narinfo-cache-positive-ttl` default: 30 days.
pub const DEFAULT_POSITIVE_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// What the lookup cache knows of a path in a binary cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Nothing recent: ask the cache.
    Unknown,
    /// The cache recently did not have it.
    Absent,
    /// The cache recently had it; its narinfo text.
    Present(String),
}

/// A binary cache's `nix-cache-info` as remembered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedInfo {
    /// Its store directory.
    pub store_dir: String,
    /// `WantMassQuery`.
    pub want_mass_query: bool,
    /// `Priority`.
    pub priority: i32,
}

/// The lookup cache: one SQLite file shared by the threads of a process (and by
/// processes, through SQLite's locking).
#[derive(Debug)]
pub struct NarInfoCache {
    conn: Mutex<Connection>,
    path: PathBuf,
    negative_ttl: Duration,
    positive_ttl: Duration,
}

/// Seconds since the epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn secs(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

fn stamp(now: u64) -> i64 {
    i64::try_from(now).unwrap_or(i64::MAX)
}

impl NarInfoCache {
    /// Opens (creating) the cache file at `path` with the given TTLs.
    pub fn open(
        path: &Path,
        negative_ttl: Duration,
        positive_ttl: Duration,
    ) -> Result<Self, SubstituteError> {
        let err = |source| SubstituteError::DiskCache {
            path: path.to_owned(),
            source,
        };
        if let Some(parent) = path.parent() {
            // A failure shows up as the open's error just below.
            let _ = std::fs::create_dir_all(parent);
        }
        let conn = Connection::open(path).map_err(err)?;
        Self::init(conn, path.to_owned(), negative_ttl, positive_ttl)
    }

    /// A cache in memory (tests, or when no file can be written).
    pub fn in_memory(
        negative_ttl: Duration,
        positive_ttl: Duration,
    ) -> Result<Self, SubstituteError> {
        let conn = Connection::open_in_memory().map_err(|source| SubstituteError::DiskCache {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        Self::init(conn, PathBuf::from(":memory:"), negative_ttl, positive_ttl)
    }

    fn init(
        conn: Connection,
        path: PathBuf,
        negative_ttl: Duration,
        positive_ttl: Duration,
    ) -> Result<Self, SubstituteError> {
        let err = |source| SubstituteError::DiskCache {
            path: path.clone(),
            source,
        };
        conn.busy_timeout(Duration::from_secs(60)).map_err(err)?;
        // WAL lets readers in other processes go on while one writes; losing the last
        // entries in a crash only costs a lookup, so no fsync per write.
        conn.pragma_update(None, "journal_mode", "wal")
            .map_err(err)?;
        conn.pragma_update(None, "synchronous", "off")
            .map_err(err)?;
        conn.pragma_update(None, "foreign_keys", "on")
            .map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self {
            conn: Mutex::new(conn),
            path,
            negative_ttl,
            positive_ttl,
        })
    }

    fn err(&self, source: rusqlite::Error) -> SubstituteError {
        SubstituteError::DiskCache {
            path: self.path.clone(),
            source,
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The remembered `nix-cache-info` of `url`, if fetched within
    /// [`CACHE_INFO_TTL`] of `now`.
    pub fn cache_info(&self, url: &str, now: u64) -> Result<Option<CachedInfo>, SubstituteError> {
        self.conn()
            .query_row(
                "select storeDir, wantMassQuery, priority from BinaryCaches where url = ? and timestamp > ?",
                params![url, stamp(now) - secs(CACHE_INFO_TTL)],
                |row| {
                    Ok(CachedInfo {
                        store_dir: row.get(0)?,
                        want_mass_query: row.get(1)?,
                        priority: row.get(2)?,
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Remembers `url`'s `nix-cache-info`. Its narinfo entries are kept unless the
    /// store directory changed.
    pub fn set_cache_info(
        &self,
        url: &str,
        info: &CachedInfo,
        now: u64,
    ) -> Result<(), SubstituteError> {
        let conn = self.conn();
        let old: Option<String> = conn
            .query_row(
                "select storeDir from BinaryCaches where url = ?",
                [url],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if old.is_some_and(|d| d != info.store_dir) {
            conn.execute("delete from BinaryCaches where url = ?", [url])
                .map_err(|e| self.err(e))?;
        }
        conn.execute(
            "insert into BinaryCaches (url, timestamp, storeDir, wantMassQuery, priority) values (?1, ?2, ?3, ?4, ?5)
             on conflict (url) do update set timestamp = ?2, storeDir = ?3, wantMassQuery = ?4, priority = ?5",
            params![url, stamp(now), info.store_dir, info.want_mass_query, info.priority],
        )
        .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// What is known of `hash_part` in the cache at `url` as of `now`.
    pub fn lookup(&self, url: &str, hash_part: &str, now: u64) -> Result<Lookup, SubstituteError> {
        let row: Option<(i64, bool, Option<String>)> = self
            .conn()
            .query_row(
                "select n.timestamp, n.present, n.narinfo from NARs n join BinaryCaches b on n.cache = b.id
                 where b.url = ? and n.hashPart = ?",
                params![url, hash_part],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let now = stamp(now);
        Ok(match row {
            Some((t, true, Some(text))) if t > now - secs(self.positive_ttl) => {
                Lookup::Present(text)
            }
            Some((t, false, _)) if t > now - secs(self.negative_ttl) => Lookup::Absent,
            _ => Lookup::Unknown,
        })
    }

    /// Records that the cache at `url` has `hash_part` with this narinfo text
    /// (`Some`) or lacks it (`None`). The cache's `nix-cache-info` must have been
    /// recorded first; otherwise nothing is recorded.
    pub fn insert(
        &self,
        url: &str,
        hash_part: &str,
        narinfo: Option<&str>,
        now: u64,
    ) -> Result<(), SubstituteError> {
        self.conn()
            .execute(
                "insert or replace into NARs (cache, hashPart, timestamp, present, narinfo)
                 select id, ?2, ?3, ?4, ?5 from BinaryCaches where url = ?1",
                params![url, hash_part, stamp(now), narinfo.is_some(), narinfo],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://cache.example";
    const HP: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    fn cache() -> NarInfoCache {
        let c = NarInfoCache::in_memory(DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL).unwrap();
        let info = CachedInfo {
            store_dir: "/nix/store".into(),
            want_mass_query: true,
            priority: 40,
        };
        c.set_cache_info(URL, &info, 1000).unwrap();
        c
    }

    #[test]
    fn cache_info_expires_after_a_week() {
        let c = cache();
        assert_eq!(c.cache_info(URL, 1000).unwrap().unwrap().priority, 40);
        let week = CACHE_INFO_TTL.as_secs();
        assert!(c.cache_info(URL, 1000 + week - 1).unwrap().is_some());
        assert!(c.cache_info(URL, 1000 + week).unwrap().is_none());
        assert!(c.cache_info("http://other", 1000).unwrap().is_none());
    }

    #[test]
    fn negative_entries_last_an_hour_positive_thirty_days() {
        let c = cache();
        assert_eq!(c.lookup(URL, HP, 2000).unwrap(), Lookup::Unknown);
        c.insert(URL, HP, None, 2000).unwrap();
        assert_eq!(c.lookup(URL, HP, 2000 + 3599).unwrap(), Lookup::Absent);
        assert_eq!(c.lookup(URL, HP, 2000 + 3600).unwrap(), Lookup::Unknown);
        c.insert(URL, HP, Some("StorePath: x\n"), 3000).unwrap();
        let month = DEFAULT_POSITIVE_TTL.as_secs();
        assert_eq!(
            c.lookup(URL, HP, 3000 + month - 1).unwrap(),
            Lookup::Present("StorePath: x\n".into())
        );
        assert_eq!(c.lookup(URL, HP, 3000 + month).unwrap(), Lookup::Unknown);
    }

    #[test]
    fn entries_are_per_cache_and_dropped_when_the_store_dir_changes() {
        let c = cache();
        c.insert(URL, HP, None, 2000).unwrap();
        // Unknown caches record nothing.
        c.insert("http://other", HP, None, 2000).unwrap();
        assert_eq!(c.lookup("http://other", HP, 2000).unwrap(), Lookup::Unknown);
        let same = CachedInfo {
            store_dir: "/nix/store".into(),
            want_mass_query: false,
            priority: 10,
        };
        c.set_cache_info(URL, &same, 2001).unwrap();
        assert_eq!(c.lookup(URL, HP, 2002).unwrap(), Lookup::Absent);
        let moved = CachedInfo {
            store_dir: "/other/store".into(),
            ..same
        };
        c.set_cache_info(URL, &moved, 2003).unwrap();
        assert_eq!(c.lookup(URL, HP, 2004).unwrap(), Lookup::Unknown);
    }

    #[test]
    fn a_file_is_shared_between_openings() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/narinfo-cache-v1.sqlite");
        {
            let c = NarInfoCache::open(&path, DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL).unwrap();
            let info = CachedInfo {
                store_dir: "/nix/store".into(),
                want_mass_query: false,
                priority: 50,
            };
            c.set_cache_info(URL, &info, 10).unwrap();
            c.insert(URL, HP, Some("t\n"), 10).unwrap();
        }
        let c = NarInfoCache::open(&path, DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL).unwrap();
        assert_eq!(
            c.lookup(URL, HP, 11).unwrap(),
            Lookup::Present("t\n".into())
        );
    }
}
