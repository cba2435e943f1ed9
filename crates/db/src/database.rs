//! The connection: opening a store database with Nix's settings, creating its
//! schema, and what the queries and writes share.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use unrooted_format::{StoreDir, StorePath};

use crate::error::{CorruptValue, DbError};
use crate::schema::{
    BUSY_TIMEOUT, CA_SCHEMA_SQL, CA_SCHEMA_UPGRADE_2, CA_SCHEMA_UPGRADE_3, NIX_CA_SCHEMA_VERSION,
    NIX_SCHEMA_VERSION, SCHEMA_SQL, WAL_AUTOCHECKPOINT,
};

// Nix 2.8's statements (local-store.cc), so the same indexes serve the same queries.
const QUERY_VALID_PATH_ID: &str = "select id from ValidPaths where path = ?";

/// Settings that differ between Nix installations (`fsync-metadata`,
/// `use-sqlite-wal`); the defaults are Nix's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DbOptions {
    /// `pragma synchronous = normal` when true (default), `off` when false.
    pub fsync_metadata: bool,
    /// WAL journal (default) or `truncate`.
    pub use_wal: bool,
    /// The experimental feature `ca-derivations`: the realisation tables are
    /// created (or upgraded) as Nix 2.8 does and used (default false).
    pub ca_derivations: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self {
            fsync_metadata: true,
            use_wal: true,
            ca_derivations: false,
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
    pub(crate) conn: Connection,
    pub(crate) store_dir: StoreDir,
    /// Whether the realisation tables are in use.
    pub(crate) ca_schema: bool,
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
        let mut db = Self {
            conn,
            store_dir,
            ca_schema: false,
        };
        db.configure(options, true)?;
        if create {
            db.create_schema()?;
            write_schema_version(&schema_path)?;
        }
        if options.ca_derivations {
            db.migrate_ca_schema(Some(&db_dir.join("ca-schema")))?;
        }
        Ok(db)
    }

    /// A new, empty database in memory with schema 10 (for tests and tools).
    pub fn open_in_memory(store_dir: StoreDir) -> Result<Self, DbError> {
        Self::open_in_memory_with(store_dir, DbOptions::default())
    }

    /// A new, empty database in memory with schema 10 and, with
    /// [`DbOptions::ca_derivations`], the realisation tables.
    pub fn open_in_memory_with(store_dir: StoreDir, options: DbOptions) -> Result<Self, DbError> {
        let conn = Connection::open_in_memory().map_err(|source| DbError::Open {
            path: PathBuf::from(":memory:"),
            source,
        })?;
        let mut db = Self {
            conn,
            store_dir,
            ca_schema: false,
        };
        db.configure(options, false)?;
        db.create_schema()?;
        if options.ca_derivations {
            db.migrate_ca_schema(None)?;
        }
        Ok(db)
    }

    /// Nix 2.8's `migrateCASchema`: creates the realisation tables of a database
    /// without them, or upgrades them from an older version, and records the
    /// version in `version_file` (`db/ca-schema`).
    fn migrate_ca_schema(&mut self, version_file: Option<&Path>) -> Result<(), DbError> {
        let current = match version_file {
            Some(f) => read_schema_version(f)?,
            None => 0,
        };
        if current > NIX_CA_SCHEMA_VERSION {
            return Err(DbError::UnsupportedCaSchema {
                found: current,
                supported: NIX_CA_SCHEMA_VERSION,
            });
        }
        if current < NIX_CA_SCHEMA_VERSION {
            let err = |source| DbError::CreateCaSchema { source };
            if current == 0 {
                self.conn.execute_batch(CA_SCHEMA_SQL).map_err(err)?;
            }
            for (below, sql) in [(2, CA_SCHEMA_UPGRADE_2), (3, CA_SCHEMA_UPGRADE_3)] {
                if current != 0 && current < below {
                    let tx = self.conn.transaction().map_err(err)?;
                    tx.execute_batch(sql).map_err(err)?;
                    tx.commit().map_err(err)?;
                }
            }
            if let Some(f) = version_file {
                write_version(f, NIX_CA_SCHEMA_VERSION)?;
            }
        }
        self.ca_schema = true;
        Ok(())
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

    pub(crate) fn display(&self, path: &StorePath) -> String {
        self.store_dir.display(path)
    }

    pub(crate) fn parse_path(
        &self,
        text: String,
        row_path: &str,
        column: &'static str,
    ) -> Result<StorePath, DbError> {
        self.store_dir
            .parse_path(&text)
            .map_err(|e| corrupt(row_path, column, text, e.into()))
    }
}

pub(crate) fn valid_path_id(conn: &Connection, path: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached(QUERY_VALID_PATH_ID)?
        .query_row([path], |row| row.get(0))
        .optional()
}

pub(crate) fn query_err(query: &'static str, path: &str, source: rusqlite::Error) -> DbError {
    DbError::Query {
        query,
        path: path.to_owned(),
        source,
    }
}

pub(crate) fn corrupt(
    path: &str,
    column: &'static str,
    value: String,
    source: CorruptValue,
) -> DbError {
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
    write_version(path, NIX_SCHEMA_VERSION)
}

fn write_version(path: &Path, version: u32) -> Result<(), DbError> {
    // Written through a temporary file and renamed, so a crash never leaves an empty
    // or partial version file that would make the database unopenable.
    let err = |source| DbError::WriteSchemaVersion {
        path: path.to_owned(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(version.to_string().as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(err)?;
    fs::rename(&tmp, path).map_err(err)
}
