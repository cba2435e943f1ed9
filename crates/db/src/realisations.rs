//! Realisations of content-addressed derivation outputs (the experimental
//! `ca-derivations` feature): Nix 2.8's `Realisations` and `RealisationsRefs` tables
//! (`nix@2.8.0:src/libstore/ca-specific-schema.sql`) and its statements on them
//! (`local-store.cc`: `RegisterRealisedOutput`, `UpdateRealisedOutput`,
//! `QueryRealisedOutput`, `QueryRealisationReferences`, `AddRealisationReference`).
//!
//! A realisation maps a derivation output, `sha256:<hex of the derivation's hash
//! modulo>!<output name>`, to the store path it was built to. The `drvPath` column
//! holds the `sha256:<hex>` hash, as Nix stores it, despite its name.

use std::collections::{BTreeMap, BTreeSet};

use rusqlite::{params, OptionalExtension, TransactionBehavior};
use unrooted_format::StorePath;

use crate::database::{query_err, Database};
use crate::error::DbError;

const REGISTER_REALISED_OUTPUT: &str = "insert into Realisations (drvPath, outputName, outputPath, signatures) values (?, ?, (select id from ValidPaths where path = ?), ?)";
const UPDATE_REALISED_OUTPUT: &str =
    "update Realisations set signatures = ? where drvPath = ? and outputName = ?";
const QUERY_REALISED_OUTPUT: &str = "select Realisations.id, Output.path, Realisations.signatures from Realisations inner join ValidPaths as Output on Output.id = Realisations.outputPath where drvPath = ? and outputName = ?";
const QUERY_REALISATION_REFERENCES: &str = "select drvPath, outputName from Realisations join RealisationsRefs on realisationReference = Realisations.id where referrer = ?";
const ADD_REALISATION_REFERENCE: &str = "insert or replace into RealisationsRefs (referrer, realisationReference) values ((select id from Realisations where drvPath = ? and outputName = ?), (select id from Realisations where drvPath = ? and outputName = ?))";

/// The most dependent realisations read for one realisation.
pub const MAX_DEPENDENT_REALISATIONS: usize = 1 << 16;

/// A derivation output's identity: the derivation's hash modulo as `sha256:<hex>`
/// and the output's name (Nix's `DrvOutput`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DrvOutputId {
    /// `sha256:<hex>`.
    pub drv_hash: String,
    /// The output's name.
    pub output_name: String,
}

/// Where a derivation output was realised (Nix's `Realisation`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    /// The output.
    pub id: DrvOutputId,
    /// The path it was built to (valid).
    pub out_path: StorePath,
    /// Signatures over the realisation.
    pub signatures: BTreeSet<String>,
    /// The realisations of its inputs it refers to, with their paths.
    pub dependent_realisations: BTreeMap<DrvOutputId, StorePath>,
}

impl Database {
    /// Whether this connection has the realisation tables (opened with
    /// `ca-derivations`).
    pub fn has_realisations(&self) -> bool {
        self.ca_schema
    }

