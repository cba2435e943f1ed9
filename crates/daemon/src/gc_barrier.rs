//! The barrier that keeps deleting collections and adds of not-yet-known paths
//! apart.
//!
//! Most adds and every build know the paths they are about to write before the
//! first byte arrives and root them in the shared [`unrooted_gc::TempRoots`] registry (see
//! `ops::add` and `ops::build`). Two kinds of add cannot: AddToStore of fixed-output
//! content (the path is a hash of the content) and ImportPaths (paths come after
//! their NARs in the stream). Between the store registering such a path and the
//! daemon rooting it, a collection could see a valid, unrooted path and delete it.
//! Those adds therefore hold the barrier shared, and a deleting collection holds it
//! exclusively: neither waits on the other for longer than one add or one
//! collection, and queries and other adds never touch it.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

/// Keeps deleting collections and adds of paths unknown in advance apart.
#[derive(Debug, Default)]
pub(crate) struct GcBarrier(RwLock<()>);

impl GcBarrier {
    /// Held by an add whose path is known only once the store has registered it.
    pub(crate) fn adding(&self) -> RwLockReadGuard<'_, ()> {
        self.0.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Held by a collection that deletes.
    pub(crate) fn collecting(&self) -> RwLockWriteGuard<'_, ()> {
        self.0.write().unwrap_or_else(PoisonError::into_inner)
    }
}
