//! The operations: each request performed against the store, its log messages and
//! reply written, with the trust rules of Nix 2.8 for untrusted clients.
//!
//! Builds go to the shared scheduler (see `build_ops`), garbage collection to
//! `unrooted-gc` (see `gc_ops`). Every add roots what it is about to write, and its
//! references, before the first byte (see [`hold_for_add`]), so a collection running
//! beside it can delete neither.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::os::unix::net::UnixStream;

use unrooted_format::export::{ExportRecord, ExportWriter};
use unrooted_format::{nar, ContentAddress, FileIngestionMethod, Hash, StorePath};
use unrooted_gc::TempRootGuard;
use unrooted_protocol::body::StderrReadReader;
use unrooted_protocol::path_info::{write_query_path_info_reply, SubstitutablePathInfo};
use unrooted_protocol::reply::{write_output_map, write_realisations};
use unrooted_protocol::request::{AddToStoreNar, BuildMode, ClientSettings, ContentAddressMethod};
use unrooted_protocol::stderr::StderrMessage;
use unrooted_protocol::wire;
use unrooted_protocol::{
    BuildResult, BuildStatus, DerivedPath, FramedReader, KeyedBuildResult, OutputsSpec,
    ProtocolError, Request, StderrWriter, UnkeyedValidPathInfo, ValidPathInfo as WirePathInfo,
};
use unrooted_store::{CheckSigs, StoreError, ValidPathInfo, VerifyMessage};

use crate::connection::Session;

/// How a request failed.
pub(crate) enum OpError {
    /// The request was read to its end; tell the client and go on.
    Client(String),
    /// The connection cannot go on (transport failure, stream out of step).
    Fatal(ProtocolError),
}

impl From<ProtocolError> for OpError {
    fn from(e: ProtocolError) -> Self {
        Self::Fatal(e)
    }
}

impl From<io::Error> for OpError {
    fn from(source: io::Error) -> Self {
        Self::Fatal(ProtocolError::Write {
            field: "reply",
            source,
        })
    }
}

impl From<StoreError> for OpError {
    fn from(e: StoreError) -> Self {
        Self::Client(chain(&e))
    }
}

pub(crate) use unrooted_format::error_chain as chain;

type Reader = io::BufReader<UnixStream>;
type Out = StderrWriter<BufWriter<UnixStream>>;
type Result<T = ()> = std::result::Result<T, OpError>;

/// The largest text accepted as one AddToStore `text:sha256` body (a `.drv` or a
/// `builtins.toFile`); larger content belongs in a NAR.
const MAX_TEXT_BODY: u64 = 64 << 20;

/// The largest flat file accepted through the pre-1.25 AddToStore, whose NAR must be
/// unpacked in memory.
const MAX_LEGACY_FLAT: u64 = 64 << 20;

/// A failure after which the stream position is unknown: the connection must close.
fn fatal(e: &dyn std::error::Error) -> OpError {
    OpError::Fatal(ProtocolError::Write {
        field: "request body",
        source: io::Error::other(chain(e)),
    })
}

fn client(msg: impl Into<String>) -> OpError {
    OpError::Client(msg.into())
}

/// Ends the log and writes the reply `write` produces.
fn reply(
    out: &mut Out,
    write: impl FnOnce(&mut BufWriter<UnixStream>) -> std::result::Result<(), ProtocolError>,
) -> Result {
    out.last()?;
    write(out.get_mut())?;
    Ok(())
}

fn reply_u64(out: &mut Out, v: u64) -> Result {
    reply(out, |w| Ok(wire::write_u64(w, v)?))
}

