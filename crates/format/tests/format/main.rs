//! The Nix formats against Nix 2.8's vectors, the live Nix tools and property tests.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-format --test format <file>::`).

mod derivation_proptest;
mod derivation_vectors;
mod export_format;
mod hash_vectors;
mod nar_live;
mod nar_proptest;
mod nar_reject;
mod nar_vectors;
mod narinfo_live;
mod narinfo_vectors;
mod refscan_live;
mod refscan_tests;
mod signature_vectors;
