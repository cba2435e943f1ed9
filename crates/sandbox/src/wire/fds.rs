//! Frames with descriptors passed alongside (`SCM_RIGHTS`).

use std::io::{self, IoSlice, IoSliceMut, Read};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};

use super::{
    decode_request_body, encode_map_namespace, encode_plan, encode_plan_with, request_body, Report,
    Request,
};
use crate::plan::{IdMapMethod, IdMaps, Plan};

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
