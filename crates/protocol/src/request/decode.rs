//! Decoding requests (server side).

use std::collections::BTreeMap;
use std::io::Read;

use unrooted_format::hash::HashAlgo;
use unrooted_format::{ContentAddress, FileIngestionMethod, StorePath, StorePathName};

use super::types::{
    AddToStoreNar, BasicDerivation, BuildMode, ClientSettings, ContentAddressMethod,
};
use super::types::{DerivationOutputWire, GcAction, GcOptions, GcPaths};
use super::{body_of, Opcode, Request};
use crate::build_result::{DrvOutput, Realisation};
use crate::derived_path::DerivedPath;
use crate::error::ProtocolError;
use crate::path_info::ValidPathInfo;
use crate::stderr::Verbosity;
use crate::wire::{
    self, decoder::placeholder_path, Decoder, WireContext, MAX_PATH_LEN, MAX_SHORT_LEN,
};

type Result<T> = std::result::Result<T, ProtocolError>;

/// Reads the next request: its opcode, then its arguments for the negotiated version.
///
/// Returns `Ok(None)` when the client closed the connection between requests (end the
/// session silently). Data streams are not read: see [`Request::body`]. On error, ask
/// [`ProtocolError::is_recoverable`] whether to keep the connection.
pub fn read_request<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Option<Request>> {
    let Some(code) = wire::read_u64_or_eof(r, "opcode")? else {
        return Ok(None);
    };
    let op = Opcode::from_code(code).ok_or(ProtocolError::UnknownOpcode { op: code })?;
    let mut d = Decoder::deferring(r, cx);
    let req = decode_args(&mut d, op)?;
    match d.take_deferred() {
        None => Ok(Some(req)),
        Some(source) => Err(ProtocolError::InvalidArgument {
            op,
            body: body_of(op, cx.version),
            source: Box::new(source),
        }),
    }
}

fn store_name<R: Read + ?Sized>(
    d: &mut Decoder<'_, R>,
    field: &'static str,
) -> Result<StorePathName> {
    let s = d.short(field)?;
    let res = StorePathName::new(&s)
        .map_err(|source| ProtocolError::InvalidStorePath { path: s, source });
    d.soft(res, || placeholder_path().name().clone())
}

fn build_mode<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<BuildMode> {
    let v = d.u64("build mode")?;
    d.soft(BuildMode::from_wire(v), || BuildMode::Normal)
}

fn decode_args<R: Read + ?Sized>(d: &mut Decoder<'_, R>, op: Opcode) -> Result<Request> {
    use Opcode as O;
    let v = d.cx.version;
    Ok(match op {
        O::IsValidPath => Request::IsValidPath(d.path("path")?),
        O::HasSubstitutes => Request::HasSubstitutes(d.path("path")?),
        O::QueryPathHash => Request::QueryPathHash(d.path("path")?),
        O::QueryReferences => Request::QueryReferences(d.path("path")?),
        O::QueryReferrers => Request::QueryReferrers(d.path("path")?),
        O::AddToStore => add_to_store(d)?,
        O::AddTextToStore => Request::AddTextToStore {
            name: store_name(d, "name")?,
            text: d.text("text")?,
            references: d.paths("references")?,
        },
        O::BuildPaths => build_paths(d)?,
        O::BuildPathsWithResults => Request::BuildPathsWithResults {
            paths: DerivedPath::decode_list(d)?,
            mode: build_mode(d)?,
        },
        O::EnsurePath => Request::EnsurePath(d.path("path")?),
        O::AddTempRoot => Request::AddTempRoot(d.path("path")?),
        O::AddIndirectRoot => Request::AddIndirectRoot(d.string(MAX_PATH_LEN, "root path")?),
        O::SyncWithGC => Request::SyncWithGC,
        O::FindRoots => Request::FindRoots,
        O::ExportPath => Request::ExportPath {
            path: d.path("path")?,
            sign: d.u64("sign")?,
        },
        O::QueryDeriver => Request::QueryDeriver(d.path("path")?),
        O::SetOptions => Request::SetOptions(settings(d)?),
        O::CollectGarbage => Request::CollectGarbage(gc_options(d)?),
        O::QuerySubstitutablePathInfo => Request::QuerySubstitutablePathInfo(d.path("path")?),
        O::QueryDerivationOutputs => Request::QueryDerivationOutputs(d.path("path")?),
        O::QueryAllValidPaths => Request::QueryAllValidPaths,
        O::QueryFailedPaths | O::ClearFailedPaths => {
            return Err(ProtocolError::RemovedOperation { op })
        }
        O::QueryPathInfo => Request::QueryPathInfo(d.path("path")?),
        O::ImportPaths => Request::ImportPaths,
        O::QueryDerivationOutputNames => Request::QueryDerivationOutputNames(d.path("path")?),
        O::QueryPathFromHashPart => Request::QueryPathFromHashPart(d.short("hash part")?),
        O::QuerySubstitutablePathInfos => {
            Request::QuerySubstitutablePathInfos(substitutable_path_infos(d)?)
        }
        O::QueryValidPaths => Request::QueryValidPaths {
            paths: d.paths("paths")?,
            substitute: v.has_query_valid_paths_substitute() && d.bool("substitute")?,
        },
        O::QuerySubstitutablePaths => Request::QuerySubstitutablePaths(d.paths("paths")?),
        O::QueryValidDerivers => Request::QueryValidDerivers(d.path("path")?),
        O::OptimiseStore => Request::OptimiseStore,
        O::VerifyStore => Request::VerifyStore {
            check_contents: d.bool("check contents")?,
            repair: d.bool("repair")?,
        },
        O::BuildDerivation => Request::BuildDerivation {
            drv_path: d.path("drv path")?,
            drv: basic_derivation(d)?,
            mode: build_mode(d)?,
        },
        O::AddSignatures => Request::AddSignatures {
            path: d.path("path")?,
            signatures: d.strings(MAX_SHORT_LEN, "signatures")?,
        },
        O::NarFromPath => Request::NarFromPath(d.path("path")?),
        O::AddToStoreNar => Request::AddToStoreNar(AddToStoreNar {
            info: ValidPathInfo::decode(d, v)?,
            repair: d.bool("repair")?,
            dont_check_sigs: d.bool("dontCheckSigs")?,
        }),
        O::QueryMissing => Request::QueryMissing(DerivedPath::decode_list(d)?),
        O::QueryDerivationOutputMap => Request::QueryDerivationOutputMap(d.path("path")?),
        O::RegisterDrvOutput => Request::RegisterDrvOutput(realisation(d)?),
        O::QueryRealisation => Request::QueryRealisation(drv_output(d)?),
        O::AddMultipleToStore => Request::AddMultipleToStore {
            repair: d.bool("repair")?,
            dont_check_sigs: d.bool("dontCheckSigs")?,
        },
        O::AddBuildLog => Request::AddBuildLog(d.base_name("drv path")?),
        O::AddPermRoot => Request::AddPermRoot {
            path: d.path("path")?,
            gc_root: d.string(MAX_PATH_LEN, "gc root")?,
        },
    })
}

