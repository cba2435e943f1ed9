//! Realisations over the protocol (experimental `ca-derivations`,
//! `docs/spec/worker-protocol.md` §5.8): RegisterDrvOutput, QueryRealisation, and
//! the derivation output maps that realisations complete
//! (`nix@2.8.0:src/libstore/daemon.cc`, `local-store.cc`).

use std::collections::{BTreeMap, BTreeSet};

use unrooted_format::signature::Signature;
use unrooted_format::{Hash, StorePath};
use unrooted_protocol::reply::write_realisations;
use unrooted_protocol::{DrvOutput, Realisation};
use unrooted_store::{DrvOutputId, LocalStore};

use super::{client, reply, Out, Result};
use crate::session::Session;

/// What Nix says when an operation needs `ca-derivations` and it is off.
pub(super) const CA_DISABLED: &str =
    "content-addressed derivations (ca-derivations) are not supported by unrooted yet";

/// Nix's `queryPartialDerivationOutputMap`: the outputs recorded with the `.drv`
/// and, with `ca-derivations`, every output, realised or `None`.
pub(crate) fn partial_output_map(
    store: &LocalStore,
    drv: &StorePath,
) -> Result<BTreeMap<String, Option<StorePath>>> {
    let mut map: BTreeMap<String, Option<StorePath>> = store
        .query_derivation_output_map(drv)?
        .into_iter()
        .map(|(k, v)| (k, Some(v)))
        .collect();
    if !store.ca_derivations() {
        return Ok(map);
    }
    let realised = unrooted_builder::load_derivation(store, drv)
        .and_then(|d| unrooted_builder::partial_output_paths(store, &d))
        .map_err(|e| client(super::chain(&e)))?;
    for (name, path) in realised {
        match path {
            Some(p) => {
                map.insert(name, Some(p));
            }
            None => {
                map.entry(name).or_insert(None);
            }
        }
    }
    Ok(map)
}

fn db_id(id: &DrvOutput) -> DrvOutputId {
    DrvOutputId {
        drv_hash: id.drv_hash.to_prefixed_base16(),
        output_name: id.output_name.clone(),
    }
}

fn wire_id(id: &DrvOutputId) -> Option<DrvOutput> {
    Some(DrvOutput {
        drv_hash: Hash::parse_prefixed(&id.drv_hash).ok()?,
        output_name: id.output_name.clone(),
    })
}

/// QueryRealisation: the realisation of a derivation output, if recorded.
pub(super) fn query_realisation(s: &Session<'_>, id: &DrvOutput, out: &mut Out) -> Result {
    let found = s
        .state
        .store
        .query_realisation(&db_id(id))?
        .map(|r| Realisation {
            id: id.clone(),
            out_path: r.out_path,
            signatures: r.signatures,
            dependent_realisations: r
                .dependent_realisations
                .iter()
                .filter_map(|(k, v)| Some((wire_id(k)?, v.clone())))
                .collect(),
        });
    reply(out, |w| write_realisations(w, &s.cx, found.as_ref()))
}

/// RegisterDrvOutput: records a realisation. An untrusted client's must carry a
/// valid signature by one of `trusted-public-keys` (unless `require-sigs` is off).
pub(super) fn register_drv_output(s: &Session<'_>, r: &Realisation, out: &mut Out) -> Result {
    let store = &s.state.store;
    if !store.ca_derivations() {
        return Err(client(CA_DISABLED));
    }
    if !s.trusted && store.config().require_sigs && !signed_by_trusted_key(store, r) {
        return Err(client(format!(
            "cannot register realisation '{}' because it lacks a valid signature",
            r.out_path
        )));
    }
    store.register_realisation(&unrooted_store::Realisation {
        id: db_id(&r.id),
        out_path: r.out_path.clone(),
        signatures: r.signatures.clone(),
        dependent_realisations: r
            .dependent_realisations
            .iter()
            .map(|(k, v)| (db_id(k), v.clone()))
            .collect(),
    })?;
    out.last()?;
    Ok(())
}

/// Whether one of the realisation's signatures is valid under a trusted key.
fn signed_by_trusted_key(store: &LocalStore, r: &Realisation) -> bool {
    let keys = &store.config().trusted_public_keys;
    let fingerprint = r.fingerprint();
    let sigs: BTreeSet<&String> = r.signatures.iter().collect();
    sigs.into_iter().any(|text| {
        Signature::parse(text).is_ok_and(|sig| {
            keys.get(sig.key_name())
                .is_some_and(|k| k.verify(&fingerprint, &sig))
        })
    })
}
