//! `unrooted daemon`: serve the store to the Nix clients on this machine.

use std::process::ExitCode;

use anyhow::Context;

/// Arguments of `daemon`.
#[derive(clap::Args)]
pub struct DaemonArgs {
    /// Run even as root. unrooted exists so that the daemon does not run as root; use
    /// this only in throw-away containers.
    #[arg(long)]
    allow_root: bool,
    /// The most client connections served at once; more are closed immediately.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    max_connections: usize,
}

/// Runs the daemon until it is killed.
pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let options = unrooted_daemon::DaemonOptions {
        allow_root: args.allow_root,
        max_connections: args.max_connections,
    };
    unrooted_daemon::run(&options).context("running the daemon")?;
    Ok(ExitCode::SUCCESS)
}
