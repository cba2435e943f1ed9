//! `hashDerivationModulo` and the output paths that follow from it.
//!
//! An input-addressed output path is a hash of the derivation, but a derivation's
//! text contains its own output paths and the paths of its inputs' `.drv` files. To
//! break the first circle the outputs are masked (paths and output env vars blanked);
//! to make the hash independent of how inputs were written (a fetcher's script can
//! change without changing what it fetches), each input `.drv` path is replaced by the
//! input's own hash modulo, unmasked, as bare hex, and the input list is re-sorted by
//! those hex strings (inputs with equal hashes get their output lists merged). A
//! fixed-output derivation hashes to `H("fixed:out:[r:]<algo>:<hex>:<out path>")`,
//! independent of its builder.
//!
//! The output path of output `o` of input-addressed derivation `name` is then
//! `makeStorePath("output:" + o, HDM(mask), outputPathName(name, o))`.
//!
//! Hashes of inputs are memoised per `.drv` path in a [`DrvHasher`], which loads input
//! derivations through a caller-supplied function: the store decides where they come
//! from. The walk over inputs is iterative, so a deep chain cannot exhaust the stack.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::error::Error as StdError;
use std::fmt;

use thiserror::Error;

use super::{Derivation, DerivationError, DerivationOutput, DerivationType};
use crate::base32;
use crate::hash::sha256;
use crate::store_path::{output_path_name, StoreDir, StorePath, StorePathError, StorePathName};

/// Whether a derivation's output paths can be known before building.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DrvHashKind {
    /// The hash determines the output paths.
    Regular,
    /// The derivation is, or depends on, a floating content-addressed or impure one:
    /// its output paths are only known once those are built.
    Deferred,
}

/// The result of hashDerivationModulo: one SHA-256 per output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrvHash {
    /// The hash of each output (the same for all outputs unless fixed-output).
    pub hashes: BTreeMap<String, [u8; 32]>,
    /// Whether output paths are known.
    pub kind: DrvHashKind,
}

/// Why hashing a derivation or computing its output paths failed.
#[derive(Debug, Error)]
pub enum HashModuloError {
    /// The loader could not produce an input derivation.
    #[error("loading input derivation '{path}'")]
    Load {
        /// The input's `.drv` path.
        path: String,
        /// The loader's error.
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// A derivation asks for an output its input does not have.
    #[error("input derivation '{path}' has no output '{output}'")]
    MissingInputOutput {
        /// The input's `.drv` path.
        path: String,
        /// The output asked for.
        output: String,
    },
    /// Input derivations that depend on each other (impossible for real store
    /// paths, possible from a hostile loader).
    #[error("input derivations form a cycle through '{path}'")]
    Cycle {
        /// A `.drv` path on the cycle.
        path: String,
    },
    /// A derivation whose outputs form no valid derivation type.
    #[error("derivation '{name}' has invalid outputs")]
    Type {
        /// The derivation's name, or its `.drv` path for an input.
        name: String,
        /// Why.
        #[source]
        source: DerivationError,
    },
    /// An output path could not be formed (a name that is no valid store path name).
    #[error("computing the path of output '{output}' of derivation '{name}'")]
    OutputPath {
        /// The derivation name.
        name: String,
        /// The output.
        output: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
}

/// An output whose path or env var differs from what the derivation computes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputMismatch {
    /// The path in the output tuple.
    Path {
        /// The output.
        output: String,
        /// The path written in the file.
        written: StorePath,
        /// The path it should be.
        expected: StorePath,
    },
    /// The env var named after the output.
    EnvVar {
        /// The output.
        output: String,
        /// Its value in the file, if set.
        written: Option<Vec<u8>>,
        /// The full path it should hold.
        expected: String,
    },
}

impl OutputMismatch {
    /// One line describing the mismatch, with full paths in `dir`.
    pub fn describe(&self, dir: &StoreDir) -> String {
        match self {
            Self::Path {
                output,
                written,
                expected,
            } => format!(
                "output '{output}' has path '{}', should be '{}'",
                dir.display(written),
                dir.display(expected)
            ),
            Self::EnvVar {
                output,
                written,
                expected,
            } => match written {
                Some(w) => format!(
                    "environment variable '{output}' is '{}', should be '{expected}'",
                    String::from_utf8_lossy(w)
                ),
                None => {
                    format!("environment variable '{output}' is missing, should be '{expected}'")
                }
            },
        }
    }
}

impl fmt::Display for OutputMismatch {
    /// Like [`OutputMismatch::describe`], with base names only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path {
                output,
                written,
                expected,
            } => write!(
                f,
                "output '{output}' has path '{written}', should be '{expected}'"
            ),
            Self::EnvVar {
                output, expected, ..
            } => write!(f, "environment variable '{output}' should be '{expected}'"),
        }
    }
}

