//! The fixed vocabulary between the daemon and the sandbox helper, and between the
//! helper and its sandboxed child.
//!
//! The daemon sends one frame: `u64` length, then the encoded [`Plan`]. The helper
//! answers with [`Report`]s: `Started` once the builder has been executed (or `Failed` /
//! `NotLocked` instead), then `Exited`/`Signaled` when it ends. Every integer is little
//! endian; strings are `u32` length + bytes; every length is bounded, and anything odd is
//! an error, never a panic.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use crate::error::Step;
use crate::plan::{
    Exec, IdMapEntry, IdMapMethod, IdMaps, MountOp, Namespaces, Pasta, Plan, Program,
};

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
    /// ([`IdMapMethod::Enter`]).
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

/// Encodes values into a buffer.
#[derive(Default)]
struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    fn bytes(&mut self, b: &[u8]) {
        // Plans are built by the daemon from bounded inputs; a 4 GiB field is a bug.
        self.u32(u32::try_from(b.len()).expect("sandbox plan field under 4 GiB"));
        self.0.extend_from_slice(b);
    }
    fn os(&mut self, s: &std::ffi::OsStr) {
        self.bytes(s.as_bytes());
    }
    fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("sandbox plan list under 4G entries"));
    }
}

/// Decodes values from a buffer, refusing anything malformed.
struct Dec<'a>(&'a [u8]);

type DecResult<T> = Result<T, &'static str>;

impl Dec<'_> {
    fn take(&mut self, n: usize) -> DecResult<&[u8]> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    fn u8(&mut self) -> DecResult<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> DecResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self) -> DecResult<i32> {
        Ok(self.u32()? as i32)
    }
    fn bool(&mut self) -> DecResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad boolean"),
        }
    }
    fn bytes(&mut self) -> DecResult<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn os(&mut self) -> DecResult<OsString> {
        Ok(OsString::from_vec(self.bytes()?))
    }
    fn path(&mut self) -> DecResult<PathBuf> {
        Ok(PathBuf::from(self.os()?))
    }
    fn len(&mut self) -> DecResult<usize> {
        let n = self.u32()?;
        if n > MAX_ITEMS {
            return Err("list too long");
        }
        Ok(n as usize)
    }
    fn end(&self) -> DecResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

fn enc_map(e: &mut Enc, map: &[IdMapEntry]) {
    e.len(map.len());
    for m in map {
        e.u32(m.inner);
        e.u32(m.outer);
        e.u32(m.count);
    }
}

fn dec_map(d: &mut Dec) -> DecResult<Vec<IdMapEntry>> {
    let n = d.len()?;
    let mut v = Vec::with_capacity(n.min(340));
    for _ in 0..n {
        v.push(IdMapEntry {
            inner: d.u32()?,
            outer: d.u32()?,
            count: d.u32()?,
        });
    }
    Ok(v)
}

fn enc_id_maps(e: &mut Enc, ids: &IdMaps) {
    enc_id_maps_with(e, ids, &ids.method)
}

fn enc_id_maps_with(e: &mut Enc, ids: &IdMaps, method: &IdMapMethod) {
    enc_map(e, &ids.uid_map);
    enc_map(e, &ids.gid_map);
    match method {
        IdMapMethod::Direct => e.u8(0),
        IdMapMethod::NewIdMap {
            newuidmap,
            newgidmap,
        } => {
            e.u8(1);
            e.os(newuidmap.as_os_str());
            e.os(newgidmap.as_os_str());
        }
        IdMapMethod::Enter => e.u8(2),
    }
    e.u32(ids.builder_uid);
    e.u32(ids.builder_gid);
    e.bool(ids.switch_ids);
    e.bool(ids.nested_range);
}

fn dec_id_maps(d: &mut Dec) -> DecResult<IdMaps> {
    let uid_map = dec_map(d)?;
    let gid_map = dec_map(d)?;
    let method = match d.u8()? {
        0 => IdMapMethod::Direct,
        1 => IdMapMethod::NewIdMap {
            newuidmap: d.path()?,
            newgidmap: d.path()?,
        },
        2 => IdMapMethod::Enter,
        _ => return Err("bad id map method"),
    };
    Ok(IdMaps {
        uid_map,
        gid_map,
        method,
        builder_uid: d.u32()?,
        builder_gid: d.u32()?,
        switch_ids: d.bool()?,
        nested_range: d.bool()?,
    })
}

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

