//! The scheduler's events relayed to the client as Nix 2.8 shows them: one `build`
//! activity (type 105, `building '<drv>'`, fields drvPath, machine "", curRound 1,
//! nrRounds 1) per derivation, a `buildLogLine` result (101) per line of its log, its
//! post-build hook's activity and lines, and its stop.

use std::collections::{BTreeSet, HashMap};

use unrooted_builder::{BuildMode as Mode, BuildObserver, BuildResult as Result_, Status};
use unrooted_format::StorePath;
use unrooted_protocol::stderr::{ActivityId, ActivityType, Field, ResultType, Verbosity};

use super::progress::{build_activity_text, WorkerProgress};
use crate::ops::Out;
use crate::session::Session;

/// Relays scheduler events to the client as Nix's activities and log lines.
pub(super) struct ClientObserver<'s, 'o> {
    pub(super) s: &'s Session<'s>,
    pub(super) out: &'o mut Out,
    pub(super) activities: HashMap<StorePath, ActivityId>,
    /// The running post-build hooks' activities.
    pub(super) hooks: HashMap<StorePath, ActivityId>,
    pub(super) top: BTreeSet<StorePath>,
    pub(super) mode: Mode,
    pub(super) progress: Option<WorkerProgress>,
}

impl ClientObserver<'_, '_> {
    fn sent(&mut self, r: Result<(), unrooted_protocol::ProtocolError>) -> bool {
        r.is_ok()
    }
}

impl BuildObserver for ClientObserver<'_, '_> {
    fn started(&mut self, drv: &StorePath) -> bool {
        // Temp roots: the derivation and its outputs stay alive while they are built.
        self.s.add_temp_root(drv);
        if let Ok(map) = self.s.state.store.query_derivation_output_map(drv) {
            for p in map.values() {
                self.s.add_temp_root(p);
            }
        }
        let shown = self.s.cx.store_dir.display(drv);
        let text = build_activity_text(self.mode, self.top.contains(drv), &shown);
        let mut progress_sent = Ok(());
        let r = self.out.start_activity(
            Verbosity::Info,
            ActivityType::BUILD,
            &text,
            vec![
                Field::String(shown.into_bytes()),
                Field::String(Vec::new()),
                Field::Int(1),
                Field::Int(1),
            ],
            None,
        );
        if let Some(p) = self.progress.as_mut() {
            if r.is_ok() {
                progress_sent = p.started(drv, self.out);
            }
        }
        match r {
            Ok(id) if progress_sent.is_ok() => {
                self.activities.insert(drv.clone(), id);
                self.out.flush().is_ok()
            }
            _ => false,
        }
    }

    fn log_line(&mut self, drv: &StorePath, line: &str) -> bool {
        let Some(&id) = self.activities.get(drv) else {
            return true;
        };
        let r = self.out.result(
            id,
            ResultType::BUILD_LOG_LINE,
            vec![Field::String(line.as_bytes().to_vec())],
        );
        self.sent(r)
    }

    fn note(&mut self, _drv: &StorePath, text: &str) -> bool {
        let r = self.out.log(Verbosity::Error, text).map(|_| ());
        self.sent(r)
    }

    fn hook_started(&mut self, drv: &StorePath, hook: &str) -> bool {
        let shown = self.s.cx.store_dir.display(drv);
        let parent = self.activities.get(drv).copied();
        let r = self.out.start_activity(
            Verbosity::Info,
            ActivityType::POST_BUILD_HOOK,
            &format!("running post-build-hook '{hook}'"),
            vec![Field::String(shown.into_bytes())],
            parent,
        );
        match r {
            Ok(id) => {
                self.hooks.insert(drv.clone(), id);
                true
            }
            Err(_) => false,
        }
    }

    fn hook_line(&mut self, drv: &StorePath, line: &str) -> bool {
        let Some(&id) = self.hooks.get(drv) else {
            return true;
        };
        let r = self.out.result(
            id,
            ResultType::POST_BUILD_LOG_LINE,
            vec![Field::String(line.as_bytes().to_vec())],
        );
        self.sent(r)
    }

    fn finished(&mut self, drv: &StorePath, result: &Result_) -> bool {
        if let Some(id) = self.hooks.remove(drv) {
            if self.out.stop_activity(id).is_err() {
                return false;
            }
        }
        if let Some(p) = self.progress.as_mut() {
            if p.finished(drv, result.status, self.out).is_err() {
                return false;
            }
        }
        // Built here (not substituted, not already valid): to the upload caches,
        // without waiting for them.
        if result.status == Status::Built {
            if let Some(u) = &self.s.state.uploader {
                u.enqueue(result.outputs.values().cloned().collect());
            }
        }
        if let Some(id) = self.activities.remove(drv) {
            if self.out.stop_activity(id).is_err() {
                return false;
            }
        }
        // Failures of dependencies are shown as Nix shows them; the requested
        // derivations' own errors end the request.
        if !result.status.is_success()
            && result.status != Status::Cancelled
            && !self.top.contains(drv)
        {
            let r = self
                .out
                .log(Verbosity::Error, &format!("error: {}", result.error))
                .map(|_| ());
            if r.is_err() {
                return false;
            }
        }
        self.out.flush().is_ok()
    }

    fn connected(&mut self) -> bool {
        if self.out.flush().is_err() {
            return false;
        }
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let sock = self.out.get_mut().get_ref();
        let mut fds = [PollFd::new(sock, PollFlags::RDHUP)];
        let zero = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&zero)) {
            Ok(0) => true,
            Ok(_) => !fds[0]
                .revents()
                .intersects(PollFlags::RDHUP | PollFlags::HUP | PollFlags::ERR),
            Err(_) => true,
        }
    }
}
