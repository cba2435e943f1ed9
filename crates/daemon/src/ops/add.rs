//! Adding to the store: AddToStore (framed and, in `add_legacy`, before 1.25),
//! AddTextToStore, AddToStoreNar, AddMultipleToStore, ImportPaths, signatures and
//! build logs. Every add roots what it is about to write, and its references, before
//! the first byte (see [`hold_for_add`]).

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, Read};

use unrooted_format::{nar, ContentAddress, Hash, StorePath};
use unrooted_gc::TempRootGuard;
use unrooted_protocol::body::StderrReadReader;
use unrooted_protocol::request::{AddToStoreNar, ContentAddressMethod};
use unrooted_protocol::{
    wire, FramedReader, ProtocolError, Request, ValidPathInfo as WirePathInfo,
};
use unrooted_store::{CheckSigs, ValidPathInfo};

use super::{
    add_legacy, client, fatal, from_wire, misrouted, reply, reply_u64, to_wire, OpError, Out,
    Reader, Result,
};
use crate::session::Session;
use crate::state::DaemonState;

/// The largest text accepted as one AddToStore `text:sha256` body (a `.drv` or a
/// `builtins.toFile`); larger content belongs in a NAR.
const MAX_TEXT_BODY: u64 = 64 << 20;

/// The refusal of a repair asked for by an untrusted client.
const REPAIR_UNTRUSTED: &str = "repairing is not allowed because you are not in 'trusted-users'";

/// Performs an add to the store.
pub(super) fn perform(
    s: &mut Session<'_>,
    request: Request,
    reader: &mut Reader,
    out: &mut Out,
) -> Result {
    match request {
        Request::AddToStore {
            name,
            method,
            references,
            repair,
        } => add_to_store_op(s, name.as_str(), method, &references, repair, reader, out),
        Request::AddTextToStore {
            name,
            text,
            references,
        } => {
            s.state.auto_gc.poke();
            let info = add_text(s, name.as_str(), text.as_bytes(), &references, false)?;
            reply(out, |w| {
                Ok(wire::write_path(w, &s.cx.store_dir, &info.path)?)
            })
        }
        Request::AddToStoreNar(req) => {
            s.state.auto_gc.poke();
            add_to_store_nar(s, req, reader, out)?;
            out.last()?;
            Ok(())
        }
        Request::AddMultipleToStore {
            repair,
            dont_check_sigs,
        } => {
            s.state.auto_gc.poke();
            add_multiple(s, repair, dont_check_sigs, reader)?;
            out.last()?;
            Ok(())
        }
        Request::ImportPaths => import_paths(s, reader, out),
        Request::AddSignatures { path, signatures } => {
            if !s.trusted {
                return Err(client("you are not privileged to add signatures"));
            }
            s.state.store.add_signatures(&path, signatures)?;
            reply_u64(out, 1)
        }
        Request::AddBuildLog(drv) => add_build_log(s, &drv, reader, out),
        Request::RegisterDrvOutput(r) => super::realisations::register_drv_output(s, &r, out),
        other => Err(misrouted("add", &other)),
    }
}

/// AddToStore, with the reply of the client's protocol version: the whole record
/// from 1.25 on, the path before.
fn add_to_store_op(
    s: &Session<'_>,
    name: &str,
    method: ContentAddressMethod,
    references: &BTreeSet<StorePath>,
    repair: bool,
    reader: &mut Reader,
    out: &mut Out,
) -> Result {
    if repair && !s.trusted {
        drain_body(s, reader)?;
        return Err(client(REPAIR_UNTRUSTED));
    }
    s.state.auto_gc.poke();
    let info = add_to_store(s, name, method, references, repair, reader)?;
    if s.cx.version.has_framed_add_to_store() {
        let wire_info = to_wire(&info);
        reply(out, |w| wire_info.write(w, &s.cx, s.cx.version))
    } else {
        reply(out, |w| {
            Ok(wire::write_path(w, &s.cx.store_dir, &info.path)?)
        })
    }
}

/// ImportPaths: an export stream pulled with STDERR_READ; the imported paths are
/// rooted for the connection.
fn import_paths(s: &Session<'_>, reader: &mut Reader, out: &mut Out) -> Result {
    let check = if s.trusted {
        CheckSigs::DontCheck
    } else {
        CheckSigs::Check
    };
    let max = s.cx.limits.max_frame;
    s.state.auto_gc.poke();
    // The paths come after their NARs: nothing to root in advance, so no
    // deleting collection may run until they are rooted.
    let _adding = s.state.gc_barrier.adding();
    let imported = {
        let mut pulled = StderrReadReader::new(&mut *reader, out.get_mut(), max);
        s.state.store.import_paths(&mut pulled, check)?
    };
    for p in &imported {
        s.add_temp_root(p);
    }
    let set: BTreeSet<StorePath> = imported.into_iter().collect();
    reply(out, |w| Ok(wire::write_paths(w, &s.cx.store_dir, &set)?))
}

