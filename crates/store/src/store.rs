//! [`LocalStore`]: opening a store, and everything that only reads it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};

use unrooted_db::{Database, DbError, ValidPathInfo};
use unrooted_format::nar;
use unrooted_format::{StoreDir, StorePath};

use crate::config::LocalStoreConfig;
use crate::error::StoreError;
use crate::layout::{create_layout, take_big_lock};
use crate::lock::LockMap;
use crate::tmp::TempArea;

/// A Nix store on local disk, shared by all threads of a process.
///
/// Every method takes `&self`. Writes go through one connection behind a mutex held
/// only for the duration of one registration; queries take a connection of their own
/// from a small pool (with WAL, SQLite lets readers run beside each other and beside
/// the writer), so that many clients querying at once do not queue behind one mutex.
/// Path locks serialise adders of the same path (also across processes, through Nix's
/// `.lock` files).
#[derive(Debug)]
pub struct LocalStore {
    pub(crate) config: LocalStoreConfig,
    pub(crate) db: Mutex<Database>,
    readers: Mutex<ReaderPool>,
    pub(crate) locks: LockMap,
    pub(crate) tmp: TempArea,
    _big_lock: File,
    /// Device and inode of the database file the connections have open.
    db_file: Mutex<Option<(u64, u64)>>,
}

impl LocalStore {
    /// Opens the store described by `config`, creating the directories, lock files
    /// and database a new store needs, and removing temporary leftovers of earlier
    /// store instances that died (never anything else).
    pub fn open(config: LocalStoreConfig) -> Result<Self, StoreError> {
        create_layout(&config)?;
        let big_lock = take_big_lock(&config.state_dir)?;
        crate::optimise::restore_interrupted(&config.state_dir, &config.real_store_dir);
        let db = Database::open(
            &config.state_dir.join("db"),
            config.store_dir.clone(),
            config.db,
        )?;
        let tmp = TempArea::create(&config.real_store_dir)?;
        let db_file = Mutex::new(file_id(&db_path(&config)));
        Ok(Self {
            config,
            db: Mutex::new(db),
            readers: Mutex::new(ReaderPool::default()),
            locks: LockMap::default(),
            tmp,
            _big_lock: big_lock,
            db_file,
        })
    }

    /// Makes the store whole again when something outside removed or replaced part
    /// of it while the daemon runs (Nix's own test suite removes and re-makes the
    /// store and state directories between connections; `nix-daemon` opens the store
    /// afresh for each connection): the layout is re-created where it is missing,
    /// and a database file that is gone or not the one open is opened anew (created
    /// empty when gone), so no connection serves a stale database. Costs a few
    /// `stat`s when nothing changed; called as each connection starts.
    pub fn revalidate(&self) -> Result<(), StoreError> {
        let c = &self.config;
        let intact = [
            c.real_store_dir.join(".links"),
            c.state_dir.join("profiles/per-user"),
            c.state_dir.join("gcroots/per-user"),
            c.state_dir.join("temproots"),
        ]
        .iter()
        .all(|p| p.is_dir());
        let mut opened = self.db_file.lock().unwrap_or_else(PoisonError::into_inner);
        let now = file_id(&db_path(c));
        if intact && now.is_some() && now == *opened {
            return Ok(());
        }
        create_layout(c)?;
        self.tmp.recreate()?;
        if now.is_some() && now == *opened {
            return Ok(());
        }
        let mut db = self.db();
        *db = Database::open(&c.state_dir.join("db"), c.store_dir.clone(), c.db)?;
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        pool.open -= pool.idle.len();
        pool.idle.clear();
        pool.generation += 1;
        *opened = file_id(&db_path(c));
        tracing::info!("the store database was removed or replaced: opened it anew");
        Ok(())
    }

