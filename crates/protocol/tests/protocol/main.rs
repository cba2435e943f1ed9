//! The worker protocol: Appendix A's vectors, round trips, hostile input, the client and the feature exchange.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-protocol --test protocol <file>::`).

mod appendix_a;
mod client_server;
mod common;
mod features;
mod negative;
mod round_trip;
