//! Replies that are not a type of their own elsewhere: QueryMissing, CollectGarbage,
//! FindRoots, QueryDerivationOutputMap, QueryRealisation.
//!
//! Simple replies are written with [`crate::wire`] directly: `bool` (IsValidPath,
//! VerifyStore), `u64` 1 (BuildPaths, EnsurePath, AddTempRoot, AddIndirectRoot,
//! SyncWithGC, OptimiseStore, AddSignatures, AddBuildLog), `paths` (QueryReferrers,
//! QueryValidPaths, QueryAllValidPaths, ...), `opt-path` (QueryPathFromHashPart,
//! QueryDeriver), `path` (AddTextToStore, AddToStore < 1.25). Path infos and build
//! results live in [`crate::path_info`] and [`crate::build_result`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use unrooted_format::StorePath;

use crate::build_result::Realisation;
use crate::error::ProtocolError;
use crate::wire::{self, Decoder, WireContext, MAX_PATH_LEN};

type Result<T> = std::result::Result<T, ProtocolError>;

/// The reply of QueryMissing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MissingInfo {
    /// Derivations that would be built.
    pub will_build: BTreeSet<StorePath>,
    /// Paths that would be substituted.
    pub will_substitute: BTreeSet<StorePath>,
    /// Paths that are invalid, not substitutable and not buildable.
    pub unknown: BTreeSet<StorePath>,
    /// Bytes to download.
    pub download_size: u64,
    /// Total NAR size of what would be substituted.
    pub nar_size: u64,
}

impl MissingInfo {
    /// Writes the reply.
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, cx: &WireContext) -> Result<()> {
        wire::write_paths(w, &cx.store_dir, &self.will_build)?;
        wire::write_paths(w, &cx.store_dir, &self.will_substitute)?;
        wire::write_paths(w, &cx.store_dir, &self.unknown)?;
        wire::write_u64(w, self.download_size)?;
        wire::write_u64(w, self.nar_size)?;
        Ok(())
    }

    /// Reads the reply (client side).
    pub fn read<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        let mut d = Decoder::strict(r, cx);
        Ok(Self {
            will_build: d.paths("willBuild")?,
            will_substitute: d.paths("willSubstitute")?,
            unknown: d.paths("unknown")?,
            download_size: d.u64("downloadSize")?,
            nar_size: d.u64("narSize")?,
        })
    }
}

/// The reply of CollectGarbage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcResult {
    /// Live, dead or deleted paths, depending on the action (full paths, sorted).
    pub paths: BTreeSet<String>,
    /// Bytes freed.
    pub bytes_freed: u64,
}

impl GcResult {
    /// Writes `paths`, `bytesFreed` and the obsolete trailing 0.
    pub fn write<W: Write + ?Sized>(&self, w: &mut W) -> Result<()> {
        wire::write_strings(w, &self.paths)?;
        wire::write_u64(w, self.bytes_freed)?;
        wire::write_u64(w, 0)?;
        Ok(())
    }

    /// Reads the reply (client side).
    pub fn read<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        let mut d = Decoder::strict(r, cx);
        let paths = d.string_set(MAX_PATH_LEN, "gc paths")?;
        let bytes_freed = d.u64("bytes freed")?;
        d.u64("obsolete gc field")?;
        Ok(Self { paths, bytes_freed })
    }
}

/// Writes the reply of FindRoots: (link, target) pairs, in the given order.
pub fn write_roots<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    roots: &[(String, StorePath)],
) -> Result<()> {
    wire::write_u64(w, roots.len() as u64)?;
    for (link, target) in roots {
        wire::write_bytes(w, link.as_bytes())?;
        wire::write_path(w, &cx.store_dir, target)?;
    }
    Ok(())
}

/// Reads the reply of FindRoots (client side).
pub fn read_roots<R: Read + ?Sized>(
    r: &mut R,
    cx: &WireContext,
) -> Result<Vec<(String, StorePath)>> {
    let mut d = Decoder::strict(r, cx);
    let n = d.count("roots")?;
    let mut out = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let link = d.string(MAX_PATH_LEN, "root link")?;
        out.push((link, d.path("root target")?));
    }
    Ok(out)
}

/// Writes the reply of QueryDerivationOutputMap: output name → path ("" = unknown).
pub fn write_output_map<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    map: &BTreeMap<String, Option<StorePath>>,
) -> Result<()> {
    wire::write_u64(w, map.len() as u64)?;
    for (name, p) in map {
        wire::write_bytes(w, name.as_bytes())?;
        wire::write_opt_path(w, &cx.store_dir, p.as_ref())?;
    }
    Ok(())
}

/// Reads the reply of QueryDerivationOutputMap (client side).
pub fn read_output_map<R: Read + ?Sized>(
    r: &mut R,
    cx: &WireContext,
) -> Result<BTreeMap<String, Option<StorePath>>> {
    let mut d = Decoder::strict(r, cx);
    let n = d.count("outputs")?;
    let mut out = BTreeMap::new();
    for _ in 0..n {
        let name = d.short("output name")?;
        out.insert(name, d.opt_path("output path")?);
    }
    Ok(out)
}

/// Writes the reply of QueryRealisation: < 1.31 a set of out paths, ≥ 1.31 a set of
/// Realisation JSON strings (0 or 1 element either way).
pub fn write_realisations<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    found: Option<&Realisation>,
) -> Result<()> {
    match found {
        None => wire::write_u64(w, 0)?,
        Some(r) if cx.version.has_realisation_json() => wire::write_strings(w, [r.to_json()])?,
        Some(r) => wire::write_paths(w, &cx.store_dir, [&r.out_path])?,
    }
    Ok(())
}

/// What QueryRealisation returned: full realisations (≥ 1.31) or only out paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RealisationReply {
    /// ≥ 1.31.
    Realisations(Vec<Realisation>),
    /// < 1.31.
    OutPaths(BTreeSet<StorePath>),
}

/// Reads the reply of QueryRealisation (client side).
pub fn read_realisations<R: Read + ?Sized>(
    r: &mut R,
    cx: &WireContext,
) -> Result<RealisationReply> {
    let mut d = Decoder::strict(r, cx);
    if !cx.version.has_realisation_json() {
        return Ok(RealisationReply::OutPaths(d.paths("realisation paths")?));
    }
    let n = d.count("realisations")?;
    let mut out = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        out.push(Realisation::from_json(&d.text("realisation")?)?);
    }
    Ok(RealisationReply::Realisations(out))
}
