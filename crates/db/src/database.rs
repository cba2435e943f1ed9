//! The connection and its typed operations.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use unrooted_format::store_path::HASH_PART_LEN;
use unrooted_format::{base32, ContentAddress, Hash, StoreDir, StorePath};

use crate::error::{CorruptValue, DbError};
use crate::path_info::ValidPathInfo;
use crate::schema::{BUSY_TIMEOUT, NIX_SCHEMA_VERSION, SCHEMA_SQL, WAL_AUTOCHECKPOINT};

// Nix 2.8's statements (local-store.cc), so the same indexes serve the same queries.
const REGISTER_VALID_PATH: &str = "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)";
const UPDATE_PATH_INFO: &str =
    "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?";
const ADD_REFERENCE: &str = "insert or replace into Refs (referrer, reference) values (?, ?)";
const QUERY_PATH_INFO: &str = "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?";
const QUERY_VALID_PATH_ID: &str = "select id from ValidPaths where path = ?";
const QUERY_REFERENCES: &str =
    "select path from Refs join ValidPaths on reference = id where referrer = ?";
const QUERY_REFERRERS: &str = "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?)";
const INVALIDATE_PATH: &str = "delete from ValidPaths where path = ?";
const ADD_DERIVATION_OUTPUT: &str =
    "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)";
const QUERY_VALID_DERIVERS: &str = "select v.id, v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?";
const QUERY_DERIVATION_OUTPUTS: &str = "select id, path from DerivationOutputs where drv = ?";
const QUERY_PATH_FROM_HASH_PART: &str = "select path from ValidPaths where path >= ? limit 1";
const QUERY_ALL_VALID_PATHS: &str = "select path from ValidPaths";
const QUERY_ALL_PATHS_AND_DERIVERS: &str = "select id, path, deriver from ValidPaths";
const QUERY_ALL_REFS: &str = "select referrer, reference from Refs";
const QUERY_SIGS: &str = "select sigs from ValidPaths where path = ?";
const UPDATE_SIGS: &str = "update ValidPaths set sigs = ? where path = ?";

/// One path to register: its record and, for a `.drv`, the output paths the
/// derivation names (Nix writes these `DerivationOutputs` rows when the `.drv` itself
/// is registered; floating outputs have no path and no row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registration {
    /// The record to write.
    pub info: ValidPathInfo,
    /// Output name → output path, for a derivation; empty otherwise.
    pub derivation_outputs: BTreeMap<String, StorePath>,
}

impl Registration {
    /// A registration without derivation outputs.
    pub fn new(info: ValidPathInfo) -> Self {
        Self {
            info,
            derivation_outputs: BTreeMap::new(),
        }
    }
}

/// A valid path's references and deriver, as [`Database::reference_graph`] lists
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphNode {
    /// The valid paths it refers to (itself included if it refers to itself).
    pub references: BTreeSet<StorePath>,
    /// Its deriver as recorded (valid or not).
    pub deriver: Option<StorePath>,
}

/// Settings that differ between Nix installations (`fsync-metadata`,
/// `use-sqlite-wal`); the defaults are Nix's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbOptions {
    /// `pragma synchronous = normal` when true (default), `off` when false.
    pub fsync_metadata: bool,
    /// WAL journal (default) or `truncate`.
    pub use_wal: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            fsync_metadata: true,
            use_wal: true,
        }
    }
}

/// An open store database: one SQLite connection with Nix's settings, bound to the
/// store directory its paths live in.
///
/// Reads take `&self`, writes `&mut self`; a connection is not shareable between
/// threads, so a multi-threaded caller puts it behind a mutex or opens one per
/// thread (SQLite's own locking then arbitrates between connections and processes).
pub struct Database {
    conn: Connection,
    store_dir: StoreDir,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Database")
            .field("path", &self.conn.path())
            .field("store_dir", &self.store_dir)
            .finish()
    }
}

