//! `unrooted drv`: placeholder until the drv verbs land.

use std::process::ExitCode;

use clap::Subcommand;

/// The `drv` verbs.
#[derive(Subcommand)]
pub enum DrvCommand {}

/// Runs a `drv` verb.
pub fn run(cmd: DrvCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
