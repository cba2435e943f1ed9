//! Substitution's events relayed to the client as Nix shows them. Inside a request's
//! `Worker` (BuildPaths, BuildPathsWithResults, EnsurePath; see
//! [`WorkerProgress`]), each path is counted as Nix 2.26's substitution goals count
//! it (the `copyPaths` progress and the `realise` activity's expected download and
//! NAR sizes) and fetched under a `substitute` activity (108, level 0, no text,
//! fields path and cache), as `PathSubstitutionGoal::tryToRun` runs it.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use unrooted_format::{StoreDir, StorePath};
use unrooted_protocol::stderr::{ActivityId, ActivityType, Field, ResultType, Verbosity};
use unrooted_substitute::Observer;

use crate::ops::build::WorkerProgress;
use crate::ops::Out;
use crate::session::Session;

/// Where events go: the client, and the request's worker counts when there are.
pub(super) struct Sink<'o> {
    pub(super) out: &'o mut Out,
    pub(super) worker: Option<&'o mut WorkerProgress>,
}

/// The activities of one download.
struct Download {
    path: StorePath,
    substitute: Option<ActivityId>,
    copy: ActivityId,
    transfer: Option<ActivityId>,
}

/// Relays substitution events: a `copyPath` activity (`copying path '<p>' from
/// '<cache>'`, inside a `substitute` activity when counted by a worker) with, for a
/// cache reached over the network, a `fileTransfer` child whose progress results
/// carry bytes done and expected (Nix reads a `file://` cache without one); a
/// `queryPathInfo` activity (109) for each narinfo asked of a cache; warnings as log
/// lines.
pub(super) struct ClientObserver<'o> {
    store_dir: StoreDir,
    sink: Mutex<Sink<'o>>,
    activities: Mutex<HashMap<u64, Download>>,
    queries: Mutex<HashMap<u64, ActivityId>>,
    transfers: Mutex<HashMap<u64, ActivityId>>,
    next: std::sync::atomic::AtomicU64,
}

/// A `file-transfer` result as Nix's curl progress callback sends it: bytes done
/// and expected, nothing running or failed.
fn transfer_progress(done: u64, expected: u64) -> Vec<Field> {
    vec![
        Field::Int(done),
        Field::Int(expected),
        Field::Int(0),
        Field::Int(0),
    ]
}

impl<'o> ClientObserver<'o> {
    pub(super) fn new(s: &Session<'_>, out: &'o mut Out) -> Self {
        Self::with_worker(s, out, None)
    }