/// Performs one request.
pub(crate) fn perform(
    s: &mut Session<'_>,
    request: Request,
    reader: &mut Reader,
    out: &mut Out,
) -> Result {
    let store = &s.state.store;
    let dir = s.cx.store_dir.clone();
    match request {
        Request::IsValidPath(p) => {
            let valid = store.is_valid_path(&p)?;
            reply(out, |w| Ok(wire::write_bool(w, valid)?))
        }
        Request::HasSubstitutes(_) => reply(out, |w| Ok(wire::write_bool(w, false)?)),
        Request::QueryPathHash(p) => {
            let info = valid_info(s, &p)?;
            reply(out, |w| {
                Ok(wire::write_bytes(w, info.nar_hash.to_base16().as_bytes())?)
            })
        }
        Request::QueryReferences(p) => {
            let info = valid_info(s, &p)?;
            reply(out, |w| Ok(wire::write_paths(w, &dir, &info.references)?))
        }
        Request::QueryReferrers(p) => {
            let referrers = store.query_referrers(&p)?;
            reply(out, |w| Ok(wire::write_paths(w, &dir, &referrers)?))
        }
        Request::QueryDeriver(p) => {
            let deriver = store.query_deriver(&p)?;
            reply(out, |w| {
                Ok(wire::write_opt_path(w, &dir, deriver.as_ref())?)
            })
        }
        Request::QueryPathInfo(p) => {
            let info = store.query_path_info(&p)?.map(|i| to_wire(&i).info);
            reply(out, |w| {
                write_query_path_info_reply(w, &s.cx, info.as_ref())
            })
        }
        Request::QueryValidPaths { paths, substitute } => {
            if substitute {
                // As Nix's substitutePaths: fetch what the caches have of the paths
                // not valid here; a path they cannot provide is simply not valid in
                // the answer (failures reach the client as warnings, not errors).
                let missing: Vec<DerivedPath> = paths
                    .iter()
                    .filter(|p| !store.is_valid_path(p).unwrap_or(false))
                    .map(|p| DerivedPath::Opaque(p.clone()))
                    .collect();
                if !missing.is_empty() {
                    for p in &paths {
                        s.add_temp_root(p);
                    }
                    let outcomes = crate::subst_ops::substitute_targets(s, &missing, out);
                    for o in &outcomes {
                        if let crate::subst_ops::Outcome::Failed(why) = o {
                            out.log(
                                unrooted_protocol::stderr::Verbosity::Warn,
                                &format!("warning: {why}"),
                            )?;
                        }
                    }
                }
            }
            let valid = store.query_valid_paths(&paths)?;
            reply(out, |w| Ok(wire::write_paths(w, &dir, &valid)?))
        }
        Request::QueryAllValidPaths => {
            let all = store.query_all_valid_paths()?;
            reply(out, |w| Ok(wire::write_paths(w, &dir, &all)?))
        }
        Request::QueryValidDerivers(p) => {
            let derivers = store.query_valid_derivers(&p)?;
            reply(out, |w| Ok(wire::write_paths(w, &dir, &derivers)?))
        }
        Request::QueryPathFromHashPart(hash_part) => {
            let found = store.query_path_from_hash_part(&hash_part)?;
            reply(out, |w| Ok(wire::write_opt_path(w, &dir, found.as_ref())?))
        }
        Request::QueryDerivationOutputMap(drv) => {
            let map: BTreeMap<String, Option<StorePath>> = store
                .query_derivation_output_map(&drv)?
                .into_iter()
                .map(|(k, v)| (k, Some(v)))
                .collect();
            reply(out, |w| write_output_map(w, &s.cx, &map))
        }
        Request::QueryDerivationOutputs(drv) => {
            let paths: BTreeSet<StorePath> = store
                .query_derivation_output_map(&drv)?
                .into_values()
                .collect();
            reply(out, |w| Ok(wire::write_paths(w, &dir, &paths)?))
        }
        Request::QueryDerivationOutputNames(drv) => {
            let names: Vec<String> = store
                .query_derivation_output_map(&drv)?
                .into_keys()
                .collect();
            reply(out, |w| Ok(wire::write_strings(w, &names)?))
        }
        // The obsolete single-path query (protocol < 1.12) answers "none".
        Request::QuerySubstitutablePathInfo(_) => reply_u64(out, 0),
        Request::QuerySubstitutablePathInfos(paths) => {
            let paths: BTreeSet<StorePath> = paths.into_keys().collect();
            let infos = crate::subst_ops::substitutable_infos(s, &paths, out);
            reply(out, |w| {
                SubstitutablePathInfo::write_map_reply(w, &s.cx, &infos)
            })
        }
        Request::QuerySubstitutablePaths(paths) => {
            let found = crate::subst_ops::substitutable_paths(s, &paths, out);
            reply(out, |w| Ok(wire::write_paths(w, &dir, &found)?))
        }
        Request::QueryMissing(targets) => {
            // As nix-daemon, in its debug-level activity (the client shows it with -vvvv).
            crate::build_ops::query_missing_activity(out)?;
            // With a cache, inputs of derivations to build may be substituted.
            let missing = match crate::subst_ops::query_missing(s, &targets, out) {
                Some(m) => m,
                None => crate::build_ops::query_missing(s, &targets).map_err(client)?,
            };
            reply(out, |w| missing.write(w, &s.cx))
        }
        Request::SetOptions(settings) => {
            set_options(s, settings, out)?;
            out.last()?;
            Ok(())
        }
        Request::AddTempRoot(p) => {
            s.add_temp_root(&p);
            reply_u64(out, 1)
        }
        Request::AddIndirectRoot(link) => {
            if link.contains('\0') {
                return Err(client(format!(
                    "indirect root '{link}' is not a valid path"
                )));
            }
            unrooted_gc::add_indirect_root(
                &s.state.config.locations.state_dir,
                std::path::Path::new(&link),
            )
            .map_err(|e| client(chain(&e)))?;
            reply_u64(out, 1)
        }
        Request::SyncWithGC => reply_u64(out, 1),
        Request::AddToStore {
            name,
            method,
            references,
            repair,
        } => {
            if repair && !s.trusted {
                drain_body(s, reader)?;
                return Err(client(
                    "repairing is not allowed because you are not in 'trusted-users'",
                ));
            }
            s.state.auto_gc.poke();
            let info = add_to_store(s, name.as_str(), method, &references, repair, reader)?;
            if s.cx.version.has_framed_add_to_store() {
                let wire_info = to_wire(&info);
                reply(out, |w| wire_info.write(w, &s.cx, s.cx.version))
            } else {
                reply(out, |w| Ok(wire::write_path(w, &dir, &info.path)?))
            }
        }
        Request::AddTextToStore {
            name,
            text,
            references,
        } => {
            s.state.auto_gc.poke();
            let info = add_text(s, name.as_str(), text.as_bytes(), &references, false)?;
            reply(out, |w| Ok(wire::write_path(w, &dir, &info.path)?))
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
        Request::ImportPaths => {
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
                store.import_paths(&mut pulled, check)?
            };
            for p in &imported {
                s.add_temp_root(p);
            }
            let set: BTreeSet<StorePath> = imported.into_iter().collect();
            reply(out, |w| Ok(wire::write_paths(w, &dir, &set)?))
        }
        Request::ExportPath { path, .. } => {
            export_path(s, &path, out)?;
            reply_u64(out, 1)
        }
        Request::NarFromPath(p) => {
            // Validity is checked before LAST: after it, only NAR bytes may follow.
            valid_info(s, &p)?;
            out.last()?;
            store.dump_path(&p, out.get_mut()).map_err(|e| {
                // Mid-NAR the client cannot be told anything; hang up.
                fatal(&e)
            })?;
            Ok(())
        }
        Request::AddSignatures { path, signatures } => {
            if !s.trusted {
                return Err(client("you are not privileged to add signatures"));
            }
            store.add_signatures(&path, signatures)?;
            reply_u64(out, 1)
        }
        Request::OptimiseStore => {
            let stats = store.optimise()?;
            out.log(
                unrooted_protocol::stderr::Verbosity::Error,
                &format!(
                    "{:.2} MiB freed by hard-linking {} files",
                    stats.bytes_freed as f64 / (1024.0 * 1024.0),
                    stats.files_linked
                ),
            )?;
            reply_u64(out, 1)
        }
        Request::VerifyStore {
            check_contents,
            repair,
        } => {
            if repair && !s.trusted {
                return Err(client("you are not privileged to repair paths"));
            }
            let mut lines = Vec::new();
            let errors = store.verify(check_contents, repair, &mut |m: VerifyMessage| {
                lines.push(m.to_string())
            })?;
            for line in lines {
                out.log(unrooted_protocol::stderr::Verbosity::Error, &line)?;
            }
            reply(out, |w| Ok(wire::write_bool(w, errors)?))
        }
        Request::AddBuildLog(drv) => {
            let mut body = FramedReader::new(&mut *reader, s.cx.limits.max_frame);
            if !s.trusted {
                body.drain()?;
                return Err(client("you are not privileged to add logs"));
            }
            let result = write_build_log(s, &drv, &mut body);
            body.drain()?;
            result?;
            reply_u64(out, 1)
        }
        Request::EnsurePath(p) => {
            // Rooted first, then checked: a collection cannot take it in between.
            s.add_temp_root(&p);
            if !store.is_valid_path(&p)? {
                let target = [DerivedPath::Opaque(p.clone())];
                let outcome = crate::subst_ops::substitute_targets(s, &target, out);
                if let Some(crate::subst_ops::Outcome::Failed(why)) = outcome.first() {
                    return Err(client(why.clone()));
                }
                if !store.is_valid_path(&p)? {
                    return Err(client(format!(
                        "path '{}' does not exist and cannot be created",
                        dir.display(&p)
                    )));
                }
            }
            reply_u64(out, 1)
        }
        Request::BuildPaths { paths, mode } => {
            check_build_mode(s, mode)?;
            let rest = substitute_before_build(s, &paths, mode, out)?;
            if !rest.is_empty() {
                crate::build_ops::build_paths(s, &rest, mode, out).map_err(client)?;
            }
            // Every wanted output is valid now; keep them for this client.
            unsatisfied(s, &paths)?;
            reply_u64(out, 1)
        }
        Request::BuildPathsWithResults { paths, mode } => {
            check_build_mode(s, mode)?;
            let settled = if mode == BuildMode::Normal {
                let outcomes = crate::subst_ops::substitute_targets(s, &paths, out);
                crate::subst_ops::settled_results(s, &paths, &outcomes)
            } else {
                paths.iter().map(|_| None).collect()
            };
            let rest: Vec<DerivedPath> = paths
                .iter()
                .zip(&settled)
                .filter(|(_, r)| r.is_none())
                .map(|(p, _)| p.clone())
                .collect();
            let mut built =
                crate::build_ops::build_paths_with_results(s, &rest, mode, out).into_iter();
            let results: Vec<KeyedBuildResult> = paths
                .into_iter()
                .zip(settled)
                .map(|(path, r)| KeyedBuildResult {
                    path,
                    result: r.or_else(|| built.next()).unwrap_or_else(|| {
                        BuildResult::new(BuildStatus::MiscFailure, "no build result")
                    }),
                })
                .collect();
            reply(out, |w| KeyedBuildResult::write_list(w, &s.cx, &results))
        }
        Request::BuildDerivation { drv_path, mode, .. } => {
            check_build_mode(s, mode)?;
            // Nix lets untrusted clients build only content-addressed derivations this
            // way, which unrooted does not support yet; trusted ones (remote-build
            // masters) get the derivation built from its `.drv` in the store.
            if !s.trusted {
                return Err(client(format!(
                    "you are not privileged to build input-addressed derivation '{}'",
                    dir.display(&drv_path)
                )));
            }
            if !store.is_valid_path(&drv_path)? {
                return Err(client(format!(
                    "cannot build '{}': building a derivation that is not in the store is not supported by unrooted yet",
                    dir.display(&drv_path)
                )));
            }
            let path = DerivedPath::Built {
                drv_path,
                outputs: OutputsSpec::All,
            };
            let result = crate::build_ops::build_paths_with_results(
                s,
                std::slice::from_ref(&path),
                mode,
                out,
            )
            .pop()
            .unwrap_or_else(|| BuildResult::new(BuildStatus::MiscFailure, "nothing was built"));
            reply(out, |w| result.write(w, &s.cx))
        }
        Request::FindRoots => crate::gc_ops::find_roots(s, out),
        Request::CollectGarbage(options) => crate::gc_ops::collect_garbage(s, options, out),
        Request::AddPermRoot { path, gc_root } => {
            let link = crate::gc_ops::add_perm_root(s, &path, &gc_root)?;
            reply(out, |w| Ok(wire::write_bytes(w, link.as_bytes())?))
        }
        Request::RegisterDrvOutput(_) => Err(client(
            "content-addressed derivations (ca-derivations) are not supported by unrooted yet",
        )),
        Request::QueryRealisation(_) => {
            // Unknown realisation: an empty set, as for a store without CA derivations.
            reply(out, |w| write_realisations(w, &s.cx, None))
        }
    }
}

