//! The automatic collector's thread: it waits for a poke of the daemon's
//! [`AutoGc`](crate::auto_gc::AutoGc), then collects when the store's file system
//! has less than `min-free` bytes available.

use std::path::Path;
use std::sync::Arc;

use unrooted_gc::{Collector, GcAction, GcOptions};

use crate::roots_helper::gc_error_message;
use crate::state::DaemonState;

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
