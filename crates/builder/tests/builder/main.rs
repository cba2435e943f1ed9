//! The builder's integration tests: the scheduler with real builders and Nix 2.8's output checks.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-builder --test builder <file>::`).

mod common;
mod outputs_as_nix;
mod scheduler;