impl Database {
    /// Opens the database in `db_dir` (Nix's `<stateDir>/db`), creating it with
    /// schema 10 when `db_dir/schema` does not exist yet, exactly as Nix 2.8 does.
    ///
    /// An existing database is opened as it is: no table is created or altered. One
    /// with another schema version is refused rather than migrated.
    pub fn open(db_dir: &Path, store_dir: StoreDir, options: DbOptions) -> Result<Self, DbError> {
        let schema_path = db_dir.join("schema");
        let current = read_schema_version(&schema_path)?;
        if current != 0 && current != NIX_SCHEMA_VERSION {
            return Err(DbError::UnsupportedSchema {
                path: schema_path,
                found: current,
                expected: NIX_SCHEMA_VERSION,
            });
        }
        let create = current == 0;
        let db_path = db_dir.join("db.sqlite");
        let mut flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
        if create {
            flags |= OpenFlags::SQLITE_OPEN_CREATE;
        }
        let conn = if options.use_wal {
            Connection::open_with_flags(&db_path, flags)
        } else {
            // Without WAL, Nix uses dot-file locking so that the database also works on
            // file systems without POSIX locks.
            Connection::open_with_flags_and_vfs(&db_path, flags, "unix-dotfile")
        }
        .map_err(|source| DbError::Open {
            path: db_path.clone(),
            source,
        })?;
        let db = Self { conn, store_dir };
        db.configure(options, true)?;
        if create {
            db.create_schema()?;
            write_schema_version(&schema_path)?;
        }
        Ok(db)
    }

    /// A new, empty database in memory with schema 10 (for tests and tools).
    pub fn open_in_memory(store_dir: StoreDir) -> Result<Self, DbError> {
        let conn = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        let db = Self { conn, store_dir };
        db.configure(DbOptions::default(), false)?;
        db.create_schema()?;
        Ok(db)
    }

