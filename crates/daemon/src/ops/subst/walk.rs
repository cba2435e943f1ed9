//! What a request's targets need from the caches and what must be built, found one
//! level of the derivation graph at a time.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use unrooted_format::derivation::Derivation;
use unrooted_format::StorePath;
use unrooted_protocol::{DerivedPath, OutputsSpec};
use unrooted_substitute::{Observer, Plan, SubstituteError, Substituter};

use crate::session::Session;

/// One thing the walk of [`walk`] looks at: the wanted outputs of a derivation
/// (`None`: all), or an opaque path; for target number `target`, which it is
/// itself (`top`) or an input of.
enum Node {
    Drv {
        drv: StorePath,
        outputs: Option<BTreeSet<String>>,
        target: usize,
        top: bool,
    },
    Path {
        path: StorePath,
        target: usize,
        top: bool,
    },
}

/// What a request needs from the caches and what must be built, as Nix's goals
/// decide it: a derivation whose wanted outputs the caches have (with their
/// closures) is substituted; one they lack is built, and then the outputs of its
/// input derivations and its input sources are looked at in the same way,
/// recursively.
#[derive(Default)]
pub(super) struct Walk {
    /// Per target: its own invalid wanted paths (an opaque path, or outputs).
    pub(super) own: Vec<BTreeSet<StorePath>>,
    /// Per target: the invalid inputs (of the derivations it builds) the caches have.
    pub(super) inputs: Vec<BTreeSet<StorePath>>,
    /// Derivations to build.
    pub(super) build: BTreeSet<StorePath>,
    /// Invalid paths that neither the caches have nor anything builds: opaque
    /// targets, and derivations that are not valid.
    pub(super) unknown: BTreeSet<StorePath>,
    /// What to fetch: the closures of the wanted paths the caches have in full.
    pub(super) plan: Plan,
}

/// The invalid wanted outputs of derivation `drv`, `None` when it has to be built
/// whatever the caches have (a floating output, which has no path before it is
/// built), or when it cannot be read (the scheduler reports that).
pub(super) fn invalid_outputs(
    store: &unrooted_store::LocalStore,
    d: &unrooted_format::derivation::Derivation,
    outputs: Option<&BTreeSet<String>>,
) -> Option<BTreeSet<StorePath>> {
    let mut wanted = BTreeSet::new();
    for (name, out) in &d.outputs {
        if outputs.is_some_and(|o| !o.contains(name)) {
            continue;
        }
        let path = out.path()?;
        if !store.is_valid_path(path).unwrap_or(true) {
            wanted.insert(path.clone());
        }
    }
    Some(wanted)
}

/// The paths of `fetch` whose closure (through `fetch`) reaches none of `missing`.
fn complete(
    fetch: &BTreeMap<StorePath, unrooted_substitute::Substitutable>,
    missing: &BTreeSet<StorePath>,
) -> BTreeSet<StorePath> {
    let mut referrers: HashMap<&StorePath, Vec<&StorePath>> = HashMap::new();
    for (p, sub) in fetch {
        for r in &sub.info.references {
            if r != p {
                referrers.entry(r).or_default().push(p);
            }
        }
    }
    let mut bad: BTreeSet<&StorePath> = BTreeSet::new();
    let mut stack: Vec<&StorePath> = missing.iter().collect();
    while let Some(q) = stack.pop() {
        for &d in referrers.get(q).map(Vec::as_slice).unwrap_or_default() {
            if bad.insert(d) {
                stack.push(d);
            }
        }
    }
    fetch
        .keys()
        .filter(|p| !bad.contains(p) && !missing.contains(*p))
        .cloned()
        .collect()
}

