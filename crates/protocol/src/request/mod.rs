//! Requests: the opcode (`docs/spec/worker-protocol.md` §5.1) and each operation's
//! arguments, typed.
//!
//! [`read_request`] decodes one request for the negotiated version; [`Request::write`]
//! encodes it (client side). Requests that carry a data stream decode only their
//! header; [`Request::body`] says how the handler must read the rest (see
//! [`BodyKind`]).

mod decode;
mod encode;
mod types;

use std::collections::{BTreeMap, BTreeSet};

use unrooted_format::{ContentAddress, StorePath, StorePathName};

pub use decode::read_request;
pub use types::{
    AddToStoreNar, BasicDerivation, BuildMode, ClientSettings, ContentAddressMethod,
    DerivationOutputWire, GcAction, GcOptions, GcPaths,
};

use crate::build_result::{DrvOutput, Realisation};
use crate::derived_path::DerivedPath;

/// The operations of the worker protocol, by their wire numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u64)]
#[allow(missing_docs)]
pub enum Opcode {
    IsValidPath = 1,
    HasSubstitutes = 3,
    QueryPathHash = 4,
    QueryReferences = 5,
    QueryReferrers = 6,
    AddToStore = 7,
    AddTextToStore = 8,
    BuildPaths = 9,
    EnsurePath = 10,
    AddTempRoot = 11,
    AddIndirectRoot = 12,
    SyncWithGC = 13,
    FindRoots = 14,
    ExportPath = 16,
    QueryDeriver = 18,
    SetOptions = 19,
    CollectGarbage = 20,
    QuerySubstitutablePathInfo = 21,
    QueryDerivationOutputs = 22,
    QueryAllValidPaths = 23,
    QueryFailedPaths = 24,
    ClearFailedPaths = 25,
    QueryPathInfo = 26,
    ImportPaths = 27,
    QueryDerivationOutputNames = 28,
    QueryPathFromHashPart = 29,
    QuerySubstitutablePathInfos = 30,
    QueryValidPaths = 31,
    QuerySubstitutablePaths = 32,
    QueryValidDerivers = 33,
    OptimiseStore = 34,
    VerifyStore = 35,
    BuildDerivation = 36,
    AddSignatures = 37,
    NarFromPath = 38,
    AddToStoreNar = 39,
    QueryMissing = 40,
    QueryDerivationOutputMap = 41,
    RegisterDrvOutput = 42,
    QueryRealisation = 43,
    AddMultipleToStore = 44,
    AddBuildLog = 45,
    BuildPathsWithResults = 46,
    AddPermRoot = 47,
}

impl Opcode {
    /// Every opcode, in wire order.
    pub const ALL: [Opcode; 44] = [
        Self::IsValidPath,
        Self::HasSubstitutes,
        Self::QueryPathHash,
        Self::QueryReferences,
        Self::QueryReferrers,
        Self::AddToStore,
        Self::AddTextToStore,
        Self::BuildPaths,
        Self::EnsurePath,
        Self::AddTempRoot,
        Self::AddIndirectRoot,
        Self::SyncWithGC,
        Self::FindRoots,
        Self::ExportPath,
        Self::QueryDeriver,
        Self::SetOptions,
        Self::CollectGarbage,
        Self::QuerySubstitutablePathInfo,
        Self::QueryDerivationOutputs,
        Self::QueryAllValidPaths,
        Self::QueryFailedPaths,
        Self::ClearFailedPaths,
        Self::QueryPathInfo,
        Self::ImportPaths,
        Self::QueryDerivationOutputNames,
        Self::QueryPathFromHashPart,
        Self::QuerySubstitutablePathInfos,
        Self::QueryValidPaths,
        Self::QuerySubstitutablePaths,
        Self::QueryValidDerivers,
        Self::OptimiseStore,
        Self::VerifyStore,
        Self::BuildDerivation,
        Self::AddSignatures,
        Self::NarFromPath,
        Self::AddToStoreNar,
        Self::QueryMissing,
        Self::QueryDerivationOutputMap,
        Self::RegisterDrvOutput,
        Self::QueryRealisation,
        Self::AddMultipleToStore,
        Self::AddBuildLog,
        Self::BuildPathsWithResults,
        Self::AddPermRoot,
    ];

