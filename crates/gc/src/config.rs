//! What a collection is asked to do and with which settings: the roots helper, the
//! collector's configuration, the action and its result.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use unrooted_format::StorePath;

/// Where the roots the daemon cannot read come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootsHelper {
    /// Our helper (`unrooted-find-roots`) at this socket: it resolves indirect,
    /// per-user and runtime roots as root, so roots the daemon cannot read count
    /// as resolved when it answers completely.
    Socket(PathBuf),
    /// Upstream Nix's roots daemon (`nix store roots-daemon`, Nix ≥ 2.34) at this
    /// socket: runtime roots only, so a root the daemon cannot read still refuses
    /// the collection.
    RuntimeOnlySocket(PathBuf),
    /// No helper, by the administrator's explicit choice (single-user setups): other
    /// users' runtime roots are not seen. Roots the daemon cannot read still refuse
    /// the collection.
    None,
}

/// The daemon's collector settings.
#[derive(Debug, Clone)]
pub struct GcConfig {
    /// `keep-outputs` (default false): a live `.drv` keeps its valid outputs.
    pub keep_outputs: bool,
    /// `keep-derivations` (default true): a live path keeps its valid deriver.
    pub keep_derivations: bool,
    /// The roots helper.
    pub roots_helper: RootsHelper,
    /// The `/proc` scanned for the daemon's own runtime roots (`/proc`).
    pub proc_dir: PathBuf,
    /// Longest the roots helper may take to answer (60 s); longer refuses the
    /// collection.
    pub helper_timeout: Duration,
}

impl GcConfig {
    /// Nix's defaults with this helper.
    pub fn new(roots_helper: RootsHelper) -> Self {
        Self {
            keep_outputs: false,
            keep_derivations: true,
            roots_helper,
            proc_dir: PathBuf::from("/proc"),
            helper_timeout: Duration::from_secs(60),
        }
    }

    /// The helper socket's default place, `<state>/gc-roots-socket/socket`.
    pub fn default_helper_socket(state_dir: &Path) -> PathBuf {
        state_dir.join("gc-roots-socket/socket")
    }
}

/// What CollectGarbage asks for (worker protocol action codes 0–3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GcAction {
    /// `--print-live`: the live paths, nothing deleted.
    ReturnLive,
    /// `--print-dead`: the dead paths, nothing deleted.
    ReturnDead,
    /// `--gc`: delete every dead path.
    DeleteDead,
    /// `--delete`: delete these paths, which must be dead.
    DeleteSpecific(BTreeSet<StorePath>),
    /// `nix store delete --also-referrers` (Nix 2.35, protocol feature
    /// `delete-dead-specific-referrers`): these paths, which must be dead, and every
    /// path that refers to them, directly or not (all dead too: liveness follows
    /// references).
    DeleteSpecificWithReferrers(BTreeSet<StorePath>),
    /// `nix store delete --skip-alive` (Nix 2.35, same feature): of these paths, the
    /// dead ones; live ones are skipped without error. With `referrers`, the paths
    /// that refer to them go too; without, a path that a path outside the deleted
    /// set refers to is skipped.
    DeleteDeadWithin {
        /// The paths to consider.
        paths: BTreeSet<StorePath>,
        /// Whether their referrers go with them.
        referrers: bool,
    },
}

impl GcAction {
    /// Whether the action deletes anything.
    pub fn deletes(&self) -> bool {
        !matches!(self, Self::ReturnLive | Self::ReturnDead)
    }

    /// Whether a path that cannot be deleted stops the collection with an error.
    pub(crate) fn all_or_error(&self) -> bool {
        matches!(
            self,
            Self::DeleteSpecific(_) | Self::DeleteSpecificWithReferrers(_)
        )
    }
}

/// A CollectGarbage request.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// What to do.
    pub action: GcAction,
    /// `ignore-liveness`: always refused.
    pub ignore_liveness: bool,
    /// Stop deleting once this many bytes are freed (`u64::MAX`: no limit).
    pub max_freed: u64,
}

/// What a collection returned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcResult {
    /// Live, dead or deleted paths as the action says, printed, sorted.
    pub paths: BTreeSet<String>,
    /// Bytes freed (deleted paths, invalid leftovers, pruned `.links`).
    pub bytes_freed: u64,
}
