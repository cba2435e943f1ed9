//! Putting unrooted on a server, checking it, and taking over a store from a root
//! `nix-daemon`. Everything here is synchronous and works on a *host root* (`/`, or a
//! directory tree standing in for it in tests and packaging), so that every file the
//! installer writes, every sysctl the doctor reads and every chown the migration makes
//! can be exercised without touching the machine. Installation is a pure
//! [`plan::InstallPlan`] of typed [`plan::Step`]s built from the options and what is
//! already on disk, printed by `--dry-run` and applied by one small executor; the unit
//! files it installs come from [`units`], whose module doc explains the mount-namespace
//! design (a read-only store for everyone but the daemon) and why it differs from
//! Guix's. [`doctor`] turns each precondition for builds into a one-line verdict with
//! its fix, and [`migrate`] hands a Nix 2.x store to the store owner in an order that
//! an interrupted run can simply repeat.

pub mod accounts;
pub mod doctor;
mod error;
pub mod filecaps;
pub mod host;
pub mod migrate;
pub mod nixconf;
pub mod plan;
pub mod units;

pub use error::DeployError;
pub use host::Host;