/// Encodes a plan (without the frame length).
pub fn encode_plan(plan: &Plan) -> Vec<u8> {
    encode_plan_with(plan, &plan.id_maps.method)
}

/// Encodes `plan` as if its id maps were written by `method`: the daemon sends a plan
/// whose slice namespace it already has as [`IdMapMethod::Enter`].
pub fn encode_plan_with(plan: &Plan, method: &IdMapMethod) -> Vec<u8> {
    let mut e = Enc::default();
    e.0.extend_from_slice(PLAN_MAGIC);
    e.bool(plan.namespaces.net);
    e.bool(plan.namespaces.ipc);
    e.bool(plan.namespaces.uts);
    enc_id_maps_with(&mut e, &plan.id_maps, method);
    e.os(plan.root.as_os_str());
    e.u32(plan.root_mode);
    e.len(plan.mounts.len());
    for op in &plan.mounts {
        match op {
            MountOp::Mkdir { path, mode } => {
                e.u8(1);
                e.os(path.as_os_str());
                e.u32(*mode);
            }
            MountOp::WriteFile {
                path,
                contents,
                mode,
            } => {
                e.u8(2);
                e.os(path.as_os_str());
                e.bytes(contents);
                e.u32(*mode);
            }
            MountOp::Symlink { target, link } => {
                e.u8(3);
                e.os(target.as_os_str());
                e.os(link.as_os_str());
            }
            MountOp::Bind {
                source,
                target,
                read_only,
                optional,
            } => {
                e.u8(4);
                e.os(source.as_os_str());
                e.os(target.as_os_str());
                e.bool(*read_only);
                e.bool(*optional);
            }
            MountOp::Proc { target } => {
                e.u8(5);
                e.os(target.as_os_str());
            }
            MountOp::Tmpfs { target, options } => {
                e.u8(6);
                e.os(target.as_os_str());
                e.bytes(options.as_bytes());
            }
            MountOp::Devpts { target } => {
                e.u8(7);
                e.os(target.as_os_str());
            }
            MountOp::DiskDir { path, mode } => {
                e.u8(9);
                e.os(path.as_os_str());
                e.u32(*mode);
            }
            MountOp::Chown { path, uid, gid } => {
                e.u8(8);
                e.os(path.as_os_str());
                e.u32(*uid);
                e.u32(*gid);
            }
        }
    }
    e.os(&plan.hostname);
    e.os(&plan.domainname);
    match &plan.exec.program {
        Program::Path(p) => {
            e.u8(0);
            e.os(p.as_os_str());
        }
        Program::Builtin(name) => {
            e.u8(1);
            e.bytes(name.as_bytes());
        }
    }
    e.len(plan.exec.argv.len());
    for a in &plan.exec.argv {
        e.os(a);
    }
    e.len(plan.exec.env.len());
    for (k, v) in &plan.exec.env {
        e.os(k);
        e.os(v);
    }
    e.os(plan.exec.cwd.as_os_str());
    e.len(plan.reclaim.len());
    for p in &plan.reclaim {
        e.os(p.as_os_str());
    }
    match &plan.pasta {
        None => e.u8(0),
        Some(pasta) => {
            e.u8(1);
            e.os(pasta.program.as_os_str());
            e.len(pasta.args.len());
            for a in &pasta.args {
                e.os(a);
            }
        }
    }
    e.0
}

