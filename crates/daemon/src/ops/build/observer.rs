//! The scheduler's events relayed to the client as Nix 2.8 shows them: one `build`
//! activity (type 105, `building '<drv>'`, fields drvPath, machine "", curRound 1,
//! nrRounds 1) per derivation, a `buildLogLine` result (101) per line of its log
//! (except the builder's JSON log messages, `@nix {…}`, which are acted on as Nix's
//! `handleJSONLogMessage` does: stdenv's `setPhase` becomes a `setPhase` result
//! (104) of the build), its post-build hook's activity and lines, and its stop.

use std::collections::{BTreeSet, HashMap};

use unrooted_builder::{BuildMode as Mode, BuildObserver, BuildResult as Result_, Status};
use unrooted_format::StorePath;
use unrooted_protocol::json_log::{parse_json_log_line, JsonLogError, JsonLogMessage};
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
    /// Activities a builder started in its JSON log messages, by derivation and the
    /// builder's id for them.
    pub(super) builder_activities: HashMap<(StorePath, u64), ActivityId>,
    pub(super) top: BTreeSet<StorePath>,
    pub(super) mode: Mode,
    pub(super) progress: Option<WorkerProgress>,
}

impl ClientObserver<'_, '_> {
    fn sent(&mut self, r: Result<(), unrooted_protocol::ProtocolError>) -> bool {
        r.is_ok()
    }

    /// Acts on a builder's JSON log message of the build `id` of `drv`, as Nix 2.26
    /// does for an untrusted builder: only file transfers among the activities it
    /// starts are relayed (as children of the build), with their results and stops.
    fn json_message(&mut self, drv: &StorePath, id: ActivityId, m: JsonLogMessage) -> bool {
        let r = match m {
            JsonLogMessage::SetPhase(phase) => self.out.result(
                id,
                ResultType::SET_PHASE,
                vec![Field::String(phase.into_bytes())],
            ),
            JsonLogMessage::Msg { level, msg } => self.out.log(level, &msg).map(|_| ()),
            JsonLogMessage::Start {
                id: theirs,
                level,
                kind,
                text,
                fields,
            } if kind == ActivityType::FILE_TRANSFER => {
                match self
                    .out
                    .start_activity(level, kind, &text, fields, Some(id))
                {
                    Ok(ours) => {
                        if let Some(old) =
                            self.builder_activities.insert((drv.clone(), theirs), ours)
                        {
                            let _ = self.out.stop_activity(old);
                        }
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
            JsonLogMessage::Stop { id: theirs } => {
                match self.builder_activities.remove(&(drv.clone(), theirs)) {
                    Some(ours) => self.out.stop_activity(ours),
                    None => Ok(()),
                }
            }
            JsonLogMessage::Result {
                id: theirs,
                kind,
                fields,
            } => match self.builder_activities.get(&(drv.clone(), theirs)) {
                Some(&ours) => self.out.result(ours, kind, fields),
                None => Ok(()),
            },
            JsonLogMessage::Start { .. } | JsonLogMessage::Ignored => Ok(()),
        };
        self.sent(r)
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
        match parse_json_log_line(line) {
            Some(Ok(m)) => return self.json_message(drv, id, m),
            // Nix 2.26's words and colours (`printError`, `warn`, the source
            // `Uncolored`); the JSON parser's own words for a line that is not JSON
            // are serde_json's, not nlohmann's.
            Some(Err(JsonLogError::NotJson(e))) => {
                let m = format!("bad JSON log message from \x1b[0mthe derivation builder: {e}");
                if self.out.log(Verbosity::Error, &m).is_err() {
                    return false;
                }
            }
            Some(Err(JsonLogError::Unhandled(e))) => {
                let m = format!(
                    "\x1b[35;1mwarning:\x1b[0m Unable to handle a JSON message from \x1b[0mthe derivation builder: {e}"
                );
                if self.out.log(Verbosity::Warn, &m).is_err() {
                    return false;
                }
            }
            None => {}
        }
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
        // What the builder left running ends with its build.
        let left: Vec<(StorePath, u64)> = self
            .builder_activities
            .keys()
            .filter(|(d, _)| d == drv)
            .cloned()
            .collect();
        for key in left {
            if let Some(id) = self.builder_activities.remove(&key) {
                if self.out.stop_activity(id).is_err() {
                    return false;
                }
            }
        }
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