    /// The store directory the paths in this database live in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.store_dir
    }

    /// Caps this connection's page cache at `kib` KiB (SQLite's own default is 2 MiB),
    /// for connections that only answer queries: a pool of them should not each grow
    /// to the cache a collection needs.
    pub fn limit_cache(&self, kib: u32) -> Result<(), DbError> {
        run_pragma(
            &self.conn,
            &format!("pragma cache_size = -{kib}"),
            "cache_size",
        )
    }

    /// The underlying connection, for inspection in tests and diagnostics.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    fn configure(&self, options: DbOptions, on_disk: bool) -> Result<(), DbError> {
        let conn = &self.conn;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(|source| DbError::Configure {
                setting: "busy timeout",
                source,
            })?;
        run_pragma(conn, "pragma foreign_keys = 1", "foreign_keys")?;
        let sync = if options.fsync_metadata {
            "pragma synchronous = normal"
        } else {
            "pragma synchronous = off"
        };
        run_pragma(conn, sync, "synchronous")?;
        // 32 MiB of page cache instead of SQLite's 2 MiB: a collection reads the
        // whole reference graph and then deletes rows spread over every page of
        // ValidPaths and its index; with the default cache, those pages are read
        // again from the WAL and the file (a third of the time of invalidating
        // 10,000 paths). Memory is only taken as pages are used.
        run_pragma(conn, "pragma cache_size = -32768", "cache_size")?;
        if on_disk {
            let mode = if options.use_wal { "wal" } else { "truncate" };
            let previous: String = conn
                .query_row("pragma main.journal_mode", [], |row| row.get(0))
                .map_err(|source| DbError::Configure {
                    setting: "journal_mode",
                    source,
                })?;
            // Changing the journal mode needs an exclusive lock; only do it when
            // needed, so that opening a database another process uses does not block.
            if !previous.eq_ignore_ascii_case(mode) {
                run_pragma(
                    conn,
                    &format!("pragma main.journal_mode = {mode}"),
                    "journal_mode",
                )?;
            }
            if options.use_wal {
                run_pragma(
                    conn,
                    &format!("pragma wal_autocheckpoint = {WAL_AUTOCHECKPOINT}"),
                    "wal_autocheckpoint",
                )?;
            }
        }
        Ok(())
    }

    fn create_schema(&self) -> Result<(), DbError> {
        self.conn
            .execute_batch(SCHEMA_SQL)
            .map_err(|source| DbError::CreateSchema { source })
    }

    fn display(&self, path: &StorePath) -> String {
        self.store_dir.display(path)
    }

    fn parse_path(
        &self,
        text: String,
        row_path: &str,
        column: &'static str,
    ) -> Result<StorePath, DbError> {
        self.store_dir
            .parse_path(&text)
            .map_err(|e| corrupt(row_path, column, text, e.into()))
    }

    /// Registers `paths` in one transaction (Nix's `registerValidPaths`): a new path
    /// gets a `ValidPaths` row (and, for a `.drv`, its `DerivationOutputs` rows); an
    /// already valid one has its NAR hash, size, `ultimate`, signatures and content
    /// address updated. Then every reference gets a `Refs` row; references must be
    /// valid already or registered in the same batch. Nothing is written if anything
    /// fails, including a reference cycle between different paths of the batch.
    pub fn register_paths(&mut self, paths: &[Registration]) -> Result<(), DbError> {
        let store_dir = self.store_dir.clone();
        let display = |p: &StorePath| store_dir.display(p);
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| DbError::Transaction {
                action: "beginning",
                source,
            })?;
        let now = unix_now();
        for reg in paths {
            let info = &reg.info;
            let path = display(&info.path);
            let err = |source| DbError::RegisterPath {
                path: path.clone(),
                source,
            };
            let existing = valid_path_id(&tx, &path).map_err(err)?;
            let nar_size = (info.nar_size != 0).then_some(info.nar_size);
            let ultimate = info.ultimate.then_some(1i64);
            let sigs = join_sigs(&info.sigs);
            let ca = info.ca.as_ref().map(ContentAddress::to_string);
            let hash = info.nar_hash.to_prefixed_base16();
            if existing.is_some() {
                tx.prepare_cached(UPDATE_PATH_INFO)
                    .and_then(|mut s| s.execute(params![nar_size, hash, ultimate, sigs, ca, path]))
                    .map_err(err)?;
            } else {
                let time = if info.registration_time == 0 {
                    now
                } else {
                    info.registration_time
                };
                let deriver = info.deriver.as_ref().map(display);
                tx.prepare_cached(REGISTER_VALID_PATH)
                    .and_then(|mut s| {
                        s.execute(params![
                            path, hash, time, deriver, nar_size, ultimate, sigs, ca
                        ])
                    })
                    .map_err(err)?;
                let id = tx.last_insert_rowid();
                for (output, out_path) in &reg.derivation_outputs {
                    tx.prepare_cached(ADD_DERIVATION_OUTPUT)
                        .and_then(|mut s| s.execute(params![id, output, display(out_path)]))
                        .map_err(err)?;
                }
            }
        }
        for reg in paths {
            let path = display(&reg.info.path);
            let err = |source| DbError::RegisterPath {
                path: path.clone(),
                source,
            };
            let referrer = valid_path_id(&tx, &path)
                .map_err(err)?
                .ok_or_else(|| DbError::NotValid { path: path.clone() })?;
            for reference in &reg.info.references {
                let ref_text = display(reference);
                let id = valid_path_id(&tx, &ref_text).map_err(err)?.ok_or_else(|| {
                    DbError::RegisterInvalidReference {
                        path: path.clone(),
                        reference: ref_text.clone(),
                    }
                })?;
                tx.prepare_cached(ADD_REFERENCE)
                    .and_then(|mut s| s.execute(params![referrer, id]))
                    .map_err(err)?;
            }
        }
        check_acyclic(paths).map_err(|p| DbError::RegisterCycle { path: display(p) })?;
        tx.commit().map_err(|source| DbError::Transaction {
            action: "committing",
            source,
        })
    }

    /// Rewrites the NAR hash, size, `ultimate`, signatures and content address of a
    /// valid path (Nix's `updatePathInfo`); references and deriver are left alone.
    pub fn update_path_info(&mut self, info: &ValidPathInfo) -> Result<(), DbError> {
        let path = self.display(&info.path);
        let nar_size = (info.nar_size != 0).then_some(info.nar_size);
        let changed = self
            .conn
            .prepare_cached(UPDATE_PATH_INFO)
            .and_then(|mut s| {
                s.execute(params![
                    nar_size,
                    info.nar_hash.to_prefixed_base16(),
                    info.ultimate.then_some(1i64),
                    join_sigs(&info.sigs),
                    info.ca.as_ref().map(ContentAddress::to_string),
                    path
                ])
            })
            .map_err(|source| DbError::RegisterPath {
                path: path.clone(),
                source,
            })?;
        if changed == 0 {
            return Err(DbError::NotValid { path });
        }
        Ok(())
    }

    /// Whether `path` is valid.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        let text = self.display(path);
        valid_path_id(&self.conn, &text)
            .map(|id| id.is_some())
            .map_err(|source| query_err("querying validity", &text, source))
    }

    /// The record of `path`, or `None` if it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, DbError> {
        let text = self.display(path);
        let q = |source| query_err("querying path info", &text, source);
        let mut stmt = self.conn.prepare_cached(QUERY_PATH_INFO).map_err(q)?;
        let row = stmt
            .query_row([&text], |row| {
                Ok(RawInfo {
                    id: row.get(0)?,
                    hash: row.get(1)?,
                    registration_time: row.get(2)?,
                    deriver: row.get(3)?,
                    nar_size: row.get(4)?,
                    ultimate: row.get(5)?,
                    sigs: row.get(6)?,
                    ca: row.get(7)?,
                })
            })
            .optional()
            .map_err(q)?;
        let Some(raw) = row else {
            return Ok(None);
        };
        let nar_hash = Hash::parse_prefixed(&raw.hash)
            .map_err(|e| corrupt(&text, "hash", raw.hash.clone(), e.into()))?;
        let registration_time = u64::try_from(raw.registration_time).map_err(|_| {
            corrupt(
                &text,
                "registrationTime",
                raw.registration_time.to_string(),
                CorruptValue::Negative,
            )
        })?;
        let nar_size = match raw.nar_size {
            None => 0,
            Some(n) => u64::try_from(n)
                .map_err(|_| corrupt(&text, "narSize", n.to_string(), CorruptValue::Negative))?,
        };
        let deriver = match raw.deriver {
            Some(d) if !d.is_empty() => Some(self.parse_path(d, &text, "deriver")?),
            _ => None,
        };
        let ca = match raw.ca {
            Some(c) if !c.is_empty() => Some(
                ContentAddress::parse(&c).map_err(|e| corrupt(&text, "ca", c.clone(), e.into()))?,
            ),
            _ => None,
        };
        let sigs = raw
            .sigs
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let references = self.references_by_id(raw.id, &text)?;
        Ok(Some(ValidPathInfo {
            path: path.clone(),
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate: raw.ultimate.is_some_and(|u| u != 0),
            sigs,
            ca,
        }))
    }

    fn references_by_id(&self, id: i64, text: &str) -> Result<BTreeSet<StorePath>, DbError> {
        let q = |source| query_err("querying references", text, source);
        let mut stmt = self.conn.prepare_cached(QUERY_REFERENCES).map_err(q)?;
        let rows = stmt
            .query_map([id], |row| row.get::<_, String>(0))
            .map_err(q)?;
        let mut out = BTreeSet::new();
        for row in rows {
            out.insert(self.parse_path(row.map_err(q)?, text, "Refs.reference")?);
        }
        Ok(out)
    }

    /// The references of `path`; empty if it is not valid.
    pub fn references(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let text = self.display(path);
        let id = valid_path_id(&self.conn, &text)
            .map_err(|source| query_err("querying references", &text, source))?;
        match id {
            Some(id) => self.references_by_id(id, &text),
            None => Ok(BTreeSet::new()),
        }
    }

    /// The valid paths that refer to `path` (including itself if it refers to
    /// itself); empty if it is not valid.
    pub fn referrers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let text = self.display(path);
        self.path_column_query(QUERY_REFERRERS, &text, "querying referrers", 0)
    }

    /// The valid derivations that name `path` as one of their outputs.
    pub fn valid_derivers(&self, path: &StorePath) -> Result<BTreeSet<StorePath>, DbError> {
        let text = self.display(path);
        self.path_column_query(QUERY_VALID_DERIVERS, &text, "querying valid derivers", 1)
    }

    fn path_column_query(
        &self,
        sql: &str,
        text: &str,
        query: &'static str,
        column: usize,
    ) -> Result<BTreeSet<StorePath>, DbError> {
        let q = |source| query_err(query, text, source);
        let mut stmt = self.conn.prepare_cached(sql).map_err(q)?;
        let rows = stmt
            .query_map([text], |row| row.get::<_, String>(column))
            .map_err(q)?;
        let mut out = BTreeSet::new();
        for row in rows {
            out.insert(self.parse_path(row.map_err(q)?, text, "path")?);
        }
        Ok(out)
    }

    /// The outputs a valid derivation names, by output name (outputs whose path is
    /// not known before building are absent). Fails with [`DbError::NotValid`] if
    /// `drv` is not valid.
    pub fn derivation_outputs(
        &self,
        drv: &StorePath,
    ) -> Result<BTreeMap<String, StorePath>, DbError> {
        let text = self.display(drv);
        let q = |source| query_err("querying derivation outputs", &text, source);
        let id = valid_path_id(&self.conn, &text)
            .map_err(q)?
            .ok_or_else(|| DbError::NotValid { path: text.clone() })?;
        let mut stmt = self
            .conn
            .prepare_cached(QUERY_DERIVATION_OUTPUTS)
            .map_err(q)?;
        let rows = stmt
            .query_map([id], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
            })
            .map_err(q)?;
        let mut out = BTreeMap::new();
        for row in rows {
            let (name, path) = row.map_err(q)?;
            out.insert(
                name,
                self.parse_path(path, &text, "DerivationOutputs.path")?,
            );
        }
        Ok(out)
    }

    /// The valid path whose hash part is `hash_part`, if any (Nix's
    /// `queryPathFromHashPart`: the first path at or after `<storeDir>/<hash part>`,
    /// if it starts with that prefix).
    pub fn path_from_hash_part(&self, hash_part: &str) -> Result<Option<StorePath>, DbError> {
        if hash_part.len() != HASH_PART_LEN || !hash_part.bytes().all(base32::is_base32_char) {
            return Err(DbError::InvalidHashPart {
                hash_part: hash_part.chars().take(64).collect(),
            });
        }
        let prefix = format!("{}/{}", self.store_dir, hash_part);
        let q = |source| query_err("querying path from hash part", hash_part, source);
        let found: Option<String> = self
            .conn
            .prepare_cached(QUERY_PATH_FROM_HASH_PART)
            .and_then(|mut s| s.query_row([&prefix], |row| row.get(0)).optional())
            .map_err(q)?;
        match found {
            Some(p) if p.starts_with(&prefix) => {
                let text = p.clone();
                Ok(Some(self.parse_path(p, &text, "path")?))
            }
            _ => Ok(None),
        }
    }

    /// Every valid path.
    pub fn all_valid_paths(&self) -> Result<BTreeSet<StorePath>, DbError> {
        let q = |source| DbError::QueryAllValidPaths { source };
        let mut stmt = self.conn.prepare_cached(QUERY_ALL_VALID_PATHS).map_err(q)?;
        let rows = stmt
            .query_map([], |row| row.get::<_, String>(0))
            .map_err(q)?;
        let mut out = BTreeSet::new();
        for row in rows {
            let p = row.map_err(q)?;
            let text = p.clone();
            out.insert(self.parse_path(p, &text, "path")?);
        }
        Ok(out)
    }

    /// Every valid path with its references and deriver, read in two scans inside
    /// one read transaction (so they agree): the collector's liveness pass over the
    /// whole store, without one query per path.
    pub fn reference_graph(&self) -> Result<BTreeMap<StorePath, GraphNode>, DbError> {
        let q = |source| DbError::QueryAllValidPaths { source };
        let tx = self.conn.unchecked_transaction().map_err(q)?;
        let mut by_id = std::collections::HashMap::new();
        let mut graph = BTreeMap::new();
        {
            let mut stmt = tx.prepare_cached(QUERY_ALL_PATHS_AND_DERIVERS).map_err(q)?;
            let mut rows = stmt.query([]).map_err(q)?;
            while let Some(row) = rows.next().map_err(q)? {
                let id: i64 = row.get(0).map_err(q)?;
                let text: String = row.get(1).map_err(q)?;
                let deriver: Option<String> = row.get(2).map_err(q)?;
                let path = self.parse_path(text.clone(), &text, "path")?;
                let deriver = match deriver {
                    Some(d) if !d.is_empty() => Some(self.parse_path(d, &text, "deriver")?),
                    _ => None,
                };
                by_id.insert(id, path.clone());
                graph.insert(
                    path,
                    GraphNode {
                        references: BTreeSet::new(),
                        deriver,
                    },
                );
            }
        }
        {
            let mut stmt = tx.prepare_cached(QUERY_ALL_REFS).map_err(q)?;
            let mut rows = stmt.query([]).map_err(q)?;
            while let Some(row) = rows.next().map_err(q)? {
                let referrer: i64 = row.get(0).map_err(q)?;
                let reference: i64 = row.get(1).map_err(q)?;
                // Foreign keys make both ends valid paths.
                if let (Some(from), Some(to)) = (by_id.get(&referrer), by_id.get(&reference)) {
                    if let Some(node) = graph.get_mut(from) {
                        node.references.insert(to.clone());
                    }
                }
            }
        }
        tx.finish().map_err(q)?;
        Ok(graph)
    }

    /// The subset of `paths` that is valid, asked in a few statements rather than one
    /// per path (the collector's re-check of the paths it is about to delete).
    pub fn valid_subset<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<BTreeSet<StorePath>, DbError> {
        let texts: Vec<String> = paths.into_iter().map(|p| self.display(p)).collect();
        let mut out = BTreeSet::new();
        for chunk in texts.chunks(MAX_IN_LIST) {
            let q = |source| query_err("querying validity", &chunk[0], source);
            let sql = format!(
                "select path from ValidPaths where path in ({})",
                placeholders(chunk.len())
            );
            let mut stmt = self.conn.prepare_cached(&sql).map_err(q)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(chunk), |row| {
                    row.get::<_, String>(0)
                })
                .map_err(q)?;
            for row in rows {
                let text = row.map_err(q)?;
                let context = text.clone();
                out.insert(self.parse_path(text, &context, "path")?);
            }
        }
        Ok(out)
    }

    /// The valid referrers of each of `paths` that has any (self-references
    /// included), asked in a few statements rather than one per path.
    pub fn referrers_of_many<'p>(
        &self,
        paths: impl IntoIterator<Item = &'p StorePath>,
    ) -> Result<BTreeMap<StorePath, BTreeSet<StorePath>>, DbError> {
        let texts: Vec<String> = paths.into_iter().map(|p| self.display(p)).collect();
        let mut out: BTreeMap<StorePath, BTreeSet<StorePath>> = BTreeMap::new();
        for chunk in texts.chunks(MAX_IN_LIST) {
            let q = |source| query_err("querying referrers", &chunk[0], source);
            let sql = format!(
                "select t.path, r.path from ValidPaths t join Refs on Refs.reference = t.id \
                 join ValidPaths r on Refs.referrer = r.id where t.path in ({})",
                placeholders(chunk.len())
            );
            let mut stmt = self.conn.prepare_cached(&sql).map_err(q)?;
            let rows = stmt
                .query_map(rusqlite::params_from_iter(chunk), |row| {
                    Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?))
                })
                .map_err(q)?;
            for row in rows {
                let (target, referrer) = row.map_err(q)?;
                let context = target.clone();
                let target = self.parse_path(target, &context, "path")?;
                let referrer = self.parse_path(referrer, &context, "Refs.referrer")?;
                out.entry(target).or_default().insert(referrer);
            }
        }
        Ok(out)
    }

    /// Makes `paths` invalid in one transaction, deleting their rows, references and
    /// derivation outputs. Referrers must come before the paths they refer to (or be
    /// invalidated earlier): a path still referred to by a valid path cannot be
    /// invalidated, and then nothing is.
    pub fn invalidate_paths(&mut self, paths: &[StorePath]) -> Result<(), DbError> {
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| DbError::Transaction {
                action: "beginning",
                source,
            })?;
        for path in paths {
            let text = self.store_dir.display(path);
            tx.prepare_cached(INVALIDATE_PATH)
                .and_then(|mut s| s.execute([&text]))
                .map_err(|source| DbError::Invalidate { path: text, source })?;
        }
        tx.commit().map_err(|source| DbError::Transaction {
            action: "committing",
            source,
        })
    }

    /// Adds `sigs` to the signatures of a valid path (a set: duplicates are
    /// dropped).
    pub fn add_signatures(
        &mut self,
        path: &StorePath,
        sigs: impl IntoIterator<Item = String>,
    ) -> Result<(), DbError> {
        let text = self.store_dir.display(path);
        let err = |source| DbError::AddSignatures {
            path: text.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| DbError::Transaction {
                action: "beginning",
                source,
            })?;
        let current: Option<Option<String>> = tx
            .prepare_cached(QUERY_SIGS)
            .and_then(|mut s| s.query_row([&text], |row| row.get(0)).optional())
            .map_err(err)?;
        let Some(current) = current else {
            return Err(DbError::NotValid { path: text });
        };
        let mut set: BTreeSet<String> = current
            .unwrap_or_default()
            .split(' ')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        set.extend(sigs);
        tx.prepare_cached(UPDATE_SIGS)
            .and_then(|mut s| s.execute(params![join_sigs(&set), text]))
            .map_err(err)?;
        tx.commit().map_err(|source| DbError::Transaction {
            action: "committing",
            source,
        })
    }
}