/// Decodes a plan; the error says what was malformed.
pub fn decode_plan(bytes: &[u8]) -> Result<Plan, &'static str> {
    let mut d = Dec(bytes);
    if d.take(PLAN_MAGIC.len())? != PLAN_MAGIC {
        return Err("not a sandbox plan");
    }
    let namespaces = Namespaces {
        net: d.bool()?,
        ipc: d.bool()?,
        uts: d.bool()?,
    };
    let id_maps = dec_id_maps(&mut d)?;
    let root = d.path()?;
    let root_mode = d.u32()?;
    let n = d.len()?;
    let mut mounts = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        mounts.push(match d.u8()? {
            1 => MountOp::Mkdir {
                path: d.path()?,
                mode: d.u32()?,
            },
            2 => MountOp::WriteFile {
                path: d.path()?,
                contents: d.bytes()?,
                mode: d.u32()?,
            },
            3 => MountOp::Symlink {
                target: d.path()?,
                link: d.path()?,
            },
            4 => MountOp::Bind {
                source: d.path()?,
                target: d.path()?,
                read_only: d.bool()?,
                optional: d.bool()?,
            },
            5 => MountOp::Proc { target: d.path()? },
            6 => MountOp::Tmpfs {
                target: d.path()?,
                options: String::from_utf8(d.bytes()?).map_err(|_| "tmpfs options not UTF-8")?,
            },
            7 => MountOp::Devpts { target: d.path()? },
            8 => MountOp::Chown {
                path: d.path()?,
                uid: d.u32()?,
                gid: d.u32()?,
            },
            9 => MountOp::DiskDir {
                path: d.path()?,
                mode: d.u32()?,
            },
            _ => return Err("bad mount operation"),
        });
    }
    let hostname = d.os()?;
    let domainname = d.os()?;
    let program = match d.u8()? {
        0 => Program::Path(d.path()?),
        1 => Program::Builtin(String::from_utf8(d.bytes()?).map_err(|_| "builtin name not UTF-8")?),
        _ => return Err("bad program kind"),
    };
    let n = d.len()?;
    let mut argv = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        argv.push(d.os()?);
    }
    let n = d.len()?;
    let mut env = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        env.push((d.os()?, d.os()?));
    }
    let cwd = d.path()?;
    let n = d.len()?;
    let mut reclaim = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        reclaim.push(d.path()?);
    }
    let pasta = match d.u8()? {
        0 => None,
        1 => {
            let program = d.path()?;
            let n = d.len()?;
            let mut args = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                args.push(d.os()?);
            }
            Some(Pasta { program, args })
        }
        _ => return Err("bad network stack"),
    };
    d.end()?;
    Ok(Plan {
        namespaces,
        id_maps,
        root,
        root_mode,
        mounts,
        hostname,
        domainname,
        exec: Exec {
            program,
            argv,
            env,
            cwd,
        },
        reclaim,
        pasta,
    })
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
fn request_body(len: [u8; 8]) -> io::Result<Vec<u8>> {
    let len = u64::from_le_bytes(len);
    if len > MAX_PLAN_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "sandbox plan too large",
        ));
    }
    Ok(vec![0u8; len as usize])
}

fn decode_request_body(body: &[u8]) -> io::Result<Request> {
    decode_request(body).map_err(|what| io::Error::new(io::ErrorKind::InvalidData, what))
}

/// What the helper (or the sandboxed child, before exec) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The builder runs; `pid` is the sandbox init's pid in the helper's namespace.
    Started {
        /// Host pid.
        pid: u32,
    },
    /// A setup step failed.
    Failed {
        /// Which.
        step: Step,
        /// On what.
        path: Option<PathBuf>,
        /// The errno.
        errno: i32,
    },
    /// `umount("/proc")` did not give EINVAL; `errno` 0 means it succeeded.
    NotLocked {
        /// What it gave instead.
        errno: i32,
    },
    /// The builder exited with this code.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The builder was killed by this signal.
    Signaled {
        /// Signal number.
        signal: i32,
    },
}

/// The largest report (a failure with a path).
const MAX_REPORT_BYTES: u32 = 8192;

impl Report {
    /// Encodes as `u32` length + body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        match self {
            Report::Started { pid } => {
                e.u8(b'S');
                e.u32(*pid);
            }
            Report::Failed { step, path, errno } => {
                e.u8(b'F');
                e.u8(step.code());
                match path {
                    Some(p) => {
                        e.bool(true);
                        // A path too long for a report is cut: it only names the place.
                        let b = p.as_os_str().as_bytes();
                        e.bytes(&b[..b.len().min(4096)]);
                    }
                    None => e.bool(false),
                }
                e.u32(*errno as u32);
            }
            Report::NotLocked { errno } => {
                e.u8(b'L');
                e.u32(*errno as u32);
            }
            Report::Exited { code } => {
                e.u8(b'X');
                e.u32(*code as u32);
            }
            Report::Signaled { signal } => {
                e.u8(b'K');
                e.u32(*signal as u32);
            }
        }
        let mut out = (e.0.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&e.0);
        out
    }

    /// Decodes one report body.
    pub fn decode(body: &[u8]) -> Result<Report, &'static str> {
        let mut d = Dec(body);
        let r = match d.u8()? {
            b'S' => Report::Started { pid: d.u32()? },
            b'F' => {
                let step = Step::from_code(d.u8()?).ok_or("unknown step")?;
                let path = if d.bool()? { Some(d.path()?) } else { None };
                Report::Failed {
                    step,
                    path,
                    errno: d.i32()?,
                }
            }
            b'L' => Report::NotLocked { errno: d.i32()? },
            b'X' => Report::Exited { code: d.i32()? },
            b'K' => Report::Signaled { signal: d.i32()? },
            _ => return Err("unknown report"),
        };
        d.end()?;
        Ok(r)
    }

    /// Reads one report; `Ok(None)` at a clean end of stream.
    pub fn read(r: &mut impl Read) -> io::Result<Option<Report>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_REPORT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "report too large",
            ));
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        Report::decode(&body)
            .map(Some)
            .map_err(|what| io::Error::new(io::ErrorKind::InvalidData, what))
    }
}

