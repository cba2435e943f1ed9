//! The daemon-wide settings of building.

use std::collections::BTreeSet;
use std::path::PathBuf;

use unrooted_sandbox::{Sandbox, SandboxPath};

use crate::idpool::IdMode;

/// The daemon-wide settings of building.
#[derive(Debug, Clone)]
pub struct BuilderConfig {
    /// Run builders in the user-namespace sandbox (`sandbox = true`, the default).
    /// Without it they run directly as the store owner.
    pub sandbox: bool,
    /// `sandbox-paths` and `extra-sandbox-paths`.
    pub sandbox_paths: Vec<SandboxPath>,
    /// How to start the sandbox helper.
    pub helper: Sandbox,
    /// A helper without the builtin builders that starts faster (see
    /// [`Sandbox::beside`]), for builds that execute a program; `None` uses `helper`.
    pub exec_helper: Option<Sandbox>,
    /// Where build directories are made (and kept ones are put): the daemon's
    /// `TMPDIR`.
    pub tmp_dir: PathBuf,
    /// Where build logs are stored (`<logDir>/drvs/…`); `None` keeps none.
    pub log_dir: Option<PathBuf>,
    /// `max-build-log-size` in bytes (0 = unlimited).
    pub max_log_size: u64,
    /// `NIX_BUILD_CORES` (`cores`; 0 means all CPUs).
    pub cores: u32,
    /// `max-jobs`: builds running at once, over all clients.
    pub max_jobs: usize,
    /// The platform builders run on (`x86_64-linux`).
    pub system: String,
    /// Other platforms accepted (`extra-platforms`).
    pub extra_platforms: Vec<String>,
    /// The build directory inside the sandbox (`sandbox-build-dir`, `/build`).
    pub sandbox_build_dir: PathBuf,
    /// Which ids sandboxed builders run as (see [`IdMode`]).
    pub ids: IdMode,
    /// `hashed-mirrors`: base URLs `builtin:fetchurl` tries first for a flat-hashed
    /// output, as `<mirror>/<algo>/<base16 hash>`.
    pub hashed_mirrors: Vec<String>,
    /// `system-features`: what a derivation's `requiredSystemFeatures` may ask for
    /// (Nix's default: `nixos-test`, `benchmark`, `big-parallel`, and `kvm` when
    /// `/dev/kvm` can be opened).
    pub system_features: BTreeSet<String>,
    /// How sandboxed fixed-output builds reach the network.
    pub fixed_output_network: FixedOutputNetwork,
    /// The experimental feature `impure-derivations` (with `ca-derivations`):
    /// impure derivations are built, afresh every time.
    pub impure_derivations: bool,
}

/// Nix 2.8's default `system-features`.
pub fn default_system_features() -> BTreeSet<String> {
    let mut f: BTreeSet<String> = ["nixos-test", "benchmark", "big-parallel"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    if rustix::fs::access(
        "/dev/kvm",
        rustix::fs::Access::READ_OK | rustix::fs::Access::WRITE_OK,
    )
    .is_ok()
    {
        f.insert("kvm".to_owned());
    }
    f
}

/// How sandboxed fixed-output builds reach the network (`fixed-output-network` and
/// `pasta-path`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FixedOutputNetwork {
    /// In a network namespace of the build's own, through this `pasta` (the default
    /// when it is found): no abstract socket, loopback listener or `/proc/net` of the
    /// host is in reach; the host's loopback is reached at
    /// [`unrooted_sandbox::PASTA_GATEWAY`].
    Pasta(PathBuf),
    /// `pasta` was wanted but is not there (the path looked for): a fixed-output build
    /// that executes a program fails, naming it (closed, not open); `builtin:fetchurl`,
    /// the daemon's own code run in the sandbox, which cannot be made to use an
    /// abstract socket, shares the host's network instead, with a warning.
    Missing(PathBuf),
    /// The host's network namespace, as in Nix 2.8 (`fixed-output-network = host`,
    /// which the administrator must ask for).
    Host,
}

impl BuilderConfig {
    /// Nix's defaults, with the sandbox started through `helper`.
    pub fn new(helper: Sandbox) -> Self {
        Self {
            sandbox: true,
            sandbox_paths: Vec::new(),
            helper,
            exec_helper: None,
            tmp_dir: std::env::temp_dir(),
            log_dir: None,
            max_log_size: 0,
            cores: 0,
            max_jobs: 1,
            system: default_system(),
            extra_platforms: Vec::new(),
            sandbox_build_dir: PathBuf::from("/build"),
            ids: IdMode::default(),
            hashed_mirrors: Vec::new(),
            system_features: default_system_features(),
            fixed_output_network: FixedOutputNetwork::Host,
            impure_derivations: false,
        }
    }

    pub(crate) fn effective_cores(&self) -> u32 {
        if self.cores == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
        } else {
            self.cores
        }
    }
}

/// `<arch>-linux` of this machine, as Nix names it.
pub fn default_system() -> String {
    format!("{}-linux", std::env::consts::ARCH)
}
