//! Peak memory of the daemons, sampled from /proc while the workloads run.
//!
//! `nix-daemon` forks a process per connection, so a daemon's memory is that of its
//! whole process tree: the sum of VmRSS over the main process and its descendants.
//! Forked children share most of their pages with the parent, which a sum of RSS counts
//! once per process; the sum of PSS (each shared page divided among its sharers) is
//! sampled too, so the comparison can be read both ways.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How often the memory is sampled.
const INTERVAL: Duration = Duration::from_millis(10);
/// Every how many samples the process trees are looked up again; scanning all of /proc
/// every 10 ms would cost a noticeable share of a core on a two-core machine, and
/// connection processes live far longer than this.
const RESCAN_EVERY: u32 = 5;

/// Peak memory of one daemon's process tree, in KiB.
#[derive(Clone, Copy, Default, Debug)]
pub struct Peak {
    /// The largest sum of VmRSS seen.
    pub rss_kib: u64,
    /// The largest sum of PSS seen.
    pub pss_kib: u64,
    /// The most processes seen in the tree at once.
    pub processes: usize,
}

impl Peak {
    fn merge(&mut self, other: Peak) {
        self.rss_kib = self.rss_kib.max(other.rss_kib);
        self.pss_kib = self.pss_kib.max(other.pss_kib);
        self.processes = self.processes.max(other.processes);
    }
}

#[derive(Default)]
struct State {
    /// The current phase's name, and per phase (in order) the peak of each daemon.
    phases: Vec<(String, Vec<Peak>)>,
}

/// Samples the memory of a few daemons' process trees on a background thread.
pub struct Sampler {
    stop: Arc<AtomicBool>,
    state: Arc<Mutex<State>>,
    thread: Option<JoinHandle<()>>,
}

impl Sampler {
    /// Starts sampling the trees rooted at `roots` (one per daemon), under the phase
    /// name `phase`.
    pub fn start(roots: Vec<u32>, phase: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let state = Arc::new(Mutex::new(State {
            phases: vec![(phase.to_owned(), vec![Peak::default(); roots.len()])],
        }));
        let thread = {
            let (stop, state) = (stop.clone(), state.clone());
            std::thread::spawn(move || sample_loop(&roots, &stop, &state))
        };
        Self {
            stop,
            state,
            thread: Some(thread),
        }
    }

    /// Starts a new phase: later samples count towards it (and towards the total).
    pub fn phase(&self, name: &str) {
        let mut st = self.state.lock().expect("sampler state");
        let n = st.phases[0].1.len();
        st.phases.push((name.to_owned(), vec![Peak::default(); n]));
    }

    /// Stops sampling; returns each phase's peaks (phases in which nothing was sampled
    /// are left out) and the overall peak of each daemon.
    pub fn finish(mut self) -> (Vec<(String, Vec<Peak>)>, Vec<Peak>) {
        self.stop_thread();
        let st = std::mem::take(&mut *self.state.lock().expect("sampler state"));
        let mut total = vec![Peak::default(); st.phases[0].1.len()];
        for (_, peaks) in &st.phases {
            for (t, p) in total.iter_mut().zip(peaks) {
                t.merge(*p);
            }
        }
        let phases = st
            .phases
            .into_iter()
            .filter(|(_, p)| p.iter().any(|p| p.processes > 0))
            .collect();
        (phases, total)
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

fn sample_loop(roots: &[u32], stop: &AtomicBool, state: &Mutex<State>) {
    let mut trees: Vec<Vec<u32>> = Vec::new();
    let mut until_rescan = 0u32;
    while !stop.load(Ordering::Relaxed) {
        if until_rescan == 0 {
            trees = process_trees(roots);
            until_rescan = RESCAN_EVERY;
        }
        until_rescan -= 1;
        let sample: Vec<Peak> = trees.iter().map(|t| sample_tree(t)).collect();
        {
            let mut st = state.lock().expect("sampler state");
            if let Some((_, peaks)) = st.phases.last_mut() {
                for (p, s) in peaks.iter_mut().zip(sample) {
                    p.merge(s);
                }
            }
        }
        std::thread::sleep(INTERVAL);
    }
}

/// Each root with its descendants, found through the parent pid in /proc/*/stat.
fn process_trees(roots: &[u32]) -> Vec<Vec<u32>> {
    let mut children: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = parent_pid(pid) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    roots
        .iter()
        .map(|&root| {
            let mut seen = BTreeSet::from([root]);
            let mut queue = vec![root];
            while let Some(p) = queue.pop() {
                for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
                    if seen.insert(c) {
                        queue.push(c);
                    }
                }
            }
            seen.into_iter().collect()
        })
        .collect()
}

/// The descendants of `root` (not `root` itself).
pub fn descendants(root: u32) -> Vec<u32> {
    tree(root).into_iter().filter(|&p| p != root).collect()
}

/// `root` and its descendants.
pub fn tree(root: u32) -> Vec<u32> {
    process_trees(&[root]).pop().unwrap_or_default()
}

/// Field `n` (1-based, as in proc(5)) of `/proc/<pid>/stat`, from field 3 on.
fn stat_field(pid: u32, n: usize) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) in parentheses may contain spaces and parentheses;
    // field 3 is the first after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(n.checked_sub(3)?)?.parse().ok()
}

fn parent_pid(pid: u32) -> Option<u32> {
    stat_field(pid, 4).and_then(|p| u32::try_from(p).ok())
}

/// CPU time (user + system, all threads) `pid` has used so far, in seconds.
pub fn cpu_secs(pid: u32) -> Option<f64> {
    let ticks = stat_field(pid, 14)? + stat_field(pid, 15)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

/// CPU time (user + system) of this process's children that have been waited for, in
/// seconds.
pub fn children_cpu_secs() -> Option<f64> {
    let pid = std::process::id();
    let ticks = stat_field(pid, 16)? + stat_field(pid, 17)?;
    Some(ticks as f64 / rustix::param::clock_ticks_per_second() as f64)
}

fn sample_tree(pids: &[u32]) -> Peak {
    let mut peak = Peak::default();
    for &pid in pids {
        // A process that exited since the last scan just does not count.
        if let Some(rss) = status_field(pid, "VmRSS:") {
            peak.rss_kib += rss;
            peak.processes += 1;
            peak.pss_kib += kib_field(
                &fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default(),
                "Pss:",
            )
            .unwrap_or(0);
        }
    }
    peak
}

/// A `kB` field of `/proc/<pid>/status`, e.g. `VmRSS:` or `VmHWM:`.
pub fn status_field(pid: u32, field: &str) -> Option<u64> {
    kib_field(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

fn kib_field(text: &str, field: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(field))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
