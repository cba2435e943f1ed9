//! The operations: each request performed against the store, its log messages and
//! reply written, with the trust rules of Nix 2.8 for untrusted clients.
//!
//! [`perform`] routes a request by its opcode ([`family`]) to the module of its
//! family, whose handlers are each one operation: [`query`] (reading the store),
//! [`add`] (adding to it), [`maintain`] (optimising and verifying it), [`build`]
//! (on the shared scheduler), [`gc`] (roots and collection on `unrooted-gc`),
//! [`subst`] (binary caches) and [`options`] (the client's settings). Every add roots
//! what it is about to write, and its references, before the first byte (see
//! [`add::hold_for_add`]), so a collection running beside it can delete neither.

mod add;
mod add_legacy;
mod build;
mod gc;
mod maintain;
mod options;
mod query;
pub(crate) mod realisations;
mod subst;

use std::io::{self, BufWriter};
use std::os::unix::net::UnixStream;

use unrooted_format::StorePath;
use unrooted_protocol::request::Opcode;
use unrooted_protocol::{
    wire, ProtocolError, Request, StderrWriter, UnkeyedValidPathInfo, ValidPathInfo as WirePathInfo,
};
use unrooted_store::{StoreError, ValidPathInfo};

use crate::session::Session;

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

pub(crate) type Reader = io::BufReader<UnixStream>;
pub(crate) type Out = StderrWriter<BufWriter<UnixStream>>;
pub(crate) type Result<T = ()> = std::result::Result<T, OpError>;

/// A failure after which the stream position is unknown: the connection must close.
pub(crate) fn fatal(e: &dyn std::error::Error) -> OpError {
    OpError::Fatal(ProtocolError::Write {
        field: "request body",
        source: io::Error::other(chain(e)),
    })
}

/// A failure the client is told of; the session goes on.
pub(crate) fn client(msg: impl Into<String>) -> OpError {
    OpError::Client(msg.into())
}

/// Ends the log and writes the reply `write` produces.
pub(crate) fn reply(
    out: &mut Out,
    write: impl FnOnce(&mut BufWriter<UnixStream>) -> std::result::Result<(), ProtocolError>,
) -> Result {
    out.last()?;
    write(out.get_mut())?;
    Ok(())
}

/// Ends the log and replies with one number (`1`: done, as Nix answers).
pub(crate) fn reply_u64(out: &mut Out, v: u64) -> Result {
    reply(out, |w| Ok(wire::write_u64(w, v)?))
}

/// The families of operations, each served by one module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Family {
    /// Reading the store: validity, path infos, references, derivers, NARs, exports.
    Query,
    /// Adding to the store: paths, texts, NARs, imports, signatures, build logs.
    Add,
    /// Optimising and verifying the store.
    Maintain,
    /// Building, and what a build would do.
    Build,
    /// Roots and garbage collection.
    Gc,
    /// What binary caches have, and fetching from them.
    Subst,
    /// The client's settings for its session.
    Options,
}

/// The table of the operations: the family each opcode belongs to.
fn family(op: Opcode) -> Family {
    use Opcode as O;
    match op {
        O::IsValidPath
        | O::QueryPathHash
        | O::QueryReferences
        | O::QueryReferrers
        | O::QueryDeriver
        | O::QueryPathInfo
        | O::QueryValidPaths
        | O::QueryAllValidPaths
        | O::QueryValidDerivers
        | O::QueryPathFromHashPart
        | O::QueryDerivationOutputMap
        | O::QueryDerivationOutputs
        | O::QueryDerivationOutputNames
        | O::QueryRealisation
        // Removed from the protocol: the decoder refuses them, so no request has them.
        | O::QueryFailedPaths
        | O::ClearFailedPaths
        | O::NarFromPath
        | O::ExportPath => Family::Query,
        O::AddToStore
        | O::AddTextToStore
        | O::AddToStoreNar
        | O::AddMultipleToStore
        | O::ImportPaths
        | O::AddSignatures
        | O::AddBuildLog
        | O::RegisterDrvOutput => Family::Add,
        O::OptimiseStore | O::VerifyStore => Family::Maintain,
        O::BuildPaths | O::BuildPathsWithResults | O::BuildDerivation | O::QueryMissing => {
            Family::Build
        }
        O::FindRoots
        | O::CollectGarbage
        | O::AddPermRoot
        | O::AddTempRoot
        | O::AddIndirectRoot
        | O::SyncWithGC => Family::Gc,
        O::HasSubstitutes
        | O::QuerySubstitutablePathInfo
        | O::QuerySubstitutablePathInfos
        | O::QuerySubstitutablePaths
        | O::EnsurePath => Family::Subst,
        O::SetOptions => Family::Options,
    }
}

/// Performs one request: the handler of its family (see [`family`]) does.
pub(crate) fn perform(
    s: &mut Session<'_>,
    request: Request,
    reader: &mut Reader,
    out: &mut Out,
) -> Result {
    match family(request.opcode()) {
        Family::Query => query::perform(s, request, out),
        Family::Add => add::perform(s, request, reader, out),
        Family::Maintain => maintain::perform(s, request, out),
        Family::Build => build::perform(s, request, out),
        Family::Gc => gc::perform(s, request, out),
        Family::Subst => subst::perform(s, request, out),
        Family::Options => options::perform(s, request, out),
    }
}

/// The error of a family's handler given a request of another family, which
/// [`family`] never does.
fn misrouted(family: &str, request: &Request) -> OpError {
    tracing::error!(
        "{:?} was routed to the {family} operations",
        request.opcode()
    );
    client(format!(
        "internal error: {:?} is not one of the {family} operations",
        request.opcode()
    ))
}

/// The record of `p`, which must be valid.
pub(crate) fn valid_info(s: &Session<'_>, p: &StorePath) -> Result<ValidPathInfo> {
    s.state
        .store
        .query_path_info(p)?
        .ok_or_else(|| client(format!("path '{}' is not valid", s.cx.store_dir.display(p))))
}

/// The store's record in the protocol's shape.
pub(crate) fn to_wire(i: &ValidPathInfo) -> WirePathInfo {
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
pub(crate) fn from_wire(w: &WirePathInfo) -> ValidPathInfo {
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