/// Computes hashDerivationModulo, memoising the hashes of input derivations, which it
/// loads with `load`.
pub struct DrvHasher<L> {
    dir: StoreDir,
    load: L,
    memo: HashMap<StorePath, DrvHash>,
}

impl<L, E> DrvHasher<L>
where
    L: FnMut(&StorePath) -> Result<Derivation, E>,
    E: Into<Box<dyn StdError + Send + Sync>>,
{
    /// A hasher for derivations in `dir`, loading input derivations with `load`.
    pub fn new(dir: StoreDir, load: L) -> Self {
        Self {
            dir,
            load,
            memo: HashMap::new(),
        }
    }

    /// The store directory paths are printed in.
    pub fn store_dir(&self) -> &StoreDir {
        &self.dir
    }

    /// `hashDerivationModulo(drv, mask)`. Inputs are always hashed unmasked.
    pub fn hash_modulo(
        &mut self,
        drv: &Derivation,
        mask: bool,
    ) -> Result<DrvHash, HashModuloError> {
        for input in drv.input_drvs.keys() {
            self.ensure(input)?;
        }
        self.compute(drv, &drv.name, mask)
    }

    /// The unmasked hash of the derivation at `drv_path`, loading it (memoised).
    pub fn path_hash(&mut self, drv_path: &StorePath) -> Result<DrvHash, HashModuloError> {
        self.ensure(drv_path)?;
        self.memo
            .get(drv_path)
            .cloned()
            .ok_or_else(|| HashModuloError::Cycle {
                path: self.dir.display(drv_path),
            })
    }

    /// The path of every output, or `None` where it is not known before building
    /// (floating, impure and deferred outputs).
    pub fn output_paths(
        &mut self,
        drv: &Derivation,
    ) -> Result<BTreeMap<String, Option<StorePath>>, HashModuloError> {
        let ty = drv
            .derivation_type()
            .map_err(|source| HashModuloError::Type {
                name: drv.name.clone(),
                source,
            })?;
        let mut paths = BTreeMap::new();
        match ty {
            DerivationType::Fixed => {
                for (name, output) in &drv.outputs {
                    paths.insert(name.clone(), self.fixed_path(drv, name, output)?);
                }
            }
            DerivationType::InputAddressed | DerivationType::DeferredInputAddressed => {
                let hdm = self.hash_modulo(drv, true)?;
                for name in drv.outputs.keys() {
                    let path = match (hdm.kind, hdm.hashes.get(name)) {
                        (DrvHashKind::Regular, Some(h)) => Some(self.output_path(drv, name, h)?),
                        _ => None,
                    };
                    paths.insert(name.clone(), path);
                }
            }
            DerivationType::Floating | DerivationType::Impure => {
                for name in drv.outputs.keys() {
                    paths.insert(name.clone(), None);
                }
            }
        }
        Ok(paths)
    }

    /// Writes the computed output paths into `drv`'s outputs and env, as
    /// `derivationStrict` does after hashing a derivation whose outputs were
    /// [`DerivationOutput::Deferred`] with empty env values. Outputs whose paths are
    /// not known stay as they are.
    pub fn fill_output_paths(&mut self, drv: &mut Derivation) -> Result<(), HashModuloError> {
        let paths = self.output_paths(drv)?;
        for (name, path) in paths {
            let Some(path) = path else { continue };
            drv.env.insert(
                name.clone().into_bytes(),
                self.dir.display(&path).into_bytes(),
            );
            if let Some(output) = drv.outputs.get_mut(&name) {
                match output {
                    DerivationOutput::Deferred | DerivationOutput::InputAddressed(_) => {
                        *output = DerivationOutput::InputAddressed(path);
                    }
                    DerivationOutput::Fixed { path: p, .. } => *p = path,
                    _ => {}
                }
            }
        }
        Ok(())
    }

    /// Recomputes the paths of input-addressed and fixed outputs and the env vars
    /// holding them, and lists every difference from what `drv` says (Nix's
    /// `checkDerivationOutputs`, which stops at the first). Floating, deferred and
    /// impure outputs have nothing to check.
    pub fn check_outputs(
        &mut self,
        drv: &Derivation,
    ) -> Result<Vec<OutputMismatch>, HashModuloError> {
        drv.derivation_type()
            .map_err(|source| HashModuloError::Type {
                name: drv.name.clone(),
                source,
            })?;
        let mut masked: Option<DrvHash> = None;
        let mut mismatches = Vec::new();
        for (name, output) in &drv.outputs {
            let (written, expected) = match output {
                DerivationOutput::InputAddressed(written) => {
                    let hdm = match &masked {
                        Some(h) => h,
                        None => masked.insert(self.hash_modulo(drv, true)?),
                    };
                    let h = hdm.hashes.get(name).copied().unwrap_or_default();
                    (written, self.output_path(drv, name, &h)?)
                }
                DerivationOutput::Fixed { path, .. } => match self.fixed_path(drv, name, output)? {
                    Some(expected) => (path, expected),
                    None => continue,
                },
                _ => continue,
            };
            if *written != expected {
                mismatches.push(OutputMismatch::Path {
                    output: name.clone(),
                    written: written.clone(),
                    expected: expected.clone(),
                });
            }
            let expected = self.dir.display(&expected);
            let env = drv.env.get(name.as_bytes());
            if env.map(Vec::as_slice) != Some(expected.as_bytes()) {
                mismatches.push(OutputMismatch::EnvVar {
                    output: name.clone(),
                    written: env.cloned(),
                    expected,
                });
            }
        }
        Ok(mismatches)
    }

    fn output_path(
        &self,
        drv: &Derivation,
        output: &str,
        hdm: &[u8; 32],
    ) -> Result<StorePath, HashModuloError> {
        self.dir
            .make_output_path(output, hdm, &drv.name)
            .map_err(|source| HashModuloError::OutputPath {
                name: drv.name.clone(),
                output: output.to_owned(),
                source,
            })
    }

    /// The path of a fixed output, or `None` if `out` is not one.
    fn fixed_path(
        &self,
        drv: &Derivation,
        output: &str,
        out: &DerivationOutput,
    ) -> Result<Option<StorePath>, HashModuloError> {
        let DerivationOutput::Fixed { method, hash, .. } = out else {
            return Ok(None);
        };
        let err = |source| HashModuloError::OutputPath {
            name: drv.name.clone(),
            output: output.to_owned(),
            source,
        };
        let name = StorePathName::new(&output_path_name(&drv.name, output)).map_err(err)?;
        self.dir
            .make_fixed_output_path(*method, hash, &name, &BTreeSet::new(), false)
            .map(Some)
            .map_err(err)
    }

    /// Makes sure `root` and everything below it is in the memo, depth first, without
    /// recursion.
    fn ensure(&mut self, root: &StorePath) -> Result<(), HashModuloError> {
        if self.memo.contains_key(root) {
            return Ok(());
        }
        struct Frame {
            path: StorePath,
            drv: Derivation,
            inputs: Vec<StorePath>,
            next: usize,
        }
        fn make_frame(path: StorePath, drv: Derivation) -> Frame {
            let inputs = drv.input_drvs.keys().cloned().collect();
            Frame {
                path,
                drv,
                inputs,
                next: 0,
            }
        }
        let (path, drv) = self.frame(root)?;
        let mut stack = vec![make_frame(path, drv)];
        let mut on_stack = HashSet::from([root.clone()]);
        while let Some(top) = stack.last_mut() {
            let pending = top.inputs[top.next..]
                .iter()
                .position(|p| !self.memo.contains_key(p));
            match pending {
                Some(i) => {
                    top.next += i + 1;
                    let input = top.inputs[top.next - 1].clone();
                    if !on_stack.insert(input.clone()) {
                        return Err(HashModuloError::Cycle {
                            path: self.dir.display(&input),
                        });
                    }
                    let (path, drv) = self.frame(&input)?;
                    stack.push(make_frame(path, drv));
                }
                None => {
                    let Some(frame) = stack.pop() else { break };
                    let label = self.dir.display(&frame.path);
                    let hash = self.compute(&frame.drv, &label, false)?;
                    on_stack.remove(&frame.path);
                    self.memo.insert(frame.path, hash);
                }
            }
        }
        Ok(())
    }

    fn frame(&mut self, path: &StorePath) -> Result<(StorePath, Derivation), HashModuloError> {
        let drv = (self.load)(path).map_err(|e| HashModuloError::Load {
            path: self.dir.display(path),
            source: e.into(),
        })?;
        Ok((path.clone(), drv))
    }

    /// One step of hashDerivationModulo, with every input already in the memo.
    fn compute(
        &self,
        drv: &Derivation,
        label: &str,
        mask: bool,
    ) -> Result<DrvHash, HashModuloError> {
        let ty = drv
            .derivation_type()
            .map_err(|source| HashModuloError::Type {
                name: label.to_owned(),
                source,
            })?;
        let mut kind = match ty {
            DerivationType::Fixed => {
                let mut hashes = BTreeMap::new();
                for (name, output) in &drv.outputs {
                    let path = self.fixed_path(drv, name, output)?;
                    if let (Some(path), DerivationOutput::Fixed { method, hash, .. }) =
                        (path, output)
                    {
                        let text = format!(
                            "fixed:out:{}{}:{}:{}",
                            method.prefix(),
                            hash.algo(),
                            hash.to_base16(),
                            self.dir.display(&path)
                        );
                        hashes.insert(name.clone(), sha256(text.as_bytes()));
                    }
                }
                return Ok(DrvHash {
                    hashes,
                    kind: DrvHashKind::Regular,
                });
            }
            DerivationType::Impure => {
                let h = sha256(b"impure");
                let hashes = drv.outputs.keys().map(|n| (n.clone(), h)).collect();
                return Ok(DrvHash {
                    hashes,
                    kind: DrvHashKind::Deferred,
                });
            }
            DerivationType::Floating => DrvHashKind::Deferred,
            // Deferred outputs alone do not make the hash deferred: derivationStrict
            // hashes such a template to find its paths.
            DerivationType::InputAddressed | DerivationType::DeferredInputAddressed => {
                DrvHashKind::Regular
            }
        };
        let mut inputs: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (path, outputs) in &drv.input_drvs {
            let res = self.memo.get(path).ok_or_else(|| HashModuloError::Cycle {
                path: self.dir.display(path),
            })?;
            if res.kind == DrvHashKind::Deferred {
                kind = DrvHashKind::Deferred;
            }
            for output in outputs {
                let h =
                    res.hashes
                        .get(output)
                        .ok_or_else(|| HashModuloError::MissingInputOutput {
                            path: self.dir.display(path),
                            output: output.clone(),
                        })?;
                inputs
                    .entry(data_encoding::HEXLOWER.encode(h))
                    .or_default()
                    .insert(output.clone());
            }
        }
        let hash = sha256(&super::aterm::print_modulo(drv, &self.dir, mask, &inputs));
        let hashes = drv.outputs.keys().map(|n| (n.clone(), hash)).collect();
        Ok(DrvHash { hashes, kind })
    }
}

/// `hashPlaceholder(output)`: the string a floating output's env var holds until the
/// build knows its path, `/` + base32(sha256("nix-output:" + output)).
pub fn hash_placeholder(output: &str) -> String {
    format!(
        "/{}",
        base32::encode(&sha256(format!("nix-output:{output}").as_bytes()))
    )
}

/// `downstreamPlaceholder`: how a derivation refers to output `output` of the
/// floating content-addressed derivation at `drv_path`:
/// `/` + base32(sha256("nix-upstream-output:" + hashPart + ":" + outputPathName)).
pub fn downstream_placeholder(drv_path: &StorePath, output: &str) -> String {
    let name = drv_path.name().as_str();
    let name = name.strip_suffix(super::DRV_EXTENSION).unwrap_or(name);
    let text = format!(
        "nix-upstream-output:{}:{}",
        drv_path.hash_part(),
        output_path_name(name, output)
    );
    format!("/{}", base32::encode(&sha256(text.as_bytes())))
}
