//! `unrooted store-path`: placeholder.

use std::process::ExitCode;

/// Arguments of `store-path`.
#[derive(clap::Args)]
pub struct StorePathArgs {}

/// Runs `store-path`.
pub fn run(_args: StorePathArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("not yet implemented")
}
