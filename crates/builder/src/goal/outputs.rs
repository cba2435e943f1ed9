//! Finishing outputs: copy, hash, scan, check, sign and register what a builder
//! left (`docs/spec/store-formats.md` §5).

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use unrooted_format::derivation::{Derivation, DerivationOutput};
use unrooted_format::refscan::RefScanner;
use unrooted_format::{
    nar, ContentAddress, FileIngestionMethod, Hash, HashAlgo, Hasher, StorePath,
};
use unrooted_sandbox::remove_tree;
use unrooted_store::{LocalStore, ValidPathInfo};

use super::start::BuildJob;
use super::{fail, Failure, GoalCx};
use crate::checks::{check_outputs, BuiltOutput, OutputCheckError};
use crate::error::{error_chain, BuildError};
use crate::{BuildMode, Status};

/// A `Write` computing the NAR hash, size, references and an optional second hash.
struct OutputSink {
    nar: Hasher,
    size: u64,
    refs: RefScanner,
    extra: Option<Hasher>,
}

impl Write for OutputSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.nar.update(buf);
        self.size += buf.len() as u64;
        self.refs.update(buf);
        if let Some(h) = &mut self.extra {
            h.update(buf);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Fresh copies of a build's outputs in the store's private temporary area; whatever
/// of them was not installed (renamed into the store) is removed when this is dropped.
#[derive(Default)]
struct Copies(Vec<PathBuf>);

impl Copies {
    /// A new name for the next copy (nothing exists there yet).
    fn add(&mut self, store: &LocalStore) -> &Path {
        self.0.push(store.new_temp_path("output"));
        self.0.last().map_or(Path::new(""), PathBuf::as_path)
    }
}

impl Drop for Copies {
    fn drop(&mut self) {
        for p in &self.0 {
            if let Err(e) = remove_tree(p) {
                tracing::warn!("removing the output copy {}: {e}", p.display());
            }
        }
    }
}

/// Checks, scans and registers the outputs of `job` named in `outputs`, found at
/// `locations` (`docs/spec/store-formats.md` §5); they may refer to the inputs'
/// closure and to all of the job's outputs.
///
/// What a builder left is never registered itself: each output is first copied into
/// new inodes in the store's private temporary area ([`nar::copy_tree`]), and the
/// copy is what is hashed, scanned, checked and installed (issue 15, Nix
/// CVE-2024-27297). This runs once the sandbox and all of the build's processes are
/// gone, but a descriptor or a shared mapping of an output that a builder handed
/// out (to another user's process, over an abstract socket of the host network that
/// fixed-output builds share), or a hard link of it, outlives the build; none of them
/// reaches the copy. The copy has no hard links, setuid or setgid bits, owners or
/// extended attributes of the builder's (only a NAR's contents), and the original is
/// removed with the sandbox root (or, unsandboxed, here, before the copy takes its
/// place). Copying costs one more write of each output: see the crate's
/// documentation for what that costs a build.
pub(super) fn finish_outputs(
    cx: &GoalCx<'_>,
    job: &BuildJob<'_>,
    outputs: &BTreeMap<String, StorePath>,
    locations: &BTreeMap<String, PathBuf>,
) -> Result<BTreeMap<String, StorePath>, Failure> {
    let store = cx.store;
    let shown = store.print_path(job.drv_path);
    let mut candidates: BTreeSet<StorePath> = job.closure.clone();
    candidates.extend(job.outputs.values().cloned());
    let mut infos: Vec<(PathBuf, ValidPathInfo)> = Vec::new();
    let mut copies = Copies::default();
    for (name, path) in outputs {
        let found = FoundOutput {
            name,
            path,
            at: &locations[name],
            printed: store.print_path(path),
        };
        check_left_output(&found, &shown)?;
        let copy = copies.add(store);
        let info = copy_and_scan(store, job, &found, copy, &candidates, &shown)?;
        infos.push((copy.to_path_buf(), info));
    }
    check_reference_constraints(store, job.drv, outputs, &infos, &shown)?;
    remove_unsandboxed_originals(store, outputs, locations)?;
    if super::floating::is_floating(job.drv) || super::floating::is_impure(job.drv) {
        let names: Vec<String> = outputs.keys().cloned().collect();
        super::floating::make_content_addressed(store, job.drv, &names, &mut infos, &shown)?;
    }
    // Each output's registered path, by name (a floating output's is only known now).
    let registered: BTreeMap<String, StorePath> = outputs
        .keys()
        .cloned()
        .zip(infos.iter().map(|(_, info)| info.path.clone()))
        .collect();
    if cx.mode == BuildMode::Check {
        compare_with_valid(store, &infos, &shown)?;
        return Ok(registered);
    }
    register(cx, job, &mut infos)?;
    Ok(registered)
}

/// An output where the builder left it.
struct FoundOutput<'a> {
    /// The output's name.
    name: &'a str,
    /// Its store path.
    path: &'a StorePath,
    /// Where it is on disk.
    at: &'a Path,
    /// Its store path, printed.
    printed: String,
}

