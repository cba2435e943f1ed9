//! Substitution's events relayed to the client as Nix 2.8 shows them.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use unrooted_format::{StoreDir, StorePath};
use unrooted_protocol::stderr::{ActivityId, ActivityType, Field, ResultType, Verbosity};
use unrooted_substitute::Observer;

use crate::ops::Out;
use crate::session::Session;

/// Relays substitution events as Nix 2.8 shows them: a `copyPath` activity
/// (`copying path '<p>' from '<cache>'`) with a `fileTransfer` child whose progress
/// results carry bytes done and expected; warnings as log lines.
pub(super) struct ClientObserver<'o> {
    store_dir: StoreDir,
    out: Mutex<&'o mut Out>,
    activities: Mutex<HashMap<u64, (ActivityId, ActivityId)>>,
    next: std::sync::atomic::AtomicU64,
}

impl<'o> ClientObserver<'o> {
    pub(super) fn new(s: &Session<'_>, out: &'o mut Out) -> Self {
        Self {
            store_dir: s.cx.store_dir.clone(),
            out: Mutex::new(out),
            activities: Mutex::new(HashMap::new()),
            next: std::sync::atomic::AtomicU64::new(1),
        }
    }

    fn out(&self) -> std::sync::MutexGuard<'_, &'o mut Out> {
        self.out.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(super) fn flush(&self) {
        let _ = self.out().flush();
    }
}

impl Observer for ClientObserver<'_> {
    fn warn(&self, message: &str) {
        let _ = self.out().log(Verbosity::Warn, message);
        self.flush();
    }

    fn download_started(&self, path: &StorePath, cache: &str, nar_url: &str, expected: u64) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut out = self.out();
        let shown = self.store_dir.display(path);
        let copy = out.start_activity(
            Verbosity::Info,
            ActivityType::COPY_PATH,
            &format!("copying path '{shown}' from '{cache}'"),
            vec![
                Field::String(shown.into_bytes()),
                Field::String(cache.as_bytes().to_vec()),
                Field::String(b"local".to_vec()),
            ],
            None,
        );
        let transfer = copy.as_ref().ok().and_then(|c| {
            out.start_activity(
                Verbosity::Talkative,
                ActivityType::FILE_TRANSFER,
                &format!("downloading '{nar_url}'"),
                vec![Field::String(nar_url.as_bytes().to_vec())],
                Some(*c),
            )
            .ok()
        });
        if let (Ok(c), Some(t)) = (copy, transfer) {
            let _ = out.result(
                t,
                ResultType::PROGRESS,
                vec![
                    Field::Int(0),
                    Field::Int(expected),
                    Field::Int(1),
                    Field::Int(0),
                ],
            );
            self.activities
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(id, (c, t));
        }
        let _ = out.flush();
        id
    }

    fn download_progress(&self, id: u64, done: u64, expected: u64) {
        let Some((_, t)) = self
            .activities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .copied()
        else {
            return;
        };
        let mut out = self.out();
        let _ = out.result(
            t,
            ResultType::PROGRESS,
            vec![
                Field::Int(done),
                Field::Int(expected),
                Field::Int(1),
                Field::Int(0),
            ],
        );
        let _ = out.flush();
    }

    fn download_finished(&self, id: u64, _ok: bool) {
        let Some((c, t)) = self
            .activities
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id)
        else {
            return;
        };
        let mut out = self.out();
        let _ = out.stop_activity(t);
        let _ = out.stop_activity(c);
        let _ = out.flush();
    }
}