    /// The wire number.
    pub const fn code(self) -> u64 {
        self as u64
    }

    /// The opcode for a wire number, if there is one.
    pub fn from_code(code: u64) -> Option<Self> {
        Self::ALL.iter().copied().find(|op| op.code() == code)
    }
}

/// How the data that follows a request's header must be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// A framed stream (`docs/spec/worker-protocol.md` §2.7): read it through
    /// [`crate::wire::FramedReader`] and
    /// always [`crate::wire::FramedReader::drain`] it before `STDERR_LAST`/`STDERR_ERROR`.
    /// AddToStore ≥ 1.25, AddToStoreNar ≥ 1.23, AddMultipleToStore, AddBuildLog.
    Framed,
    /// A NAR follows right after the header, unframed: it has no length, so the handler
    /// must parse it to find its end. AddToStore < 1.25 (even for flat files: the NAR
    /// holds one regular file whose contents are hashed) and AddToStoreNar < 1.21.
    UnframedNar,
    /// The client sends nothing until asked: the handler starts the log and pulls the
    /// data with `STDERR_READ` through [`crate::body::StderrReadReader`], reading no
    /// further than the data's own end. AddToStoreNar 1.21–1.22 (a NAR) and
    /// ImportPaths (an export stream).
    PulledWithStderrRead,
}

/// One decoded request.
#[derive(Debug, Clone, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Request {
    IsValidPath(StorePath),
    HasSubstitutes(StorePath),
    QueryPathHash(StorePath),
    QueryReferences(StorePath),
    QueryReferrers(StorePath),
    /// Both forms: ≥ 1.25 (body framed) and < 1.25 (body an unframed NAR; references
    /// empty, repair false, method never Text).
    AddToStore {
        name: StorePathName,
        method: ContentAddressMethod,
        references: BTreeSet<StorePath>,
        repair: bool,
    },
    AddTextToStore {
        name: StorePathName,
        text: String,
        references: BTreeSet<StorePath>,
    },
    BuildPaths {
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    },
    EnsurePath(StorePath),
    AddTempRoot(StorePath),
    /// The absolute path of a symlink the client made.
    AddIndirectRoot(String),
    SyncWithGC,
    FindRoots,
    /// The second word (sign) is ignored by every daemon.
    ExportPath {
        path: StorePath,
        sign: u64,
    },
    QueryDeriver(StorePath),
    SetOptions(ClientSettings),
    CollectGarbage(GcOptions),
    QuerySubstitutablePathInfo(StorePath),
    QueryDerivationOutputs(StorePath),
    QueryAllValidPaths,
    QueryPathInfo(StorePath),
    /// The export stream is pulled with `STDERR_READ`.
    ImportPaths,
    QueryDerivationOutputNames(StorePath),
    /// A 32-character hash part.
    QueryPathFromHashPart(String),
    /// < 1.22 the client sends only paths: their CAs are `None`.
    QuerySubstitutablePathInfos(BTreeMap<StorePath, Option<ContentAddress>>),
    QueryValidPaths {
        paths: BTreeSet<StorePath>,
        substitute: bool,
    },
    QuerySubstitutablePaths(BTreeSet<StorePath>),
    QueryValidDerivers(StorePath),
    OptimiseStore,
    VerifyStore {
        check_contents: bool,
        repair: bool,
    },
    BuildDerivation {
        drv_path: StorePath,
        drv: BasicDerivation,
        mode: BuildMode,
    },
    AddSignatures {
        path: StorePath,
        signatures: Vec<String>,
    },
    NarFromPath(StorePath),
    AddToStoreNar(AddToStoreNar),
    QueryMissing(Vec<DerivedPath>),
    QueryDerivationOutputMap(StorePath),
    /// ≥ 1.31 a Realisation; < 1.31 only id and path (no signatures, no dependencies).
    RegisterDrvOutput(Realisation),
    QueryRealisation(DrvOutput),
    AddMultipleToStore {
        repair: bool,
        dont_check_sigs: bool,
    },
    /// The derivation's base name (no store directory); the log is framed.
    AddBuildLog(StorePath),
    BuildPathsWithResults {
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    },
    AddPermRoot {
        path: StorePath,
        gc_root: String,
    },
}

