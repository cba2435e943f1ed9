//! The local store: on its own, against the real Nix 2.8 tools, and killed mid-add.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-store --test store <file>::`).

mod common;
mod crash;
mod nix_interop;
mod store;
