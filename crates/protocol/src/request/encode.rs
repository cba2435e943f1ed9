//! Encoding requests (client side). Bodies are written by the caller after the header.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;

use unrooted_format::hash::HashAlgo;
use unrooted_format::{ContentAddress, FileIngestionMethod, StorePath};

use super::types::{
    BasicDerivation, BuildMode, ClientSettings, ContentAddressMethod, GcAction, GcOptions, GcPaths,
};
use super::Request;
use crate::build_result::Realisation;
use crate::derived_path::DerivedPath;
use crate::error::ProtocolError;
use crate::wire::{self, WireContext};

type Result<T> = std::result::Result<T, ProtocolError>;

impl Request {
    /// Writes the opcode and arguments for the negotiated version (not the body).
    ///
    /// Fails with [`ProtocolError::Unrepresentable`] for values the version cannot
    /// carry (e.g. a text AddToStore below 1.25).
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, cx: &WireContext) -> Result<()> {
        let v = cx.version;
        let dir = &cx.store_dir;
        wire::write_u64(w, self.opcode().code())?;
        match self {
            Self::IsValidPath(p)
            | Self::HasSubstitutes(p)
            | Self::QueryPathHash(p)
            | Self::QueryReferences(p)
            | Self::QueryReferrers(p)
            | Self::EnsurePath(p)
            | Self::AddTempRoot(p)
            | Self::QueryDeriver(p)
            | Self::QuerySubstitutablePathInfo(p)
            | Self::QueryDerivationOutputs(p)
            | Self::QueryPathInfo(p)
            | Self::QueryDerivationOutputNames(p)
            | Self::QueryValidDerivers(p)
            | Self::NarFromPath(p)
            | Self::QueryDerivationOutputMap(p) => wire::write_path(w, dir, p)?,
            Self::AddToStore {
                name,
                method,
                references,
                repair,
            } => write_add_to_store(w, cx, name.as_str(), method, references, *repair)?,
            Self::AddTextToStore {
                name,
                text,
                references,
            } => write_text_args(w, cx, name.as_str(), text, references)?,
            Self::BuildPaths { paths, mode } => {
                write_build_paths(w, cx, paths, *mode, v.has_build_mode())?
            }
            Self::BuildPathsWithResults { paths, mode } => {
                write_build_paths(w, cx, paths, *mode, true)?
            }
            Self::AddIndirectRoot(s) => wire::write_bytes(w, s.as_bytes())?,
            Self::SyncWithGC
            | Self::FindRoots
            | Self::QueryAllValidPaths
            | Self::ImportPaths
            | Self::OptimiseStore => {}
            Self::ExportPath { path, sign } => {
                wire::write_path(w, dir, path)?;
                wire::write_u64(w, *sign)?;
            }
            Self::SetOptions(s) => write_settings(w, cx, s)?,
            Self::CollectGarbage(o) => write_gc_options(w, cx, o)?,
            Self::QueryPathFromHashPart(h) => wire::write_bytes(w, h.as_bytes())?,
            Self::QuerySubstitutablePathInfos(map) => write_substitutable_path_infos(w, cx, map)?,
            Self::QueryValidPaths { paths, substitute } => {
                wire::write_paths(w, dir, paths)?;
                if v.has_query_valid_paths_substitute() {
                    wire::write_bool(w, *substitute)?;
                }
            }
            Self::QuerySubstitutablePaths(paths) => wire::write_paths(w, dir, paths)?,
            Self::VerifyStore {
                check_contents: first,
                repair: second,
            }
            | Self::AddMultipleToStore {
                repair: first,
                dont_check_sigs: second,
            } => {
                wire::write_bool(w, *first)?;
                wire::write_bool(w, *second)?;
            }
            Self::BuildDerivation {
                drv_path,
                drv,
                mode,
            } => write_build_derivation(w, cx, drv_path, drv, *mode)?,
            Self::AddSignatures { path, signatures } => {
                wire::write_path(w, dir, path)?;
                wire::write_strings(w, signatures)?;
            }
            Self::AddToStoreNar(a) => {
                a.info.write(w, cx, v)?;
                wire::write_bool(w, a.repair)?;
                wire::write_bool(w, a.dont_check_sigs)?;
            }
            Self::QueryMissing(paths) => DerivedPath::write_list(w, cx, paths)?,
            Self::RegisterDrvOutput(r) => write_realisation(w, cx, r)?,
            Self::QueryRealisation(id) => wire::write_bytes(w, id.to_string().as_bytes())?,
            Self::AddBuildLog(p) => wire::write_bytes(w, p.to_string().as_bytes())?,
            Self::AddPermRoot { path, gc_root } => {
                wire::write_path(w, dir, path)?;
                wire::write_bytes(w, gc_root.as_bytes())?;
            }
        }
        Ok(())
    }
}

