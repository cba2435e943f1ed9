//! `unrooted nar`: placeholder until the nar verbs land.

use std::process::ExitCode;

use clap::Subcommand;

/// The `nar` verbs.
#[derive(Subcommand)]
pub enum NarCommand {}

/// Runs a `nar` verb.
pub fn run(cmd: NarCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
