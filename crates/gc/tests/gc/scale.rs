//! Collection time against store size (ignored by default: a measurement).

use crate::common;

use std::os::unix::fs::symlink;
use std::time::Instant;

use common::{no_helper, open_at, text};
use unrooted_gc::{Collector, GcAction, GcOptions, TempRoots};

#[test]
#[ignore = "a measurement: cargo test --release -p unrooted-gc --test gc scale:: -- --ignored --nocapture"]
fn collect_scales_linearly() {
    let n: usize = std::env::var("GC_SCALE_PATHS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10_000);
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let roots = tmp.path().join("state/gcroots/bench");
    std::fs::create_dir_all(&roots).unwrap();
    for i in 0..n {
        let live = text(&store, &format!("live-{i}"), &format!("live {i}\n"), &[]);
        symlink(store.real_path(&live), roots.join(format!("r{i}"))).unwrap();
        text(&store, &format!("dead-{i}"), &format!("dead {i}\n"), &[]);
    }
    let temp = TempRoots::new();
    let opts = GcOptions {
        action: GcAction::DeleteDead,
        ignore_liveness: false,
        max_freed: u64::MAX,
    };
    if std::env::var_os("GC_SCALE_PAUSE").is_some() {
        // For attaching a profiler: the collection starts once a line arrives on
        // stdin (sent when it has attached), not after a guessed delay.
        eprintln!("READY (send a line on stdin to start the collection)");
        let mut line = String::new();
        std::io::stdin()
            .read_line(&mut line)
            .expect("reading stdin");
    }
    let cpu0 = cpu_secs();
    let start = Instant::now();
    let mut last = start;
    let r = Collector::new(&store, no_helper(), &temp)
        .collect(&opts, &mut |m| {
            if !m.starts_with("deleting '") {
                let now = Instant::now();
                eprintln!(
                    "{:>8.3}s (+{:.3}s) {m}",
                    (now - start).as_secs_f64(),
                    (now - last).as_secs_f64()
                );
                last = now;
            }
        })
        .unwrap();
    let t = start.elapsed().as_secs_f64();
    assert_eq!(r.paths.len(), n);
    eprintln!(
        "{n} dead + {n} live: {t:.3}s ({:.3}s on CPU), {:.0} paths/s",
        cpu_secs() - cpu0,
        n as f64 / t
    );
}

/// User and system time of this process so far (`/proc/self/stat`, clock ticks of
/// 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit(") ").next().unwrap().split(' ').collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}
