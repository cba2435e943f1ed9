//! Scratch outputs of unsandboxed builds: a builder cannot be handed the path of an
//! output that is valid already (it is in use, and in its way), so, as Nix does, such
//! outputs are built at a scratch path and the hash parts are rewritten, in the
//! builder's environment before it starts and in what it wrote afterwards.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use unrooted_format::{nar, StoreDir, StorePath};
use unrooted_sandbox::remove_tree;
use unrooted_store::LocalStore;

use super::{fail, Failure};
use crate::env::{rewrite, BuilderEnv};
use crate::error::{error_chain, BuildError};
use crate::Status;

/// A build's scratch outputs; their trees are removed on every way out.
pub(super) struct Scratch {
    /// The scratch path of each valid output built again, by output name.
    paths: BTreeMap<String, StorePath>,
    /// Each such output's hash part and its scratch path's.
    to_scratch: Vec<(Vec<u8>, Vec<u8>)>,
    _guard: ScratchGuard,
}

impl Scratch {
    /// The scratch paths of the valid ones among `outputs` of `drv_path`; none when
    /// sandboxed, where the builder writes its own store directory.
    pub(super) fn new(
        store: &LocalStore,
        sandboxed: bool,
        drv_path: &StorePath,
        outputs: &BTreeMap<String, StorePath>,
    ) -> Result<Self, Failure> {
        let mut paths = BTreeMap::new();
        if !sandboxed {
            for (name, p) in outputs {
                if store.is_valid_path(p).map_err(BuildError::from)? {
                    paths.insert(name.clone(), fallback_path(store.store_dir(), drv_path, p));
                }
            }
        }
        let guard = ScratchGuard(paths.values().map(|p| store.real_path(p)).collect());
        let to_scratch = paths
            .iter()
            .map(|(name, s)| {
                (
                    outputs[name].hash_part().as_bytes().to_vec(),
                    s.hash_part().as_bytes().to_vec(),
                )
            })
            .collect();
        Ok(Self {
            paths,
            to_scratch,
            _guard: guard,
        })
    }

    /// Whether no output is built at a scratch path.
    pub(super) fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }

    /// Whether output `name` is built at a scratch path.
    pub(super) fn contains(&self, name: &str) -> bool {
        self.paths.contains_key(name)
    }

    /// Where output `name` is built instead, if it is.
    pub(super) fn get(&self, name: &str) -> Option<&StorePath> {
        self.paths.get(name)
    }

    /// The scratch paths.
    pub(super) fn paths(&self) -> impl Iterator<Item = &StorePath> {
        self.paths.values()
    }

    /// Points the builder's environment, arguments and files at the scratch paths.
    pub(super) fn rewrite_env(&self, benv: &mut BuilderEnv) {
        if self.to_scratch.is_empty() {
            return;
        }
        for (_, v) in benv.env.iter_mut() {
            *v = OsString::from_vec(rewrite(v.as_bytes(), &self.to_scratch));
        }
        for a in benv.args.iter_mut() {
            *a = OsString::from_vec(rewrite(a.as_bytes(), &self.to_scratch));
        }
        for (_, contents) in benv.files.iter_mut() {
            *contents = rewrite(contents, &self.to_scratch);
        }
    }

    /// Scratch hash parts back to the real ones, in every output found at
    /// `locations`.
    pub(super) fn rewrite_back(
        &self,
        locations: &BTreeMap<String, PathBuf>,
    ) -> Result<(), Failure> {
        let back: Vec<(Vec<u8>, Vec<u8>)> = self
            .to_scratch
            .iter()
            .map(|(f, t)| (t.clone(), f.clone()))
            .collect();
        for at in locations.values() {
            if fs::symlink_metadata(at).is_ok() {
                rewrite_tree(at, &back).map_err(|e| {
                    fail(
                        Status::OutputRejected,
                        format!(
                            "rewriting hashes in '{}': {}",
                            at.display(),
                            error_chain(&e)
                        ),
                    )
                })?;
            }
        }
        Ok(())
    }
}

/// Nix's `makeFallbackPath` for a valid output `path` of `drv_path`: where an
/// unsandboxed builder builds it instead.
fn fallback_path(dir: &StoreDir, drv_path: &StorePath, path: &StorePath) -> StorePath {
    dir.make_store_path(
        &format!(
            "rewrite:{}:{}",
            drv_path.to_base_name(),
            path.to_base_name()
        ),
        &[0u8; 32],
        path.name(),
    )
}

/// The scratch trees of a build, removed on every way out.
struct ScratchGuard(Vec<PathBuf>);

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        for p in &self.0 {
            if fs::symlink_metadata(p).is_ok() {
                if let Err(e) = remove_tree(p) {
                    tracing::warn!("removing the scratch output {}: {e}", p.display());
                }
            }
        }
    }
}

/// The largest output whose hashes are rewritten (in memory, as Nix does).
const MAX_REWRITE: u64 = 1 << 30;

/// Why an output's hashes could not be rewritten.
#[derive(Debug, thiserror::Error)]
pub(super) enum RewriteError {
    #[error("serialising")]
    Dump(#[source] nar::NarError),
    #[error("the output is larger than {MAX_REWRITE} bytes")]
    TooLarge,
    #[error("removing the original")]
    Remove(#[source] unrooted_sandbox::CleanupError),
    #[error("restoring")]
    Restore(#[source] nar::NarError),
}

/// Replaces hash parts in the tree at `at` (names, contents and link targets: its
/// NAR), in place.
pub(super) fn rewrite_tree(at: &Path, rewrites: &[(Vec<u8>, Vec<u8>)]) -> Result<(), RewriteError> {
    struct Bounded(Vec<u8>);
    impl Write for Bounded {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.0.len() as u64 + buf.len() as u64 > MAX_REWRITE {
                return Err(io::Error::other("too large"));
            }
            self.0.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let mut sink = Bounded(Vec::new());
    if let Err(e) = nar::dump_path(at, &mut sink) {
        return Err(if sink.0.len() as u64 + (64 << 10) > MAX_REWRITE {
            RewriteError::TooLarge
        } else {
            RewriteError::Dump(e)
        });
    }
    let rewritten = rewrite(&sink.0, rewrites);
    drop(sink);
    remove_tree(at).map_err(RewriteError::Remove)?;
    nar::restore(rewritten.as_slice(), at).map_err(RewriteError::Restore)?;
    Ok(())
}