    /// Marks the store as in use (a daemon's connection) until the guard is dropped;
    /// when the last use ends, the private temporary area is removed if it is empty,
    /// so nothing of the daemon's stays in the store directory between operations.
    pub fn in_use(&self) -> StoreUse<'_> {
        self.tmp.enter();
        StoreUse(self)
    }

    /// The configuration the store was opened with.
    pub fn config(&self) -> &LocalStoreConfig {
        &self.config
    }

    /// The store directory paths are named in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.config.store_dir
    }

    /// Where `path` is on disk.
    pub fn real_path(&self, path: &StorePath) -> PathBuf {
        self.config.real_store_dir.join(path.to_base_name())
    }

    /// The full path of `path` as Nix prints it.
    pub fn print_path(&self, path: &StorePath) -> String {
        self.config.store_dir.display(path)
    }

    pub(crate) fn db(&self) -> MutexGuard<'_, Database> {
        // A panic while holding the connection cannot leave a transaction open (it is
        // rolled back on drop), so a poisoned lock is still a usable connection.
        self.db.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection for queries: an idle one from the pool, or a new one while fewer
    /// than [`MAX_READER_CONNECTIONS`] are open, else the writer's connection (the
    /// query then waits for it, as every query did before the pool). Without WAL
    /// (`use-sqlite-wal = false`) readers would only wait for the writer's lock, so
    /// the writer's connection is shared instead.
    pub(crate) fn reader(&self) -> Result<Reader<'_>, StoreError> {
        if !self.config.db.use_wal {
            return Ok(Reader::Shared(self.db()));
        }
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(db) = pool.idle.pop() {
            return Ok(Reader::Pooled {
                db: Some(db),
                pool: &self.readers,
                generation: pool.generation,
            });
        }
        if pool.open >= MAX_READER_CONNECTIONS {
            drop(pool);
            return Ok(Reader::Shared(self.db()));
        }
        pool.open += 1;
        let generation = pool.generation;
        drop(pool);
        let opened = Database::open(
            &self.config.state_dir.join("db"),
            self.config.store_dir.clone(),
            self.config.db,
        )
        .and_then(|db| {
            // Queries touch few pages; the writer keeps the big cache.
            db.limit_cache(READER_CACHE_KIB)?;
            Ok(db)
        });
        match opened {
            Ok(db) => Ok(Reader::Pooled {
                db: Some(db),
                pool: &self.readers,
                generation,
            }),
            Err(e) => {
                self.readers
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .open -= 1;
                Err(e.into())
            }
        }
    }

    /// Closes the idle query connections (a new query opens one again); for a daemon
    /// with no client left, so that an idle daemon holds no more descriptors and
    /// memory than it needs.
    pub fn release_idle_readers(&self) {
        let mut pool = self.readers.lock().unwrap_or_else(PoisonError::into_inner);
        let idle = std::mem::take(&mut pool.idle);
        pool.open -= idle.len();
        drop(pool);
        drop(idle);
    }

    /// Runs `f` on a reader inside one read transaction, so that a query made of
    /// several statements sees one snapshot of the database, as it did when it held
    /// the writer's mutex throughout.
    fn snapshot<T>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let reader = self.reader()?;
        if let Reader::Shared(db) = &reader {
            return f(db);
        }
        let conn = reader.connection();
        conn.execute_batch("begin").map_err(|source| {
            StoreError::from(DbError::Transaction {
                action: "beginning",
                source,
            })
        })?;
        let result = f(&reader);
        // A read transaction has nothing to keep; ending it cannot lose anything.
        let _ = conn.execute_batch("commit");
        result
    }

    /// Whether `path` is valid.
    pub fn is_valid_path(&self, path: &StorePath) -> Result<bool, StoreError> {
        Ok(self.reader()?.is_valid(path)?)
    }

    /// The subset of `paths` that is valid.
    pub fn query_valid_paths(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.snapshot(|db| {
            let mut out = BTreeSet::new();
            for p in paths {
                if db.is_valid(p)? {
                    out.insert(p.clone());
                }
            }
            Ok(out)
        })
    }

    /// The record of `path`, or `None` if it is not valid.
    pub fn query_path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, StoreError> {
        Ok(self.reader()?.path_info(path)?)
    }

    /// The references of `path`; empty if not valid.
    pub fn query_references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.reader()?.references(path)?)
    }

    /// The valid paths referring to `path`; empty if not valid.
    pub fn query_referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.reader()?.referrers(path)?)
    }

    /// The recorded deriver of a valid path (`None` if unknown); fails if `path` is
    /// not valid.
    pub fn query_deriver(&self, path: &StorePath) -> Result<Option<StorePath>, StoreError> {
        match self.reader()?.path_info(path)? {
            Some(info) => Ok(info.deriver),
            None => Err(StoreError::NotValid {
                path: self.print_path(path),
            }),
        }
    }

    /// The valid `.drv`s that name `path` as an output.
    pub fn query_valid_derivers(
        &self,
        path: &StorePath,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.reader()?.valid_derivers(path)?)
    }

    /// Output name → path of a valid derivation, for outputs whose path is known
    /// before building; fails with "path '…' is not valid" for an invalid `drv`.
    pub fn query_derivation_output_map(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, StoreError> {
        self.reader()?.derivation_outputs(drv).map_err(|e| match e {
            DbError::NotValid { path } => StoreError::NotValid { path },
            other => other.into(),
        })
    }

    /// The valid path with this 32-character hash part, if any.
    pub fn query_path_from_hash_part(
        &self,
        hash_part: &str,
    ) -> Result<Option<StorePath>, StoreError> {
        self.reader()?
            .path_from_hash_part(hash_part)
            .map_err(|e| match e {
                DbError::InvalidHashPart { hash_part } => StoreError::InvalidHashPart { hash_part },
                other => other.into(),
            })
    }

    /// Every valid path.
    pub fn query_all_valid_paths(&self) -> Result<BTreeSet<StorePath>, StoreError> {
        Ok(self.reader()?.all_valid_paths()?)
    }

    /// The closure of `paths` under references (`nix-store -qR`): the paths
    /// themselves and everything they refer to, directly or not. Every path must be
    /// valid.
    pub fn query_closure(
        &self,
        paths: &BTreeSet<StorePath>,
    ) -> Result<BTreeSet<StorePath>, StoreError> {
        self.snapshot(|db| {
            let mut seen: BTreeSet<StorePath> = BTreeSet::new();
            let mut queue: VecDeque<StorePath> = paths.iter().cloned().collect();
            while let Some(p) = queue.pop_front() {
                if seen.contains(&p) {
                    continue;
                }
                let Some(info) = db.path_info(&p)? else {
                    return Err(StoreError::NotValid {
                        path: self.print_path(&p),
                    });
                };
                queue.extend(info.references.into_iter().filter(|r| !seen.contains(r)));
                seen.insert(p);
            }
            Ok(seen)
        })
    }

    /// Adds signatures to a valid path (`nix store sign`, AddSignatures). The caller
    /// decides who may do this; signatures are not checked here, as in Nix.
    pub fn add_signatures(
        &self,
        path: &StorePath,
        sigs: impl IntoIterator<Item = String>,
    ) -> Result<(), StoreError> {
        self.db().add_signatures(path, sigs).map_err(|e| match e {
            DbError::NotValid { path } => StoreError::NotValid { path },
            other => other.into(),
        })
    }

    /// Writes the NAR of a valid path to `out` (NarFromPath, `nix-store --dump`);
    /// returns its size.
    pub fn dump_path(&self, path: &StorePath, out: &mut dyn Write) -> Result<u64, StoreError> {
        if !self.is_valid_path(path)? {
            return Err(StoreError::NotValid {
                path: self.print_path(path),
            });
        }
        let real = self.real_path(path);
        nar::dump_path(&real, &mut &mut *out).map_err(|source| StoreError::Dump {
            path: real,
            source: Box::new(source),
        })
    }
}

