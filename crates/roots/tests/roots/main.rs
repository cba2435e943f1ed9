//! The roots helper: its wire bytes and hostile roots as a process, and its size budget.
//!
//! One test binary for the crate (issue 16): each file beside this one is a module,
//! so a test is named `<file>::<test>` (e.g. `cargo test -p unrooted-roots --test roots <file>::`).

mod budget;
mod helper;
