//! Floating content-addressed outputs (experimental `ca-derivations`,
//! `docs/spec/store-formats.md` §4.7): the builder writes each output at a scratch
//! path (Nix's `makeFallbackPath`), and its final path follows from its content,
//! hashed modulo the scratch hash part (`HashModuloSink`); the self-references are
//! then rewritten to the final hash part (`registerOutputs`, `newInfoFromCA`, in
//! `nix@2.8.0:src/libstore/build/local-derivation-goal.cc`).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use unrooted_format::derivation::{Derivation, DerivationOutput, DerivationType};
use unrooted_format::refscan::{HashModuloSink, HashPart};
use unrooted_format::store_path::{output_path_name, StorePathName};
use unrooted_format::{nar, ContentAddress, FileIngestionMethod, HashAlgo, Hasher, StorePath};
use unrooted_store::{LocalStore, ValidPathInfo};

use super::scratch::rewrite_tree;
use super::{fail, Failure};
use crate::error::error_chain;
use crate::Status;

/// Whether `drv` has floating content-addressed outputs.
pub(crate) fn is_floating(drv: &Derivation) -> bool {
    matches!(drv.derivation_type(), Ok(DerivationType::Floating))
}

/// Whether `drv` is impure (`__impure`): its outputs are content-addressed after the
/// build as floating ones are, and it is built afresh every time.
pub(crate) fn is_impure(drv: &Derivation) -> bool {
    matches!(drv.derivation_type(), Ok(DerivationType::Impure))
}

/// Where the builder writes each output of the floating derivation `drv_path`: the
/// path of `rewrite:<drv base name>:name:<output>` with an all-zero hash.
pub(super) fn scratch_paths(
    store: &LocalStore,
    drv_path: &StorePath,
    drv: &Derivation,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let mut out = BTreeMap::new();
    for name in drv.outputs.keys() {
        let path_name = StorePathName::new(&output_path_name(&drv.name, name)).map_err(|e| {
            fail(
                Status::MiscFailure,
                format!("output '{name}' of '{}': {e}", store.print_path(drv_path)),
            )
        })?;
        let kind = format!("rewrite:{}:name:{name}", drv_path.to_base_name());
        out.insert(
            name.clone(),
            store
                .store_dir()
                .make_store_path(&kind, &[0u8; 32], &path_name),
        );
    }
    Ok(out)
}

/// A checked copy of an output: where it is and its record (at its scratch path,
/// references scanned against the scratch paths).
pub(super) type Copy = (PathBuf, ValidPathInfo);

/// Moves the outputs of a floating derivation from their scratch paths to their
/// content-addressed paths: in reference order, each copy gets the final hash parts
/// of the outputs done before it, is hashed modulo its own scratch hash part, and
/// has that hash part rewritten to its final one. `names` gives each copy's output.
pub(super) fn make_content_addressed(
    store: &LocalStore,
    drv: &Derivation,
    names: &[String],
    copies: &mut [Copy],
    shown: &str,
) -> Result<(), Failure> {
    let order = reference_order(names, copies, shown)?;
    let mut rewrites: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut finals: BTreeMap<StorePath, StorePath> = BTreeMap::new();
    for i in order {
        let (method, algo) = match drv.outputs.get(&names[i]) {
            Some(
                DerivationOutput::Floating { method, algo }
                | DerivationOutput::Impure { method, algo },
            ) => (*method, *algo),
            _ => {
                return Err(fail(
                    Status::MiscFailure,
                    format!("output '{}' of '{shown}' is not floating", names[i]),
                ))
            }
        };
        let (copy, info) = &mut copies[i];
        let scratch = info.path.clone();
        if !rewrites.is_empty() {
            rewrite_tree(copy, &rewrites).map_err(|e| rejected(&scratch, store, &e))?;
        }
        let got =
            hash_modulo(copy, method, algo, &scratch).map_err(|e| rejected(&scratch, store, &e))?;
        let self_ref = info.references.contains(&scratch);
        let others: BTreeSet<StorePath> = info
            .references
            .iter()
            .filter(|r| **r != scratch)
            .map(|r| finals.get(r).unwrap_or(r).clone())
            .collect();
        let final_path = store
            .store_dir()
            .make_fixed_output_path(method, &got, scratch.name(), &others, self_ref)
            .map_err(|e| rejected(&scratch, store, &e))?;
        let from = scratch.hash_part().as_bytes().to_vec();
        let to = final_path.hash_part().as_bytes().to_vec();
        if final_path != scratch {
            rewrite_tree(copy, &[(from.clone(), to.clone())])
                .map_err(|e| rejected(&scratch, store, &e))?;
        }
        let (nar_hash, nar_size) = nar_hash(copy).map_err(|e| rejected(&scratch, store, &e))?;
        info.path = final_path.clone();
        info.nar_hash = nar_hash;
        info.nar_size = nar_size;
        info.references = others;
        if self_ref {
            info.references.insert(final_path.clone());
        }
        info.ca = Some(ContentAddress::Fixed { method, hash: got });
        rewrites.push((from, to));
        finals.insert(scratch, final_path);
    }
    Ok(())
}

