//! The timed workloads on one daemon: query round trips, small paths, `nix-store --add`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use unrooted_format::{StorePath, StorePathName};
use unrooted_protocol::request::ContentAddressMethod;

use super::server::Conn;
use super::{turns, Daemon, Options};
use crate::mem;
use crate::util::{median_of, time_command};

#[derive(Clone, Copy, Debug)]
pub(super) enum Query {
    IsValidPath,
    QueryPathInfo,
}

/// Query measurements per daemon, each lasting `--query-secs` / this.
pub(super) const QUERY_TRIALS: usize = 3;

/// One query measurement.
#[derive(Clone, Copy)]
pub(super) struct QueryRun {
    /// Round trips completed.
    pub(super) ops: u64,
    /// Wall time, from the common start to the last connection's end.
    pub(super) secs: f64,
    /// CPU time the daemon's processes used meanwhile.
    pub(super) cpu_secs: f64,
}

/// Round trips of `op` on `target` over `conns` concurrent connections, each running
/// for `dur` from a common start.
pub(super) fn query_rate(
    d: &Daemon,
    target: &StorePath,
    conns: usize,
    dur: Duration,
    op: Query,
) -> anyhow::Result<QueryRun> {
    // Connect before starting any thread, so a failed connection cannot leave the
    // others waiting at the barrier.
    let clients = (0..conns)
        .map(|_| d.connect())
        .collect::<anyhow::Result<Vec<_>>>()?;
    // nix-daemon's connection processes exist once the handshakes are done, and live
    // until the connections close, after the second reading.
    let pids = mem::tree(d.pid());
    let cpu = || pids.iter().filter_map(|&p| mem::cpu_secs(p)).sum::<f64>();
    let cpu_before = cpu();
    let barrier = Barrier::new(conns);
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .into_iter()
            .map(|mut c| {
                let barrier = &barrier;
                s.spawn(move || -> anyhow::Result<(u64, Duration, Conn)> {
                    barrier.wait();
                    let start = Instant::now();
                    let mut ops = 0u64;
                    while start.elapsed() < dur {
                        // Reading the clock costs little next to a round trip, but
                        // batches make it negligible.
                        for _ in 0..16 {
                            let ok = match op {
                                Query::IsValidPath => c.is_valid_path(target)?,
                                Query::QueryPathInfo => c.query_path_info(target)?.is_some(),
                            };
                            ensure!(ok, "{} does not know {target:?}", d.label);
                        }
                        ops += 16;
                    }
                    // The connection is closed only after the CPU reading:
                    // nix-daemon's connection process, and its CPU time, go with it.
                    Ok((ops, start.elapsed(), c))
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("query thread panicked"))
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let cpu_secs = cpu() - cpu_before;
    let ops: u64 = results.iter().map(|r| r.0).sum();
    let secs = results
        .iter()
        .map(|r| r.1)
        .max()
        .unwrap_or_default()
        .as_secs_f64();
    Ok(QueryRun {
        ops,
        secs,
        cpu_secs,
    })
}

/// Round trips per second of an 8-byte ping-pong over `conns` socket pairs, each served
/// by its own thread: what the machine allows with no daemon work at all (the median
/// of the trials, as for the daemons).
pub(super) fn pingpong_rate(conns: usize, dur: Duration) -> anyhow::Result<f64> {
    let mut rates = Vec::new();
    for _ in 0..QUERY_TRIALS {
        let pairs = (0..conns)
            .map(|_| UnixStream::pair())
            .collect::<std::io::Result<Vec<_>>>()?;
        let barrier = Barrier::new(conns);
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = pairs
                .into_iter()
                .map(|(mut client, mut server)| {
                    s.spawn(move || {
                        let mut buf = [0u8; 8];
                        // Ends when the client hangs up.
                        while server.read_exact(&mut buf).is_ok() {
                            if server.write_all(&buf).is_err() {
                                break;
                            }
                        }
                    });
                    let barrier = &barrier;
                    s.spawn(move || crate::floor::ping_pong(&mut client, barrier, dur))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("ping-pong thread panicked"))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        let ops: u64 = results.iter().map(|r| r.0).sum();
        let secs = results.iter().map(|r| r.1).max().unwrap_or_default();
        rates.push(ops as f64 / secs.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok(rates[rates.len() / 2])
}

/// Adds small text paths `first..first + n` with distinct contents over one
/// connection; paths/s.
pub(super) fn small_paths(d: &Daemon, first: usize, n: usize) -> anyhow::Result<f64> {
    let mut c = d.connect()?;
    let start = Instant::now();
    for i in first..first + n {
        let name = StorePathName::new(&format!("small-{i}"))?;
        let text = format!("small path {i}\n");
        let info = c
            .add_to_store(
                name,
                ContentAddressMethod::Text,
                BTreeSet::new(),
                &mut text.as_bytes(),
            )
            .with_context(|| format!("adding small path {i} to {}", d.label))?;
        ensure!(
            info.info.nar_size > 0,
            "{} returned an empty path info",
            d.label
        );
    }
    Ok(n as f64 / start.elapsed().as_secs_f64())
}

/// Median seconds of `nix-store --add` of `tree` through each daemon. Every run adds the
/// tree under a new name, so every run is a real import; one warm-up run comes first,
/// and the daemons take turns going first.
pub(super) fn add_tree(
    opts: &Options,
    daemons: &[Daemon],
    tree: &Path,
) -> anyhow::Result<AddTimes> {
    let mut times = vec![Vec::new(); daemons.len()];
    let mut client_cpu = vec![0.0; daemons.len()];
    let mut daemon_cpu = vec![0.0; daemons.len()];
    let mut nar_hashes = Vec::new();
    for run in 0..=opts.runs {
        let renamed = Renamed::new(tree, tree.with_file_name(format!("bench-add-{run}")))?;
        for i in turns(daemons.len(), run) {
            let d = &daemons[i];
            let cpu_before = (mem::children_cpu_secs(), mem::cpu_secs(d.pid()));
            let (t, out) = time_command(d.nix_client("nix-store").arg("--add").arg(&renamed.to))
                .with_context(|| format!("nix-store --add through {}", d.label))?;
            if run > 0 {
                // The client is the only child waited for meanwhile.
                client_cpu[i] +=
                    mem::children_cpu_secs().unwrap_or(0.0) - cpu_before.0.unwrap_or(0.0);
                daemon_cpu[i] +=
                    mem::cpu_secs(d.pid()).unwrap_or(0.0) - cpu_before.1.unwrap_or(0.0);
            }
            let path = d
                .store_dir
                .parse_path(&out)
                .with_context(|| format!("nix-store --add through {} printed {out:?}", d.label))?;
            if run > 0 {
                times[i].push(t);
            }
            if run == opts.runs {
                let info = d
                    .connect()?
                    .query_path_info(&path)?
                    .with_context(|| format!("{} lost {out}", d.label))?;
                nar_hashes.push(info.nar_hash);
            }
        }
    }
    // Both daemons must have stored the same contents, or they did different work.
    ensure!(
        nar_hashes.windows(2).all(|w| w[0] == w[1]),
        "the daemons recorded different NAR hashes for the same tree: {nar_hashes:?}"
    );
    let runs = opts.runs as f64;
    Ok(AddTimes {
        wall: times
            .iter_mut()
            .map(|t| median_of(t).as_secs_f64())
            .collect(),
        client_cpu: client_cpu.iter().map(|c| c / runs).collect(),
        daemon_cpu: daemon_cpu.iter().map(|c| c / runs).collect(),
    })
}

/// Seconds per `nix-store --add`, per daemon.
pub(super) struct AddTimes {
    /// Median wall time.
    pub(super) wall: Vec<f64>,
    /// Mean CPU time of the client.
    pub(super) client_cpu: Vec<f64>,
    /// Mean CPU time of the daemon's main process: all of unrooted's work (its
    /// connections are threads), none of nix-daemon's (its connections are processes
    /// that have exited, unwaited, by the time of the reading).
    pub(super) daemon_cpu: Vec<f64>,
}

/// Renames a tree for one run and back afterwards (also on error), so each run adds a
/// path the daemon does not have yet while the generated tree is kept between runs.
struct Renamed {
    from: PathBuf,
    to: PathBuf,
}

impl Renamed {
    fn new(from: &Path, to: PathBuf) -> anyhow::Result<Self> {
        fs::rename(from, &to)
            .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        Ok(Self {
            from: from.to_path_buf(),
            to,
        })
    }
}

impl Drop for Renamed {
    fn drop(&mut self) {
        let _ = fs::rename(&self.to, &self.from);
    }
}
