//! Content-addressed derivations' outputs and inputs (experimental
//! `ca-derivations`, `docs/spec/store-formats.md` §4.7): output paths known from
//! realisations, the resolution of a derivation against its inputs' realisations
//! (Nix's `Derivation::tryResolve`), and the realisations recorded after a build
//! (`nix@2.8.0:src/libstore/build/derivation-goal.cc`, `registerOutputs`,
//! `resolvedFinished`).

use std::collections::BTreeMap;

use unrooted_format::derivation::{downstream_placeholder, Derivation, DerivationType, DrvHasher};
use unrooted_format::{Hash, StorePath};
use unrooted_store::{DrvOutputId, LocalStore, Realisation};

use super::{fail, load_derivation, output_hashes, Failure};
use crate::env::rewrite;
use crate::error::BuildError;
use crate::Status;

/// A realisation id: `sha256:<hex of the hash modulo>` and the output name.
fn drv_output_id(hash: &[u8; 32], output: &str) -> DrvOutputId {
    DrvOutputId {
        drv_hash: format!("sha256:{}", Hash::sha256(*hash).to_base16()),
        output_name: output.to_owned(),
    }
}

/// Nix's `queryPartialDerivationOutputMap` for a loaded derivation: the paths its
/// outputs name, and, when the store records realisations, the realised path of
/// each output that names none; `None` where it is not known.
pub fn partial_output_paths(
    store: &LocalStore,
    drv: &Derivation,
) -> Result<BTreeMap<String, Option<StorePath>>, BuildError> {
    let mut out: BTreeMap<String, Option<StorePath>> = drv
        .outputs
        .iter()
        .map(|(name, o)| (name.clone(), o.path().cloned()))
        .collect();
    if !store.ca_derivations() || out.values().all(Option::is_some) {
        return Ok(out);
    }
    for (name, hash) in output_hashes(store, drv)? {
        if let Some(slot @ None) = out.get_mut(&name) {
            if let Some(r) = store.query_realisation(&drv_output_id(&hash, &name))? {
                *slot = Some(r.out_path);
            }
        }
    }
    Ok(out)
}

/// Whether `drv` is built through its resolved form: with `ca-derivations`, a
/// deferred, floating or fixed-output derivation with input derivations (Nix 2.8
/// resolves fixed-output ones too when the feature is on).
pub(super) fn needs_resolving(store: &LocalStore, drv: &Derivation) -> bool {
    store.ca_derivations()
        && !drv.input_drvs.is_empty()
        && matches!(
            drv.derivation_type(),
            Ok(DerivationType::DeferredInputAddressed
                | DerivationType::Floating
                | DerivationType::Fixed)
        )
}

/// `drv` with its input derivations replaced by their outputs' paths (as input
/// sources, and for each downstream placeholder in the builder, arguments and
/// environment), its deferred outputs given their paths, written to the store.
pub(super) fn resolve(
    store: &LocalStore,
    drv: &Derivation,
    shown: &str,
) -> Result<(StorePath, Derivation), Failure> {
    let mut resolved = drv.clone();
    resolved.input_drvs.clear();
    let mut rewrites: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (input, wanted) in &drv.input_drvs {
        let input_drv = load_derivation(store, input)?;
        let known = partial_output_paths(store, &input_drv)?;
        for name in wanted {
            let Some(Some(path)) = known.get(name) else {
                return Err(fail(
                    Status::DependencyFailed,
                    format!(
                        "output '{name}' of input '{}' missing, aborting the resolving of '{shown}'",
                        store.print_path(input)
                    ),
                ));
            };
            rewrites.push((
                downstream_placeholder(input, name).into_bytes(),
                store.print_path(path).into_bytes(),
            ));
            resolved.input_srcs.insert(path.clone());
        }
    }
    resolved.builder = rewrite(&resolved.builder, &rewrites);
    for arg in resolved.args.iter_mut() {
        *arg = rewrite(arg, &rewrites);
    }
    resolved.env = std::mem::take(&mut resolved.env)
        .into_iter()
        .map(|(k, v)| (rewrite(&k, &rewrites), rewrite(&v, &rewrites)))
        .collect();
    let dir = store.store_dir().clone();
    let mut hasher = DrvHasher::new(dir.clone(), |p: &StorePath| load_derivation(store, p));
    hasher
        .fill_output_paths(&mut resolved)
        .map_err(|e| BuildError::Hash {
            drv: shown.to_owned(),
            source: Box::new(e),
        })?;
    let text = resolved.to_aterm(&dir);
    let name = format!("{}{}", drv.name, unrooted_format::derivation::DRV_EXTENSION);
    let info = store
        .add_text(&name, &text, &resolved.input_srcs, false)
        .map_err(BuildError::from)?;
    Ok((info.path, resolved))
}

/// Records that each of `outputs` of `drv` was realised at its path (with
/// `ca-derivations` only; Nix records realisations of every pure derivation).
pub(super) fn register_realisations(
    store: &LocalStore,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
) -> Result<(), BuildError> {
    if !store.ca_derivations() {
        return Ok(());
    }
    let hashes = output_hashes(store, drv)?;
    for (name, path) in outputs {
        let Some(hash) = hashes.get(name) else {
            continue;
        };
        store.register_realisation(&Realisation {
            id: drv_output_id(hash, name),
            out_path: path.clone(),
            signatures: Default::default(),
            dependent_realisations: BTreeMap::new(),
        })?;
    }
    Ok(())
}
