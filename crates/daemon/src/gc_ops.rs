//! Garbage collection in the daemon: CollectGarbage, FindRoots and AddPermRoot on
//! top of `unrooted-gc`, the barrier that keeps collections and adds of
//! not-yet-known paths apart, and automatic collection from `min-free`/`max-free`.
//!
//! Most adds and every build know the paths they are about to write before the
//! first byte arrives and root them in the shared [`unrooted_gc::TempRoots`] registry (see
//! `ops` and `build_ops`). Two kinds of add cannot: AddToStore of fixed-output
//! content (the path is a hash of the content) and ImportPaths (paths come after
//! their NARs in the stream). Between the store registering such a path and the
//! daemon rooting it, a collection could see a valid, unrooted path and delete it.
//! Those adds therefore hold the barrier shared, and a deleting collection holds it
//! exclusively: neither waits on the other for longer than one add or one
//! collection, and queries and other adds never touch it.

use std::io::BufWriter;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use unrooted_gc::{Collector, GcAction, GcError, GcOptions, RootsHelper};
use unrooted_protocol::reply::{write_roots, GcResult as WireGcResult};
use unrooted_protocol::request::{GcAction as WireAction, GcOptions as WireOptions, GcPaths};
use unrooted_protocol::stderr::Verbosity;
use unrooted_protocol::{ProtocolError, StderrWriter};

use crate::ops::{chain, OpError};
use crate::session::Session;
use crate::state::DaemonState;

type Out = StderrWriter<BufWriter<UnixStream>>;

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

/// The client's error for a failed collection, with what to do about the helper.
fn gc_error_message(e: &GcError, helper: &RootsHelper) -> String {
    let text = chain(e);
    match (e, helper) {
        (GcError::AskHelper { .. } | GcError::HelperIncomplete { .. }, _) => format!(
            "{text}; nothing was deleted (start the roots helper unrooted-find-roots as root, \
             or, for a single-user store only, set unrooted-gc-without-roots-helper = true)"
        ),
        (GcError::UnresolvedRoot { .. }, RootsHelper::None) => format!(
            "{text}; nothing was deleted (the daemon runs without the roots helper: \
             make the root readable by the store owner or start unrooted-find-roots)"
        ),
        (GcError::UnresolvedRoot { .. }, _) => format!("{text}; nothing was deleted"),
        _ => text,
    }
}

/// The collector's action for a request's action and paths, as Nix 2.35's gc.cc
/// reads them: the specific-path forms of the listing actions list the whole store
/// (nothing in unrooted restricts a listing), DeleteSpecific of the whole store is
/// refused, and so is collecting the garbage among specific paths without the
/// `delete-dead-specific-referrers` feature (`tagged`), which only that form can ask
/// for.
fn gc_action(action: WireAction, paths: GcPaths, tagged: bool) -> Result<GcAction, OpError> {
    Ok(match (action, paths) {
        (WireAction::ReturnLive, _) => GcAction::ReturnLive,
        (WireAction::ReturnDead, _) => GcAction::ReturnDead,
        (WireAction::DeleteDead, GcPaths::WholeStore) => GcAction::DeleteDead,
        (WireAction::DeleteDead, GcPaths::Specific { .. }) if !tagged => {
            return Err(OpError::Client(
                "Garbage collecting specific paths requested but it is not supported by the negotiated protocol".into(),
            ))
        }
        (
            WireAction::DeleteDead,
            GcPaths::Specific {
                paths,
                delete_referrers,
            },
        ) => GcAction::DeleteDeadWithin {
            paths,
            referrers: delete_referrers,
        },
        (WireAction::DeleteSpecific, GcPaths::WholeStore) => {
            return Err(OpError::Client("Cannot delete the entire store".into()))
        }
        (
            WireAction::DeleteSpecific,
            GcPaths::Specific {
                paths,
                delete_referrers: false,
            },
        ) => GcAction::DeleteSpecific(paths),
        (
            WireAction::DeleteSpecific,
            GcPaths::Specific {
                paths,
                delete_referrers: true,
            },
        ) => GcAction::DeleteSpecificWithReferrers(paths),
    })
}