/// The output must be there, not group- or world-writable, and is canonicalised in
/// place.
fn check_left_output(found: &FoundOutput<'_>, shown: &str) -> Result<(), Failure> {
    let FoundOutput {
        name, at, printed, ..
    } = found;
    let meta = fs::symlink_metadata(at).map_err(|_| {
        fail(
            Status::PermanentFailure,
            format!("builder for '{shown}' failed to produce output path for output '{name}' at '{printed}'"),
        )
    })?;
    if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
        return Err(fail(
            Status::OutputRejected,
            format!("suspicious ownership or permission on '{printed}' for output '{name}'; rejecting this build output"),
        ));
    }
    unrooted_store::canonicalise::canonicalise_path_metadata(at).map_err(|e| {
        fail(
            Status::OutputRejected,
            format!("output '{printed}' of '{shown}': {}", error_chain(&e)),
        )
    })
}

/// Copies the output to `copy` and describes the copy: its NAR hash and size, its
/// references among `candidates`, and (fixed outputs) its checked content address.
fn copy_and_scan(
    store: &LocalStore,
    job: &BuildJob<'_>,
    found: &FoundOutput<'_>,
    copy: &Path,
    candidates: &BTreeSet<StorePath>,
    shown: &str,
) -> Result<ValidPathInfo, Failure> {
    let fixed = match job.drv.outputs.get(found.name) {
        Some(DerivationOutput::Fixed { method, hash, .. }) => Some((*method, *hash)),
        _ => None,
    };
    let extra = match fixed {
        Some((FileIngestionMethod::Recursive, h)) if h.algo() != HashAlgo::Sha256 => {
            Some(Hasher::new(h.algo()))
        }
        _ => None,
    };
    let mut sink = OutputSink {
        nar: Hasher::new(HashAlgo::Sha256),
        size: 0,
        refs: RefScanner::for_paths(candidates.iter()),
        extra,
    };
    // Everything below looks at the fresh copy only, which no builder process ever
    // had, and the copy is what gets installed.
    nar::copy_tree(found.at, copy, &mut sink).map_err(|e| {
        fail(
            Status::OutputRejected,
            format!(
                "output '{}' of '{shown}': {}",
                found.printed,
                error_chain(&e)
            ),
        )
    })?;
    let nar_hash = sink.nar.finish();
    let mut info = ValidPathInfo::new(found.path.clone(), nar_hash);
    info.nar_size = sink.size;
    info.references = sink.refs.found_paths(candidates.iter());
    info.deriver = Some(job.drv_path.clone());
    info.ultimate = true;
    if let Some((method, wanted)) = fixed {
        let recursive = sink.extra.map_or(nar_hash, Hasher::finish);
        let got = fixed_output_hash(found, copy, method, wanted, recursive)?;
        let hashes = FixedHashes {
            method,
            wanted,
            got,
        };
        check_fixed_output(store, found, copy, &info, &hashes, shown)?;
        info.ca = Some(ContentAddress::Fixed { method, hash: got });
    }
    Ok(info)
}

/// The hash of a fixed output's copy, by its method: `recursive` (the NAR's, in the
/// wanted algorithm) or the flat file's, which must be a non-executable regular file.
fn fixed_output_hash(
    found: &FoundOutput<'_>,
    copy: &Path,
    method: FileIngestionMethod,
    wanted: Hash,
    recursive: Hash,
) -> Result<Hash, Failure> {
    match method {
        FileIngestionMethod::Recursive => Ok(recursive),
        FileIngestionMethod::Flat => {
            let copied = fs::symlink_metadata(copy).map_err(BuildError::io("reading", copy))?;
            if !copied.is_file() || copied.mode() & 0o100 != 0 {
                return Err(fail(
                    Status::OutputRejected,
                    format!("output path '{}' should be a non-executable regular file since recursive hashing is not enabled (outputHashMode=flat)", found.printed),
                ));
            }
            hash_file(copy, wanted.algo())
        }
    }
}