/// AddToStore's arguments: from 1.25 the name, method, references and repair flag;
/// before, the name and the fixed-output method of a NAR.
fn add_to_store<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Request> {
    let name = store_name(d, "name")?;
    if d.cx.version.has_framed_add_to_store() {
        let m = d.short("content-address method")?;
        let method = d.soft(ContentAddressMethod::parse(&m), || {
            ContentAddressMethod::Text
        })?;
        return Ok(Request::AddToStore {
            name,
            method,
            references: d.paths("references")?,
            repair: d.bool("repair")?,
        });
    }
    let fixed = d.bool("fixed")?;
    let recursive = d.u64("recursive")?;
    let algo = d.short("hash algorithm")?;
    let method = legacy_method(fixed, recursive, &algo);
    let method = d.soft(method, || ContentAddressMethod::Text)?;
    Ok(Request::AddToStore {
        name,
        method,
        references: Default::default(),
        repair: false,
    })
}

/// BuildPaths' arguments: the paths, and the mode from 1.15.
fn build_paths<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Request> {
    let paths = DerivedPath::decode_list(d)?;
    let mode = if d.cx.version.has_build_mode() {
        build_mode(d)?
    } else {
        BuildMode::Normal
    };
    Ok(Request::BuildPaths { paths, mode })
}

/// CollectGarbage's arguments: the action, the paths (in the form the
/// `delete-dead-specific-referrers` feature gives them, or the older one), and the
/// options.
fn gc_options<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<GcOptions> {
    let a = d.u64("gc action")?;
    let action = d.soft(GcAction::from_wire(a), || GcAction::ReturnLive)?;
    let paths = if d.cx.features.delete_dead_specific_referrers {
        match d.u64("whole store indicator")? {
            0 => GcPaths::Specific {
                paths: d.paths("paths to delete")?,
                delete_referrers: d.bool("delete referrers")?,
            },
            1 => GcPaths::WholeStore,
            value => {
                return Err(ProtocolError::ValueOutOfRange {
                    field: "whole store indicator",
                    value,
                })
            }
        }
    } else {
        let paths = d.paths("paths to delete")?;
        if action != GcAction::DeleteSpecific && paths.is_empty() {
            GcPaths::WholeStore
        } else {
            GcPaths::Specific {
                paths,
                delete_referrers: false,
            }
        }
    };
    let opts = GcOptions {
        action,
        paths,
        ignore_liveness: d.bool("ignore liveness")?,
        max_freed: d.u64("max freed")?,
    };
    for _ in 0..3 {
        d.u64("obsolete gc field")?;
    }
    Ok(opts)
}

