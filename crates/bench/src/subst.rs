//! Substitution workload (in progress).
use std::path::PathBuf;

/// Options.
pub struct Options {
    pub unrooted: PathBuf,
    pub nix_daemon: PathBuf,
    pub dir: PathBuf,
    pub paths: usize,
    pub size_mib: u64,
    pub serve_nar_mib: u64,
    pub max_jobs: usize,
}

/// Runs.
pub fn run(_opts: &Options) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
