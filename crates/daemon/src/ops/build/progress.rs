//! The activities of Nix's `Worker` that newer clients' progress bar is drawn from
//! (issue 19, checked against Debian 13's nix-daemon 2.26): `realise` (102),
//! `builds` (104) and `copyPaths` (103), all at level 0 with no text, with a
//! `progress` result (105: done, expected, running, failed) on `builds` and
//! `copyPaths` and two `setExpected` results (106: file transfers, copied paths) on
//! `realise` whenever a count changes, as `Worker::updateProgress` sends them; the
//! debug-level "querying info about missing paths" activity of `queryMissing`; and
//! the text of a derivation's `build` activity.

use std::collections::BTreeSet;

use unrooted_builder::{BuildMode as Mode, Status};
use unrooted_format::StorePath;
use unrooted_protocol::stderr::{ActivityId, ActivityType, Field, ResultType, Verbosity};

use crate::ops::Out;

/// The counts behind Nix's `Worker::updateProgress`, for the derivations this request
/// builds (`expected` are those not finished yet, as Nix counts its live goals).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct BuildCounts {
    expected: u64,
    done: u64,
    running: u64,
    failed: u64,
}

impl BuildCounts {
    /// The `progress` fields of the `builds` activity: done, done + expected, running,
    /// failed.
    fn fields(&self) -> Vec<Field> {
        vec![
            Field::Int(self.done),
            Field::Int(self.done + self.expected),
            Field::Int(self.running),
            Field::Int(self.failed),
        ]
    }

    /// A counted build started.
    pub(super) fn started(&mut self) {
        self.running += 1;
    }

    /// A counted build ended with `status` (`was_running` when it had started).
    pub(super) fn finished(&mut self, status: Status, was_running: bool) {
        self.expected = self.expected.saturating_sub(1);
        if was_running {
            self.running = self.running.saturating_sub(1);
        }
        if status == Status::Built {
            self.done += 1;
        } else if !status.is_success() && status != Status::DependencyFailed {
            self.failed += 1;
        }
    }
}

/// The `realise`, `builds` and `copyPaths` activities of one request.
pub(super) struct WorkerProgress {
    realise: ActivityId,
    builds: ActivityId,
    copy_paths: ActivityId,
    counts: BuildCounts,
    /// The derivations counted (those the scheduler said it would build).
    counted: BTreeSet<StorePath>,
    running: BTreeSet<StorePath>,
}

impl WorkerProgress {
    /// Starts the three activities, as Nix's `Worker` constructor does, and sends the
    /// first counts.
    pub(super) fn start(
        out: &mut Out,
        counted: BTreeSet<StorePath>,
    ) -> std::result::Result<Self, unrooted_protocol::ProtocolError> {
        let mut start = |kind| out.start_activity(Verbosity::Error, kind, "", Vec::new(), None);
        let realise = start(ActivityType::REALISE)?;
        let builds = start(ActivityType::BUILDS)?;
        let copy_paths = start(ActivityType::COPY_PATHS)?;
        let p = Self {
            realise,
            builds,
            copy_paths,
            counts: BuildCounts {
                expected: counted.len() as u64,
                ..BuildCounts::default()
            },
            counted,
            running: BTreeSet::new(),
        };
        p.update(out)?;
        Ok(p)
    }

    /// `Worker::updateProgress`: builds, substitutions (none here), expected
    /// downloads and copies (none).
    pub(super) fn update(
        &self,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        out.result(self.builds, ResultType::PROGRESS, self.counts.fields())?;
        out.result(
            self.copy_paths,
            ResultType::PROGRESS,
            vec![Field::Int(0), Field::Int(0), Field::Int(0), Field::Int(0)],
        )?;
        for kind in [ActivityType::FILE_TRANSFER, ActivityType::COPY_PATH] {
            out.result(
                self.realise,
                ResultType::SET_EXPECTED,
                vec![Field::Int(kind.0), Field::Int(0)],
            )?;
        }
        Ok(())
    }

    pub(super) fn started(
        &mut self,
        drv: &StorePath,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        if self.counted.contains(drv) && self.running.insert(drv.clone()) {
            self.counts.started();
            self.update(out)?;
        }
        Ok(())
    }

    pub(super) fn finished(
        &mut self,
        drv: &StorePath,
        status: Status,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        if self.counted.remove(drv) {
            let was_running = self.running.remove(drv);
            self.counts.finished(status, was_running);
            self.update(out)?;
        }
        Ok(())
    }

    /// Stops the activities in the order Nix's `Worker` destructor does.
    pub(super) fn stop(
        self,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        out.stop_activity(self.copy_paths)?;
        out.stop_activity(self.builds)?;
        out.stop_activity(self.realise)
    }
}

/// The debug-level activity Nix's `queryMissing` runs in, started and stopped.
pub(super) fn query_missing_activity(
    out: &mut Out,
) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
    let id = out.start_activity(
        Verbosity::Debug,
        ActivityType::UNKNOWN,
        "querying info about missing paths",
        Vec::new(),
        None,
    )?;
    out.stop_activity(id)
}

/// The text of a derivation's `build` activity, as Nix's `DerivationGoal` words it:
/// a requested derivation rebuilt by `--check`/`--rebuild` is "checking outputs of",
/// by `--repair` "repairing outputs of"; everything else (dependencies included,
/// which Nix builds normally) is "building".
pub(super) fn build_activity_text(mode: Mode, requested: bool, shown: &str) -> String {
    match (mode, requested) {
        (Mode::Check, true) => format!("checking outputs of '{shown}'"),
        (Mode::Repair, true) => format!("repairing outputs of '{shown}'"),
        _ => format!("building '{shown}'"),
    }
}

#[cfg(test)]
mod activity_text_tests {
    use super::{build_activity_text, Mode};

    /// Issue 19: `nix build --rebuild` printed "building" where Nix (2.8 and 2.26)
    /// prints "checking outputs of" (derivation-goal.cc).
    #[test]
    fn check_and_repair_are_worded_as_in_nix() {
        let p = "/nix/store/x-a.drv";
        assert_eq!(
            build_activity_text(Mode::Normal, true, p),
            "building '/nix/store/x-a.drv'"
        );
        assert_eq!(
            build_activity_text(Mode::Check, true, p),
            "checking outputs of '/nix/store/x-a.drv'"
        );
        assert_eq!(
            build_activity_text(Mode::Repair, true, p),
            "repairing outputs of '/nix/store/x-a.drv'"
        );
        // A dependency built on the way is built normally.
        assert_eq!(
            build_activity_text(Mode::Check, false, p),
            "building '/nix/store/x-a.drv'"
        );
    }
}