/// Query connections open at once at most. Two cores run two queries at a time;
/// a few more cover threads preempted mid-query. Each connection holds descriptors
/// (SQLite keeps a closed connection's descriptor for reuse while another connection
/// holds a lock on the file), so the bound is also the most the pool ever adds.
pub const MAX_READER_CONNECTIONS: usize = 8;

/// The query connections: idle ones, and how many exist (idle or lent).
#[derive(Debug, Default)]
pub(crate) struct ReaderPool {
    idle: Vec<Database>,
    open: usize,
    /// Bumped when the database file is opened anew: connections lent before are
    /// closed, not given back.
    generation: u64,
}

/// The database file of the store `config` describes.
fn db_path(config: &LocalStoreConfig) -> PathBuf {
    config.state_dir.join("db/db.sqlite")
}

/// Device and inode of the file at `path`, if it exists.
fn file_id(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// The page cache of each reader connection (SQLite's default size).
const READER_CACHE_KIB: u32 = 2048;

/// A connection lent to one query by [`LocalStore::reader`].
pub(crate) enum Reader<'a> {
    /// A connection of the pool, given back on drop.
    Pooled {
        db: Option<Database>,
        pool: &'a Mutex<ReaderPool>,
        /// The pool's generation when it was lent.
        generation: u64,
    },
    /// The writer's connection, held for the query.
    Shared(MutexGuard<'a, Database>),
}

impl std::ops::Deref for Reader<'_> {
    type Target = Database;

    fn deref(&self) -> &Database {
        match self {
            Reader::Pooled { db, .. } => {
                db.as_ref().expect("a pooled reader is only taken on drop")
            }
            Reader::Shared(guard) => guard,
        }
    }
}

impl Drop for Reader<'_> {
    fn drop(&mut self) {
        if let Reader::Pooled {
            db,
            pool,
            generation,
        } = self
        {
            if let Some(db) = db.take() {
                let mut pool = pool.lock().unwrap_or_else(PoisonError::into_inner);
                if pool.generation == *generation {
                    pool.idle.push(db);
                } else {
                    pool.open -= 1;
                }
            }
        }
    }
}

/// A use of the store (see [`LocalStore::in_use`]).
#[derive(Debug)]
pub struct StoreUse<'a>(&'a LocalStore);

impl Drop for StoreUse<'_> {
    fn drop(&mut self) {
        self.0.tmp.leave();
    }
}