    /// An observer counting in `worker` too.
    pub(super) fn with_worker(
        s: &Session<'_>,
        out: &'o mut Out,
        worker: Option<&'o mut WorkerProgress>,
    ) -> Self {
        Self {
            store_dir: s.cx.store_dir.clone(),
            sink: Mutex::new(Sink { out, worker }),
            activities: Mutex::new(HashMap::new()),
            queries: Mutex::new(HashMap::new()),
            transfers: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn sink(&self) -> std::sync::MutexGuard<'_, Sink<'o>> {
        self.sink.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn next_id(&self) -> u64 {
        self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` with the client's stream and the worker counts.
    pub(super) fn with<T>(&self, f: impl FnOnce(&mut Sink<'o>) -> T) -> T {
        f(&mut self.sink())
    }

    pub(super) fn flush(&self) {
        let _ = self.sink().out.flush();
    }
}

impl Observer for ClientObserver<'_> {
    fn warn(&self, message: &str) {
        let _ = self.sink().out.log(Verbosity::Warn, message);
        self.flush();
    }

    fn query_started(&self, path: &str, cache: &str) -> u64 {
        let id = self.next_id();
        let mut sink = self.sink();
        let act = sink.out.start_activity(
            Verbosity::Talkative,
            ActivityType::QUERY_PATH_INFO,
            &format!("querying info about '{path}' on '{cache}'"),
            vec![
                Field::String(path.as_bytes().to_vec()),
                Field::String(cache.as_bytes().to_vec()),
            ],
            None,
        );
        if let Ok(a) = act {
            self.queries
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, a);
        }
        id
    }

    fn query_finished(&self, id: u64) {
        let act = self
            .queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(a) = act {
            let mut sink = self.sink();
            let _ = sink.out.stop_activity(a);
            let _ = sink.out.flush();
        }
    }

    fn transfer_started(&self, url: &str, parent: u64) -> u64 {
        let id = self.next_id();
        let parent = self
            .queries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&parent)
            .copied();
        let mut sink = self.sink();
        let act = sink.out.start_activity(
            Verbosity::Talkative,
            ActivityType::FILE_TRANSFER,
            &format!("downloading '{url}'"),
            vec![Field::String(url.as_bytes().to_vec())],
            parent,
        );
        if let Ok(a) = act {
            let _ = sink
                .out
                .result(a, ResultType::PROGRESS, transfer_progress(0, 0));
            self.transfers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, a);
        }
        id
    }

    fn transfer_finished(&self, id: u64, size: Option<u64>) {
        let act = self
            .transfers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
        if let Some(a) = act {
            let mut sink = self.sink();
            // Nix's last word on a transfer that succeeded: its body's size, done of
            // expected.
            if let Some(n) = size {
                let _ = sink
                    .out
                    .result(a, ResultType::PROGRESS, transfer_progress(n, n));
            }
            let _ = sink.out.stop_activity(a);
            let _ = sink.out.flush();
        }
    }

    fn download_started(
        &self,
        path: &StorePath,
        cache: &str,
        nar_url: &str,
        _expected: u64,
    ) -> u64 {
        let id = self.next_id();
        let mut guard = self.sink();
        let sink = &mut *guard;
        let shown = self.store_dir.display(path);
        // Nix's goal: counted as running, then the `substitute` activity the copy
        // runs in.
        let substitute = match sink.worker.as_deref_mut() {
            Some(w) => {
                let _ = w.substitution_started(path, sink.out);
                sink.out
                    .start_activity(
                        Verbosity::Error,
                        ActivityType::SUBSTITUTE,
                        "",
                        vec![
                            Field::String(shown.clone().into_bytes()),
                            Field::String(cache.as_bytes().to_vec()),
                        ],
                        None,
                    )
                    .ok()
            }
            None => None,
        };
        let out = &mut *sink.out;
        let copy = out.start_activity(
            Verbosity::Info,
            ActivityType::COPY_PATH,
            &format!("copying path '{shown}' from '{cache}'"),
            vec![
                Field::String(shown.into_bytes()),
                Field::String(cache.as_bytes().to_vec()),
                Field::String(b"local".to_vec()),
            ],
            substitute,
        );
        let network = !cache.starts_with("file://");
        let transfer = match (&copy, network) {
            (Ok(c), true) => out
                .start_activity(
                    Verbosity::Talkative,
                    ActivityType::FILE_TRANSFER,
                    &format!("downloading '{nar_url}'"),
                    vec![Field::String(nar_url.as_bytes().to_vec())],
                    Some(*c),
                )
                .ok(),
            _ => None,
        };
        // Before its first byte, curl knows no size.
        if let Some(t) = transfer {
            let _ = out.result(t, ResultType::PROGRESS, transfer_progress(0, 0));
        }
        if let Ok(copy) = copy {
            self.activities
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(
                    id,
                    Download {
                        path: path.clone(),
                        substitute,
                        copy,
                        transfer,
                    },
                );
        }
        let _ = out.flush();
        id
    }

    fn download_progress(&self, id: u64, done: u64, expected: u64) {
        let Some(t) = self
            .activities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .and_then(|d| d.transfer)
        else {
            return;
        };
        let mut sink = self.sink();
        let _ = sink
            .out
            .result(t, ResultType::PROGRESS, transfer_progress(done, expected));
        let _ = sink.out.flush();
    }

    fn download_finished(&self, id: u64, ok: bool) {
        let Some(d) = self
            .activities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
        else {
            return;
        };
        let mut guard = self.sink();
        let sink = &mut *guard;
        if let Some(t) = d.transfer {
            let _ = sink.out.stop_activity(t);
        }
        let _ = sink.out.stop_activity(d.copy);
        if let Some(a) = d.substitute {
            let _ = sink.out.stop_activity(a);
        }
        if let Some(w) = sink.worker.as_deref_mut() {
            let _ = w.substitution_finished(&d.path, ok, sink.out);
        }
        let _ = sink.out.flush();
    }
}