/// AddBuildLog (trusted clients only): the framed log of `drv`.
fn add_build_log(s: &Session<'_>, drv: &StorePath, reader: &mut Reader, out: &mut Out) -> Result {
    let mut body = FramedReader::new(&mut *reader, s.cx.limits.max_frame);
    if !s.trusted {
        body.drain()?;
        return Err(client("you are not privileged to add logs"));
    }
    let result = write_build_log(s, drv, &mut body);
    body.drain()?;
    result?;
    reply_u64(out, 1)
}

/// Roots `path` (when known in advance) and `references` until the guard is
/// dropped, then checks that the references are still valid: the collector may
/// have deleted one just before it was rooted, and an add must not register a path
/// whose references are gone (the database would refuse it anyway, less clearly).
pub(crate) fn hold_for_add<'a>(
    s: &Session<'a>,
    path: Option<&StorePath>,
    references: &BTreeSet<StorePath>,
) -> Result<TempRootGuard<'a>> {
    let state: &'a DaemonState = s.state;
    let guard = state
        .temp_roots
        .hold(path.into_iter().chain(references).cloned());
    let valid = state.store.query_valid_paths(references)?;
    // A path may refer to itself (it is not valid yet, being added).
    let missing = references
        .iter()
        .find(|r| Some(*r) != path && !valid.contains(*r));
    if let Some(missing) = missing {
        let name = path.map(|p| state.store.print_path(p));
        return Err(client(format!(
            "cannot add {}: its reference '{}' is not valid",
            name.map_or_else(|| "the path".to_owned(), |n| format!("'{n}'")),
            state.store.print_path(missing)
        )));
    }
    Ok(guard)
}

/// The path text content `text` named `name` gets, if `name` is valid.
fn text_path(
    s: &Session<'_>,
    name: &str,
    text: &[u8],
    refs: &BTreeSet<StorePath>,
) -> Option<StorePath> {
    let ca = ContentAddress::Text(Hash::sha256(unrooted_format::hash::sha256(text)));
    let name = unrooted_format::StorePathName::new(name).ok()?;
    ca.store_path(s.state.store.store_dir(), &name, refs, false)
        .ok()
}

/// AddTextToStore and AddToStore `text:sha256`: the path is known from the text, so
/// it is rooted with its references before anything is written.
fn add_text(
    s: &Session<'_>,
    name: &str,
    text: &[u8],
    references: &BTreeSet<StorePath>,
    repair: bool,
) -> Result<ValidPathInfo> {
    let path = text_path(s, name, text, references);
    let _hold = hold_for_add(s, path.as_ref(), references)?;
    let info = s.state.store.add_text(name, text, references, repair)?;
    s.add_temp_root(&info.path);
    Ok(info)
}

/// Reads the rest of an AddToStore body that is refused, so the next request is read
/// in step.
fn drain_body(s: &Session<'_>, reader: &mut Reader) -> Result {
    if s.cx.version.has_framed_add_to_store() {
        FramedReader::new(&mut *reader, s.cx.limits.max_frame).drain()?;
        Ok(())
    } else {
        // An unframed NAR: parse it to find its end.
        nar::copy_nar(&mut *reader, &mut io::sink())
            .map(|_| ())
            .map_err(|e| fatal(&e))
    }
}

/// AddToStore: content of any method, framed from 1.25 on.
fn add_to_store(
    s: &Session<'_>,
    name: &str,
    method: ContentAddressMethod,
    references: &BTreeSet<StorePath>,
    repair: bool,
    reader: &mut Reader,
) -> Result<ValidPathInfo> {
    let store = &s.state.store;
    if !s.cx.version.has_framed_add_to_store() {
        return add_legacy::add_to_store_legacy(s, name, method, reader);
    }
    let mut body = FramedReader::new(&mut *reader, s.cx.limits.max_frame);
    let result = match method {
        ContentAddressMethod::Text => {
            let mut text = Vec::new();
            let read = (&mut body).take(MAX_TEXT_BODY + 1).read_to_end(&mut text);
            match read {
                Err(e) => Err(OpError::Fatal(ProtocolError::Read {
                    field: "text body",
                    source: e,
                })),
                Ok(n) if n as u64 > MAX_TEXT_BODY => Err(client(format!(
                    "text '{name}' is larger than {MAX_TEXT_BODY} bytes; add it as a file instead"
                ))),
                Ok(_) => add_text(s, name, &text, references, repair),
            }
        }
        ContentAddressMethod::Fixed { method, algo } => {
            // The path is a hash of the content: it cannot be rooted before the
            // store registers it, so no deleting collection runs until it is.
            let _adding = s.state.gc_barrier.adding();
            hold_for_add(s, None, references).and_then(|_hold| {
                let info = store.add_ca(name, method, algo, &mut body, references, repair)?;
                s.add_temp_root(&info.path);
                Ok(info)
            })
        }
    };
    // Always consume the rest of the upload, so the next request is read in step.
    body.drain()?;
    result
}