/// The most descriptors one message carries: a plan's user namespace and build log.
pub const MAX_PASSED_FDS: usize = 2;

/// Sends `bytes` on the stream socket `sock`, with `fds` (at most
/// [`MAX_PASSED_FDS`]) attached to the first of them as `SCM_RIGHTS`, so the reader
/// receives them, in order, with its first read of these bytes
/// ([`recv_exact_with_fds`]).
pub fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    use rustix::net::{sendmsg, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    if fds.len() > MAX_PASSED_FDS {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    let mut sent = 0;
    if !fds.is_empty() && !bytes.is_empty() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(io::Error::other(
                "no room for the descriptors in the message",
            ));
        }
        sent = loop {
            match sendmsg(
                sock,
                &[IoSlice::new(bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            ) {
                Ok(n) => break n,
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => return Err(e.into()),
            }
        };
    }
    while sent < bytes.len() {
        match rustix::net::send(sock, &bytes[sent..], rustix::net::SendFlags::NOSIGNAL) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Fills `buf` from the stream socket `sock`, returning the descriptors that came with
/// those bytes (received close-on-exec; past [`MAX_PASSED_FDS`] the kernel closes
/// them). A stream that ends first is `UnexpectedEof`.
pub fn recv_exact_with_fds(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Vec<OwnedFd>> {
    use rustix::net::{recvmsg, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut got = 0;
    let mut fds = Vec::new();
    while got < buf.len() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_PASSED_FDS))];
        let mut control = RecvAncillaryBuffer::new(&mut space);
        let n = match recvmsg(
            sock,
            &mut [IoSliceMut::new(&mut buf[got..])],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => m.bytes,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        for msg in control.drain() {
            if let RecvAncillaryMessage::ScmRights(passed) = msg {
                fds.extend(passed);
            }
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        got += n;
    }
    fds.truncate(MAX_PASSED_FDS);
    Ok(fds)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(8 + body.len());
    f.extend_from_slice(&(body.len() as u64).to_le_bytes());
    f.extend_from_slice(body);
    f
}

/// Sends `plan` with the descriptors it needs: `userns`, an already mapped user
/// namespace to build in (the plan then says [`IdMapMethod::Enter`]), first; then
/// `log`, the build log for the helper's stdout and stderr, when the helper was
/// started before the build (with neither).
pub fn send_plan(
    sock: BorrowedFd<'_>,
    plan: &Plan,
    userns: Option<BorrowedFd<'_>>,
    log: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let body = match userns {
        Some(_) => encode_plan_with(plan, &IdMapMethod::Enter),
        None => encode_plan(plan),
    };
    let fds: Vec<BorrowedFd<'_>> = userns.into_iter().chain(log).collect();
    send_with_fds(sock, &frame(&body), &fds)
}

/// Sends a [`Request::MapNamespace`].
pub fn send_map_namespace(sock: BorrowedFd<'_>, id_maps: &IdMaps) -> io::Result<()> {
    send_with_fds(sock, &frame(&encode_map_namespace(id_maps)), &[])
}

/// Reads a request frame from the socket `sock`, with the descriptors that came with
/// it, in order.
pub fn read_request_with_fds(sock: BorrowedFd<'_>) -> io::Result<(Request, Vec<OwnedFd>)> {
    let mut len = [0u8; 8];
    let fds = recv_exact_with_fds(sock, &mut len)?;
    let mut body = request_body(len)?;
    // Descriptors only ever come with a frame's first bytes.
    drop(recv_exact_with_fds(sock, &mut body)?);
    Ok((decode_request_body(&body)?, fds))
}

impl Report {
    /// Sends this report on the socket `sock` with `fd` attached.
    pub fn send_with_fd(&self, sock: BorrowedFd<'_>, fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        let fds: Vec<BorrowedFd<'_>> = fd.into_iter().collect();
        send_with_fds(sock, &self.encode(), &fds)
    }

    /// Reads one report from the socket `sock` with the descriptor that came with it;
    /// `Ok((None, None))` at a clean end of stream.
    pub fn read_with_fd(sock: BorrowedFd<'_>) -> io::Result<(Option<Report>, Option<OwnedFd>)> {
        let mut len = [0u8; 4];
        let fd = match recv_exact_with_fds(sock, &mut len) {
            Ok(fds) => fds.into_iter().next(),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok((None, None)),
            Err(e) => return Err(e),
        };
        let report = Report::read(&mut len.as_slice().chain(SocketReader(sock)))?;
        Ok((report, fd))
    }
}

/// Plain reads from a socket borrowed as a descriptor.
struct SocketReader<'a>(BorrowedFd<'a>);

impl Read for SocketReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match rustix::io::read(self.0, &mut *buf) {
                Err(rustix::io::Errno::INTR) => continue,
                r => return r.map_err(io::Error::from),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{SandboxPath, SandboxSpec};

    fn plan() -> Plan {
        let mut s = SandboxSpec::new(
            "/r".into(),
            "/nix/store".into(),
            "/b".into(),
            "/nix/store/aaaa-x/bin/sh".into(),
        );
        s.inputs = vec!["/nix/store/aaaa-x".into()];
        s.sandbox_paths = vec![SandboxPath::parse("/bin/sh=/x?".as_ref()).unwrap()];
        s.env = vec![("A".into(), OsString::from_vec(vec![0xff, b'=', 0]))];
        s.args = vec!["-c".into(), "echo hi".into()];
        let mut p = Plan::new(&s).unwrap();
        p.id_maps.method = IdMapMethod::NewIdMap {
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        };
        p
    }

    #[test]
    fn plan_round_trips() {
        let p = plan();
        let mut buf = Vec::new();
        write_plan(&mut buf, &p).unwrap();
        assert_eq!(read_plan(&mut buf.as_slice()).unwrap(), p);
    }

    #[test]
    fn a_plan_carries_its_namespace_and_log_descriptors() {
        use std::os::fd::AsFd;
        use std::os::unix::fs::MetadataExt;
        let p = plan();
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        // Any descriptor shows it travels: this file's identity must come out.
        let file = std::fs::File::open("/proc/self/ns/user").unwrap();
        let log = std::fs::File::open("/dev/null").unwrap();
        send_plan(a.as_fd(), &p, Some(file.as_fd()), Some(log.as_fd())).unwrap();
        let (request, fds) = read_request_with_fds(b.as_fd()).unwrap();
        let Request::Build(got) = request else {
            panic!("a build request")
        };
        assert_eq!(got.id_maps.method, IdMapMethod::Enter);
        let mut expected = p.clone();
        expected.id_maps.method = IdMapMethod::Enter;
        assert_eq!(*got, expected);
        // Both descriptors, in order: the same files came out.
        let same = |a: &std::fs::File, b: &std::fs::File| {
            let (m1, m2) = (a.metadata().unwrap(), b.metadata().unwrap());
            (m1.dev(), m1.ino()) == (m2.dev(), m2.ino())
        };
        let got: Vec<std::fs::File> = fds.into_iter().map(std::fs::File::from).collect();
        assert_eq!(got.len(), 2);
        assert!(same(&got[0], &file) && same(&got[1], &log));
        // Without a namespace the plan keeps its method, and the log comes alone.
        send_plan(a.as_fd(), &p, None, Some(log.as_fd())).unwrap();
        let (request, fds) = read_request_with_fds(b.as_fd()).unwrap();
        assert_eq!(request, Request::Build(Box::new(p.clone())));
        assert_eq!(fds.len(), 1);
        let only = std::fs::File::from(fds.into_iter().next().unwrap());
        assert!(same(&only, &log));
        // A frame sent without any carries none.
        send_map_namespace(a.as_fd(), &p.id_maps).unwrap();
        let (request, fds) = read_request_with_fds(b.as_fd()).unwrap();
        assert_eq!(
            request,
            Request::MapNamespace {
                id_maps: p.id_maps.clone()
            }
        );
        assert!(fds.is_empty());
        // A report with a descriptor, then one without, then the end.
        Report::Exited { code: 0 }
            .send_with_fd(a.as_fd(), Some(file.as_fd()))
            .unwrap();
        Report::Signaled { signal: 9 }
            .send_with_fd(a.as_fd(), None)
            .unwrap();
        drop(a);
        let (r, fd) = Report::read_with_fd(b.as_fd()).unwrap();
        assert_eq!(r, Some(Report::Exited { code: 0 }));
        assert!(fd.is_some());
        let (r, fd) = Report::read_with_fd(b.as_fd()).unwrap();
        assert_eq!(r, Some(Report::Signaled { signal: 9 }));
        assert!(fd.is_none());
        let (r, fd) = Report::read_with_fd(b.as_fd()).unwrap();
        assert!(r.is_none() && fd.is_none());
    }

    #[test]
    fn builtin_network_plans_round_trip() {
        let mut s = SandboxSpec::new(
            "/r".into(),
            "/nix/store".into(),
            "/b".into(),
            "builtin:fetchurl".into(),
        );
        s.builtin = Some("fetchurl".into());
        s.network = true;
        s.network_files = vec![SandboxPath::parse("/etc/hosts".as_ref()).unwrap()];
        let p = Plan::new(&s).unwrap();
        assert_eq!(p.exec.program, Program::Builtin("fetchurl".into()));
        let body = encode_plan(&p);
        assert_eq!(decode_plan(&body), Ok(p));
        for n in 0..body.len() {
            assert!(decode_plan(&body[..n]).is_err(), "{n}");
        }
        // On pasta's network: the program and its arguments travel with the plan.
        s.pasta = Some(crate::plan::Pasta::new("/usr/bin/pasta".into()));
        let p = Plan::new(&s).unwrap();
        assert!(p.namespaces.net && p.pasta.is_some());
        let body = encode_plan(&p);
        assert_eq!(decode_plan(&body), Ok(p));
        for n in 0..body.len() {
            assert!(decode_plan(&body[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn ranged_plans_and_reclaims_round_trip() {
        let mut s = SandboxSpec::new(
            "/r".into(),
            "/nix/store".into(),
            "/b".into(),
            "/nix/store/aaaa-x/bin/sh".into(),
        );
        let slice = crate::plan::IdSlice {
            uid: 100_000,
            gid: 200_000,
            count: 65536,
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        };
        s.id_slice = Some(slice.clone());
        let p = Plan::new(&s).unwrap();
        let mut buf = Vec::new();
        write_plan(&mut buf, &p).unwrap();
        assert_eq!(read_plan(&mut buf.as_slice()).unwrap(), p);

        let ids = IdMaps::reclaim(1000, 1000, &slice);
        let paths = vec![PathBuf::from("/r"), PathBuf::from("/b")];
        let body = encode_reclaim(&ids, &paths);
        assert_eq!(
            decode_request(&body),
            Ok(Request::Reclaim {
                id_maps: ids,
                paths
            })
        );
        for n in RECLAIM_MAGIC.len()..body.len() {
            assert!(decode_request(&body[..n]).is_err(), "{n}");
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        let body = encode_plan(&plan());
        for n in 0..body.len() {
            assert!(decode_plan(&body[..n]).is_err(), "{n}");
        }
        let mut extra = body.clone();
        extra.push(0);
        assert_eq!(decode_plan(&extra), Err("trailing bytes"));
    }

    #[test]
    fn oversized_frames_are_refused() {
        let mut buf = (MAX_PLAN_BYTES + 1).to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 16]);
        assert!(read_plan(&mut buf.as_slice()).is_err());
    }

    #[test]
    fn reports_round_trip() {
        let reports = [
            Report::Started { pid: 4242 },
            Report::Failed {
                step: Step::RemountingReadOnly,
                path: Some("/nix/store/x".into()),
                errno: 1,
            },
            Report::Failed {
                step: Step::WritingUidMap,
                path: None,
                errno: 13,
            },
            Report::NotLocked { errno: 0 },
            Report::Exited { code: 3 },
            Report::Signaled { signal: 9 },
        ];
        let mut buf = Vec::new();
        for r in &reports {
            buf.extend(r.encode());
        }
        let mut rd = buf.as_slice();
        for r in &reports {
            assert_eq!(Report::read(&mut rd).unwrap().as_ref(), Some(r));
        }
        assert_eq!(Report::read(&mut rd).unwrap(), None);
        assert!(Report::decode(b"Z").is_err());
        assert!(Report::decode(b"F\xff\x00\x00\x00\x00\x00").is_err());
    }
}