fn valid_info(s: &Session<'_>, p: &StorePath) -> Result<ValidPathInfo> {
    s.state
        .store
        .query_path_info(p)?
        .ok_or_else(|| client(format!("path '{}' is not valid", s.cx.store_dir.display(p))))
}

/// The store's record in the protocol's shape.
fn to_wire(i: &ValidPathInfo) -> WirePathInfo {
    WirePathInfo {
        path: i.path.clone(),
        info: UnkeyedValidPathInfo {
            deriver: i.deriver.clone(),
            nar_hash: i.nar_hash,
            references: i.references.clone(),
            registration_time: i.registration_time as i64,
            nar_size: i.nar_size,
            ultimate: i.ultimate,
            signatures: i.sigs.clone(),
            ca: i.ca,
        },
    }
}

/// The protocol's record in the store's shape.
fn from_wire(w: &WirePathInfo) -> ValidPathInfo {
    let mut i = ValidPathInfo::new(w.path.clone(), w.info.nar_hash);
    i.deriver = w.info.deriver.clone();
    i.references = w.info.references.clone();
    i.registration_time = w.info.registration_time.max(0) as u64;
    i.nar_size = w.info.nar_size;
    i.ultimate = w.info.ultimate;
    i.sigs = w.info.signatures.clone();
    i.ca = w.info.ca;
    i
}

