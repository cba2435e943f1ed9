//! The collector: in-process on a real store, with real users and the roots helper, and its scale.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-gc --test gc <file>::`).

mod common;
mod gc;
mod privileged;
mod scale;
