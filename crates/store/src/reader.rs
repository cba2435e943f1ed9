//! A store opened only to read it, by a process other than the one that owns it
//! (`unrooted serve` beside a running daemon): no lock is taken, nothing is created,
//! and a store without a database is an error rather than a new empty store.

use std::path::{Path, PathBuf};

use unrooted_db::{Database, DbOptions, ValidPathInfo};
use unrooted_format::{StoreDir, StorePath};

use crate::StoreError;

/// A read-only view of a store's database.
pub struct StoreReader {
    db: Database,
}

impl StoreReader {
    /// Opens the database in `db_dir` (the state directory's `db`) of the store at
    /// `store_dir`; fails with [`StoreError::NoDatabase`] when it was never made.
    pub fn open(db_dir: &Path, store_dir: StoreDir) -> Result<Self, StoreError> {
        if !db_dir.join("schema").exists() {
            return Err(StoreError::NoDatabase {
                path: PathBuf::from(db_dir),
            });
        }
        let db = Database::open(db_dir, store_dir, DbOptions::default())?;
        Ok(Self { db })
    }

    /// The valid path whose hash part is `hash_part`, with its metadata.
    pub fn path_info_by_hash_part(
        &self,
        hash_part: &str,
    ) -> Result<Option<ValidPathInfo>, StoreError> {
        match self.db.path_from_hash_part(hash_part)? {
            Some(path) => self.path_info(&path),
            None => Ok(None),
        }
    }

    /// The metadata of `path`, `None` when it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, StoreError> {
        Ok(self.db.path_info(path)?)
    }
}
