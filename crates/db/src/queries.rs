//! Reading the database: validity, path records, references and referrers,
//! derivers and derivation outputs, and the whole reference graph.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::OptionalExtension;
use unrooted_format::store_path::HASH_PART_LEN;
use unrooted_format::{base32, ContentAddress, Hash, StorePath};

use crate::database::{corrupt, query_err, valid_path_id, Database};
use crate::error::{CorruptValue, DbError};
use crate::path_info::ValidPathInfo;

// Nix 2.8's statements (local-store.cc), so the same indexes serve the same queries.
const QUERY_PATH_INFO: &str = "select id, hash, registrationTime, deriver, narSize, ultimate, sigs, ca from ValidPaths where path = ?";
const QUERY_REFERENCES: &str =
    "select path from Refs join ValidPaths on reference = id where referrer = ?";
const QUERY_REFERRERS: &str = "select path from Refs join ValidPaths on referrer = id where reference = (select id from ValidPaths where path = ?)";
const QUERY_VALID_DERIVERS: &str = "select v.id, v.path from DerivationOutputs d join ValidPaths v on d.drv = v.id where d.path = ?";
const QUERY_DERIVATION_OUTPUTS: &str = "select id, path from DerivationOutputs where drv = ?";
const QUERY_PATH_FROM_HASH_PART: &str = "select path from ValidPaths where path >= ? limit 1";
const QUERY_ALL_VALID_PATHS: &str = "select path from ValidPaths";
const QUERY_ALL_PATHS_AND_DERIVERS: &str = "select id, path, deriver from ValidPaths";
const QUERY_ALL_REFS: &str = "select referrer, reference from Refs";

/// A valid path's references and deriver, as [`Database::reference_graph`] lists
/// them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GraphNode {
    /// The valid paths it refers to (itself included if it refers to itself).
    pub references: BTreeSet<StorePath>,
    /// Its deriver as recorded (valid or not).
    pub deriver: Option<StorePath>,
}

impl Database {
    /// Whether `path` is valid.
    pub fn is_valid(&self, path: &StorePath) -> Result<bool, DbError> {
        let text = self.display(path);
        valid_path_id(&self.conn, &text)
            .map(|id| id.is_some())
            .map_err(|source| query_err("querying validity", &text, source))
    }

    /// The record of `path`, or `None` if it is not valid.
    pub fn path_info(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, DbError> {
        // The row and its references are two statements: outside a transaction
        // each would take and drop the database's shared lock (two `fcntl`s each)
        // and could see different snapshots; inside one read transaction they take
        // it once and see one snapshot. Inside a caller's transaction, that one.
        if !self.conn.is_autocommit() {
            return self.path_info_in_snapshot(path);
        }
        let q = |source| query_err("beginning a read transaction", "", source);
        self.conn
            .prepare_cached("begin")
            .and_then(|mut s| s.execute([]))
            .map_err(q)?;
        let result = self.path_info_in_snapshot(path);
        // A read transaction has nothing to keep: ending it cannot lose anything,
        // and it must end even when the query failed, or the connection would pin
        // its snapshot (and the WAL) for ever.
        let end = self
            .conn
            .prepare_cached("commit")
            .and_then(|mut s| s.execute([]));
        if end.is_err() && !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("rollback");
        }
        result
    }

    fn path_info_in_snapshot(&self, path: &StorePath) -> Result<Option<ValidPathInfo>, DbError> {
        let text = self.display(path);
        let Some(raw) = self.raw_info(&text)? else {
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

    /// The `ValidPaths` row of the path printed as `text`, as stored.
    fn raw_info(&self, text: &str) -> Result<Option<RawInfo>, DbError> {
        let q = |source| query_err("querying path info", text, source);
        let mut stmt = self.conn.prepare_cached(QUERY_PATH_INFO).map_err(q)?;
        stmt.query_row([text], |row| {
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
        .map_err(q)
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

/// Paths named in one `in (...)` list: well below SQLite's limit on bound
/// parameters (999 before 3.32), and few distinct statement texts to cache.
const MAX_IN_LIST: usize = 256;

/// `?, ?, …` with `n` placeholders.
fn placeholders(n: usize) -> String {
    let mut s = "?, ".repeat(n);
    s.truncate(s.len().saturating_sub(2));
    s
}
