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
                | DerivationType::Fixed
                | DerivationType::Impure)
        )
}

/// `drv` with its input derivations replaced by their outputs' paths (as input
/// sources, and for each downstream placeholder in the builder, arguments and
/// environment), its deferred outputs given their paths, written to the store.
pub(super) fn resolve(
    store: &LocalStore,
    drv: &Derivation,
    shown: &str,
    impure_outputs: &super::ImpureOutputs,
) -> Result<(StorePath, Derivation), Failure> {
    let mut resolved = drv.clone();
    resolved.input_drvs.clear();
    let mut rewrites: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    for (input, wanted) in &drv.input_drvs {
        let input_drv = load_derivation(store, input)?;
        let known = input_outputs(store, drv, input, &input_drv, impure_outputs, shown)?;
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

/// Which realisations a realisation's dependencies are recorded with.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Dependents {
    /// None (what was built itself, `registerOutputs`).
    None,
    /// The realisations of the inputs' outputs the path refers to (a resolved
    /// derivation's outputs mapped back, `resolvedFinished`).
    FromInputs,
}

/// The outputs of input `input` (`input_drv`) of `drv`: an impure one's from its
/// build just before (a pure derivation other than a fixed-output one may not
/// depend on it), any other's from its `.drv` and realisations.
fn input_outputs(
    store: &LocalStore,
    drv: &Derivation,
    input: &StorePath,
    input_drv: &Derivation,
    impure_outputs: &super::ImpureOutputs,
    shown: &str,
) -> Result<BTreeMap<String, Option<StorePath>>, Failure> {
    if !matches!(input_drv.derivation_type(), Ok(DerivationType::Impure)) {
        return Ok(partial_output_paths(store, input_drv)?);
    }
    if !matches!(
        drv.derivation_type(),
        Ok(DerivationType::Impure | DerivationType::Fixed)
    ) {
        return Err(fail(
            Status::MiscFailure,
            format!(
                "pure derivation '{shown}' depends on impure derivation '{}'",
                store.print_path(input)
            ),
        ));
    }
    let map = impure_outputs
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    Ok(map
        .get(input)
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect()
        })
        .unwrap_or_default())
}

/// Records that each of `outputs` of `drv` was realised at its path, signed with
/// every key of `secret-key-files` (with `ca-derivations` only; Nix records
/// realisations of every pure derivation and signs them, `signRealisation`).
pub(super) fn register_realisations(
    store: &LocalStore,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
    key_files: &[std::path::PathBuf],
    dependents: Dependents,
) -> Result<(), Failure> {
    if !store.ca_derivations() {
        return Ok(());
    }
    let keys = super::outputs::read_secret_keys(key_files)?;
    let hashes = output_hashes(store, drv)?;
    let fixed = matches!(drv.derivation_type(), Ok(DerivationType::Fixed));
    for (name, path) in outputs {
        let Some(hash) = hashes.get(name) else {
            continue;
        };
        let mut r = Realisation {
            id: drv_output_id(hash, name),
            out_path: path.clone(),
            signatures: Default::default(),
            dependent_realisations: BTreeMap::new(),
        };
        if dependents == Dependents::FromInputs && !fixed {
            r.dependent_realisations = drv_output_references(store, drv, path)?;
        }
        let fingerprint = realisation_fingerprint(&r);
        r.signatures = keys
            .iter()
            .map(|k| k.sign(&fingerprint).to_string())
            .collect();
        store.register_realisation(&r).map_err(BuildError::from)?;
    }
    Ok(())
}

/// The most realisations walked for one output's dependencies.
const MAX_DEPENDENT_WALK: usize = 1 << 20;

/// Nix's `drvOutputReferences`: among the realisations of `drv`'s inputs and,
/// transitively, of their dependencies, those whose path `out_path` refers to. An
/// input output with a valid path but no realisation (built before the feature was
/// on) gets one first, as Nix's `checkPathValidity` records it.
fn drv_output_references(
    store: &LocalStore,
    drv: &Derivation,
    out_path: &StorePath,
) -> Result<BTreeMap<DrvOutputId, StorePath>, Failure> {
    let mut todo: Vec<Realisation> = Vec::new();
    for (input, names) in &drv.input_drvs {
        let input_drv = load_derivation(store, input)?;
        let hashes = output_hashes(store, &input_drv)?;
        for name in names {
            let id = hashes.get(name).map(|h| drv_output_id(h, name));
            let found = match &id {
                Some(id) => input_realisation(store, &input_drv, id)?,
                None => None,
            };
            let Some(r) = found else {
                return Err(fail(
                    Status::DependencyFailed,
                    format!(
                        "output '{name}' of derivation '{}' isn't built",
                        store.print_path(input)
                    ),
                ));
            };
            todo.push(r);
        }
    }
    let refs = store
        .query_path_info(out_path)
        .map_err(BuildError::from)?
        .map(|i| i.references)
        .unwrap_or_default();
    let mut seen: BTreeMap<DrvOutputId, StorePath> = BTreeMap::new();
    while let Some(r) = todo.pop() {
        if seen.len() >= MAX_DEPENDENT_WALK || seen.contains_key(&r.id) {
            continue;
        }
        for dep in r.dependent_realisations.keys() {
            match store.query_realisation(dep).map_err(BuildError::from)? {
                Some(d) => todo.push(d),
                None => {
                    return Err(fail(
                        Status::MiscFailure,
                        format!(
                            "Unrealised derivation '{}!{}'",
                            dep.drv_hash, dep.output_name
                        ),
                    ))
                }
            }
        }
        seen.insert(r.id, r.out_path);
    }
    seen.retain(|_, p| refs.contains(p));
    Ok(seen)
}

/// The realisation `id` of an input's output, recorded now from its static path
/// when that path is valid and none is recorded.
fn input_realisation(
    store: &LocalStore,
    input_drv: &Derivation,
    id: &DrvOutputId,
) -> Result<Option<Realisation>, Failure> {
    if let Some(r) = store.query_realisation(id).map_err(BuildError::from)? {
        return Ok(Some(r));
    }
    let Some(path) = input_drv
        .outputs
        .get(&id.output_name)
        .and_then(|o| o.path())
    else {
        return Ok(None);
    };
    if !store.is_valid_path(path).map_err(BuildError::from)? {
        return Ok(None);
    }
    let r = Realisation {
        id: id.clone(),
        out_path: path.clone(),
        signatures: Default::default(),
        dependent_realisations: BTreeMap::new(),
    };
    store.register_realisation(&r).map_err(BuildError::from)?;
    Ok(Some(r))
}

/// What a realisation's signatures sign (`Realisation::fingerprint`): its JSON
/// without signatures as nlohmann dumps it, keys sorted.
fn realisation_fingerprint(r: &Realisation) -> String {
    let text = |s: &str| serde_json::Value::String(s.to_owned()).to_string();
    let deps: BTreeMap<String, String> = r
        .dependent_realisations
        .iter()
        .map(|(k, v)| {
            (
                format!("{}!{}", k.drv_hash, k.output_name),
                v.to_base_name(),
            )
        })
        .collect();
    let deps: Vec<String> = deps
        .iter()
        .map(|(k, v)| format!("{}:{}", text(k), text(v)))
        .collect();
    format!(
        "{{\"dependentRealisations\":{{{}}},\"id\":{},\"outPath\":{}}}",
        deps.join(","),
        text(&format!("{}!{}", r.id.drv_hash, r.id.output_name)),
        text(&r.out_path.to_base_name())
    )
}