/// QuerySubstitutablePathInfos' paths, each with its content address from 1.22.
fn substitutable_path_infos<R: Read + ?Sized>(
    d: &mut Decoder<'_, R>,
) -> Result<BTreeMap<StorePath, Option<ContentAddress>>> {
    if !d.cx.version.has_substitutable_infos_with_ca() {
        return Ok(d.paths("paths")?.into_iter().map(|p| (p, None)).collect());
    }
    let n = d.count("paths")?;
    let mut map = BTreeMap::new();
    for _ in 0..n {
        let p = d.path("path")?;
        let ca = d.opt_ca("ca")?;
        map.insert(p, ca);
    }
    Ok(map)
}

/// RegisterDrvOutput's realisation: JSON from 1.31, its id and path before.
fn realisation<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Realisation> {
    if d.cx.version.has_realisation_json() {
        let json = d.text("realisation")?;
        let res = Realisation::from_json(&json);
        return d.soft(res, placeholder_realisation);
    }
    let id = drv_output(d)?;
    let out_path = d.base_name("outPath")?;
    Ok(Realisation {
        id,
        out_path,
        signatures: Default::default(),
        dependent_realisations: Default::default(),
    })
}

/// A DrvOutput id (`<hash>!<output>`).
fn drv_output<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<DrvOutput> {
    let id = d.short("DrvOutput id")?;
    d.soft(DrvOutput::parse(&id), || placeholder_realisation().id)
}

/// AddToStore < 1.25: `fixed = 0` means recursive SHA-256 whatever else was sent,
/// as in Nix 2.8's compatibility hack.
fn legacy_method(fixed: bool, recursive: u64, algo: &str) -> Result<ContentAddressMethod> {
    let method = match recursive {
        0 => FileIngestionMethod::Flat,
        1 => FileIngestionMethod::Recursive,
        value => {
            return Err(ProtocolError::ValueOutOfRange {
                field: "recursive",
                value,
            })
        }
    };
    if !fixed {
        return Ok(ContentAddressMethod::Fixed {
            method: FileIngestionMethod::Recursive,
            algo: HashAlgo::Sha256,
        });
    }
    let algo = algo
        .parse::<HashAlgo>()
        .map_err(|_| ProtocolError::InvalidContentAddress {
            text: algo.to_owned(),
            source: None,
        })?;
    Ok(ContentAddressMethod::Fixed { method, algo })
}

fn placeholder_realisation() -> Realisation {
    Realisation {
        id: DrvOutput {
            drv_hash: crate::build_result::dummy_drv_hash(),
            output_name: "out".to_owned(),
        },
        out_path: placeholder_path(),
        signatures: Default::default(),
        dependent_realisations: Default::default(),
    }
}

fn settings<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<ClientSettings> {
    let mut s = ClientSettings {
        keep_failed: d.bool("keepFailed")?,
        keep_going: d.bool("keepGoing")?,
        try_fallback: d.bool("tryFallback")?,
        verbosity: Verbosity::from_wire(u64::from(d.u32("verbosity")?)),
        max_build_jobs: d.u32("maxBuildJobs")?,
        max_silent_time: d.u64("maxSilentTime")?,
        use_build_hook: d.bool("useBuildHook")?,
        verbose_build: Verbosity::from_wire(u64::from(d.u32("verboseBuild")?)),
        log_type: d.u64("logType")?,
        print_build_trace: d.u64("printBuildTrace")?,
        build_cores: d.u32("buildCores")?,
        use_substitutes: d.bool("useSubstitutes")?,
        overrides: BTreeMap::new(),
    };
    if d.cx.version.has_settings_overrides() {
        s.overrides = d.string_map(d.cx.limits.max_text, "overrides")?;
    }
    Ok(s)
}

fn basic_derivation<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<BasicDerivation> {
    let n = d.count("derivation outputs")?;
    let mut outputs = BTreeMap::new();
    for _ in 0..n {
        let name = d.short("output name")?;
        let out = DerivationOutputWire {
            path: d.opt_path("output path")?,
            hash_algo: d.short("output hash algorithm")?,
            hash: d.short("output hash")?,
        };
        outputs.insert(name, out);
    }
    let input_srcs = d.paths("input sources")?;
    let platform = d.bytes(MAX_SHORT_LEN, "platform")?;
    let builder = d.bytes(MAX_PATH_LEN, "builder")?;
    let max = d.cx.limits.max_text;
    let argc = d.count("args")?;
    let mut args = Vec::with_capacity(argc.min(1024));
    for _ in 0..argc {
        args.push(d.bytes(max, "arg")?);
    }
    let envc = d.count("env")?;
    let mut env = BTreeMap::new();
    for _ in 0..envc {
        let k = d.bytes(MAX_SHORT_LEN, "env name")?;
        let v = d.bytes(max, "env value")?;
        env.insert(k, v);
    }
    Ok(BasicDerivation {
        outputs,
        input_srcs,
        platform,
        builder,
        args,
        env,
    })
}