/// Walks what `targets` need (see [`Walk`]), asking the caches one level of the
/// derivation graph at a time.
pub(super) fn walk(
    s: &Session<'_>,
    sub: &Substituter,
    targets: &[DerivedPath],
    observer: &dyn Observer,
) -> Result<Walk, SubstituteError> {
    let store = &s.state.store;
    let mut w = Walk {
        own: vec![BTreeSet::new(); targets.len()],
        inputs: vec![BTreeSet::new(); targets.len()],
        ..Walk::default()
    };
    let mut level: Vec<Node> = targets
        .iter()
        .enumerate()
        .map(|(target, p)| match p {
            DerivedPath::Opaque(path) => Node::Path {
                path: path.clone(),
                target,
                top: true,
            },
            DerivedPath::Built { drv_path, outputs } => Node::Drv {
                drv: drv_path.clone(),
                outputs: match outputs {
                    OutputsSpec::All => None,
                    OutputsSpec::Names(n) => Some(n.iter().cloned().collect()),
                },
                target,
                top: true,
            },
        })
        .collect();
    let mut seen_drvs: BTreeSet<StorePath> = BTreeSet::new();
    let mut seen_paths: BTreeSet<StorePath> = BTreeSet::new();
    let mut fetch = BTreeMap::new();
    let mut missing = BTreeSet::new();
    let mut roots: BTreeSet<StorePath> = BTreeSet::new();
    while !level.is_empty() {
        // What each node wants (`None`: built whatever the caches have).
        let mut wants: Vec<(Node, Option<BTreeSet<StorePath>>, Option<Derivation>)> = Vec::new();
        for node in level {
            match &node {
                Node::Path { path, top, .. } => {
                    if !*top && !seen_paths.insert(path.clone()) {
                        continue;
                    }
                    if store.is_valid_path(path).unwrap_or(true) {
                        continue;
                    }
                    let want = BTreeSet::from([path.clone()]);
                    wants.push((node, Some(want), None));
                }
                Node::Drv {
                    drv, outputs, top, ..
                } => {
                    if !*top && !seen_drvs.insert(drv.clone()) {
                        continue;
                    }
                    if !store.is_valid_path(drv).unwrap_or(true) {
                        w.unknown.insert(drv.clone());
                        continue;
                    }
                    let Ok(d) = unrooted_builder::load_derivation(store, drv) else {
                        continue;
                    };
                    // Fixed outputs can come from caches of other store directories.
                    for out in d.outputs.values() {
                        if let unrooted_format::derivation::DerivationOutput::Fixed {
                            method,
                            hash,
                            path,
                        } = out
                        {
                            sub.hint_content_address(
                                path.clone(),
                                unrooted_format::ContentAddress::Fixed {
                                    method: *method,
                                    hash: *hash,
                                },
                            );
                        }
                    }
                    let want = invalid_outputs(store, &d, outputs.as_ref());
                    if want.as_ref().is_some_and(BTreeSet::is_empty) {
                        continue;
                    }
                    wants.push((node, want, Some(d)));
                }
            }
        }
        let asked: BTreeSet<StorePath> = wants
            .iter()
            .filter_map(|(_, want, _)| want.as_ref())
            .flatten()
            .filter(|p| !fetch.contains_key(*p) && !missing.contains(*p))
            .cloned()
            .collect();
        if !asked.is_empty() {
            let plan = sub.plan(store, &asked, observer)?;
            fetch.extend(plan.fetch);
            missing.extend(plan.missing);
        }
        let ok = complete(&fetch, &missing);
        let mut next = Vec::new();
        for (node, want, d) in wants {
            let cached = want.as_ref().is_some_and(|ps| ps.is_subset(&ok));
            match node {
                Node::Path { path, target, top } => {
                    if top {
                        w.own[target].insert(path.clone());
                    }
                    if cached {
                        if !top {
                            w.inputs[target].insert(path.clone());
                        }
                        roots.insert(path);
                    } else if top {
                        w.unknown.insert(path);
                    }
                }
                Node::Drv {
                    drv, target, top, ..
                } => {
                    let want = want.unwrap_or_default();
                    if top {
                        w.own[target].extend(want.iter().cloned());
                    }
                    if cached {
                        if !top {
                            w.inputs[target].extend(want.iter().cloned());
                        }
                        roots.extend(want);
                        continue;
                    }
                    w.build.insert(drv);
                    let Some(d) = d else { continue };
                    for (input, outs) in d.input_drvs {
                        next.push(Node::Drv {
                            drv: input,
                            outputs: Some(outs),
                            target,
                            top: false,
                        });
                    }
                    for path in d.input_srcs {
                        next.push(Node::Path {
                            path,
                            target,
                            top: false,
                        });
                    }
                }
            }
        }
        level = next;
    }
    // The closures of the roots.
    let mut stack: Vec<StorePath> = roots.into_iter().collect();
    while let Some(p) = stack.pop() {
        if w.plan.fetch.contains_key(&p) {
            continue;
        }
        let Some(found) = fetch.remove(&p) else {
            continue;
        };
        stack.extend(found.info.references.iter().cloned());
        w.plan.fetch.insert(p, found);
    }
    Ok(w)
}
