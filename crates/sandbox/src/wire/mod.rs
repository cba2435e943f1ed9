//! The fixed vocabulary between the daemon and the sandbox helper, and between the
//! helper and its sandboxed child.
//!
//! The daemon sends one frame: `u64` length, then the encoded [`Plan`]. The helper
//! answers with [`Report`]s: `Started` once the builder has been executed (or `Failed` /
//! `NotLocked` instead), then `Exited`/`Signaled` when it ends. Every integer is little
//! endian; strings are `u32` length + bytes; every length is bounded, and anything odd is
//! an error, never a panic.

mod codec;
mod fds;
mod plan;
mod report;
#[cfg(test)]
mod tests;

use std::io::{self, Read, Write};
use std::path::PathBuf;

use crate::plan::{IdMaps, Plan};
use codec::{dec_id_maps, enc_id_maps, Dec, Enc};

pub use fds::{
    read_request_with_fds, recv_exact_with_fds, send_map_namespace, send_plan, send_with_fds,
    MAX_PASSED_FDS,
};
pub use plan::{decode_plan, encode_plan, encode_plan_with};
pub use report::Report;

/// What the daemon asks of a helper: run a build, or give a finished build's files
/// back to the store owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Build in a sandbox made from this plan.
    Build(Box<Plan>),
    /// In a new user namespace with these maps (see [`IdMaps::reclaim`]), chown every
    /// entry under each path to inner 0:0, never following symlinks.
    Reclaim {
        /// The reclaiming namespace's maps.
        id_maps: IdMaps,
        /// Host paths whose trees are reclaimed.
        paths: Vec<PathBuf>,
    },
    /// Make a user namespace with these maps (written by `newuidmap`/`newgidmap`) and
    /// send its descriptor back with the final report, for builds to enter later
    /// ([`IdMapMethod::Enter`](crate::IdMapMethod::Enter)).
    MapNamespace {
        /// The namespace's maps.
        id_maps: IdMaps,
    },
}

const PLAN_MAGIC: &[u8] = b"unrooted-sandbox-plan-5\n";
const RECLAIM_MAGIC: &[u8] = b"unrooted-sandbox-reclaim-1\n";
const MAP_NAMESPACE_MAGIC: &[u8] = b"unrooted-sandbox-map-namespace-1\n";
/// The largest plan frame accepted (a closure of 100 000 paths is far below this).
pub const MAX_PLAN_BYTES: u64 = 64 << 20;
const MAX_ITEMS: u32 = 1 << 20;

/// Encodes a reclaim request (without the frame length).
pub fn encode_reclaim(id_maps: &IdMaps, paths: &[PathBuf]) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(RECLAIM_MAGIC);
    enc_id_maps(&mut e, id_maps);
    e.len(paths.len());
    for p in paths {
        e.os(p.as_os_str());
    }
    e.0
}

/// Encodes a request for a mapped user namespace's descriptor.
pub fn encode_map_namespace(id_maps: &IdMaps) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(MAP_NAMESPACE_MAGIC);
    enc_id_maps(&mut e, id_maps);
    e.0
}

/// Decodes a request: a plan, a reclaim or a namespace to map.
pub fn decode_request(bytes: &[u8]) -> Result<Request, &'static str> {
    if let Some(rest) = bytes.strip_prefix(MAP_NAMESPACE_MAGIC) {
        let mut d = Dec(rest);
        let id_maps = dec_id_maps(&mut d)?;
        d.end()?;
        return Ok(Request::MapNamespace { id_maps });
    }
    if !bytes.starts_with(RECLAIM_MAGIC) {
        return decode_plan(bytes).map(|p| Request::Build(Box::new(p)));
    }
    let mut d = Dec(&bytes[RECLAIM_MAGIC.len()..]);
    let id_maps = dec_id_maps(&mut d)?;
    let n = d.len()?;
    let mut paths = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        paths.push(d.path()?);
    }
    d.end()?;
    Ok(Request::Reclaim { id_maps, paths })
}

/// Writes a plan frame.
pub fn write_plan(w: &mut impl Write, plan: &Plan) -> io::Result<()> {
    write_frame(w, &encode_plan(plan))
}

/// Writes a reclaim frame.
pub fn write_reclaim(w: &mut impl Write, id_maps: &IdMaps, paths: &[PathBuf]) -> io::Result<()> {
    write_frame(w, &encode_reclaim(id_maps, paths))
}

fn write_frame(w: &mut impl Write, body: &[u8]) -> io::Result<()> {
    w.write_all(&(body.len() as u64).to_le_bytes())?;
    w.write_all(body)?;
    w.flush()
}

/// Reads a plan frame.
pub fn read_plan(r: &mut impl Read) -> io::Result<Plan> {
    match read_request(r)? {
        Request::Build(plan) => Ok(*plan),
        Request::Reclaim { .. } | Request::MapNamespace { .. } => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "expected a sandbox plan",
        )),
    }
}

/// Reads a request frame (a plan or a reclaim).
pub fn read_request(r: &mut impl Read) -> io::Result<Request> {
    let mut len = [0u8; 8];
    r.read_exact(&mut len)?;
    let mut body = request_body(len)?;
    r.read_exact(&mut body)?;
    decode_request_body(&body)
}

/// A buffer for the request body whose length prefix is `len`, refused past
/// [`MAX_PLAN_BYTES`].
pub(super) fn request_body(len: [u8; 8]) -> io::Result<Vec<u8>> {
    let len = u64::from_le_bytes(len);
    if len > MAX_PLAN_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sandbox plan too large",
        ));
    }
    Ok(vec![0u8; len as usize])
}

pub(super) fn decode_request_body(body: &[u8]) -> io::Result<Request> {
    decode_request(body).map_err(|what| io::Error::new(io::ErrorKind::InvalidData, what))
}
