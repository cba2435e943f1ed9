//! `unrooted install` and `unrooted uninstall`: put the daemon, the roots helper and
//! their units on a server, or take them off again.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use unrooted_deploy::host::Layout;
use unrooted_deploy::plan::{self, InstallOptions, InstallPlan};
use unrooted_deploy::Host;

/// Where things are; shared by install, uninstall, doctor and migrate.
#[derive(clap::Args, Debug, Clone)]
pub struct LayoutArgs {
    /// Work on this directory tree instead of `/` (tests, packaging). Paths in unit
    /// files stay those of the running system.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// The store directory.
    #[arg(long, value_name = "DIR", default_value = "/nix/store")]
    pub store_dir: PathBuf,
    /// The state directory.
    #[arg(long, value_name = "DIR", default_value = "/nix/var/nix")]
    pub state_dir: PathBuf,
    /// The build log directory.
    #[arg(long, value_name = "DIR", default_value = "/nix/var/log/nix")]
    pub log_dir: PathBuf,
    /// The configuration directory shared with the clients.
    #[arg(long, value_name = "DIR", default_value = "/etc/nix")]
    pub conf_dir: PathBuf,
}

impl LayoutArgs {
    /// The host and layout these arguments name.
    pub fn resolve(&self) -> anyhow::Result<(Host, Layout)> {
        let host = Host::new(&self.root).context("resolving --root")?;
        let layout = Layout {
            store_dir: self.store_dir.clone(),
            state_dir: self.state_dir.clone(),
            log_dir: self.log_dir.clone(),
            conf_dir: self.conf_dir.clone(),
            ..Layout::default()
        };
        layout.validate()?;
        Ok((host, layout))
    }
}

/// Arguments of `install`.
#[derive(clap::Args, Debug)]
pub struct InstallArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// The unprivileged user that owns the store and runs the daemon (created if missing).
    #[arg(long, value_name = "NAME", default_value = "unrooted")]
    store_owner: String,
    /// Print every step, change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Give the daemon CAP_CHOWN, to hand `--keep-failed` build directories to their
    /// users (its only capability; without it they are shared by ACL instead).
    #[arg(long)]
    chown_kept_build_dirs: bool,
    /// The roots helper binary to install [default: unrooted-find-roots beside this program].
    #[arg(long, value_name = "PATH")]
    find_roots_binary: Option<PathBuf>,
    /// The sandbox helper to install beside the daemon's binary [default:
    /// unrooted-sandbox beside this program, if there]; builders start faster through
    /// it.
    #[arg(long, value_name = "PATH")]
    sandbox_binary: Option<PathBuf>,
    /// The unrooted binary the daemon runs [default: this program].
    #[arg(long, value_name = "PATH")]
    daemon_binary: Option<PathBuf>,
    /// Subordinate ids for builds: yes, no, or auto (when newuidmap is installed).
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    subids: When,
    /// The AppArmor profile: yes, no, or auto (when the kernel restricts user namespaces).
    #[arg(long, value_name = "WHEN", default_value = "auto")]
    apparmor: When,
    /// How many builds may run at once in the id-range mode: the store owner's new
    /// subordinate range holds N × 65536 ids [default: max-jobs from nix.conf, at least
    /// the number of CPUs, at most 128].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=4096))]
    build_slices: Option<u32>,
    /// Then enable the units: with systemd running, reload it, enable and start them
    /// and restart a running daemon; without, enable them for the next boot. Skipped
    /// while the store still belongs to a root nix-daemon (run `migrate` first). The
    /// Debian package's postinst passes it.
    #[arg(long)]
    enable: bool,
}

/// yes, no, or decided from the host.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum When {
    /// Always.
    Yes,
    /// Never.
    No,
    /// Decided from what the host has.
    Auto,
}

impl When {
    fn get(self) -> Option<bool> {
        match self {
            When::Yes => Some(true),
            When::No => Some(false),
            When::Auto => None,
        }
    }
}

/// Arguments of `uninstall`.
#[derive(clap::Args, Debug)]
pub struct UninstallArgs {
    #[command(flatten)]
    layout: LayoutArgs,
    /// Also delete the store, the state (database, profiles, roots) and the logs.
    #[arg(long)]
    remove_store: bool,
    /// Print every step, change nothing.
    #[arg(long)]
    dry_run: bool,
}

fn execute(host: &Host, plan: &InstallPlan, dry_run: bool) -> anyhow::Result<()> {
    if dry_run {
        for step in &plan.steps {
            println!("would: {step}");
        }
    } else {
        plan::apply(host, plan, &mut |step| println!("{step}")).context("applying the plan")?;
    }
    if !plan.next.is_empty() {
        println!("\nthen, as root:");
        for line in &plan.next {
            println!("  {line}");
        }
    }
    Ok(())
}

/// Runs `install`.
pub fn run(args: InstallArgs) -> anyhow::Result<ExitCode> {
    let (host, layout) = args.layout.resolve()?;
    let me = std::env::current_exe().context("finding this program")?;
    let roots_binary = args.find_roots_binary.or_else(|| {
        let beside = me.with_file_name("unrooted-find-roots");
        beside.is_file().then_some(beside)
    });
    let sandbox_binary = args
        .sandbox_binary
        .or_else(|| Some(me.with_file_name("unrooted-sandbox")).filter(|p| p.is_file()));
    let opts = InstallOptions {
        host: host.clone(),
        layout,
        owner: args.store_owner,
        daemon_binary: args.daemon_binary.unwrap_or(me),
        roots_binary,
        sandbox_binary,
        chown_kept_build_dirs: args.chown_kept_build_dirs,
        subids: args.subids.get(),
        build_slices: args.build_slices,
        apparmor: args.apparmor.get(),
        enable: args.enable,
    };
    let plan = plan::install(&opts).context("planning the installation")?;
    execute(&host, &plan, args.dry_run)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs `uninstall`.
pub fn run_uninstall(args: UninstallArgs) -> anyhow::Result<ExitCode> {
    let (host, layout) = args.layout.resolve()?;
    let plan = plan::uninstall(&host, &layout, args.remove_store).context("planning removal")?;
    execute(&host, &plan, args.dry_run)?;
    Ok(ExitCode::SUCCESS)
}
