//! `install`'s plans run for real: the read-only store mounts and the store owner's subordinate ids.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-deploy --test deploy <file>::`).

mod store_mounts;
mod subids;
