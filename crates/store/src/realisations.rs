//! Realisations of content-addressed derivation outputs (experimental
//! `ca-derivations`, `docs/spec/store-formats.md` §4.7): recorded and queried in the
//! database's `Realisations` tables, which exist when the store was opened with
//! [`unrooted_db::DbOptions::ca_derivations`].

use std::collections::BTreeMap;

use unrooted_db::{DrvOutputId, Realisation};
use unrooted_format::StorePath;

use crate::error::StoreError;
use crate::store::LocalStore;

impl LocalStore {
    /// Whether the store records realisations (`ca-derivations` is on).
    pub fn ca_derivations(&self) -> bool {
        self.config.db.ca_derivations
    }

    /// The realisation of `id`, if one is recorded.
    pub fn query_realisation(&self, id: &DrvOutputId) -> Result<Option<Realisation>, StoreError> {
        Ok(self.reader()?.query_realisation(id)?)
    }

    /// Records a realisation (Nix's `registerDrvOutput`); see
    /// [`unrooted_db::Database::register_realisation`].
    pub fn register_realisation(&self, r: &Realisation) -> Result<(), StoreError> {
        Ok(self.db().register_realisation(r)?)
    }

    /// Nix's `queryPartialDerivationOutputMap`: the output paths the `.drv` names,
    /// and, when realisations are recorded, each output of `hashes` (the
    /// derivation's hash modulo per output, `sha256:<hex>`) realised, `None` where it
    /// is not.
    pub fn query_partial_derivation_output_map(
        &self,
        drv: &StorePath,
        hashes: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, Option<StorePath>>, StoreError> {
        let mut out: BTreeMap<String, Option<StorePath>> = self
            .query_derivation_output_map(drv)?
            .into_iter()
            .map(|(name, path)| (name, Some(path)))
            .collect();
        if !self.ca_derivations() {
            return Ok(out);
        }
        for (name, hash) in hashes {
            let id = DrvOutputId {
                drv_hash: hash.clone(),
                output_name: name.clone(),
            };
            match self.query_realisation(&id)? {
                Some(r) => {
                    out.insert(name.clone(), Some(r.out_path));
                }
                None => {
                    out.entry(name.clone()).or_insert(None);
                }
            }
        }
        Ok(out)
    }
}
