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
    let mut walker = Walker {
        store: &s.state.store,
        sub,
        observer,
        w: Walk {
            own: vec![BTreeSet::new(); targets.len()],
            inputs: vec![BTreeSet::new(); targets.len()],
            ..Walk::default()
        },
        seen_drvs: BTreeSet::new(),
        seen_paths: BTreeSet::new(),
        fetch: BTreeMap::new(),
        missing: BTreeSet::new(),
        roots: BTreeSet::new(),
    };
    let mut level = top_nodes(targets);
    while !level.is_empty() {
        let wants = walker.wants(level);
        walker.ask(&wants)?;
        level = walker.settle(wants);
    }
    Ok(walker.finish())
}

/// The nodes of the targets themselves.
fn top_nodes(targets: &[DerivedPath]) -> Vec<Node> {
    targets
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
        .collect()
}

/// A node with what it wants (`None`: built whatever the caches have) and, for a
/// derivation, the derivation.
type Want = (Node, Option<BTreeSet<StorePath>>, Option<Derivation>);

/// The state of a [`walk`] between levels.
struct Walker<'a> {
    store: &'a unrooted_store::LocalStore,
    sub: &'a Substituter,
    observer: &'a dyn Observer,
    /// What is found so far.
    w: Walk,
    seen_drvs: BTreeSet<StorePath>,
    seen_paths: BTreeSet<StorePath>,
    /// What the caches have, of the paths asked about.
    fetch: BTreeMap<StorePath, unrooted_substitute::Substitutable>,
    /// What the caches lack, of the paths asked about.
    missing: BTreeSet<StorePath>,
    /// The wanted paths the caches have in full: their closures are fetched.
    roots: BTreeSet<StorePath>,
}

impl Walker<'_> {
    /// What each node of `level` wants, leaving out nodes seen before and nodes
    /// with nothing to do.
    fn wants(&mut self, level: Vec<Node>) -> Vec<Want> {
        let mut wants = Vec::new();
        for node in level {
            let want = match &node {
                Node::Path { path, top, .. } => self.path_want(path, *top),
                Node::Drv {
                    drv, outputs, top, ..
                } => self.drv_want(drv, outputs.as_ref(), *top),
            };
            if let Some((want, d)) = want {
                wants.push((node, want, d));
            }
        }
        wants
    }

    /// What an opaque path wants: itself, when it is not valid.
    fn path_want(
        &mut self,
        path: &StorePath,
        top: bool,
    ) -> Option<(Option<BTreeSet<StorePath>>, Option<Derivation>)> {
        if !top && !self.seen_paths.insert(path.clone()) {
            return None;
        }
        if self.store.is_valid_path(path).unwrap_or(true) {
            return None;
        }
        Some((Some(BTreeSet::from([path.clone()])), None))
    }

    /// What a derivation wants: its invalid wanted outputs.
    fn drv_want(
        &mut self,
        drv: &StorePath,
        outputs: Option<&BTreeSet<String>>,
        top: bool,
    ) -> Option<(Option<BTreeSet<StorePath>>, Option<Derivation>)> {
        if !top && !self.seen_drvs.insert(drv.clone()) {
            return None;
        }
        if !self.store.is_valid_path(drv).unwrap_or(true) {
            self.w.unknown.insert(drv.clone());
            return None;
        }
        let d = unrooted_builder::load_derivation(self.store, drv).ok()?;
        self.hint_fixed_outputs(&d);
        let want = invalid_outputs(self.store, &d, outputs);
        if want.as_ref().is_some_and(BTreeSet::is_empty) {
            return None;
        }
        Some((want, Some(d)))
    }

    /// Fixed outputs can come from caches of other store directories.
    fn hint_fixed_outputs(&self, d: &Derivation) {
        for out in d.outputs.values() {
            if let unrooted_format::derivation::DerivationOutput::Fixed { method, hash, path } = out
            {
                self.sub.hint_content_address(
                    path.clone(),
                    unrooted_format::ContentAddress::Fixed {
                        method: *method,
                        hash: *hash,
                    },
                );
            }
        }
    }

    /// Asks the caches about the wanted paths not asked about before.
    fn ask(&mut self, wants: &[Want]) -> Result<(), SubstituteError> {
        let asked: BTreeSet<StorePath> = wants
            .iter()
            .filter_map(|(_, want, _)| want.as_ref())
            .flatten()
            .filter(|p| !self.fetch.contains_key(*p) && !self.missing.contains(*p))
            .cloned()
            .collect();
        if !asked.is_empty() {
            let plan = self.sub.plan(self.store, &asked, self.observer)?;
            self.fetch.extend(plan.fetch);
            self.missing.extend(plan.missing);
        }
        Ok(())
    }

    /// Records what the caches have of each node's wants; returns the next level:
    /// the inputs of the derivations to build.
    fn settle(&mut self, wants: Vec<Want>) -> Vec<Node> {
        let ok = complete(&self.fetch, &self.missing);
        let mut next = Vec::new();
        for (node, want, d) in wants {
            let cached = want.as_ref().is_some_and(|ps| ps.is_subset(&ok));
            match node {
                Node::Path { path, target, top } => self.settle_path(path, target, top, cached),
                Node::Drv {
                    drv, target, top, ..
                } => {
                    let want = want.unwrap_or_default();
                    if self.settle_drv(drv, want, target, top, cached) {
                        next.extend(d.map(|d| input_nodes(d, target)).unwrap_or_default());
                    }
                }
            }
        }
        next
    }

    fn settle_path(&mut self, path: StorePath, target: usize, top: bool, cached: bool) {
        if top {
            self.w.own[target].insert(path.clone());
        }
        if cached {
            if !top {
                self.w.inputs[target].insert(path.clone());
            }
            self.roots.insert(path);
        } else if top {
            self.w.unknown.insert(path);
        }
    }

    /// Whether `drv` is to be built (its inputs then walked in turn).
    fn settle_drv(
        &mut self,
        drv: StorePath,
        want: BTreeSet<StorePath>,
        target: usize,
        top: bool,
        cached: bool,
    ) -> bool {
        if top {
            self.w.own[target].extend(want.iter().cloned());
        }
        if cached {
            if !top {
                self.w.inputs[target].extend(want.iter().cloned());
            }
            self.roots.extend(want);
            return false;
        }
        self.w.build.insert(drv);
        true
    }

    /// The walk's result, with the closures of the roots to fetch.
    fn finish(mut self) -> Walk {
        let mut stack: Vec<StorePath> = self.roots.into_iter().collect();
        while let Some(p) = stack.pop() {
            if self.w.plan.fetch.contains_key(&p) {
                continue;
            }
            let Some(found) = self.fetch.remove(&p) else {
                continue;
            };
            stack.extend(found.info.references.iter().cloned());
            self.w.plan.fetch.insert(p, found);
        }
        self.w
    }
}

/// The nodes of a derivation to build: the wanted outputs of its input derivations
/// and its input sources.
fn input_nodes(d: Derivation, target: usize) -> Vec<Node> {
    let drvs = d.input_drvs.into_iter().map(|(input, outs)| Node::Drv {
        drv: input,
        outputs: Some(outs),
        target,
        top: false,
    });
    let srcs = d.input_srcs.into_iter().map(|path| Node::Path {
        path,
        target,
        top: false,
    });
    drvs.chain(srcs).collect()
}
