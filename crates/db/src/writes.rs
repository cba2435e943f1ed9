//! Writing the database: registering paths (with their references and derivation
//! outputs), updating records and signatures, invalidating paths.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use unrooted_format::{ContentAddress, StoreDir, StorePath};

use crate::database::{valid_path_id, Database};
use crate::error::DbError;
use crate::path_info::ValidPathInfo;

// Nix 2.8's statements (local-store.cc), so the same indexes serve the same queries.
const REGISTER_VALID_PATH: &str = "insert into ValidPaths (path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) values (?, ?, ?, ?, ?, ?, ?, ?)";
const UPDATE_PATH_INFO: &str =
    "update ValidPaths set narSize = ?, hash = ?, ultimate = ?, sigs = ?, ca = ? where path = ?";
const ADD_REFERENCE: &str = "insert or replace into Refs (referrer, reference) values (?, ?)";
const INVALIDATE_PATH: &str = "delete from ValidPaths where path = ?";
const ADD_DERIVATION_OUTPUT: &str =
    "insert or replace into DerivationOutputs (drv, id, path) values (?, ?, ?)";
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

impl Database {
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
            write_path_row(&tx, &store_dir, reg, now)?;
        }
        for reg in paths {
            write_references(&tx, &store_dir, reg)?;
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

/// The `ValidPaths` row of `reg` (updated when the path is valid already) and, for a
/// new `.drv`, its `DerivationOutputs` rows.
fn write_path_row(
    conn: &Connection,
    store_dir: &StoreDir,
    reg: &Registration,
    now: u64,
) -> Result<(), DbError> {
    let display = |p: &StorePath| store_dir.display(p);
    let info = &reg.info;
    let path = display(&info.path);
    let err = |source| DbError::RegisterPath {
        path: path.clone(),
        source,
    };
    let existing = valid_path_id(conn, &path).map_err(err)?;
    let nar_size = (info.nar_size != 0).then_some(info.nar_size);
    let ultimate = info.ultimate.then_some(1i64);
    let sigs = join_sigs(&info.sigs);
    let ca = info.ca.as_ref().map(ContentAddress::to_string);
    let hash = info.nar_hash.to_prefixed_base16();
    if existing.is_some() {
        conn.prepare_cached(UPDATE_PATH_INFO)
            .and_then(|mut s| s.execute(params![nar_size, hash, ultimate, sigs, ca, path]))
            .map_err(err)?;
        return Ok(());
    }
    let time = if info.registration_time == 0 {
        now
    } else {
        info.registration_time
    };
    let deriver = info.deriver.as_ref().map(display);
    conn.prepare_cached(REGISTER_VALID_PATH)
        .and_then(|mut s| {
            s.execute(params![
                path, hash, time, deriver, nar_size, ultimate, sigs, ca
            ])
        })
        .map_err(err)?;
    let id = conn.last_insert_rowid();
    for (output, out_path) in &reg.derivation_outputs {
        conn.prepare_cached(ADD_DERIVATION_OUTPUT)
            .and_then(|mut s| s.execute(params![id, output, display(out_path)]))
            .map_err(err)?;
    }
    Ok(())
}

/// The `Refs` rows of `reg`, whose references must be valid (or registered in the
/// same batch, before).
fn write_references(
    conn: &Connection,
    store_dir: &StoreDir,
    reg: &Registration,
) -> Result<(), DbError> {
    let path = store_dir.display(&reg.info.path);
    let err = |source| DbError::RegisterPath {
        path: path.clone(),
        source,
    };
    let referrer = valid_path_id(conn, &path)
        .map_err(err)?
        .ok_or_else(|| DbError::NotValid { path: path.clone() })?;
    for reference in &reg.info.references {
        let ref_text = store_dir.display(reference);
        let id = valid_path_id(conn, &ref_text)
            .map_err(err)?
            .ok_or_else(|| DbError::RegisterInvalidReference {
                path: path.clone(),
                reference: ref_text.clone(),
            })?;
        conn.prepare_cached(ADD_REFERENCE)
            .and_then(|mut s| s.execute(params![referrer, id]))
            .map_err(err)?;
    }
    Ok(())
}

fn join_sigs(sigs: &BTreeSet<String>) -> Option<String> {
    (!sigs.is_empty()).then(|| {
        sigs.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(" ")
    })
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
