//! The checks of a build's outputs that a derivation asks for, exactly as Nix 2.8's
//! `LocalDerivationGoal::checkOutputs` makes them: `allowedReferences`,
//! `allowedRequisites`, `disallowedReferences` and `disallowedRequisites` (words of the
//! environment, or, with structured attributes, lists in `outputChecks.<output>`
//! together with `maxSize` and `maxClosureSize`).
//!
//! A specifier is a store path or the name of one of the derivation's outputs; anything
//! else is an error. The reference checks count an output's reference to itself like
//! any other (`allowedReferences = []` refuses a self-reference); only the requisite
//! checks of a derivation without structured attributes leave the output itself out of
//! its closure. A refusal names every offending path, each on a line of its own.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde_json::Value;
use thiserror::Error;
use unrooted_format::derivation::Derivation;
use unrooted_format::{StoreDir, StorePath};

/// What the checks know of a freshly built output.
#[derive(Debug, Clone)]
pub struct BuiltOutput {
    /// Its store path.
    pub path: StorePath,
    /// Its NAR size.
    pub nar_size: u64,
    /// Its references (possibly itself and the build's other outputs).
    pub references: BTreeSet<StorePath>,
}

/// Why a build's outputs are refused; the messages are Nix 2.8's.
#[derive(Debug, Error)]
pub enum OutputCheckError {
    /// A specifier is neither a store path nor an output name.
    #[error("derivation contains an illegal reference specifier '{0}'")]
    IllegalSpecifier(String),
    /// An `outputChecks` entry is not a list of strings.
    #[error("attribute '{attr}' of derivation '{drv}' must be a list of strings")]
    NotStrings {
        /// The attribute.
        attr: String,
        /// The `.drv` path.
        drv: String,
    },
    /// An `outputChecks` size is not a non-negative integer.
    #[error("attribute '{attr}' of derivation '{drv}' must be an unsigned integer")]
    NotSize {
        /// The attribute.
        attr: String,
        /// The `.drv` path.
        drv: String,
    },
    /// The output refers to paths it may not.
    #[error("output '{output}' is not allowed to refer to the following paths:{}", list(.paths))]
    NotAllowed {
        /// The output.
        output: String,
        /// The offending paths, printed.
        paths: Vec<String>,
    },
    /// `maxSize` exceeded.
    #[error("path '{path}' is too large at {size} bytes; limit is {limit} bytes")]
    TooLarge {
        /// The output.
        path: String,
        /// Its NAR size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// `maxClosureSize` exceeded.
    #[error("closure of path '{path}' is too large at {size} bytes; limit is {limit} bytes")]
    ClosureTooLarge {
        /// The output.
        path: String,
        /// The closure's NAR size.
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A path of an output's closure could not be looked up.
    #[error("querying '{path}'")]
    Query {
        /// The path.
        path: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn list(paths: &[String]) -> String {
    paths.iter().map(|p| format!("\n  {p}")).collect()
}

/// The size and references of a valid path outside the build's outputs.
pub type QueryFn<'a> =
    dyn Fn(&StorePath) -> Result<(u64, BTreeSet<StorePath>), OutputCheckError> + 'a;

#[derive(Default)]
struct Checks {
    ignore_self_refs: bool,
    max_size: Option<u64>,
    max_closure_size: Option<u64>,
    allowed_references: Option<Vec<String>>,
    allowed_requisites: Option<Vec<String>>,
    disallowed_references: Option<Vec<String>>,
    disallowed_requisites: Option<Vec<String>>,
}

/// Most paths walked in one output's closure.
const MAX_CLOSURE: usize = 1 << 20;

/// Checks the outputs (by output name) of `drv` (the `.drv` at `drv_path`, printed)
/// against what it asks for; `query` gives the size and references of other paths.
pub fn check_outputs(
    dir: &StoreDir,
    drv_path: &str,
    drv: &Derivation,
    outputs: &BTreeMap<String, BuiltOutput>,
    query: &QueryFn<'_>,
) -> Result<(), OutputCheckError> {
    let closures = Closures {
        built: outputs.values().map(|o| (&o.path, o)).collect(),
        query,
    };
    let structured = match drv.structured_attrs_json() {
        Some(Ok(json)) => Some(json),
        Some(Err(_)) | None => None,
    };
    for (name, info) in outputs {
        let checks = match &structured {
            Some(json) => {
                let Some(Value::Object(entry)) =
                    json.get("outputChecks").and_then(|c| c.get(name.as_str()))
                else {
                    continue;
                };
                Checks::structured(entry, drv_path)?
            }
            None => Checks::from_env(drv),
        };
        checks.check(dir, outputs, info, &closures)?;
    }
    Ok(())
}

/// Closures of built outputs and the paths they refer to.
struct Closures<'a> {
    /// The outputs just built, by path (not valid yet, so not for `query`).
    built: BTreeMap<&'a StorePath, &'a BuiltOutput>,
    query: &'a QueryFn<'a>,
}

impl Closures<'_> {
    /// The closure of `start` (at most [`MAX_CLOSURE`] paths) and its total NAR size.
    fn of(&self, start: &StorePath) -> Result<(BTreeSet<StorePath>, u64), OutputCheckError> {
        let mut done = BTreeSet::new();
        let mut size = 0u64;
        let mut left = VecDeque::from([start.clone()]);
        while let Some(p) = left.pop_front() {
            if done.contains(&p) {
                continue;
            }
            if done.len() >= MAX_CLOSURE {
                break;
            }
            let (nar_size, refs) = match self.built.get(&p) {
                Some(o) => (o.nar_size, o.references.clone()),
                None => (self.query)(&p)?,
            };
            size = size.saturating_add(nar_size);
            left.extend(refs);
            done.insert(p);
        }
        Ok((done, size))
    }
}

impl Checks {
    /// An output's entry of `outputChecks` (structured attributes).
    fn structured(
        entry: &serde_json::Map<String, Value>,
        drv_path: &str,
    ) -> Result<Self, OutputCheckError> {
        let strings = |attr: &str| -> Result<Option<Vec<String>>, OutputCheckError> {
            let Some(v) = entry.get(attr) else {
                return Ok(None);
            };
            let bad = || OutputCheckError::NotStrings {
                attr: attr.to_owned(),
                drv: drv_path.to_owned(),
            };
            let items = v.as_array().ok_or_else(bad)?;
            items
                .iter()
                .map(|i| i.as_str().map(str::to_owned).ok_or_else(bad))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
        };
        let size = |attr: &str| -> Result<Option<u64>, OutputCheckError> {
            entry
                .get(attr)
                .map(|v| {
                    v.as_u64().ok_or_else(|| OutputCheckError::NotSize {
                        attr: attr.to_owned(),
                        drv: drv_path.to_owned(),
                    })
                })
                .transpose()
        };
        Ok(Checks {
            ignore_self_refs: false,
            max_size: size("maxSize")?,
            max_closure_size: size("maxClosureSize")?,
            allowed_references: strings("allowedReferences")?,
            allowed_requisites: strings("allowedRequisites")?,
            disallowed_references: strings("disallowedReferences")?,
            disallowed_requisites: strings("disallowedRequisites")?,
        })
    }

    /// The words of the environment variables (without structured attributes), for
    /// every output alike.
    fn from_env(drv: &Derivation) -> Self {
        let words = |key: &str| {
            drv.env.get(key.as_bytes()).map(|v| {
                String::from_utf8_lossy(v)
                    .split_ascii_whitespace()
                    .map(str::to_owned)
                    .collect::<Vec<_>>()
            })
        };
        Checks {
            ignore_self_refs: true,
            allowed_references: words("allowedReferences"),
            allowed_requisites: words("allowedRequisites"),
            disallowed_references: words("disallowedReferences"),
            disallowed_requisites: words("disallowedRequisites"),
            ..Checks::default()
        }
    }

    /// Checks one built output.
    fn check(
        &self,
        dir: &StoreDir,
        outputs: &BTreeMap<String, BuiltOutput>,
        info: &BuiltOutput,
        closures: &Closures<'_>,
    ) -> Result<(), OutputCheckError> {
        let printed = dir.display(&info.path);
        if let Some(limit) = self.max_size {
            if info.nar_size > limit {
                return Err(OutputCheckError::TooLarge {
                    path: printed,
                    size: info.nar_size,
                    limit,
                });
            }
        }
        if let Some(limit) = self.max_closure_size {
            let size = closures.of(&info.path)?.1;
            if size > limit {
                return Err(OutputCheckError::ClosureTooLarge {
                    path: printed,
                    size,
                    limit,
                });
            }
        }
        for (spec, allowed, recursive) in [
            (&self.allowed_references, true, false),
            (&self.allowed_requisites, true, true),
            (&self.disallowed_references, false, false),
            (&self.disallowed_requisites, false, true),
        ] {
            let Some(spec) = spec else { continue };
            let wanted = resolve_specifiers(dir, outputs, spec)?;
            let mut used = if recursive {
                closures.of(&info.path)?.0
            } else {
                info.references.clone()
            };
            if recursive && self.ignore_self_refs {
                used.remove(&info.path);
            }
            let bad: Vec<String> = used
                .iter()
                .filter(|p| wanted.contains(*p) != allowed)
                .map(|p| dir.display(p))
                .collect();
            if !bad.is_empty() {
                return Err(OutputCheckError::NotAllowed {
                    output: printed,
                    paths: bad,
                });
            }
        }
        Ok(())
    }
}

/// The paths a list of specifiers names: store paths, or names of the derivation's
/// outputs.
fn resolve_specifiers(
    dir: &StoreDir,
    outputs: &BTreeMap<String, BuiltOutput>,
    spec: &[String],
) -> Result<BTreeSet<StorePath>, OutputCheckError> {
    let mut wanted = BTreeSet::new();
    for word in spec {
        let path = match dir.parse_path(word) {
            Ok(p) => p,
            Err(_) => match outputs.get(word.as_str()) {
                Some(o) => o.path.clone(),
                None => return Err(OutputCheckError::IllegalSpecifier(word.clone())),
            },
        };
        wanted.insert(path);
    }
    Ok(wanted)
}
