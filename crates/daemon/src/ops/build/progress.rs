//! The activities of Nix's `Worker` that newer clients' progress bar is drawn from
//! (issue 19, checked against Debian 13's nix-daemon 2.26): `realise` (102),
//! `builds` (104) and `copyPaths` (103), all at level 0 with no text, with a
//! `progress` result (105: done, expected, running, failed) on `builds` and
//! `copyPaths` and two `setExpected` results (106: file transfers, copied paths) on
//! `realise` whenever a count changes, as `Worker::updateProgress` sends them; the
//! debug-level "querying info about missing paths" activity of `queryMissing`; and
//! the text of a derivation's `build` activity.

use std::collections::{BTreeSet, HashMap};

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

/// The counts behind the `copyPaths` progress and the `realise` activity's expected
/// sizes in Nix's `Worker::updateProgress`: substitution goals expected, done,
/// running and failed, and the download (compressed) and NAR bytes expected and done.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct SubstCounts {
    expected: u64,
    done: u64,
    running: u64,
    failed: u64,
    expected_download: u64,
    done_download: u64,
    expected_nar: u64,
    done_nar: u64,
}

/// The `realise`, `builds` and `copyPaths` activities of one request (Nix's
/// `Worker`), with the counts of its builds and substitutions.
pub(crate) struct WorkerProgress {
    realise: ActivityId,
    builds: ActivityId,
    copy_paths: ActivityId,
    counts: BuildCounts,
    /// The derivations counted (those the scheduler said it would build).
    counted: BTreeSet<StorePath>,
    running: BTreeSet<StorePath>,
    subst: SubstCounts,
    /// The download and NAR sizes of each substitution announced and not finished.
    sizes: HashMap<StorePath, (u64, u64)>,
}

type Sent = std::result::Result<(), unrooted_protocol::ProtocolError>;

impl WorkerProgress {
    /// Starts the three activities, as Nix's `Worker` constructor does, and sends the
    /// first counts, with `goals` derivations expected (Nix's first count is the
    /// derivation goals of the request itself, made before anything is looked at).
    pub(crate) fn start(
        out: &mut Out,
        goals: u64,
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
                expected: goals,
                ..BuildCounts::default()
            },
            counted: BTreeSet::new(),
            running: BTreeSet::new(),
            subst: SubstCounts::default(),
            sizes: HashMap::new(),
        };
        p.update(out)?;
        Ok(p)
    }

    /// The derivations the build will build (the scheduler's plan, as QueryMissing
    /// answers it), counted from now on instead of the first guess.
    pub(crate) fn plan_builds(&mut self, counted: BTreeSet<StorePath>, out: &mut Out) -> Sent {
        self.counts.expected = counted.len() as u64;
        self.counted = counted;
        self.update(out)
    }

    /// `Worker::updateProgress`: builds, substitutions, expected downloads and
    /// copies.
    pub(crate) fn update(&self, out: &mut Out) -> Sent {
        out.result(self.builds, ResultType::PROGRESS, self.counts.fields())?;
        let c = &self.subst;
        out.result(
            self.copy_paths,
            ResultType::PROGRESS,
            vec![
                Field::Int(c.done),
                Field::Int(c.done + c.expected),
                Field::Int(c.running),
                Field::Int(c.failed),
            ],
        )?;
        for (kind, n) in [
            (
                ActivityType::FILE_TRANSFER,
                c.expected_download + c.done_download,
            ),
            (ActivityType::COPY_PATH, c.expected_nar + c.done_nar),
        ] {
            out.result(
                self.realise,
                ResultType::SET_EXPECTED,
                vec![Field::Int(kind.0), Field::Int(n)],
            )?;
        }
        Ok(())
    }

    /// A path will be substituted (Nix's substitution goal got its info):
    /// `download` compressed bytes (0: unknown) and `nar` bytes.
    pub(crate) fn substitution_expected(
        &mut self,
        path: &StorePath,
        download: u64,
        nar: u64,
        out: &mut Out,
    ) -> Sent {
        if self.sizes.insert(path.clone(), (download, nar)).is_some() {
            return Ok(());
        }
        let c = &mut self.subst;
        c.expected += 1;
        c.expected_download += download;
        c.expected_nar += nar;
        self.update(out)
    }

    /// The substitution of `path` starts running.
    pub(crate) fn substitution_started(&mut self, path: &StorePath, out: &mut Out) -> Sent {
        if !self.sizes.contains_key(path) {
            return Ok(());
        }
        self.subst.running += 1;
        self.update(out)
    }

    /// The substitution of `path` ended, successfully (`ok`) or not.
    pub(crate) fn substitution_finished(
        &mut self,
        path: &StorePath,
        ok: bool,
        out: &mut Out,
    ) -> Sent {
        let Some((download, nar)) = self.sizes.remove(path) else {
            return Ok(());
        };
        let c = &mut self.subst;
        c.running = c.running.saturating_sub(1);
        c.expected = c.expected.saturating_sub(1);
        c.expected_download = c.expected_download.saturating_sub(download);
        c.expected_nar = c.expected_nar.saturating_sub(nar);
        if ok {
            c.done += 1;
            c.done_download += download;
            c.done_nar += nar;
        } else {
            c.failed += 1;
        }
        self.update(out)
    }

    pub(crate) fn started(
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

    pub(crate) fn finished(
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
    pub(crate) fn stop(
        self,
        out: &mut Out,
    ) -> std::result::Result<(), unrooted_protocol::ProtocolError> {
        out.stop_activity(self.copy_paths)?;
        out.stop_activity(self.builds)?;
        out.stop_activity(self.realise)
    }
}

/// Starts the debug-level activity Nix's `queryMissing` runs in (stopped by the
/// caller once the caches were asked).
pub(crate) fn start_query_missing(
    out: &mut Out,
) -> std::result::Result<ActivityId, unrooted_protocol::ProtocolError> {
    out.start_activity(
        Verbosity::Debug,
        ActivityType::UNKNOWN,
        "querying info about missing paths",
        Vec::new(),
        None,
    )
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
