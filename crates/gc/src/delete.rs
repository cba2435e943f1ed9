//! Deleting what a collection found dead: in batches, each invalid in the database
//! before any of its files go, with the batches' deletions from disk pipelined.

use std::collections::BTreeSet;
use std::sync::Arc;

use unrooted_format::StorePath;
use unrooted_store::{DeleteOutcome, StoreError};

use crate::collect::{Collector, Roots};
use crate::config::GcResult;
use crate::error::GcError;
use crate::temp_roots::read_temp_roots_files;

/// A batch checked and invalidated ([`Collector::begin_batch`]).
struct Begun {
    /// Pending in the registry.
    accepted: Vec<StorePath>,
    /// Invalid in the database now.
    invalidated: Vec<StorePath>,
    /// A path kept because a valid path outside the batch refers to it, and that
    /// referrer.
    blocker: Option<(StorePath, StorePath)>,
}

/// A thread deleting part of a batch: what became of the paths it did, and the
/// error that stopped it.
type DeletingThread<'scope> =
    std::thread::ScopedJoinHandle<'scope, (Vec<DeleteOutcome>, Option<StoreError>)>;

/// A batch being deleted from disk: the threads, each with its part of `paths`.
struct InFlight<'scope, 'env> {
    accepted: Vec<StorePath>,
    paths: Arc<[StorePath]>,
    parts: Vec<(std::ops::Range<usize>, DeletingThread<'scope>)>,
    _env: std::marker::PhantomData<&'env ()>,
}

/// Paths invalidated per database transaction when no `max_freed` is given. A
/// transaction writes every page it touched to the WAL once, and deleting paths
/// spread over the whole store touches most pages of `ValidPaths` and its index
/// whatever the batch size: 4096 rather than 256 made invalidating 10,000 paths
/// take a third of the time. Larger batches gain little more, and keep more paths
/// pending (a client asking for one of them waits for its batch).
const BATCH: usize = 4096;

/// Threads deleting an invalidated batch from disk, at most. Removing entries of
/// one directory is serialised by the kernel (the directory's lock), so more
/// threads only contend for it: measured on 10,000 single-file paths, one, two and
/// four threads took the same time. Two keep the file system busy while the other
/// thread prepares its next group, and leave room for the main thread
/// invalidating the next batch.
const DELETE_THREADS: usize = 2;

/// Paths per deleting thread, at least (a thread for a few paths costs more than it
/// saves).
const DELETE_THREAD_MIN: usize = 32;

impl Collector<'_> {
    /// Deletes `order` (referrers first) in batches; returns whether `max_freed` was
    /// reached.
    ///
    /// Without a limit, the batches form a pipeline: while one invalidated batch is
    /// deleted from disk by other threads, the next one is checked and invalidated
    /// (the database and the store directory are different bottlenecks). The order
    /// that matters for a crash, a batch invalid in the database before any of its
    /// files go, holds for every batch; the order in which invalid paths leave the
    /// disk does not matter. With a limit, each path is finished before the next
    /// one starts, as the bytes freed decide whether to go on.
    pub(crate) fn delete_in_batches(
        &self,
        order: &[StorePath],
        specific: bool,
        max_freed: u64,
        log: &mut dyn FnMut(&str),
        result: &mut GcResult,
    ) -> Result<bool, GcError> {
        let pipelined = max_freed == u64::MAX;
        let batch = if pipelined { BATCH } else { 1 };
        std::thread::scope(|scope| {
            let mut in_flight: Option<InFlight<'_, '_>> = None;
            let mut error = None;
            let mut limit_reached = false;
            for chunk in order.chunks(batch) {
                let begun = match self.begin_batch(chunk) {
                    Ok(b) => b,
                    Err(e) => {
                        error = Some(e);
                        break;
                    }
                };
                // A requested path that is in use stops the deletion; the blocker
                // names who uses it.
                let stop = specific && begun.invalidated.len() < chunk.len();
                let blocker = begun.blocker.clone().filter(|_| specific);
                let flight = self.start_deletion(scope, begun);
                let previous = if pipelined {
                    in_flight.replace(flight)
                } else {
                    Some(flight)
                };
                if let Some(previous) = previous {
                    if let Err(e) = self.finish_deletion(previous, log, result) {
                        error = Some(e);
                        break;
                    }
                }
                if let Some((path, referrer)) = blocker {
                    error = Some(GcError::Referenced {
                        path: self.store.print_path(&path),
                        referrer: self.store.print_path(&referrer),
                    });
                    break;
                }
                if stop {
                    break;
                }
                if result.bytes_freed >= max_freed {
                    limit_reached = true;
                    break;
                }
            }
            // Whatever failed, the batch in flight finishes and leaves the pending
            // state.
            if let Some(flight) = in_flight.take() {
                let finished = self.finish_deletion(flight, log, result);
                if let (None, Err(e)) = (&error, finished) {
                    error = Some(e);
                }
            }
            match error {
                Some(e) => Err(e),
                None => Ok(limit_reached),
            }
        })
    }

