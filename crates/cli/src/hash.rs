//! `unrooted hash`: placeholder.

use std::process::ExitCode;

use clap::Subcommand;

/// The `hash` verbs.
#[derive(Subcommand)]
pub enum HashCommand {}

/// Runs a `hash` verb.
pub fn run(cmd: HashCommand) -> anyhow::Result<ExitCode> {
    match cmd {}
}
