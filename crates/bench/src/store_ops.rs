//! The store-operation goals of issue 20, measured beside the other daemon workloads
//! (same daemons, same run):
//!
//! - the query rates as a share of the socket round-trip floor (an 8-byte ping-pong
//!   with no daemon at all), on 1 and 16 connections;
//! - AddIndirectRoot over one connection, as `nix-build -o` and `--add-root` send it:
//!   Nix 2.8's `LocalFSStore::addPermRoot` makes the symlink itself, then sends
//!   AddTempRoot and AddIndirectRoot for it.
//!
//! The other goals of the table are measured where their workloads are: small adds
//! in [`crate::daemon`], the 20,000 adds over 4 connections, the collection and
//! `--print-roots` in [`crate::gc`].

use std::fs;
use std::os::unix::fs::symlink;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use unrooted_format::StorePath;
use unrooted_protocol::{wire, Request};

use crate::daemon::{turns, Daemon};
use crate::floor;

/// Issue 20's goals.
pub const GOAL_FLOOR_SHARE: f64 = 0.8;
pub const GOAL_QUERY_CPU: f64 = 0.33;
pub const GOAL_SMALL_ADDS: f64 = 1.5;
pub const GOAL_INDIRECT_ROOTS: f64 = 2.0;

/// The socket round-trip floors for one number of connections.
pub struct Floor {
    /// Ping-pong between threads of this process (round trips/s).
    pub in_process: f64,
    /// Ping-pong with an echo server in another process (round trips/s).
    pub cross_process: f64,
    /// The echo server's CPU per round trip, in microseconds.
    pub server_cpu_us: f64,
}

impl Floor {
    /// Measures both floors over `conns` connections, `trials` trials of `dur`
    /// each; `in_process` is the in-process measurement.
    pub fn measure(
        conns: usize,
        dur: Duration,
        trials: usize,
        in_process: impl Fn(usize, Duration) -> anyhow::Result<f64>,
    ) -> anyhow::Result<Self> {
        let in_process = in_process(conns, dur)?;
        let (cross_process, server_cpu_us) = floor::cross_process(conns, dur, trials)?;
        Ok(Self {
            in_process,
            cross_process,
            server_cpu_us,
        })
    }
}

/// Prints what share of the socket floors each daemon's query rate reaches.
pub fn floor_row(u: f64, n: f64, floor: &Floor) {
    for (what, f) in [
        ("in-process", floor.in_process),
        ("cross-process", floor.cross_process),
    ] {
        let share = u / f;
        println!(
            "{:<38} {:<8} {:>11.2} {:>11.2} {:>9}  >= {GOAL_FLOOR_SHARE} of floor  {}",
            format!("  share of the {what} floor"),
            "",
            share,
            n / f,
            "",
            met(share >= GOAL_FLOOR_SHARE)
        );
    }
}

/// Prints the daemon CPU per query, against its goal, and the echo server's.
pub fn cpu_row(u: f64, n: f64, floor: &Floor) {
    let r = u / n;
    println!(
        "{:<38} {:<8} {u:>11.1} {n:>11.1} {r:>8.2}x  <= {GOAL_QUERY_CPU}x  {} (echo server: {:.1} us)",
        "  daemon CPU per op",
        "us",
        met(r <= GOAL_QUERY_CPU),
        floor.server_cpu_us
    );
}

/// Prints the floors the query rows are compared with.
pub fn print_floors(floors: &[Floor], connections: usize) {
    println!(
        "{:<38} {:<8} {:>11.0} {:>11.0}  (1 and {connections} connections; threads of one process)",
        "  socket round-trip floor, in-process",
        "ops/s",
        floors[0].in_process,
        floors[1].in_process
    );
    println!(
        "{:<38} {:<8} {:>11.0} {:>11.0}  (echo server process, a thread per connection)",
        "  socket round-trip floor, cross-proc.",
        "ops/s",
        floors[0].cross_process,
        floors[1].cross_process
    );
    println!(
        "{:<38} {:<8} {:>11.1} {:>11.1}  (the echo server's CPU per round trip)",
        "  echo server CPU per op", "us", floors[0].server_cpu_us, floors[1].server_cpu_us
    );
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// Trials of a workload of `n` items in all per daemon, in [`TRIALS`] interleaved
/// parts (the daemons take turns, so a burst of load elsewhere does not fall on one
/// only): `run(daemon, first item, items)` returns items/s; the median trial is
/// reported per daemon.
pub fn interleaved(
    daemons: &[Daemon],
    n: usize,
    run: impl Fn(&Daemon, usize, usize) -> anyhow::Result<f64>,
) -> anyhow::Result<Vec<f64>> {
    let part = n.div_ceil(TRIALS).max(1);
    let mut rates = vec![Vec::new(); daemons.len()];
    for trial in 0..TRIALS {
        for i in turns(daemons.len(), trial) {
            rates[i].push(run(&daemons[i], trial * part, part)?);
        }
    }
    Ok(rates.into_iter().map(median).collect())
}

/// Interleaved trials per workload.
const TRIALS: usize = 3;

fn median(mut r: Vec<f64>) -> f64 {
    r.sort_by(f64::total_cmp);
    r[r.len() / 2]
}

/// `n` roots per daemon over one connection each, as `nix-build -o` sends them
/// (AddTempRoot, then AddIndirectRoot of a symlink the client made): roots/s per
/// daemon, the daemons taking turns over three trials (the median is reported).
pub fn indirect_roots(
    daemons: &[Daemon],
    targets: &[StorePath],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    let mut rates = vec![Vec::new(); daemons.len()];
    for trial in 0..TRIALS {
        for i in turns(daemons.len(), trial) {
            let d = &daemons[i];
            let dir = d.root.join(format!("client-home/roots-{trial}"));
            fs::create_dir_all(&dir)?;
            let target = d.store_dir.display(&targets[i]);
            let links: Vec<String> = (0..n)
                .map(|k| {
                    let link = dir.join(format!("result-{k}"));
                    symlink(&target, &link)?;
                    Ok(link.to_str().context("non-UTF-8 link")?.to_owned())
                })
                .collect::<anyhow::Result<_>>()?;
            let mut c = d.connect()?;
            let start = Instant::now();
            for link in links {
                c.add_temp_root(&targets[i])?;
                c.call(&Request::AddIndirectRoot(link))?;
                let r = wire::read_u64(c.reader(), "result")?;
                ensure!(r == 1, "{} answered {r} to AddIndirectRoot", d.label);
            }
            rates[i].push(n as f64 / start.elapsed().as_secs_f64());
        }
    }
    // Every root must be there: the daemon's gcroots/auto holds one link per root.
    for d in daemons {
        let auto = fs::read_dir(d.root.join("state/gcroots/auto"))
            .with_context(|| format!("{} made no gcroots/auto", d.label))?
            .count();
        ensure!(
            auto >= TRIALS * n,
            "{} has {auto} links in gcroots/auto, not {}",
            d.label,
            TRIALS * n
        );
    }
    Ok(rates.into_iter().map(median).collect())
}