fn check_build_mode(s: &Session<'_>, mode: BuildMode) -> Result {
    if mode == BuildMode::Repair && !s.trusted {
        return Err(client(
            "repairing is not allowed because you are not in 'trusted-users'",
        ));
    }
    Ok(())
}

/// The requested paths that are not valid yet (an empty list means nothing to do).
fn unsatisfied(s: &Session<'_>, paths: &[DerivedPath]) -> Result<Vec<String>> {
    let store = &s.state.store;
    let dir = &s.cx.store_dir;
    let mut missing = Vec::new();
    for p in paths {
        match p {
            DerivedPath::Opaque(path) => {
                s.add_temp_root(path);
                if !store.is_valid_path(path)? {
                    missing.push(dir.display(path));
                }
            }
            DerivedPath::Built { drv_path, outputs } => {
                if !store.is_valid_path(drv_path)? {
                    missing.push(dir.display(drv_path));
                    continue;
                }
                let map = store.query_derivation_output_map(drv_path)?;
                for (name, out_path) in &map {
                    let wanted = match outputs {
                        OutputsSpec::All => true,
                        OutputsSpec::Names(names) => names.contains(name),
                    };
                    if !wanted {
                        continue;
                    }
                    s.add_temp_root(out_path);
                    if !store.is_valid_path(out_path)? {
                        missing.push(dir.display(drv_path));
                        break;
                    }
                }
            }
        }
    }
    Ok(missing)
}

