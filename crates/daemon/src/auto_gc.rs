//! Automatic garbage collection from `min-free`/`max-free`: connections poke it, one
//! background thread checks the free space and collects.

use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

use unrooted_gc::{Collector, GcAction, GcOptions};

use crate::roots_helper::gc_error_message;
use crate::state::DaemonState;

/// Automatic collection: when the store's file system has less than `min-free`
/// bytes available, delete dead paths until `max-free` bytes are available.
/// Connections only [`AutoGc::poke`] it (cheap, rate-limited); one background
/// thread checks and collects, so automatic collections never overlap.
#[derive(Debug)]
pub(crate) struct AutoGc {
    min_free: u64,
    max_free: u64,
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

    fn enabled(&self) -> bool {
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

    fn wait(&self) {
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

/// Starts the automatic collector's thread, if `min-free` is set.
pub(crate) fn spawn_auto_gc(state: Arc<DaemonState>) {
    if !state.auto_gc.enabled() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("auto-gc".into())
        .spawn(move || loop {
            state.auto_gc.wait();
            auto_collect(&state);
        });
    if let Err(e) = spawned {
        tracing::warn!("automatic garbage collection is off: starting its thread: {e}");
    }
}

/// Bytes available to the store owner on the store's file system.
fn available(path: &Path) -> std::io::Result<u64> {
    let vfs = rustix::fs::statvfs(path)?;
    Ok(vfs.f_bavail.saturating_mul(vfs.f_frsize))
}

/// Collects dead paths until `max-free` bytes are available, when fewer than
/// `min-free` are.
fn auto_collect(state: &DaemonState) {
    let auto = &state.auto_gc;
    let dir = &state.store.config().real_store_dir;
    let avail = match available(dir) {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(
                "automatic garbage collection: statvfs {}: {e}",
                dir.display()
            );
            return;
        }
    };
    if avail >= auto.min_free {
        return;
    }
    let max_freed = auto.max_free.saturating_sub(avail);
    tracing::info!(
        "running auto-GC to free {max_freed} bytes ({avail} bytes available, min-free {})",
        auto.min_free
    );
    let _barrier = state.gc_barrier.collecting();
    let collector = Collector::new(&state.store, state.gc_config.clone(), &state.temp_roots);
    let result = collector.collect(
        &GcOptions {
            action: GcAction::DeleteDead,
            ignore_liveness: false,
            max_freed,
        },
        &mut |line| tracing::debug!("auto-GC: {line}"),
    );
    match result {
        Ok(r) => tracing::info!(
            "auto-GC: {} store paths deleted, {} bytes freed",
            r.paths.len(),
            r.bytes_freed
        ),
        Err(e) => tracing::warn!(
            "auto-GC: {}",
            gc_error_message(&e, &state.gc_config.roots_helper)
        ),
    }
}
