//! Timing helpers shared by the workloads.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// Runs `cmd`, returning its wall time and the first word of its output.
pub fn time_command(cmd: &mut Command) -> anyhow::Result<(Duration, String)> {
    let start = Instant::now();
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", out.status);
    }
    let first = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned();
    Ok((elapsed, first))
}

/// Runs a shell pipeline, returning its wall time and the first word of its output.
pub fn time(script: &str) -> anyhow::Result<(Duration, String)> {
    time_command(Command::new("sh").args(["-c", script]))
}

/// Runs a shell pipeline once to warm the page cache, then `runs` times; returns the
/// median wall time and the output, which must be the same every time.
pub fn median(script: &str, runs: usize) -> anyhow::Result<(Duration, String)> {
    let (_, warm) = time(script)?;
    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let (t, out) = time(script)?;
        if out != warm {
            bail!("{script} printed {out}, then {warm}");
        }
        times.push(t);
    }
    Ok((median_of(&mut times), warm))
}

/// The median of `times` (sorted in place); `times` must not be empty.
pub fn median_of(times: &mut [Duration]) -> Duration {
    times.sort();
    times[times.len() / 2]
}
