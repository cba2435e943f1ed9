//! The requesting thread's loop: start what can start, fail what cannot, pick up
//! results, relay log messages.

use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;

use unrooted_store::LocalStore;

use super::{BuildObserver, Msg, Node, NodeState, Scheduler, TICK};
use crate::{BuildOptions, BuildResult, Status};

/// The requesting thread's loop over its graph: start what can start, fail what
/// cannot, pick up results, relay log messages.
pub(super) struct RequestLoop<'scope, 'env: 'scope, 'r> {
    pub(super) scheduler: &'env Scheduler,
    pub(super) scope: &'scope std::thread::Scope<'scope, 'env>,
    pub(super) store: &'env LocalStore,
    pub(super) opts: &'env BuildOptions,
    pub(super) request: u64,
    pub(super) tx: &'r SyncSender<Msg>,
    pub(super) rx: &'r Receiver<Msg>,
    pub(super) observer: &'r mut dyn BuildObserver,
    /// A build failed without keep-going: nothing new starts.
    pub(super) stopping: bool,
    /// The client went away: nothing new starts, and its goals are left.
    pub(super) gone: bool,
}

impl<'scope, 'env: 'scope> RequestLoop<'scope, 'env, '_> {
    pub(super) fn run(&mut self, nodes: &mut [Node]) {
        loop {
            self.start_ready(nodes);
            self.collect_finished(nodes);
            if self.stopping || self.gone {
                self.cancel_rest(nodes);
            }
            if nodes.iter().all(|n| matches!(n.state, NodeState::Done(_))) {
                break;
            }
            self.relay_messages();
            if !self.gone && !self.observer.connected() {
                self.gone = true;
            }
        }
        // Lines still queued belong to builds that just ended; pass them on.
        while let Ok(msg) = self.rx.try_recv() {
            let _ = relay(self.observer, &msg);
        }
    }

    /// Starts each pending node whose dependencies all succeeded; fails each with a
    /// failed dependency.
    fn start_ready(&mut self, nodes: &mut [Node]) {
        for k in 0..nodes.len() {
            if !matches!(nodes[k].state, NodeState::Pending) {
                continue;
            }
            let mut failed_dep = None;
            let mut all_done = true;
            for &d in &nodes[k].deps {
                match &nodes[d].state {
                    NodeState::Done(r) if !r.status.is_success() => {
                        failed_dep.get_or_insert(d);
                    }
                    NodeState::Done(_) => {}
                    _ => all_done = false,
                }
            }
            if let Some(d) = failed_dep {
                self.fail_for_dependency(nodes, k, d);
                continue;
            }
            if !all_done || self.stopping || self.gone {
                continue;
            }
            let goal = self.scheduler.claim(
                self.scope,
                self.store,
                self.opts,
                &nodes[k],
                self.request,
                self.tx.clone(),
            );
            nodes[k].state = NodeState::Running(goal);
        }
    }

    /// Fails node `k`, whose dependency `d` failed, naming the chain of failures.
    fn fail_for_dependency(&mut self, nodes: &mut [Node], k: usize, d: usize) {
        let store = self.store;
        let mut chain = vec![nodes[d].drv_path.clone()];
        chain.extend(nodes[d].chain.iter().cloned());
        let failed = nodes[k]
            .deps
            .iter()
            .filter(|&&d| matches!(&nodes[d].state, NodeState::Done(r) if !r.status.is_success()))
            .count();
        let shown: Vec<String> = chain
            .iter()
            .map(|p| format!("'{}'", store.print_path(p)))
            .collect();
        let r = BuildResult::new(
            Status::DependencyFailed,
            format!(
                "{failed} dependencies of derivation '{}' failed to build (failed: {})",
                store.print_path(&nodes[k].drv_path),
                shown.join(" <- ")
            ),
        );
        nodes[k].chain = chain;
        if !self.observer.finished(&nodes[k].drv_path, &r) {
            self.gone = true;
        }
        nodes[k].state = NodeState::Done(Arc::new(r));
    }

    /// Picks up the results of finished goals.
    fn collect_finished(&mut self, nodes: &mut [Node]) {
        for node in nodes.iter_mut() {
            let NodeState::Running(g) = &node.state else {
                continue;
            };
            let Some(r) = g.result() else { continue };
            g.unsubscribe(self.request);
            if !self.observer.finished(&node.drv_path, &r) {
                self.gone = true;
            }
            if !r.status.is_success() && !self.opts.keep_going {
                self.stopping = true;
            }
            node.state = NodeState::Done(r);
        }
    }

    /// Nothing new starts; pending nodes end as cancelled, and goals only this
    /// request waits for are cancelled.
    fn cancel_rest(&mut self, nodes: &mut [Node]) {
        for node in nodes.iter_mut() {
            match &node.state {
                NodeState::Pending => {
                    node.state = NodeState::Done(Arc::new(BuildResult::new(
                        Status::Cancelled,
                        format!(
                            "build of '{}' was not started because another build failed",
                            self.store.print_path(&node.drv_path)
                        ),
                    )))
                }
                NodeState::Running(g) if self.gone => {
                    g.unsubscribe(self.request);
                    node.state = NodeState::Done(Arc::new(BuildResult::new(
                        Status::Cancelled,
                        "the client went away",
                    )));
                }
                _ => {}
            }
        }
    }

    /// Relays log messages until the next look (a tick, or at once when one is
    /// queued).
    fn relay_messages(&mut self) {
        let mut first = true;
        loop {
            let msg = if first {
                first = false;
                match self.rx.recv_timeout(TICK) {
                    Ok(m) => m,
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            } else {
                match self.rx.try_recv() {
                    Ok(m) => m,
                    Err(_) => break,
                }
            };
            if !relay(self.observer, &msg) {
                self.gone = true;
                break;
            }
        }
    }
}

/// Passes one message to the observer; false when its client is gone.
fn relay(observer: &mut dyn BuildObserver, msg: &Msg) -> bool {
    match msg {
        Msg::Started(d) => observer.started(d),
        Msg::Line(d, l) => observer.log_line(d, l),
        Msg::Note(d, t) => observer.note(d, t),
        Msg::HookStarted(d, h) => observer.hook_started(d, h),
        Msg::HookLine(d, l) => observer.hook_line(d, l),
        Msg::Finished => true,
    }
}