/// A fixed output's hashes.
struct FixedHashes {
    /// How it is hashed.
    method: FileIngestionMethod,
    /// The hash the derivation names.
    wanted: Hash,
    /// The hash the copy has.
    got: Hash,
}

/// A fixed output must have the wanted hash (a mismatch is still registered under
/// the hash it got) and no references.
fn check_fixed_output(
    store: &LocalStore,
    found: &FoundOutput<'_>,
    copy: &Path,
    info: &ValidPathInfo,
    hashes: &FixedHashes,
    shown: &str,
) -> Result<(), Failure> {
    let FixedHashes {
        method,
        wanted,
        got,
    } = *hashes;
    if got != wanted {
        let ca = ContentAddress::Fixed { method, hash: got };
        register_what_it_got(store, copy, info, ca);
        return Err(fail(
            Status::OutputRejected,
            format!(
                "hash mismatch in fixed-output derivation '{shown}':\n  specified: {}\n     got:    {}",
                wanted.to_sri(),
                got.to_sri()
            ),
        ));
    }
    if !info.references.is_empty() {
        let refs: Vec<String> = info
            .references
            .iter()
            .map(|r| store.print_path(r))
            .collect();
        return Err(fail(
            Status::OutputRejected,
            format!(
                "the fixed-output derivation '{shown}' must not refer to store paths, but '{}' refers to {}",
                found.printed,
                refs.join(", ")
            ),
        ));
    }
    Ok(())
}