/// Substitutes what a BuildPaths needs (in normal mode) and returns the targets
/// still to build; fails when a cache had a path that could not be fetched and the
/// client did not ask for `fallback`.
fn substitute_before_build(
    s: &Session<'_>,
    paths: &[DerivedPath],
    mode: BuildMode,
    out: &mut Out,
) -> Result<Vec<DerivedPath>> {
    if mode != BuildMode::Normal {
        return Ok(paths.to_vec());
    }
    let outcomes = crate::subst_ops::substitute_targets(s, paths, out);
    let fallback = crate::subst_ops::fallback(s);
    let mut rest = Vec::new();
    for (p, o) in paths.iter().zip(outcomes) {
        match o {
            crate::subst_ops::Outcome::Substituted => {
                // A derivation's outputs are valid now; the scheduler finds them so.
                if matches!(p, DerivedPath::Built { .. }) {
                    rest.push(p.clone());
                }
            }
            crate::subst_ops::Outcome::Failed(why) if !fallback => {
                return Err(client(crate::subst_ops::no_fallback_message(s, p, &why)));
            }
            _ => rest.push(p.clone()),
        }
    }
    Ok(rest)
}

/// Applies SetOptions: everything for trusted clients; for others only what Nix 2.8
/// lets an untrusted client set, with a warning for each untrusted substituter.
fn set_options(s: &mut Session<'_>, mut settings: ClientSettings, out: &mut Out) -> Result {
    const UNTRUSTED_ALLOWED: &[&str] = &[
        "timeout",
        "connect-timeout",
        "max-silent-time",
        "poll-interval",
        "repeat",
    ];
    let trusted_subs: BTreeSet<&str> = s
        .state
        .config
        .settings
        .substituters
        .iter()
        .chain(&s.state.config.settings.trusted_substituters)
        .map(String::as_str)
        .collect();
    let mut kept = BTreeMap::new();
    for (name, value) in std::mem::take(&mut settings.overrides) {
        if matches!(
            name.as_str(),
            "ssh-auth-sock" | "experimental-features" | "plugin-files"
        ) {
            continue;
        }
        if s.trusted
            || UNTRUSTED_ALLOWED.contains(&name.as_str())
            || (name == "builders" && value.is_empty())
        {
            kept.insert(name, value);
        } else if name == "substituters" || name == "extra-substituters" {
            let mut ok = Vec::new();
            for url in value.split_whitespace() {
                if trusted_subs.contains(url) {
                    ok.push(url);
                } else {
                    out.log(
                        unrooted_protocol::stderr::Verbosity::Warn,
                        &format!("warning: ignoring untrusted substituter '{url}'"),
                    )?;
                }
            }
            kept.insert(name, ok.join(" "));
        } else {
            tracing::debug!(user = %s.peer.user, "ignoring the untrusted setting '{name}'");
        }
    }
    settings.overrides = kept;
    out.set_verbosity(settings.verbosity);
    s.settings = settings;
    Ok(())
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
    let state: &'a crate::connection::DaemonState = s.state;
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
        return add_to_store_legacy(s, name, method, reader);
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

/// AddToStore before 1.25: always a NAR on the stream; flat content is the NAR of one
/// regular file.
fn add_to_store_legacy(
    s: &Session<'_>,
    name: &str,
    method: ContentAddressMethod,
    reader: &mut Reader,
) -> Result<ValidPathInfo> {
    let store = &s.state.store;
    let none = BTreeSet::new();
    // Paths computed from the content: see `add_to_store`.
    let _adding = s.state.gc_barrier.adding();
    let info = match method {
        ContentAddressMethod::Fixed {
            method: FileIngestionMethod::Recursive,
            algo,
        } => {
            // The NAR reader stops exactly at the end of the archive, so the stream is
            // in step after a success; after a failure its position is unknown.
            store
                .add_ca(
                    name,
                    FileIngestionMethod::Recursive,
                    algo,
                    &mut *reader,
                    &none,
                    false,
                )
                .map_err(|e| fatal(&e))
        }
        ContentAddressMethod::Fixed {
            method: FileIngestionMethod::Flat,
            algo,
        } => {
            let mut contents = FlatFile {
                data: Vec::new(),
                files: 0,
                too_big: false,
            };
            nar::read_nar(&mut *reader, &mut contents).map_err(|e| fatal(&e))?;
            if contents.files != 1 || contents.too_big {
                return Err(client(format!(
                    "flat addition of '{name}' needs one regular file of at most {MAX_LEGACY_FLAT} bytes"
                )));
            }
            Ok(store.add_ca(
                name,
                FileIngestionMethod::Flat,
                algo,
                &mut contents.data.as_slice(),
                &none,
                false,
            )?)
        }
        ContentAddressMethod::Text => Err(client("text content must be added with AddTextToStore")),
    }?;
    s.add_temp_root(&info.path);
    Ok(info)
}

/// Collects the single regular file of a flat legacy upload.
struct FlatFile {
    data: Vec<u8>,
    files: usize,
    too_big: bool,
}

impl nar::NarVisitor for FlatFile {
    fn regular(
        &mut self,
        _path: &nar::NarPath,
        _executable: bool,
        contents: &mut nar::Contents<'_>,
    ) -> std::result::Result<(), nar::NarError> {
        self.files += 1;
        if contents.size() > MAX_LEGACY_FLAT || self.files > 1 {
            self.too_big = true;
            return Ok(());
        }
        let offset = contents.nar_offset();
        contents
            .read_to_end(&mut self.data)
            .map_err(|source| nar::NarError::Read { offset, source })?;
        Ok(())
    }
}

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
            Err(client(
                "repairing is not allowed because you are not in 'trusted-users'",
            ))
        } else {
            hold_for_add(s, Some(&info.path), &info.references).and_then(|_hold| {
                store.add_to_store_nar(&info, &mut body, req.repair, check)?;
                s.add_temp_root(&info.path);
                Ok(())
            })
        };
        body.drain()?;
        result?;
    } else {
        if req.repair && !s.trusted {
            return Err(client(
                "repairing is not allowed because you are not in 'trusted-users'",
            ));
        }
        let _hold = hold_for_add(s, Some(&info.path), &info.references)?;
        let max = s.cx.limits.max_frame;
        let mut pulled = StderrReadReader::new(&mut *reader, out.get_mut(), max);
        store.add_to_store_nar(&info, &mut pulled, req.repair, check)?;
        s.add_temp_root(&info.path);
    }
    Ok(())
}

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
        return Err(client(
            "repairing is not allowed because you are not in 'trusted-users'",
        ));
    }
    let check = crate::client_sigs::check_sigs(s, dont_check_sigs);
    let count = wire::read_count(body, s.cx.limits.max_count, "path count")?;
    for _ in 0..count {
        let item = WirePathInfo::read_multiple_item(body, &s.cx)?;
        let mut info = from_wire(&item);
        info.ultimate = false;
        let _hold = hold_for_add(s, Some(&info.path), &info.references)?;
        let mut nar = (&mut *body).take(info.nar_size);
        s.state
            .store
            .add_to_store_nar(&info, &mut nar, repair, check)?;
        // A store that skipped reading an already-valid path's NAR must not leave
        // its bytes to be read as the next item.
        io::copy(&mut nar, &mut io::sink())?;
        s.add_temp_root(&info.path);
    }
    Ok(())
}

