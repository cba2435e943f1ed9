//! The workspace's own rules, checked against the tree: the dependency table of
//! `docs/architecture.md` and the size limits of its units.

mod layering;
mod unit_sizes;