struct RawInfo {
    id: i64,
    hash: String,
    registration_time: i64,
    deriver: Option<String>,
    nar_size: Option<i64>,
    ultimate: Option<i64>,
    sigs: Option<String>,
    ca: Option<String>,
}

fn valid_path_id(conn: &Connection, path: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(QUERY_VALID_PATH_ID)?
        .query_row([path], |row| row.get(0))
        .optional()
}

/// Paths named in one `in (...)` list: well below SQLite's limit on bound
/// parameters (999 before 3.32), and few distinct statement texts to cache.
const MAX_IN_LIST: usize = 256;

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    let mut s = "?, ".repeat(n);
    s.truncate(s.len().saturating_sub(2));
    s
}

fn join_sigs(sigs: &BTreeSet<String>) -> Option<String> {
    (!sigs.is_empty()).then(|| {
        sigs.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn query_err(query: &'static str, path: &str, source: rusqlite::Error) -> DbError {
    DbError::Query {
        query,
        path: path.to_owned(),
        source,
    }
}

fn corrupt(path: &str, column: &'static str, value: String, source: CorruptValue) -> DbError {
    DbError::CorruptRow {
        path: path.to_owned(),
        column,
        value,
        source: Box::new(source),
    }
}

fn run_pragma(conn: &Connection, sql: &str, setting: &'static str) -> Result<(), DbError> {
    // Some pragmas answer with a row and some do not; step once and ignore it.
    conn.prepare(sql)
        .and_then(|mut stmt| stmt.query([])?.next().map(|_| ()))
        .map_err(|source| DbError::Configure { setting, source })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn read_schema_version(path: &Path) -> Result<u32, DbError> {
    match fs::read_to_string(path) {
        Ok(text) => text
            .trim_end()
            .parse()
            .map_err(|_| DbError::ParseSchemaVersion {
                path: path.to_owned(),
                text: text.chars().take(64).collect(),
            }),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(source) => Err(DbError::ReadSchemaVersion {
            path: path.to_owned(),
            source,
        }),
    }
}

fn write_schema_version(path: &Path) -> Result<(), DbError> {
    // Written through a temporary file and renamed, so a crash never leaves an empty
    // or partial version file that would make the database unopenable.
    let err = |source| DbError::WriteSchemaVersion {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(NIX_SCHEMA_VERSION.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}

/// Finds a reference cycle between different paths of the batch (self-references
/// are allowed); returns a path on it.
fn check_acyclic(paths: &[Registration]) -> Result<(), &StorePath> {
    let index: BTreeMap<&StorePath, usize> = paths
        .iter()
        .enumerate()
        .map(|(i, r)| (&r.info.path, i))
        .collect();
    // 0 = unvisited, 1 = on the current DFS stack, 2 = done.
    let mut state = vec![0u8; paths.len()];
    for start in 0..paths.len() {
        if state[start] != 0 {
            continue;
        }
        // Iterative DFS: a malicious batch with a long chain must not overflow the stack.
        let mut stack: Vec<(usize, Vec<usize>)> = vec![(start, edges(paths, &index, start))];
        state[start] = 1;
        while let Some((node, pending)) = stack.last_mut() {
            let node = *node;
            match pending.pop() {
                Some(next) => match state[next] {
                    0 => {
                        state[next] = 1;
                        let e = edges(paths, &index, next);
                        stack.push((next, e));
                    }
                    1 => return Err(&paths[next].info.path),
                    _ => {}
                },
                None => {
                    state[node] = 2;
                    stack.pop();
                }
            }
        }
    }
    Ok(())
}

fn edges(paths: &[Registration], index: &BTreeMap<&StorePath, usize>, i: usize) -> Vec<usize> {
    paths[i]
        .info
        .references
        .iter()
        .filter(|r| **r != paths[i].info.path)
        .filter_map(|r| index.get(r).copied())
        .collect()
}
