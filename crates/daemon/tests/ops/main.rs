//! The daemon's operations, tested for real by any user with `cargo test`: the daemon
//! serves a private store in-process as the current user ([`harness`]), driven by our
//! protocol client and by the real Nix 2.8 client where it is installed.
//!
//! What needs other users, subordinate id ranges or the privileged roots helper stays
//! in `crates/cli/tests`, ignored outside CI.

mod build;
mod build_ca;
mod clients;
mod gc;
mod harness;
mod protocol;
mod realisations;
mod store;
mod subst;
mod trust;