/// An unsandboxed builder wrote the store paths themselves; the copies go there.
fn remove_unsandboxed_originals(
    store: &LocalStore,
    outputs: &BTreeMap<String, StorePath>,
    locations: &BTreeMap<String, PathBuf>,
) -> Result<(), Failure> {
    for (name, path) in outputs {
        let at = &locations[name];
        if *at == store.real_path(path) {
            remove_tree(at).map_err(|source| BuildError::Remove {
                path: at.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

/// Checking (`--check`): each output must have the NAR hash of the valid one.
fn compare_with_valid(
    store: &LocalStore,
    infos: &[(PathBuf, ValidPathInfo)],
    shown: &str,
) -> Result<(), Failure> {
    for (_, info) in infos {
        let old = store
            .query_path_info(&info.path)
            .map_err(BuildError::from)?
            .ok_or_else(|| {
                fail(
                    Status::MiscFailure,
                    format!("some outputs of '{shown}' are not valid, so checking is not possible"),
                )
            })?;
        if old.nar_hash != info.nar_hash {
            return Err(fail(
                Status::NotDeterministic,
                format!(
                    "derivation '{shown}' may not be deterministic: output '{}' differs",
                    store.print_path(&info.path)
                ),
            ));
        }
    }
    Ok(())
}

/// Signs the checked copies, installs them as the outputs and optimises them when
/// `auto-optimise-store` asks for it.
fn register(
    cx: &GoalCx<'_>,
    job: &BuildJob<'_>,
    infos: &mut [(PathBuf, ValidPathInfo)],
) -> Result<(), Failure> {
    let store = cx.store;
    sign_outputs(store, &cx.opts.secret_key_files, infos)?;
    store
        .install_built_outputs_held(infos, cx.mode == BuildMode::Repair, Some(job.held))
        .map_err(BuildError::from)?;
    if cx.opts.auto_optimise {
        for (_, info) in infos.iter() {
            if let Err(e) = store.optimise_path(&info.path, Some(job.held)) {
                tracing::warn!(
                    "optimising {}: {}",
                    store.print_path(&info.path),
                    error_chain(&e)
                );
            }
        }
    }
    Ok(())
}

/// The largest secret key file read.
const MAX_KEY_FILE: u64 = 64 << 10;

/// Signs each output with every key of `secret-key-files`, as Nix 2.8's
/// `LocalStore::signPathInfo` does for what it builds; a key that cannot be read or
/// parsed fails the build.
fn sign_outputs(
    store: &LocalStore,
    key_files: &[PathBuf],
    infos: &mut [(PathBuf, ValidPathInfo)],
) -> Result<(), Failure> {
    if key_files.is_empty() {
        return Ok(());
    }
    let keys = read_secret_keys(key_files)?;
    for (_, info) in infos.iter_mut() {
        let fingerprint = info.fingerprint(store.store_dir()).map_err(|e| {
            fail(
                Status::MiscFailure,
                format!(
                    "signing '{}': {}",
                    store.print_path(&info.path),
                    error_chain(&e)
                ),
            )
        })?;
        for key in &keys {
            info.sigs.insert(key.sign(&fingerprint).to_string());
        }
    }
    Ok(())
}

/// The keys of `secret-key-files`; a key that cannot be read or parsed is an error.
pub(super) fn read_secret_keys(
    key_files: &[PathBuf],
) -> Result<Vec<unrooted_format::signature::SecretKey>, Failure> {
    let mut keys = Vec::with_capacity(key_files.len());
    for file in key_files {
        let mut text = String::new();
        fs::File::open(file)
            .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
            .map_err(BuildError::io("reading the secret key file", file))?;
        let key = unrooted_format::signature::SecretKey::parse(text.trim()).map_err(|e| {
            fail(
                Status::MiscFailure,
                format!("secret key file '{}': {}", file.display(), error_chain(&e)),
            )
        })?;
        keys.push(key);
    }
    Ok(keys)
}

/// After a fixed-output hash mismatch, registers the checked copy at `copy` under the
/// path of the hash it actually has, as Nix 2.8 does (the path then matches its
/// content, so it is as good as any content-addressed path; a later build with the
/// right hash finds it). Only outputs without references; failures are logged, the
/// build fails for the mismatch either way.
fn register_what_it_got(
    store: &LocalStore,
    copy: &Path,
    built: &ValidPathInfo,
    ca: ContentAddress,
) {
    if !built.references.is_empty() {
        return;
    }
    let none = BTreeSet::new();
    let path = match ca.store_path(store.store_dir(), built.path.name(), &none, false) {
        Ok(p) => p,
        Err(e) => return tracing::warn!("the path of the hash a fixed-output build got: {e}"),
    };
    let mut info = ValidPathInfo::new(path, built.nar_hash);
    info.nar_size = built.nar_size;
    info.ultimate = true;
    info.ca = Some(ca);
    if let Err(e) = store.install_built_outputs(&[(copy.to_path_buf(), info)], false) {
        tracing::warn!(
            "registering a mismatched fixed output under the hash it got: {}",
            error_chain(&e)
        );
    }
}

fn hash_file(path: &Path, algo: HashAlgo) -> Result<Hash, Failure> {
    let mut h = Hasher::new(algo);
    let mut f = fs::File::open(path).map_err(BuildError::io("reading", path))?;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = f.read(&mut buf).map_err(BuildError::io("reading", path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finish())
}

/// The derivation's own checks of its outputs ([`crate::checks`]), as Nix 2.8 makes
/// them; a refusal rejects the outputs.
fn check_reference_constraints(
    store: &LocalStore,
    drv: &Derivation,
    outputs: &BTreeMap<String, StorePath>,
    infos: &[(PathBuf, ValidPathInfo)],
    shown: &str,
) -> Result<(), Failure> {
    let built: BTreeMap<String, BuiltOutput> = outputs
        .iter()
        .filter_map(|(name, path)| {
            let (_, info) = infos.iter().find(|(_, i)| i.path == *path)?;
            Some((
                name.clone(),
                BuiltOutput {
                    path: path.clone(),
                    nar_size: info.nar_size,
                    references: info.references.clone(),
                },
            ))
        })
        .collect();
    let query = |p: &StorePath| -> Result<(u64, BTreeSet<StorePath>), OutputCheckError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| OutputCheckError::Query {
            path: store.print_path(p),
            source,
        };
        match store.query_path_info(p) {
            Ok(Some(info)) => Ok((info.nar_size, info.references)),
            Ok(None) => Err(err("path is not valid".into())),
            Err(e) => Err(err(Box::new(e))),
        }
    };
    check_outputs(store.store_dir(), shown, drv, &built, &query)
        .map_err(|e| fail(Status::OutputRejected, error_chain(&e)))
}