fn rejected(scratch: &StorePath, store: &LocalStore, e: &dyn std::error::Error) -> Failure {
    fail(
        Status::OutputRejected,
        format!(
            "content-addressing output '{}': {}",
            store.print_path(scratch),
            error_chain(e)
        ),
    )
}

/// The copies in an order where each comes after the outputs it refers to (Nix's
/// `topoSort` of the outputs); a cycle between outputs is an error.
fn reference_order(names: &[String], copies: &[Copy], shown: &str) -> Result<Vec<usize>, Failure> {
    let index: BTreeMap<&StorePath, usize> = copies
        .iter()
        .enumerate()
        .map(|(i, (_, info))| (&info.path, i))
        .collect();
    let deps: Vec<Vec<usize>> = copies
        .iter()
        .enumerate()
        .map(|(i, (_, info))| {
            info.references
                .iter()
                .filter_map(|r| index.get(r).copied())
                .filter(|&j| j != i)
                .collect()
        })
        .collect();
    let mut done = vec![false; copies.len()];
    let mut order = Vec::with_capacity(copies.len());
    while order.len() < copies.len() {
        let next = (0..copies.len()).find(|&i| !done[i] && deps[i].iter().all(|&j| done[j]));
        let Some(i) = next else {
            let stuck = (0..copies.len()).find(|&i| !done[i]).unwrap_or(0);
            let other = deps[stuck]
                .iter()
                .find(|&&j| !done[j])
                .copied()
                .unwrap_or(stuck);
            return Err(fail(
                Status::OutputRejected,
                format!(
                    "cycle detected in build of '{shown}' in the references of output '{}' from output '{}'",
                    names[other], names[stuck]
                ),
            ));
        };
        done[i] = true;
        order.push(i);
    }
    Ok(order)
}

/// Why an output could not be hashed.
#[derive(Debug, thiserror::Error)]
enum HashError {
    #[error("serialising")]
    Dump(#[source] nar::NarError),
    #[error("reading")]
    Read(#[source] io::Error),
    #[error("the output path should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)")]
    NotFlat,
}

/// The content hash of the output at `at`, modulo the hash part of `scratch`.
fn hash_modulo(
    at: &Path,
    method: FileIngestionMethod,
    algo: HashAlgo,
    scratch: &StorePath,
) -> Result<unrooted_format::Hash, HashError> {
    let mut modulus: HashPart = [0u8; 32];
    modulus.copy_from_slice(scratch.hash_part().as_bytes());
    let mut sink = HashModuloSink::new(algo, modulus);
    match method {
        FileIngestionMethod::Recursive => {
            nar::dump_path(at, &mut sink).map_err(HashError::Dump)?;
        }
        FileIngestionMethod::Flat => {
            let meta = fs::symlink_metadata(at).map_err(HashError::Read)?;
            if !meta.is_file() || meta.mode() & 0o100 != 0 {
                return Err(HashError::NotFlat);
            }
            let mut f = fs::File::open(at).map_err(HashError::Read)?;
            io::copy(&mut f, &mut sink).map_err(HashError::Read)?;
        }
    }
    Ok(sink.finish().hash)
}

/// The NAR hash (SHA-256) and size of the tree at `at`.
fn nar_hash(at: &Path) -> Result<(unrooted_format::Hash, u64), HashError> {
    struct Sink(Hasher, u64);
    impl io::Write for Sink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.update(buf);
            self.1 += buf.len() as u64;
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Sink(Hasher::new(HashAlgo::Sha256), 0);
    nar::dump_path(at, &mut sink).map_err(HashError::Dump)?;
    Ok((sink.0.finish(), sink.1))
}