/// AddToStore's arguments: from 1.25 the name, method, references and repair flag;
/// before, the name and the fixed-output method of a NAR (the only form those
/// versions know).
fn write_add_to_store<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    name: &str,
    method: &ContentAddressMethod,
    references: &BTreeSet<StorePath>,
    repair: bool,
) -> Result<()> {
    let v = cx.version;
    if v.has_framed_add_to_store() {
        wire::write_bytes(w, name.as_bytes())?;
        wire::write_bytes(w, method.to_string().as_bytes())?;
        wire::write_paths(w, &cx.store_dir, references)?;
        wire::write_bool(w, repair)?;
        return Ok(());
    }
    let (method, algo) = match method {
        ContentAddressMethod::Fixed { method, algo } if references.is_empty() && !repair => {
            (*method, *algo)
        }
        _ => {
            return Err(ProtocolError::Unrepresentable {
                what: "a text, repairing or referencing AddToStore",
                version: v,
            })
        }
    };
    let recursive = method == FileIngestionMethod::Recursive;
    wire::write_bytes(w, name.as_bytes())?;
    // As old clients send it: `fixed = 0` only for recursive SHA-256.
    wire::write_bool(w, !(recursive && algo == HashAlgo::Sha256))?;
    wire::write_bool(w, recursive)?;
    wire::write_bytes(w, algo.name().as_bytes())?;
    Ok(())
}

/// AddTextToStore's arguments: the name, the text and its references.
fn write_text_args<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    name: &str,
    text: &str,
    references: &BTreeSet<StorePath>,
) -> Result<()> {
    wire::write_bytes(w, name.as_bytes())?;
    wire::write_bytes(w, text.as_bytes())?;
    wire::write_paths(w, &cx.store_dir, references)?;
    Ok(())
}

/// BuildDerivation's arguments: the derivation's path, the derivation, the mode.
fn write_build_derivation<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    drv_path: &StorePath,
    drv: &BasicDerivation,
    mode: BuildMode,
) -> Result<()> {
    wire::write_path(w, &cx.store_dir, drv_path)?;
    write_basic_derivation(w, cx, drv)?;
    wire::write_u64(w, mode as u64)?;
    Ok(())
}

/// BuildPaths' and BuildPathsWithResults' arguments: the paths, and the mode when
/// `with_mode` (always for BuildPathsWithResults; for BuildPaths from 1.15).
fn write_build_paths<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    paths: &[DerivedPath],
    mode: BuildMode,
    with_mode: bool,
) -> Result<()> {
    DerivedPath::write_list(w, cx, paths)?;
    if with_mode {
        wire::write_u64(w, mode as u64)?;
    }
    Ok(())
}

