//! The graph of one request: which derivations need building, and each target's
//! node or result.

use std::collections::HashMap;
use std::sync::Arc;

use unrooted_format::StorePath;
use unrooted_store::LocalStore;

use super::{missing_outputs, Node, NodeState, Target, MAX_NODES};
use crate::error::{error_chain, BuildError};
use crate::goal;
use crate::{BuildMode, BuildOptions, BuildResult, Status};

/// The graph of one request: the derivations to build, and each target's node or
/// result.
pub(super) struct RequestGraph {
    pub(super) nodes: Vec<Node>,
    /// Node index by derivation.
    index: HashMap<StorePath, usize>,
    /// Per target: its result, when known without building.
    results: Vec<Option<BuildResult>>,
    /// Per target: its node, once the graph is linked (`usize::MAX` until then).
    target_nodes: Vec<Option<usize>>,
}

impl RequestGraph {
    /// The nodes `targets` need: a requested derivation whose wanted outputs are all
    /// valid is none (unless checked or repaired), an input derivation one only when
    /// an output it is used for is missing.
    pub(super) fn new(store: &LocalStore, targets: &[Target], opts: &BuildOptions) -> Self {
        let mut graph = RequestGraph {
            nodes: Vec::new(),
            index: HashMap::new(),
            results: vec![None; targets.len()],
            target_nodes: vec![None; targets.len()],
        };
        let mut todo: Vec<(StorePath, BuildMode)> = Vec::new();
        for (i, t) in targets.iter().enumerate() {
            graph.add_target(store, i, t, opts, &mut todo);
        }
        graph.add_nodes(store, todo);
        graph.link(targets);
        graph
    }

    /// Target `i`: its result when nothing is to be built, or its derivation queued.
    fn add_target(
        &mut self,
        store: &LocalStore,
        i: usize,
        target: &Target,
        opts: &BuildOptions,
        todo: &mut Vec<(StorePath, BuildMode)>,
    ) {
        let (drv, outputs) = match target {
            Target::Opaque(p) => {
                self.results[i] = Some(opaque_result(store, p));
                return;
            }
            Target::Built { drv, outputs } => (drv, outputs),
        };
        let loaded = goal::load_derivation(store, drv).and_then(|d| {
            let missing = missing_outputs(store, &d, outputs.as_ref())?;
            Ok((d, missing))
        });
        match loaded {
            Err(e) => {
                self.results[i] = Some(BuildResult::new(Status::MiscFailure, error_chain(&e)))
            }
            Ok((d, false)) if opts.mode == BuildMode::Normal => {
                let mut r = BuildResult::new(Status::AlreadyValid, "");
                r.outputs = goal::output_paths(store, drv, &d).unwrap_or_default();
                self.results[i] = Some(r);
            }
            Ok(_) => {
                todo.push((drv.clone(), opts.mode));
                self.target_nodes[i] = Some(usize::MAX);
            }
        }
    }

    /// A node for each derivation in `todo` and, recursively, its needed inputs.
    fn add_nodes(&mut self, store: &LocalStore, mut todo: Vec<(StorePath, BuildMode)>) {
        while let Some((drv_path, mode)) = todo.pop() {
            if let Some(&k) = self.index.get(&drv_path) {
                if mode != BuildMode::Normal {
                    self.nodes[k].mode = mode;
                }
                continue;
            }
            if self.nodes.len() >= MAX_NODES {
                break;
            }
            self.index.insert(drv_path.clone(), self.nodes.len());
            self.nodes.push(new_node(store, drv_path, mode, &mut todo));
        }
    }

    /// Each node's dependencies, and each target's node, by index.
    fn link(&mut self, targets: &[Target]) {
        for node in self.nodes.iter_mut() {
            node.deps = node
                .dep_paths
                .iter()
                .filter_map(|p| self.index.get(p).copied())
                .collect();
        }
        for (i, t) in targets.iter().enumerate() {
            if self.target_nodes[i].is_some() {
                if let Target::Built { drv, .. } = t {
                    self.target_nodes[i] = self.index.get(drv).copied();
                    if self.target_nodes[i].is_none() {
                        self.results[i] = Some(BuildResult::new(
                            Status::MiscFailure,
                            "too many derivations in one request",
                        ));
                    }
                }
            }
        }
    }

    /// One result per target, in order.
    pub(super) fn results(mut self) -> Vec<BuildResult> {
        for (i, k) in self.target_nodes.iter().enumerate() {
            if let Some(k) = *k {
                let r = match &self.nodes[k].state {
                    NodeState::Done(r) => (**r).clone(),
                    _ => BuildResult::new(Status::Cancelled, "the build was cancelled"),
                };
                self.results[i] = Some(r);
            }
        }
        self.results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| BuildResult::new(Status::Cancelled, "not built")))
            .collect()
    }
}

/// The result of an opaque target: valid, or nothing can build it.
fn opaque_result(store: &LocalStore, p: &StorePath) -> BuildResult {
    match store.is_valid_path(p) {
        Ok(true) => BuildResult::new(Status::AlreadyValid, ""),
        Ok(false) => BuildResult::new(
            Status::MiscFailure,
            format!(
                "path '{}' is required, but there is no substituter that can build it",
                store.print_path(p)
            ),
        ),
        Err(e) => BuildResult::new(Status::MiscFailure, error_chain(&e)),
    }
}

/// The node of `drv_path`, its needed input derivations queued on `todo`; a `.drv`
/// that cannot be loaded makes a failed node.
fn new_node(
    store: &LocalStore,
    drv_path: StorePath,
    mode: BuildMode,
    todo: &mut Vec<(StorePath, BuildMode)>,
) -> Node {
    let mut node = Node {
        drv_path,
        drv: None,
        mode,
        dep_paths: Vec::new(),
        deps: Vec::new(),
        state: NodeState::Pending,
        chain: Vec::new(),
    };
    match goal::load_derivation(store, &node.drv_path) {
        Ok(d) => {
            // Checked before any input is built, as Nix does (`gaveUpOnSubstitution`).
            if let Some(msg) = goal::impure_input_refusal(store, &node.drv_path, &d) {
                node.state = NodeState::Done(Arc::new(BuildResult::new(Status::MiscFailure, msg)));
                return node;
            }
            for (input, outs) in &d.input_drvs {
                let needed = store
                    .is_valid_path(input)
                    .map_err(BuildError::from)
                    .and_then(|valid| {
                        if !valid {
                            return Ok(true);
                        }
                        let di = goal::load_derivation(store, input)?;
                        missing_outputs(store, &di, Some(outs))
                    });
                if !matches!(needed, Ok(false)) {
                    node.dep_paths.push(input.clone());
                    todo.push((input.clone(), BuildMode::Normal));
                }
            }
            node.drv = Some(Arc::new(d));
        }
        Err(e) => {
            node.state = NodeState::Done(Arc::new(BuildResult::new(
                Status::MiscFailure,
                error_chain(&e),
            )));
        }
    }
    node
}