    /// The realisation of `id`, with its dependent realisations; `None` when there
    /// is none or the realisation tables are not in use.
    pub fn query_realisation(&self, id: &DrvOutputId) -> Result<Option<Realisation>, DbError> {
        if !self.ca_schema {
            return Ok(None);
        }
        let label = format!("{}!{}", id.drv_hash, id.output_name);
        let q = |source| query_err("querying realisation", &label, source);
        let row = self
            .conn
            .prepare_cached(QUERY_REALISED_OUTPUT)
            .map_err(q)?
            .query_row(params![id.drv_hash, id.output_name], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    row.get::<_, String>(1)?,
                    row.get::<_, Option<String>>(2)?,
                ))
            })
            .optional()
            .map_err(q)?;
        let Some((row_id, path, sigs)) = row else {
            return Ok(None);
        };
        let out_path = self.parse_path(path, &label, "Realisations.outputPath")?;
        let signatures = sigs
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let mut dependent_realisations = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare_cached(QUERY_REALISATION_REFERENCES)
            .map_err(q)?;
        let refs = stmt
            .query_map([row_id], |row| {
                Ok(DrvOutputId {
                    drv_hash: row.get(0)?,
                    output_name: row.get(1)?,
                })
            })
            .map_err(q)?;
        for dep in refs.take(MAX_DEPENDENT_REALISATIONS) {
            let dep = dep.map_err(q)?;
            if let Some(path) = self.realised_path(&dep)? {
                dependent_realisations.insert(dep, path);
            }
        }
        Ok(Some(Realisation {
            id: id.clone(),
            out_path,
            signatures,
            dependent_realisations,
        }))
    }

    /// The path `id` was realised to, without its dependencies.
    fn realised_path(&self, id: &DrvOutputId) -> Result<Option<StorePath>, DbError> {
        let label = format!("{}!{}", id.drv_hash, id.output_name);
        let q = |source| query_err("querying realisation", &label, source);
        let path = self
            .conn
            .prepare_cached(QUERY_REALISED_OUTPUT)
            .map_err(q)?
            .query_row(params![id.drv_hash, id.output_name], |row| {
                row.get::<_, String>(1)
            })
            .optional()
            .map_err(q)?;
        path.map(|p| self.parse_path(p, &label, "Realisations.outputPath"))
            .transpose()
    }

    /// Records a realisation (Nix's `LocalStore::registerDrvOutput`): a new one gets
    /// a row; one already recorded with the same path gets the union of the
    /// signatures; one recorded with another path is refused. Its dependent
    /// realisations must be recorded already, with the same paths. The output path
    /// must be valid.
    pub fn register_realisation(&mut self, r: &Realisation) -> Result<(), DbError> {
        let label = format!("{}!{}", r.id.drv_hash, r.id.output_name);
        if !self.ca_schema {
            return Err(DbError::NoRealisations { id: label });
        }
        let out = self.display(&r.out_path);
        if !self.is_valid(&r.out_path)? {
            return Err(DbError::NotValid { path: out });
        }
        let old = self.query_realisation(&r.id)?;
        let deps = self.check_dependents(r, &label)?;
        let w = |source| DbError::RegisterRealisation {
            id: label.clone(),
            source,
        };
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(|source| DbError::Transaction {
                action: "beginning",
                source,
            })?;
        match old {
            Some(old) if old.out_path != r.out_path => {
                return Err(DbError::IncompatibleRealisation {
                    id: label,
                    old: self.store_dir.display(&old.out_path),
                    new: out,
                })
            }
            Some(old) => {
                let sigs: BTreeSet<&String> = old.signatures.iter().chain(&r.signatures).collect();
                let sigs: Vec<&str> = sigs.into_iter().map(String::as_str).collect();
                tx.prepare_cached(UPDATE_REALISED_OUTPUT)
                    .and_then(|mut s| {
                        s.execute(params![sigs.join(" "), r.id.drv_hash, r.id.output_name])
                    })
                    .map_err(w)?;
            }
            None => {
                let sigs: Vec<&str> = r.signatures.iter().map(String::as_str).collect();
                tx.prepare_cached(REGISTER_REALISED_OUTPUT)
                    .and_then(|mut s| {
                        s.execute(params![
                            r.id.drv_hash,
                            r.id.output_name,
                            out,
                            sigs.join(" ")
                        ])
                    })
                    .map_err(w)?;
            }
        }
        for dep in deps {
            tx.prepare_cached(ADD_REALISATION_REFERENCE)
                .and_then(|mut s| {
                    s.execute(params![
                        r.id.drv_hash,
                        r.id.output_name,
                        dep.drv_hash,
                        dep.output_name
                    ])
                })
                .map_err(w)?;
        }
        tx.commit().map_err(|source| DbError::Transaction {
            action: "committing",
            source,
        })
    }

    /// The dependent realisations of `r`, each recorded with the path `r` names.
    fn check_dependents<'r>(
        &self,
        r: &'r Realisation,
        label: &str,
    ) -> Result<Vec<&'r DrvOutputId>, DbError> {
        let mut deps = Vec::with_capacity(r.dependent_realisations.len());
        for (dep, path) in &r.dependent_realisations {
            let dep_label = format!("{}!{}", dep.drv_hash, dep.output_name);
            match self.realised_path(dep)? {
                Some(p) if p == *path => deps.push(dep),
                Some(_) => {
                    return Err(DbError::MismatchedDependentRealisation {
                        id: label.to_owned(),
                        dependency: dep_label,
                    })
                }
                None => {
                    return Err(DbError::MissingDependentRealisation {
                        id: label.to_owned(),
                        dependency: dep_label,
                    })
                }
            }
        }
        Ok(deps)
    }
}
