//! The queries of the store: validity, path infos, references and referrers,
//! derivers and derivation outputs, hash parts, NARs and exports.

use std::collections::BTreeSet;
use std::io::{self, Write};

use unrooted_format::export::{ExportRecord, ExportWriter};
use unrooted_format::StorePath;
use unrooted_protocol::path_info::write_query_path_info_reply;
use unrooted_protocol::reply::write_output_map;
use unrooted_protocol::stderr::{StderrMessage, Verbosity};
use unrooted_protocol::{wire, DerivedPath, Request};

use super::{fatal, misrouted, reply, reply_u64, to_wire, valid_info, Out, Result};
use crate::ops::subst::{self, Outcome};
use crate::session::Session;

/// Performs a query of the store.
pub(super) fn perform(s: &mut Session<'_>, request: Request, out: &mut Out) -> Result {
    let store = &s.state.store;
    let dir = s.cx.store_dir.clone();
    match request {
        Request::IsValidPath(p) => {
            let valid = store.is_valid_path(&p)?;
            reply(out, |w| Ok(wire::write_bool(w, valid)?))
        }
        Request::QueryPathHash(p) => path_hash(s, &p, out),
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
        Request::QueryPathInfo(p) => path_info(s, &p, out),
        Request::QueryValidPaths { paths, substitute } => {
            query_valid_paths(s, &paths, substitute, out)
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
        Request::QueryDerivationOutputMap(drv) => derivation_output_map(s, &drv, out),
        Request::QueryDerivationOutputs(drv) => derivation_outputs(s, &drv, out),
        Request::QueryDerivationOutputNames(drv) => derivation_output_names(s, &drv, out),
        Request::QueryRealisation(id) => super::realisations::query_realisation(s, &id, out),
        Request::NarFromPath(p) => nar_from_path(s, &p, out),
        Request::ExportPath { path, .. } => {
            export_path(s, &path, out)?;
            reply_u64(out, 1)
        }
        other => Err(misrouted("query", &other)),
    }
}

/// QueryPathHash: the NAR hash of valid `p`, in base 16.
fn path_hash(s: &Session<'_>, p: &StorePath, out: &mut Out) -> Result {
    let info = valid_info(s, p)?;
    reply(out, |w| {
        Ok(wire::write_bytes(w, info.nar_hash.to_base16().as_bytes())?)
    })
}

/// QueryPathInfo: the record of `p`, or that it is not valid.
fn path_info(s: &Session<'_>, p: &StorePath, out: &mut Out) -> Result {
    let info = s.state.store.query_path_info(p)?.map(|i| to_wire(&i).info);
    reply(out, |w| {
        write_query_path_info_reply(w, &s.cx, info.as_ref())
    })
}

/// QueryValidPaths: which of `paths` are valid, after fetching, when `substitute`
/// asks for it, what the caches have of the others.
fn query_valid_paths(
    s: &Session<'_>,
    paths: &BTreeSet<StorePath>,
    substitute: bool,
    out: &mut Out,
) -> Result {
    let store = &s.state.store;
    if substitute {
        substitute_invalid(s, paths, out)?;
    }
    let valid = store.query_valid_paths(paths)?;
    reply(out, |w| Ok(wire::write_paths(w, &s.cx.store_dir, &valid)?))
}

/// As Nix's substitutePaths: fetches what the caches have of the paths not valid
/// here; a path they cannot provide is simply not valid in the answer (failures
/// reach the client as warnings, not errors).
fn substitute_invalid(s: &Session<'_>, paths: &BTreeSet<StorePath>, out: &mut Out) -> Result {
    let store = &s.state.store;
    let missing: Vec<DerivedPath> = paths
        .iter()
        .filter(|p| !store.is_valid_path(p).unwrap_or(false))
        .map(|p| DerivedPath::Opaque(p.clone()))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    for p in paths {
        s.add_temp_root(p);
    }
    let outcomes = subst::substitute_targets(s, &missing, out, None);
    for o in &outcomes {
        if let Outcome::Failed(why) = o {
            out.log(Verbosity::Warn, &format!("warning: {why}"))?;
        }
    }
    Ok(())
}

/// QueryDerivationOutputMap: every output of `drv` with its path.
fn derivation_output_map(s: &Session<'_>, drv: &StorePath, out: &mut Out) -> Result {
    let map = super::realisations::partial_output_map(&s.state.store, drv)?;
    reply(out, |w| write_output_map(w, &s.cx, &map))
}

/// QueryDerivationOutputs: the output paths of `drv`.
fn derivation_outputs(s: &Session<'_>, drv: &StorePath, out: &mut Out) -> Result {
    let paths: BTreeSet<StorePath> = super::realisations::partial_output_map(&s.state.store, drv)?
        .into_values()
        .flatten()
        .collect();
    reply(out, |w| Ok(wire::write_paths(w, &s.cx.store_dir, &paths)?))
}

/// QueryDerivationOutputNames: the output names of `drv`.
fn derivation_output_names(s: &Session<'_>, drv: &StorePath, out: &mut Out) -> Result {
    let names: Vec<String> = super::realisations::partial_output_map(&s.state.store, drv)?
        .into_keys()
        .collect();
    reply(out, |w| Ok(wire::write_strings(w, &names)?))
}

/// NarFromPath: the NAR of `p`, straight after the end of the log.
fn nar_from_path(s: &Session<'_>, p: &StorePath, out: &mut Out) -> Result {
    // Validity is checked before LAST: after it, only NAR bytes may follow.
    valid_info(s, p)?;
    out.last()?;
    s.state.store.dump_path(p, out.get_mut()).map_err(|e| {
        // Mid-NAR the client cannot be told anything; hang up.
        fatal(&e)
    })?;
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
