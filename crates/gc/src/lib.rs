//! The unprivileged garbage collector: it finds the roots (direct, indirect,
//! per-user, runtime and temporary), computes what is alive, and deletes the rest
//! from a [`LocalStore`](unrooted_store::LocalStore), running as the store's owner.
//! What the owner cannot read it asks the privileged roots helper
//! (`unrooted-find-roots`) for, over a Unix socket; a root that neither can resolve,
//! or a helper that cannot be reached, makes the collector refuse to delete
//! anything, because a root it cannot see is still a root (see
//! `docs/spec/gc-roots.md` §1). Only the administrator's
//! explicit [`RootsHelper::None`] collects without asking the helper. The API is
//! synchronous like the store below it: a collection is blocking file and SQLite
//! work run on the requesting connection's thread, and the only concurrency it has
//! to respect — adds and builds on other threads — is handled by [`TempRoots`], a
//! registry with a mutex and a condition variable, not by an async runtime.
//!
//! # How the daemon uses it
//! * One [`TempRoots`] for the whole daemon, shared by every connection and every
//!   collection.
//! * AddTempRoot, and every path a connection is about to use: [`TempRoots::add`]
//!   with the connection's id, *then* check that the path is valid (it may have been
//!   deleted just before the call; `add` waits while the collector is deleting it).
//!   On disconnect: [`TempRoots::remove_owner`].
//! * Adding a path (AddToStore, AddToStoreNar, AddMultipleToStore, ImportPaths,
//!   AddTextToStore) and building: before writing anything, [`TempRoots::hold`] the
//!   paths being added or built *and* their references / the build's inputs, and
//!   check the references are still valid; keep the guard until the path is
//!   registered, then `add` it to the connection's temp roots (Nix does the same:
//!   a new path stays a temp root of the client that added it).
//! * CollectGarbage: [`Collector::new`] with the store, the daemon's [`GcConfig`] and
//!   the `TempRoots`, then [`Collector::collect`] with a log callback sending
//!   STDERR_NEXT lines. FindRoots: [`Collector::find_roots`] (`censor` for
//!   untrusted clients). AddIndirectRoot / AddPermRoot: [`add_indirect_root`].

mod collect;
mod config;
mod delete;
mod error;
mod roots;
mod temp_roots;

pub use collect::Collector;
pub use config::{GcAction, GcConfig, GcOptions, GcResult, RootsHelper};
pub use error::GcError;
pub use roots::{add_indirect_root, fuzz_parse_helper_answer, indirect_root_name};
pub use temp_roots::{TempRootGuard, TempRoots};