/// CollectGarbage's arguments: the action, the paths (in the form the
/// `delete-dead-specific-referrers` feature gives them, or the older one), and the
/// options.
fn write_gc_options<W: Write + ?Sized>(w: &mut W, cx: &WireContext, o: &GcOptions) -> Result<()> {
    let dir = &cx.store_dir;
    wire::write_u64(w, o.action as u64)?;
    match (&o.paths, cx.features.delete_dead_specific_referrers) {
        (GcPaths::WholeStore, true) => wire::write_u64(w, 1)?,
        (
            GcPaths::Specific {
                paths,
                delete_referrers,
            },
            true,
        ) => {
            wire::write_u64(w, 0)?;
            wire::write_paths(w, dir, paths)?;
            wire::write_bool(w, *delete_referrers)?;
        }
        (GcPaths::WholeStore, false) => wire::write_paths(w, dir, &BTreeSet::new())?,
        (
            GcPaths::Specific {
                paths,
                delete_referrers: false,
            },
            false,
        ) if o.action == GcAction::DeleteSpecific => wire::write_paths(w, dir, paths)?,
        (GcPaths::Specific { .. }, false) => {
            return Err(ProtocolError::Unrepresentable {
                what: "collecting specific paths other than by DeleteSpecific, or with their referrers, without delete-dead-specific-referrers",
                version: cx.version,
            })
        }
    }
    wire::write_bool(w, o.ignore_liveness)?;
    wire::write_u64(w, o.max_freed)?;
    for _ in 0..3 {
        wire::write_u64(w, 0)?;
    }
    Ok(())
}

/// QuerySubstitutablePathInfos' paths, each with its content address from 1.22.
fn write_substitutable_path_infos<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    map: &BTreeMap<StorePath, Option<ContentAddress>>,
) -> Result<()> {
    wire::write_u64(w, map.len() as u64)?;
    for (p, ca) in map {
        wire::write_path(w, &cx.store_dir, p)?;
        if cx.version.has_substitutable_infos_with_ca() {
            let ca = ca.map(|c| c.to_string()).unwrap_or_default();
            wire::write_bytes(w, ca.as_bytes())?;
        }
    }
    Ok(())
}

/// RegisterDrvOutput's realisation: JSON from 1.31, its id and path before.
fn write_realisation<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    r: &Realisation,
) -> Result<()> {
    if cx.version.has_realisation_json() {
        wire::write_bytes(w, r.to_json().as_bytes())?;
    } else {
        wire::write_bytes(w, r.id.to_string().as_bytes())?;
        wire::write_bytes(w, r.out_path.to_string().as_bytes())?;
    }
    Ok(())
}

fn write_settings<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    s: &ClientSettings,
) -> Result<()> {
    for word in [
        u64::from(s.keep_failed),
        u64::from(s.keep_going),
        u64::from(s.try_fallback),
        s.verbosity.to_wire(),
        u64::from(s.max_build_jobs),
        s.max_silent_time,
        u64::from(s.use_build_hook),
        s.verbose_build.to_wire(),
        s.log_type,
        s.print_build_trace,
        u64::from(s.build_cores),
        u64::from(s.use_substitutes),
    ] {
        wire::write_u64(w, word)?;
    }
    if cx.version.has_settings_overrides() {
        wire::write_string_map(w, &s.overrides)?;
    }
    Ok(())
}

fn write_basic_derivation<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    drv: &BasicDerivation,
) -> Result<()> {
    wire::write_u64(w, drv.outputs.len() as u64)?;
    for (name, out) in &drv.outputs {
        wire::write_bytes(w, name.as_bytes())?;
        wire::write_opt_path(w, &cx.store_dir, out.path.as_ref())?;
        wire::write_bytes(w, out.hash_algo.as_bytes())?;
        wire::write_bytes(w, out.hash.as_bytes())?;
    }
    wire::write_paths(w, &cx.store_dir, &drv.input_srcs)?;
    wire::write_bytes(w, &drv.platform)?;
    wire::write_bytes(w, &drv.builder)?;
    wire::write_strings(w, &drv.args)?;
    wire::write_u64(w, drv.env.len() as u64)?;
    for (k, val) in &drv.env {
        wire::write_bytes(w, k)?;
        wire::write_bytes(w, val)?;
    }
    Ok(())
}