    /// The final check and the invalidation of one batch. The paths accepted are
    /// pending in the registry until [`Collector::finish_deletion`].
    fn begin_batch(&self, chunk: &[StorePath]) -> Result<Begun, GcError> {
        let state_dir = &self.store.config().state_dir;
        let nix_temp = read_temp_roots_files(state_dir, self.store.store_dir())?;
        // A path is deleted only when nothing valid outside this batch refers to it:
        // a referrer that appeared since the liveness pass (a new path added by a
        // client) or that was kept keeps it alive. The referrers are read for the
        // whole batch before the registry is locked; one registered after this
        // read is still caught, by the database, which refuses to invalidate a
        // path a valid one refers to (see `invalidate`).
        let referrers = self.store.query_referrers_of_many(chunk)?;
        let mut blocker: Option<(StorePath, StorePath)> = None;
        let accepted = {
            let in_batch: BTreeSet<&StorePath> = chunk.iter().collect();
            self.temp_roots.begin_deletion(chunk, |c, _| {
                if nix_temp.contains(c) {
                    return true;
                }
                let outside = referrers
                    .get(c)
                    .and_then(|refs| refs.iter().find(|r| *r != c && !in_batch.contains(r)));
                match outside {
                    Some(r) => {
                        blocker.get_or_insert((c.clone(), r.clone()));
                        true
                    }
                    None => false,
                }
            })
        };
        let invalidated = self.invalidate(&accepted);
        Ok(Begun {
            accepted,
            invalidated,
            blocker,
        })
    }

    /// Invalidates `accepted` in one transaction; the paths invalidated.
    fn invalidate(&self, accepted: &[StorePath]) -> Vec<StorePath> {
        if accepted.is_empty() {
            Vec::new()
        } else if self.store.invalidate_paths(accepted).is_ok() {
            accepted.to_vec()
        } else {
            // A referrer appeared between the check and the transaction (the database
            // refuses to drop a referenced row): go one by one, keeping those.
            accepted
                .iter()
                .filter(|p| {
                    self.store
                        .invalidate_paths(std::slice::from_ref(*p))
                        .is_ok()
                })
                .cloned()
                .collect()
        }
    }

    /// Starts deleting an invalidated batch from disk: a few threads share it, as
    /// removing a file mostly waits for the file system.
    fn start_deletion<'scope, 'env>(
        &'env self,
        scope: &'scope std::thread::Scope<'scope, 'env>,
        begun: Begun,
    ) -> InFlight<'scope, 'env> {
        let paths: Arc<[StorePath]> = begun.invalidated.into();
        let threads = DELETE_THREADS.min(paths.len().div_ceil(DELETE_THREAD_MIN));
        let share = paths.len().div_ceil(threads.max(1)).max(1);
        let parts = (0..paths.len())
            .step_by(share)
            .map(|start| {
                let range = start..(start + share).min(paths.len());
                let paths = Arc::clone(&paths);
                let part = range.clone();
                let handle = scope.spawn(move || {
                    let mut outcomes = Vec::with_capacity(part.len());
                    let r = self
                        .store
                        .deletion_lock()
                        .delete_invalid_paths(&paths[part], &mut outcomes);
                    (outcomes, r.err())
                });
                (range, handle)
            })
            .collect();
        InFlight {
            accepted: begun.accepted,
            paths,
            parts,
            _env: std::marker::PhantomData,
        }
    }

    /// Waits for a batch's deletion, reports it, and ends its pending state;
    /// returns how many paths were deleted.
    fn finish_deletion(
        &self,
        flight: InFlight<'_, '_>,
        log: &mut dyn FnMut(&str),
        result: &mut GcResult,
    ) -> Result<usize, GcError> {
        // Each thread's outcomes are those of the first paths of its part: what was
        // deleted before an error is still reported.
        let mut error = None;
        for (range, handle) in flight.parts {
            let (done, e) = handle
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p));
            for (p, outcome) in flight.paths[range].iter().zip(&done) {
                let printed = self.store.print_path(p);
                log(&format!("deleting '{printed}'"));
                if let DeleteOutcome::Deleted { bytes } = outcome {
                    result.bytes_freed += bytes;
                }
                result.paths.insert(printed);
            }
            error = error.or(e);
        }
        self.temp_roots.finish_deletion(&flight.accepted);
        match error {
            Some(e) => Err(e.into()),
            None => Ok(flight.paths.len()),
        }
    }

    /// Deletes entries of the store directory that are not valid paths: leftovers
    /// of crashes (including collections killed between invalidation and deletion)
    /// and stale lock files. Rooted names and names whose lock is held are kept.
    pub(crate) fn delete_leftovers(
        &self,
        roots: &Roots,
        log: &mut dyn FnMut(&str),
        result: &mut GcResult,
    ) -> Result<(), GcError> {
        let store_dir = self.store.store_dir();
        let mut lock = self.store.deletion_lock();
        for name in self.store.store_entries()? {
            let Some(text) = name.to_str() else {
                continue;
            };
            let path = StorePath::from_base_name(text).ok();
            if let Some(p) = &path {
                if roots.contains_key(p) || self.store.is_valid_path(p)? {
                    continue;
                }
            }
            let pending: Vec<StorePath> = path.iter().cloned().collect();
            let accepted = self.temp_roots.begin_deletion(&pending, |_, _| false);
            if accepted.len() != pending.len() {
                continue;
            }
            let outcome = lock.delete_garbage_entry(&name);
            self.temp_roots.finish_deletion(&accepted);
            if let DeleteOutcome::Deleted { bytes } = outcome? {
                if path.is_some() {
                    log(&format!("deleting '{}/{text}'", store_dir.as_str()));
                }
                result.bytes_freed += bytes;
            }
        }
        Ok(())
    }
}
