//! `unrooted doctor`: is this machine ready to build, and if not, what to change.

use std::process::ExitCode;
use std::time::Duration;

use unrooted_deploy::doctor::{self, DoctorOptions, Verdict};

use crate::install::LayoutArgs;

/// Arguments of `doctor`.
#[derive(clap::Args, Debug)]
pub struct DoctorArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// The store owner [default: User= of the installed daemon unit, else unrooted].
    #[arg(long, value_name = "NAME")]
    store_owner: Option<String>,
    /// Seconds to wait for the daemon and the roots helper.
    #[arg(long, value_name = "SECONDS", default_value_t = 10)]
    timeout: u64,
}

/// Runs every check; fails when anything blocks builds.
pub fn run(args: DoctorArgs) -> anyhow::Result<ExitCode> {
    let (host, layout) = args.layout.resolve()?;
    let findings = doctor::run(&DoctorOptions {
        host,
        layout,
        owner: args.store_owner,
        timeout: Duration::from_secs(args.timeout.max(1)),
    });
    for f in &findings {
        println!("{f}");
    }
    let fails = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Fail)
        .count();
    let warns = findings
        .iter()
        .filter(|f| f.verdict == Verdict::Warn)
        .count();
    if fails > 0 {
        println!("\n{fails} problem(s) block builds, {warns} warning(s)");
        Ok(ExitCode::FAILURE)
    } else {
        println!("\nready to build ({warns} warning(s))");
        Ok(ExitCode::SUCCESS)
    }
}
