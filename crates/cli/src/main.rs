//! `unrooted`: the administration and debugging command of the unrooted Nix store.
//!
//! Each verb lives in its own module and does the same thing, byte for byte, as the
//! Nix 2.8 command named in its help. Errors are reported as one line on stderr with
//! a non-zero exit status; nothing here panics on bad input.

mod copy;
mod daemon;
mod doctor;
mod drv;
mod hash;
mod install;
mod migrate;
mod nar;
mod sandbox;
mod serve;
mod store_path;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// unrooted: a Nix-compatible store and build daemon that never runs as root.
///
/// The verbs below work on Nix's file formats directly and need no daemon. Each one
/// mirrors a Nix 2.8 command and prints exactly what it prints, so they can be used in
/// scripts in place of (or to check) the Nix tools.
#[derive(Parser)]
#[command(name = "unrooted", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pack, unpack and list NAR archives (Nix's file-tree serialisation).
    #[command(subcommand)]
    Nar(nar::NarCommand),
    /// Hash a file tree or a single file, as `nix-hash` does.
    #[command(subcommand)]
    Hash(hash::HashCommand),
    /// Print the store path that adding a file or tree to a store would give.
    StorePath(store_path::StorePathArgs),
    /// Serve the store to the Nix clients of this machine, as an unprivileged user.
    ///
    /// Reads the configuration as Nix does (NIX_STORE_DIR, NIX_STATE_DIR, NIX_LOG_DIR,
    /// NIX_CONF_DIR/nix.conf, NIX_DAEMON_SOCKET_PATH) and listens on the daemon
    /// socket, or on the socket systemd passes (LISTEN_FDS). Clients set
    /// NIX_REMOTE=daemon. Refuses to run as root. With --stdio, serves one
    /// connection on stdin/stdout through the running daemon (the far side of
    /// ssh-ng://).
    Daemon(daemon::DaemonArgs),
    /// Run a command in a build sandbox made from arguments (a debugging verb).
    SandboxRun(sandbox::SandboxArgs),
    /// The sandbox's setup helper (internal; started by the sandbox itself).
    #[command(name = "sandbox-helper", hide = true)]
    SandboxHelper(sandbox::HelperArgs),
    /// Inspect and check derivation (.drv) files.
    #[command(subcommand)]
    Drv(drv::DrvCommand),
    /// Install the daemon, the roots helper and their systemd units (run as root).
    Install(install::InstallArgs),
    /// Remove what `install` installed; the store stays unless asked.
    Uninstall(install::UninstallArgs),
    /// Check that this machine can build, one verdict per line with its fix.
    Doctor(doctor::DoctorArgs),
    /// Hand a store made by a root nix-daemon over to the store owner.
    Migrate(migrate::MigrateArgs),
    /// Serve the store over HTTP as a binary cache (read-only), for `nix copy --from`
    /// and as a substituter of other machines.
    Serve(serve::ServeArgs),
    /// Upload the closures of store paths to an S3-compatible binary cache (run as the
    /// store owner, with its AWS credentials), signed and compressed.
    Copy(copy::CopyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Nar(cmd) => nar::run(cmd),
        Command::Hash(cmd) => hash::run(cmd),
        Command::StorePath(args) => store_path::run(args),
        Command::Drv(cmd) => drv::run(cmd),
        Command::Daemon(args) => daemon::run(args),
        Command::SandboxRun(args) => sandbox::run(args),
        Command::SandboxHelper(args) => sandbox::helper(args),
        Command::Install(args) => install::run(args),
        Command::Uninstall(args) => install::run_uninstall(args),
        Command::Doctor(args) => doctor::run(args),
        Command::Migrate(args) => migrate::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Copy(args) => copy::run(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => {
            eprintln!("unrooted: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
