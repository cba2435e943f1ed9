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
    /// Serve one connection on stdin and stdout instead of listening: what an
    /// `ssh-ng://` client runs on the remote machine (it appends `--stdio` to the
    /// store's `remote-program`). The bytes are relayed to the running daemon's socket
    /// (NIX_DAEMON_SOCKET_PATH), so the daemon applies its trust rules to the user
    /// running this as to any local client. Runs as any user.
    #[arg(long)]
    stdio: bool,
    /// With --stdio, the store the client asked for (`ssh-ng://…?remote-store=…`):
    /// `daemon`, `auto` or `unix://SOCKET`; others are refused.
    #[arg(long, value_name = "URI", requires = "stdio")]
    store: Option<String>,
}

/// The socket `--stdio` relays to: `--store`'s, else the configured one.
fn stdio_socket(store: Option<&str>) -> anyhow::Result<std::path::PathBuf> {
    match store {
        Some(uri) if uri.starts_with("unix://") => {
            Ok(std::path::PathBuf::from(&uri["unix://".len()..]))
        }
        None | Some("daemon" | "auto") => {
            let locations = unrooted_daemon::config::Locations::from_env(|k| std::env::var(k).ok())
                .context("reading the store's locations")?;
            Ok(locations.socket_path)
        }
        Some(other) => anyhow::bail!(
            "--stdio serves the daemon's store only; the store '{other}' is not one (use daemon or unix://SOCKET)"
        ),
    }
}

/// Runs the daemon until it is killed.
pub fn run(args: DaemonArgs) -> anyhow::Result<ExitCode> {
    // stdout carries the protocol with --stdio: logs go to stderr (which an SSH
    // client shows its user), and only warnings.
    let default_level = if args.stdio { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.stdio {
        // A relay serves nothing itself, so it runs as whoever logged in (root
        // included: the daemon decides what that user may do).
        let socket = stdio_socket(args.store.as_deref())?;
        unrooted_daemon::stdio::relay(&socket).context("serving a connection on stdin/stdout")?;
        return Ok(ExitCode::SUCCESS);
    }
    let options = unrooted_daemon::DaemonOptions {
        allow_root: args.allow_root,
        max_connections: args.max_connections,
        max_connections_per_user: args.max_connections_per_user,
        reserved_connections: args.reserved_connections,
    };
    unrooted_daemon::run(&options).context("running the daemon")?;
    Ok(ExitCode::SUCCESS)
}
