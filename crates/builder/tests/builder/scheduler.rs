//! The scheduler with real builders (static busybox) run directly (`sandbox = false`,
//! so these tests need no user namespaces) against a private store: deduplication of
//! one derivation wanted by two requests, dependency order, failure propagation with
//! the chain named, keep-going, and cancellation when the client goes away.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use unrooted_builder::{BuildMode, BuildOptions, Status, Target};
use unrooted_format::StorePath;

use crate::common;
use common::{lab, Recorder};

#[test]
fn chain_builds_in_dependency_order_and_registers_outputs() {
    let Some(lab) = lab(4) else { return };
    let order = lab.file("order");
    let o = order.display();
    let a = lab.drv("a", &format!("echo a >> {o}; echo A > $out"), &[]);
    let b = lab.drv("b", &format!("echo b >> {o}; $B cat $dep0 > $out"), &[&a]);
    let c = lab.drv(
        "c",
        &format!("echo c >> {o}; echo building c; $B mkdir $out; $B cat $dep0 > $out/f"),
        &[&b],
    );
    let (r, rec) = lab.build(&[&c], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    assert_eq!(std::fs::read_to_string(&order).unwrap(), "a\nb\nc\n");
    assert_eq!(rec.started, [a.clone(), b.clone(), c.clone()]);
    assert!(rec.lines.contains(&"building c".to_owned()));
    let out_c = lab.store.query_derivation_output_map(&c).unwrap()["out"].clone();
    let info = lab.store.query_path_info(&out_c).unwrap().unwrap();
    assert_eq!(info.deriver.as_ref(), Some(&c));
    assert!(info.ultimate);
    // c's output holds b's output's text "A", not b's path: no references.
    assert!(info.references.is_empty());
    let out_b = lab.store.query_derivation_output_map(&b).unwrap()["out"].clone();
    assert!(lab.store.is_valid_path(&out_b).unwrap());
    // Valid outputs are not rebuilt.
    let (r, rec) = lab.build(&[&c], &BuildOptions::default());
    assert_eq!(r[0].status, Status::AlreadyValid);
    assert!(rec.started.is_empty());
    assert_eq!(lab.sched.builds_started(), 3);
}

#[test]
fn references_are_found_by_scanning() {
    let Some(lab) = lab(2) else { return };
    let a = lab.drv("ra", "echo A > $out", &[]);
    let b = lab.drv("rb", "echo $dep0 > $out", &[&a]);
    let (r, _) = lab.build(&[&b], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let out_a = lab.store.query_derivation_output_map(&a).unwrap()["out"].clone();
    let out_b = lab.store.query_derivation_output_map(&b).unwrap()["out"].clone();
    let refs = lab.store.query_references(&out_b).unwrap();
    assert_eq!(refs, BTreeSet::from([out_a]));
}

#[test]
fn one_derivation_wanted_by_two_requests_is_built_once() {
    let Some(lab) = lab(4) else { return };
    let count = lab.file("count");
    let slow = lab.drv(
        "slow",
        &format!(
            "echo run >> {}; $B sleep 1; echo done > $out",
            count.display()
        ),
        &[],
    );
    let lab = Arc::new(lab);
    let threads: Vec<_> = (0..3)
        .map(|_| {
            let lab = Arc::clone(&lab);
            let slow = slow.clone();
            std::thread::spawn(move || lab.build(&[&slow], &BuildOptions::default()).0)
        })
        .collect();
    for t in threads {
        let r = t.join().unwrap();
        assert!(r[0].status.is_success(), "{:?}", r[0]);
    }
    assert_eq!(std::fs::read_to_string(&count).unwrap(), "run\n");
    assert_eq!(lab.sched.builds_started(), 1);
}

#[test]
fn max_jobs_bounds_concurrent_builds() {
    let Some(lab) = lab(2) else { return };
    let log = lab.file("conc");
    let l = log.display();
    let drvs: Vec<StorePath> = (0..4)
        .map(|i| {
            lab.drv(
                &format!("j{i}"),
                &format!("echo + >> {l}; $B sleep 0.5; echo - >> {l}; echo {i} > $out"),
                &[],
            )
        })
        .collect();
    let refs: Vec<&StorePath> = drvs.iter().collect();
    let started = Instant::now();
    let (r, _) = lab.build(&refs, &BuildOptions::default());
    assert!(r.iter().all(|r| r.status == Status::Built));
    let mut running = 0i32;
    let mut peak = 0;
    for line in std::fs::read_to_string(&log).unwrap().lines() {
        running += if line == "+" { 1 } else { -1 };
        peak = peak.max(running);
    }
    assert_eq!(peak, 2, "max-jobs = 2");
    assert!(started.elapsed() >= Duration::from_millis(1000));
}

#[test]
fn failure_propagates_naming_the_chain_and_keep_going_builds_the_rest() {
    let Some(lab) = lab(1) else { return };
    let leaf = lab.drv("leaf", "echo about to fail; exit 3", &[]);
    let mid = lab.drv("mid", "$B cat $dep0 > $out", &[&leaf]);
    let top = lab.drv("top", "$B cat $dep0 > $out", &[&mid]);
    let other = lab.drv("other", "echo ok > $out", &[]);
    let opts = BuildOptions {
        keep_going: true,
        ..BuildOptions::default()
    };
    let (r, rec) = lab.build(&[&top, &other], &opts);
    assert_eq!(r[0].status, Status::DependencyFailed);
    let shown = |p: &StorePath| lab.store.print_path(p);
    assert!(
        r[0].error.contains(&format!(
            "1 dependencies of derivation '{}' failed to build (failed: '{}' <- '{}')",
            shown(&top),
            shown(&mid),
            shown(&leaf)
        )),
        "{}",
        r[0].error
    );
    assert_eq!(r[1].status, Status::Built, "keep-going builds the rest");
    let leaf_result = rec.finished.iter().find(|(d, _)| *d == leaf).unwrap();
    assert_eq!(leaf_result.1, Status::PermanentFailure);

    // The builder's error itself, with the last log lines.
    let (r, _) = lab.build(&[&leaf], &BuildOptions::default());
    assert_eq!(
        r[0].error,
        format!(
            "builder for '{}' failed with exit code 3;\nlast 1 log lines:\n> about to fail\nFor full logs, run 'nix log {}'.",
            shown(&leaf),
            shown(&leaf)
        )
    );
}

#[test]
fn without_keep_going_nothing_new_starts_after_a_failure() {
    let Some(lab) = lab(1) else { return };
    let bad = lab.drv("bad", "exit 1", &[]);
    let later = lab.drv("later", "echo ok > $out", &[]);
    // One job: `bad` and `later` are claimed together, but `later` waits for the slot.
    let (r, _) = lab.build(&[&bad, &later], &BuildOptions::default());
    assert_eq!(r[0].status, Status::PermanentFailure);
    assert_ne!(r[1].status, Status::PermanentFailure);
}

#[test]
fn a_client_going_away_kills_a_build_nobody_else_wants() {
    let Some(lab) = lab(2) else { return };
    let marker = lab.file("finished");
    let pid_file = lab.file("pid");
    let long = lab.drv(
        "long",
        &format!(
            "echo $$ > {}; $B sleep 30; echo x > {}; echo > $out",
            pid_file.display(),
            marker.display()
        ),
        &[],
    );
    let mut rec = Recorder {
        disconnect_after: Some(Instant::now() + Duration::from_millis(500)),
        ..Recorder::default()
    };
    let t0 = Instant::now();
    let r = lab.sched.build(
        &lab.store,
        &[Target::Built {
            drv: long.clone(),
            outputs: None,
        }],
        &BuildOptions::default(),
        &mut rec,
    );
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_eq!(r[0].status, Status::Cancelled);
    // The builder (unsandboxed: its pid is ours to see) is killed, not left to run:
    // wait for its end rather than for a while.
    // (No pid file: it was cancelled before it started.)
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    let stat = format!("/proc/{}/stat", pid.trim());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !pid.is_empty()
        && std::fs::read_to_string(&stat).is_ok_and(|s| {
            s.rsplit_once(')')
                .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z'))
        })
    {
        assert!(
            Instant::now() < deadline,
            "the builder outlived its cancellation"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(!marker.exists());
    let out = lab.store.query_derivation_output_map(&long).unwrap()["out"].clone();
    assert!(!lab.store.is_valid_path(&out).unwrap());
}

#[test]
fn timeout_and_silence_kill_the_builder() {
    let Some(lab) = lab(2) else { return };
    let slow = lab.drv("sleepy", "$B sleep 30; echo > $out", &[]);
    let opts = BuildOptions {
        max_silent_time: 1,
        ..BuildOptions::default()
    };
    let t0 = Instant::now();
    let (r, _) = lab.build(&[&slow], &opts);
    assert_eq!(r[0].status, Status::TimedOut);
    assert!(
        r[0].error.ends_with("timed out after 1 seconds of silence"),
        "{}",
        r[0].error
    );
    assert!(t0.elapsed() < Duration::from_secs(10));
    let opts = BuildOptions {
        timeout: 1,
        mode: BuildMode::Normal,
        ..BuildOptions::default()
    };
    let (r, _) = lab.build(&[&slow], &opts);
    assert_eq!(r[0].status, Status::TimedOut);
    assert!(
        r[0].error.ends_with("timed out after 1 seconds"),
        "{}",
        r[0].error
    );
}