impl Request {
    /// The request's opcode.
    pub fn opcode(&self) -> Opcode {
        use Opcode as O;
        match self {
            Self::IsValidPath(_) => O::IsValidPath,
            Self::HasSubstitutes(_) => O::HasSubstitutes,
            Self::QueryPathHash(_) => O::QueryPathHash,
            Self::QueryReferences(_) => O::QueryReferences,
            Self::QueryReferrers(_) => O::QueryReferrers,
            Self::AddToStore { .. } => O::AddToStore,
            Self::AddTextToStore { .. } => O::AddTextToStore,
            Self::BuildPaths { .. } => O::BuildPaths,
            Self::EnsurePath(_) => O::EnsurePath,
            Self::AddTempRoot(_) => O::AddTempRoot,
            Self::AddIndirectRoot(_) => O::AddIndirectRoot,
            Self::SyncWithGC => O::SyncWithGC,
            Self::FindRoots => O::FindRoots,
            Self::ExportPath { .. } => O::ExportPath,
            Self::QueryDeriver(_) => O::QueryDeriver,
            Self::SetOptions(_) => O::SetOptions,
            Self::CollectGarbage(_) => O::CollectGarbage,
            Self::QuerySubstitutablePathInfo(_) => O::QuerySubstitutablePathInfo,
            Self::QueryDerivationOutputs(_) => O::QueryDerivationOutputs,
            Self::QueryAllValidPaths => O::QueryAllValidPaths,
            Self::QueryPathInfo(_) => O::QueryPathInfo,
            Self::ImportPaths => O::ImportPaths,
            Self::QueryDerivationOutputNames(_) => O::QueryDerivationOutputNames,
            Self::QueryPathFromHashPart(_) => O::QueryPathFromHashPart,
            Self::QuerySubstitutablePathInfos(_) => O::QuerySubstitutablePathInfos,
            Self::QueryValidPaths { .. } => O::QueryValidPaths,
            Self::QuerySubstitutablePaths(_) => O::QuerySubstitutablePaths,
            Self::QueryValidDerivers(_) => O::QueryValidDerivers,
            Self::OptimiseStore => O::OptimiseStore,
            Self::VerifyStore { .. } => O::VerifyStore,
            Self::BuildDerivation { .. } => O::BuildDerivation,
            Self::AddSignatures { .. } => O::AddSignatures,
            Self::NarFromPath(_) => O::NarFromPath,
            Self::AddToStoreNar(_) => O::AddToStoreNar,
            Self::QueryMissing(_) => O::QueryMissing,
            Self::QueryDerivationOutputMap(_) => O::QueryDerivationOutputMap,
            Self::RegisterDrvOutput(_) => O::RegisterDrvOutput,
            Self::QueryRealisation(_) => O::QueryRealisation,
            Self::AddMultipleToStore { .. } => O::AddMultipleToStore,
            Self::AddBuildLog(_) => O::AddBuildLog,
            Self::BuildPathsWithResults { .. } => O::BuildPathsWithResults,
            Self::AddPermRoot { .. } => O::AddPermRoot,
        }
    }

    /// How the data after this request's header must be read at version `v`, or
    /// `None` if the request has no data stream.
    pub fn body(&self, v: crate::version::ProtocolVersion) -> Option<BodyKind> {
        body_of(self.opcode(), v)
    }
}

/// The data stream an opcode carries at version `v`.
pub fn body_of(op: Opcode, v: crate::version::ProtocolVersion) -> Option<BodyKind> {
    match op {
        Opcode::AddToStore if v.has_framed_add_to_store() => Some(BodyKind::Framed),
        Opcode::AddToStore => Some(BodyKind::UnframedNar),
        Opcode::AddToStoreNar if v.has_framed_add_to_store_nar() => Some(BodyKind::Framed),
        Opcode::AddToStoreNar if v.has_stderr_read_add_to_store_nar() => {
            Some(BodyKind::PulledWithStderrRead)
        }
        Opcode::AddToStoreNar => Some(BodyKind::UnframedNar),
        Opcode::AddMultipleToStore | Opcode::AddBuildLog => Some(BodyKind::Framed),
        Opcode::ImportPaths => Some(BodyKind::PulledWithStderrRead),
        _ => None,
    }
}
