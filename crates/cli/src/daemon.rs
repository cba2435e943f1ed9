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
    /// The most connections one user may have open at once, so that one user leaving
    /// connections idle cannot lock the others out.
    #[arg(long, default_value_t = 128, value_name = "N")]
    max_connections_per_user: usize,
    /// Of --max-connections, how many only users holding fewer than 4 connections may
    /// take, so that however many users fill the rest, others can still connect (at
    /// most a quarter of --max-connections).
    #[arg(long, default_value_t = 128, value_name = "N")]
    reserved_connections: usize,
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
        max_connections_per_user: args.max_connections_per_user,
        reserved_connections: args.reserved_connections,
    };
    unrooted_daemon::run(&options).context("running the daemon")?;
    Ok(ExitCode::SUCCESS)
}
