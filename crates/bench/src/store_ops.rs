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
use std::time::Instant;

use anyhow::{ensure, Context};
use unrooted_format::StorePath;
use unrooted_protocol::{wire, Request};

use crate::daemon::{turns, Daemon};

/// Issue 20's goals.
pub const GOAL_FLOOR_SHARE: f64 = 0.8;
pub const GOAL_QUERY_CPU: f64 = 0.33;
pub const GOAL_SMALL_ADDS: f64 = 1.5;
pub const GOAL_INDIRECT_ROOTS: f64 = 2.0;

/// Prints what share of the socket floor each daemon's query rate reaches.
pub fn floor_row(u: f64, n: f64, floor: f64) {
    let share = u / floor;
    println!(
        "{:<38} {:<8} {:>11.2} {:>11.2} {:>9}  >= {GOAL_FLOOR_SHARE} of floor  {}",
        "  share of the socket floor",
        "",
        share,
        n / floor,
        "",
        met(share >= GOAL_FLOOR_SHARE)
    );
}

/// Prints the daemon CPU per query, against its goal.
pub fn cpu_row(u: f64, n: f64) {
    let r = u / n;
    println!(
        "{:<38} {:<8} {u:>11.1} {n:>11.1} {r:>8.2}x  <= {GOAL_QUERY_CPU}x  {}",
        "  daemon CPU per op",
        "us",
        met(r <= GOAL_QUERY_CPU)
    );
}

pub fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT MET"
    }
}

/// `n` roots per daemon over one connection each, as `nix-build -o` sends them
/// (AddTempRoot, then AddIndirectRoot of a symlink the client made): roots/s per
/// daemon, the daemons taking turns over three trials (the median is reported).
pub fn indirect_roots(
    daemons: &[Daemon],
    targets: &[StorePath],
    n: usize,
) -> anyhow::Result<Vec<f64>> {
    const TRIALS: usize = 3;
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
    Ok(rates
        .into_iter()
        .map(|mut r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect())
}
