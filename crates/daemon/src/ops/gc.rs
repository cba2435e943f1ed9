//! Roots and garbage collection: CollectGarbage, FindRoots and AddPermRoot on top
//! of `unrooted-gc`, and the temporary and indirect roots clients add.

use std::path::Path;
use std::time::{Duration, Instant};

use unrooted_gc::{Collector, GcAction, GcError, GcOptions};
use unrooted_protocol::reply::{write_roots, GcResult as WireGcResult};
use unrooted_protocol::request::{GcAction as WireAction, GcOptions as WireOptions, GcPaths};
use unrooted_protocol::stderr::Verbosity;
use unrooted_protocol::{wire, ProtocolError, Request};

use super::{chain, client, misrouted, reply, reply_u64, OpError, Out, Result};
use crate::roots_helper::gc_error_message;
use crate::session::Session;

/// Performs a request about roots or collection.
pub(super) fn perform(s: &mut Session<'_>, request: Request, out: &mut Out) -> Result {
    match request {
        Request::FindRoots => find_roots(s, out),
        Request::CollectGarbage(options) => collect_garbage(s, options, out),
        Request::AddPermRoot { path, gc_root } => {
            let link = add_perm_root(s, &path, &gc_root)?;
            reply(out, |w| Ok(wire::write_bytes(w, link.as_bytes())?))
        }
        Request::AddTempRoot(p) => {
            s.add_temp_root(&p);
            reply_u64(out, 1)
        }
        Request::AddIndirectRoot(link) => {
            add_indirect_root(s, &link)?;
            reply_u64(out, 1)
        }
        Request::SyncWithGC => reply_u64(out, 1),
        other => Err(misrouted("gc", &other)),
    }
}

/// AddIndirectRoot: the client's symlink `link` becomes a root.
fn add_indirect_root(s: &Session<'_>, link: &str) -> Result {
    if link.contains('\0') {
        return Err(client(format!(
            "indirect root '{link}' is not a valid path"
        )));
    }
    unrooted_gc::add_indirect_root(&s.state.config.locations.state_dir, Path::new(link))
        .map_err(|e| client(chain(&e)))
}

/// The collector's action for a request's action and paths, as Nix 2.35's gc.cc
/// reads them: the specific-path forms of the listing actions list the whole store
/// (nothing in unrooted restricts a listing), DeleteSpecific of the whole store is
/// refused, and so is collecting the garbage among specific paths without the
/// `delete-dead-specific-referrers` feature (`tagged`), which only that form can ask
/// for.
fn gc_action(action: WireAction, paths: GcPaths, tagged: bool) -> Result<GcAction> {
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
fn collect_garbage(s: &Session<'_>, options: WireOptions, out: &mut Out) -> Result {
    if options.ignore_liveness {
        return Err(OpError::Client(GcError::IgnoreLiveness.to_string()));
    }
    let tagged = s.cx.features.delete_dead_specific_referrers;
    let action = gc_action(options.action, options.paths, tagged)?;
    let deleting = action.deletes();
    let state = s.state;
    let _barrier = deleting.then(|| state.gc_barrier.collecting());
    let collector = Collector::new(&state.store, state.gc_config.clone(), &state.temp_roots);
    let mut sent: std::result::Result<(), ProtocolError> = Ok(());
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
fn find_roots(s: &Session<'_>, out: &mut Out) -> Result {
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
fn add_perm_root(
    s: &Session<'_>,
    path: &unrooted_format::StorePath,
    gc_root: &str,
) -> Result<String> {
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