/// CollectGarbage: one collector per request, each progress line a STDERR_NEXT.
pub(crate) fn collect_garbage(
    s: &Session<'_>,
    options: WireOptions,
    out: &mut Out,
) -> Result<(), OpError> {
    if options.ignore_liveness {
        return Err(OpError::Client(GcError::IgnoreLiveness.to_string()));
    }
    let tagged = s.cx.features.delete_dead_specific_referrers;
    let action = gc_action(options.action, options.paths, tagged)?;
    let deleting = action.deletes();
    let state = s.state;
    let _barrier = deleting.then(|| state.gc_barrier.collecting());
    let collector = Collector::new(&state.store, state.gc_config.clone(), &state.temp_roots);
    let mut sent: Result<(), ProtocolError> = Ok(());
    let mut last_flush = Instant::now();
    let result = collector.collect(
        &GcOptions {
            action,
            ignore_liveness: false,
            max_freed: options.max_freed,
        },
        &mut |line| {
            // A client that went away does not stop the collection; its lines are
            // just no longer sent.
            if sent.is_ok() {
                sent = out.log(Verbosity::Info, line).map(|_| ());
                if sent.is_ok() && last_flush.elapsed() > Duration::from_millis(100) {
                    sent = out.flush();
                    last_flush = Instant::now();
                }
            }
        },
    );
    tracing::debug!(user = %s.peer.user, ok = result.is_ok(), "collection done");
    sent?;
    let result =
        result.map_err(|e| OpError::Client(gc_error_message(&e, &state.gc_config.roots_helper)))?;
    let reply = WireGcResult {
        paths: result.paths,
        bytes_freed: result.bytes_freed,
    };
    out.last()?;
    reply.write(out.get_mut())?;
    Ok(())
}

/// FindRoots: every root with its link; temporary and runtime roots censored for
/// untrusted clients.
pub(crate) fn find_roots(s: &Session<'_>, out: &mut Out) -> Result<(), OpError> {
    let state = s.state;
    let collector = Collector::new(&state.store, state.gc_config.clone(), &state.temp_roots);
    let roots = collector
        .find_roots(!s.trusted)
        .map_err(|e| OpError::Client(chain(&e)))?;
    out.last()?;
    write_roots(out.get_mut(), &s.cx, &roots)?;
    Ok(())
}

/// AddPermRoot (trusted clients only, as in Nix): the symlink `gc_root` → `path`,
/// made by the daemon, registered as an indirect root. Returns the link.
pub(crate) fn add_perm_root(
    s: &Session<'_>,
    path: &unrooted_format::StorePath,
    gc_root: &str,
) -> Result<String, OpError> {
    let client = |m: String| OpError::Client(m);
    if !s.trusted {
        return Err(client("you are not privileged to create perm roots".into()));
    }
    let store = &s.state.store;
    let store_dir = store.store_dir().as_str();
    let link = Path::new(gc_root);
    if !link.is_absolute() || gc_root.contains('\0') {
        return Err(client(format!(
            "garbage collector root '{gc_root}' is not an absolute path"
        )));
    }
    if link.starts_with(store_dir) {
        return Err(client(format!(
            "creating a garbage collector root ({gc_root}) in the Nix store is forbidden \
             (are you running nix-build inside the store?)"
        )));
    }
    s.add_temp_root(path);
    let target = store.print_path(path);
    match std::fs::symlink_metadata(link) {
        Ok(m) => {
            let points_into_store = m.file_type().is_symlink()
                && std::fs::read_link(link).is_ok_and(|t| t.starts_with(store_dir));
            if !points_into_store {
                return Err(client(format!(
                    "cannot create symlink '{gc_root}'; already exists"
                )));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(client(format!("cannot create symlink '{gc_root}': {e}"))),
    }
    let tmp = link.with_file_name(format!(
        ".{}.tmp-unrooted-{}",
        link.file_name()
            .map(|n| n.to_string_lossy())
            .unwrap_or_default(),
        s.id
    ));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&target, &tmp)
        .and_then(|()| std::fs::rename(&tmp, link))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            client(format!("cannot create symlink '{gc_root}': {e}"))
        })?;
    unrooted_gc::add_indirect_root(&s.state.config.locations.state_dir, link)
        .map_err(|e| client(chain(&e)))?;
    Ok(gc_root.to_owned())
}

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

/// The start-up log line saying where roots the daemon cannot read come from.
pub(crate) fn describe_mode(helper: &RootsHelper) -> String {
    match helper {
        RootsHelper::Socket(p) => format!(
            "garbage collection: roots the daemon cannot read come from the roots helper \
             (unrooted-find-roots) at {}; without it nothing is deleted",
            p.display()
        ),
        RootsHelper::RuntimeOnlySocket(p) => format!(
            "garbage collection: runtime roots come from Nix's roots daemon at {}; \
             an unreadable root or an unreachable helper refuses deletion",
            p.display()
        ),
        RootsHelper::None => "garbage collection WITHOUT the roots helper \
             (unrooted-gc-without-roots-helper = true): other users' runtime roots are not \
             seen; an unreadable root still refuses deletion"
            .to_owned(),
    }
}
