//! `unrooted migrate`: take over a store made by a root `nix-daemon`.

use std::process::ExitCode;

use anyhow::Context;
use unrooted_deploy::migrate::{self, MigrateOptions};

use crate::install::LayoutArgs;

/// Arguments of `migrate`.
#[derive(clap::Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// The unprivileged user that will own the store (create it with `unrooted install`).
    #[arg(long, value_name = "NAME")]
    store_owner: String,
    /// The old daemon's build users group, whose files change hands too.
    #[arg(long, value_name = "GROUP", default_value = "nixbld")]
    build_users_group: String,
    /// Count what would change, change nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Runs the migration.
pub fn run(args: MigrateArgs) -> anyhow::Result<ExitCode> {
    let (host, layout) = args.layout.resolve()?;
    let opts = MigrateOptions {
        host,
        layout,
        owner: args.store_owner,
        build_group: args.build_users_group,
        dry_run: args.dry_run,
    };
    let report =
        migrate::migrate(&opts, &mut |line| println!("{line}")).context("migrating the store")?;
    let verb = if args.dry_run { "would give" } else { "gave" };
    println!(
        "{verb} {} state and {} store entries to {}; kept {} belonging to other users",
        report.state_chowned, report.store_chowned, opts.owner, report.kept
    );
    if !report.conf.is_empty() {
        let what = if args.dry_run {
            "would change"
        } else {
            "changed"
        };
        println!("\nnix.conf ({what} what unrooted needs; every line that matters):");
        for line in &report.conf {
            println!("  {line}");
        }
    }
    println!("\nnow:");
    for line in &report.to_disable {
        println!("  {line}");
    }
    Ok(ExitCode::SUCCESS)
}