/// Streams an export of `path` to the client as STDERR_WRITE chunks.
fn export_path(s: &Session<'_>, path: &StorePath, out: &mut Out) -> Result {
    let info = valid_info(s, path)?;
    let store = &s.state.store;
    let record = ExportRecord {
        path: path.clone(),
        references: info.references.iter().cloned().collect(),
        deriver: info.deriver.clone(),
        legacy_signature: None,
    };
    let mut sink = WriteChunks {
        out,
        buf: Vec::with_capacity(CHUNK),
    };
    let mut export = ExportWriter::new(&mut sink, s.cx.store_dir.clone());
    export
        .write_path_record(&record, &store.real_path(path))
        .map_err(|e| fatal(&e))?;
    export.finish().map_err(|e| fatal(&e))?;
    sink.flush()?;
    Ok(())
}

const CHUNK: usize = 64 << 10;

/// A `Write` that forwards bytes as STDERR_WRITE messages of at most [`CHUNK`] bytes.
struct WriteChunks<'a> {
    out: &'a mut Out,
    buf: Vec<u8>,
}

impl Write for WriteChunks<'_> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let data = std::mem::take(&mut self.buf);
            self.out
                .send(&StderrMessage::Write(data))
                .map_err(io::Error::other)?;
        }
        Ok(())
    }
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
