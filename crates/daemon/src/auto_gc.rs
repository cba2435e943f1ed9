//! Automatic garbage collection from `min-free`/`max-free`: what connections poke,
//! and what the collector's thread (see `auto_collect`) waits on.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Automatic collection: when the store's file system has less than `min-free`
/// bytes available, delete dead paths until `max-free` bytes are available.
/// Connections only [`AutoGc::poke`] it (cheap, rate-limited); one background
/// thread checks and collects, so automatic collections never overlap.
#[derive(Debug)]
pub(crate) struct AutoGc {
    /// Below this many bytes available, collect.
    pub(crate) min_free: u64,
    /// Collect until this many bytes are available.
    pub(crate) max_free: u64,
    interval: Duration,
    last_poke: Mutex<Option<Instant>>,
    wanted: Mutex<bool>,
    wake: Condvar,
}

impl AutoGc {
    /// Disabled when `min_free` is 0 (Nix's default).
    pub(crate) fn new(min_free: u64, max_free: u64, interval_secs: u64) -> Self {
        Self {
            min_free,
            max_free,
            interval: Duration::from_secs(interval_secs),
            last_poke: Mutex::new(None),
            wanted: Mutex::new(false),
            wake: Condvar::new(),
        }
    }

    /// Whether automatic collection is on.
    pub(crate) fn enabled(&self) -> bool {
        self.min_free > 0
    }

    /// Asks for a free-space check (before a build or an add); at most one per
    /// `min-free-check-interval`, and it never waits for the collection.
    pub(crate) fn poke(&self) {
        if !self.enabled() {
            return;
        }
        {
            let mut last = self
                .last_poke
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if last.is_some_and(|t| t.elapsed() < self.interval) {
                return;
            }
            *last = Some(Instant::now());
        }
        *self.wanted.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Waits for the next poke.
    pub(crate) fn wait(&self) {
        let mut wanted = self.wanted.lock().unwrap_or_else(PoisonError::into_inner);
        while !*wanted {
            wanted = self
                .wake
                .wait(wanted)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *wanted = false;
    }
}