/// AddToStoreNar: one path with its record, the NAR framed from 1.23 on, pulled
/// with STDERR_READ before.
fn add_to_store_nar(
    s: &Session<'_>,
    req: AddToStoreNar,
    reader: &mut Reader,
    out: &mut Out,
) -> Result {
    let mut info = from_wire(&req.info);
    let check = crate::client_sigs::check_sigs(s, req.dont_check_sigs);
    if !s.trusted {
        info.ultimate = false;
    }
    let v = s.cx.version;
    let store = &s.state.store;
    if v.has_framed_add_to_store_nar() {
        let mut body = FramedReader::new(&mut *reader, s.cx.limits.max_frame);
        let result = if req.repair && !s.trusted {
            Err(client(REPAIR_UNTRUSTED))
        } else {
            hold_for_add(s, Some(&info.path), &info.references).and_then(|_hold| {
                let check = crate::client_sigs::check_for(s, check, &info);
                store.add_to_store_nar(&info, &mut body, req.repair, check)?;
                s.add_temp_root(&info.path);
                Ok(())
            })
        };
        body.drain()?;
        result?;
    } else {
        if req.repair && !s.trusted {
            return Err(client(REPAIR_UNTRUSTED));
        }
        let _hold = hold_for_add(s, Some(&info.path), &info.references)?;
        let max = s.cx.limits.max_frame;
        let mut pulled = StderrReadReader::new(&mut *reader, out.get_mut(), max);
        let check = crate::client_sigs::check_for(s, check, &info);
        store.add_to_store_nar(&info, &mut pulled, req.repair, check)?;
        s.add_temp_root(&info.path);
    }
    Ok(())
}

/// AddMultipleToStore: a framed stream of records, each followed by its NAR.
fn add_multiple(
    s: &Session<'_>,
    repair: bool,
    dont_check_sigs: bool,
    reader: &mut Reader,
) -> Result {
    let mut body = FramedReader::new(&mut *reader, s.cx.limits.max_frame);
    let result = add_multiple_items(s, repair, dont_check_sigs, &mut body);
    body.drain()?;
    result
}

fn add_multiple_items<R: BufRead>(
    s: &Session<'_>,
    repair: bool,
    dont_check_sigs: bool,
    body: &mut FramedReader<R>,
) -> Result {
    if repair && !s.trusted {
        return Err(client(REPAIR_UNTRUSTED));
    }
    let check = crate::client_sigs::check_sigs(s, dont_check_sigs);
    let count = wire::read_count(body, s.cx.limits.max_count, "path count")?;
    for _ in 0..count {
        let item = WirePathInfo::read_multiple_item(body, &s.cx)?;
        let mut info = from_wire(&item);
        info.ultimate = false;
        let _hold = hold_for_add(s, Some(&info.path), &info.references)?;
        let mut nar = (&mut *body).take(info.nar_size);
        let check_this = crate::client_sigs::check_for(s, check, &info);
        s.state
            .store
            .add_to_store_nar(&info, &mut nar, repair, check_this)?;
        // A store that skipped reading an already-valid path's NAR must not leave
        // its bytes to be read as the next item.
        io::copy(&mut nar, &mut io::sink())?;
        s.add_temp_root(&info.path);
    }
    Ok(())
}

/// Stores a build log as Nix lays it out: `<log>/drvs/<2 chars>/<rest of base name>`.
fn write_build_log(s: &Session<'_>, drv: &StorePath, body: &mut dyn Read) -> Result {
    let base = drv.to_base_name();
    let dir = s
        .state
        .config
        .locations
        .log_dir
        .join("drvs")
        .join(&base[..2]);
    let err = |e: io::Error| client(format!("storing the build log of {base}: {e}"));
    fs::create_dir_all(&dir).map_err(err)?;
    let path = dir.join(&base[2..]);
    let tmp = dir.join(format!(".tmp-{}-{}", &base[2..], s.id));
    let mut file = fs::File::create(&tmp).map_err(err)?;
    io::copy(body, &mut file).map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    Ok(())
}
