//! One client connection: authorisation, the handshake, then requests until the
//! client hangs up.
//!
//! A request's failure is reported to the client as one `STDERR_ERROR` and the
//! session goes on when the stream position is still known (the request was read to
//! its end, framed bodies drained); otherwise one error is sent and the connection is
//! closed, since nothing further on it could be parsed reliably.

use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;

use unrooted_protocol::handshake::{ClientHello, ServerHello, TrustedFlag};
use unrooted_protocol::request::ClientSettings;
use unrooted_protocol::{
    read_request, server_handshake, BodyKind, DaemonError as WireError, FramedReader,
    ProtocolError, ProtocolVersion, StderrWriter, WireContext,
};

use crate::ops::{self, OpError};
use crate::payer::Charge;
use crate::session::Session;
use crate::state::DaemonState;
use crate::trust::{self, Peer};

/// The version string the handshake reports (shown by `nix store ping` as
/// `Version: …`): the version of Nix whose daemon this one stands in for first, as
/// `nix-daemon` reports its own (Nix's tests/store-ping.sh looks for it), then ours.
pub(crate) const DAEMON_VERSION: &str = concat!("2.8.0 (unrooted ", env!("CARGO_PKG_VERSION"), ")");

/// How long a new connection may take to complete the handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Serves one connection to its end. Errors end only this connection.
pub(crate) fn handle(state: &DaemonState, stream: UnixStream, charge: &Charge) {
    let mut peer = match Peer::of_socket(&stream) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!("{e}");
            return;
        }
    };
    if charge.subordinate && charge.uid == peer.uid {
        peer.subordinate_of = Some(charge.payer.to_string());
    }
    serve_peer(state, stream, peer);
}

/// Serves one connection from `peer` (whom the kernel named, or, in the in-process
/// test harness only, whom the test chose): authorisation by the configured rules,
/// then the session.
pub(crate) fn serve_peer(state: &DaemonState, stream: UnixStream, peer: Peer) {
    let s = &state.config.settings;
    let trusted = match trust::authorize(
        &peer,
        &s.allowed_users,
        &s.trusted_users,
        &s.build_users_group,
        state.own_uid,
        trust::system_group,
    ) {
        Ok(t) => t,
        Err(e) => {
            // Closed without a word, as Nix does: the client reports the closed socket.
            tracing::warn!("{e}");
            return;
        }
    };
    // While a connection lasts its work may leave things in the store's temporary
    // area; once the last one ends the area goes (when empty).
    let _use = state.store.in_use();
    // The store as Nix opens it for each connection: re-made where something
    // removed it since, the database opened anew when it was replaced.
    if let Err(e) = state.store.revalidate() {
        tracing::warn!(
            "the store is not usable: {}",
            unrooted_builder::error_chain(&e)
        );
    }
    // Only accounts get directories: a user's subordinate ids (tens of thousands)
    // must not be able to fill the per-user parents.
    if peer.account {
        crate::userdirs::ensure(&state.config.locations.state_dir, &peer, state.own_uid);
    }
    let id = state.next_connection_id();
    tracing::debug!(user = %peer.user, pid = peer.pid, trusted, "connection {id} accepted");
    if let Err(e) = run(state, stream, peer, trusted, id) {
        tracing::debug!("connection {id} ended: {e}");
    }
    state.temp_roots.remove_owner(id);
}

type Reader = BufReader<UnixStream>;
type Out = StderrWriter<BufWriter<UnixStream>>;

/// The handshake, then the session's requests until the client hangs up.
fn run(
    state: &DaemonState,
    stream: UnixStream,
    peer: Peer,
    trusted: bool,
    id: u64,
) -> Result<(), ProtocolError> {
    let read_half = stream.try_clone().map_err(|source| ProtocolError::Read {
        field: "connection",
        source,
    })?;
    let mut reader = BufReader::with_capacity(64 << 10, read_half);
    let writer = BufWriter::with_capacity(64 << 10, stream);
    let mut out = StderrWriter::new(writer, ProtocolVersion::MIN_SUPPORTED);
    let store_dir = state.config.locations.store_dir.clone();
    let client = handshake(&mut reader, &mut out, trusted, &store_dir)?;
    let version = client.version;
    out = StderrWriter::new(out.into_inner(), version);
    out.last()?;
    out.flush()?;
    let mut session = Session {
        state,
        peer,
        trusted,
        cx: WireContext {
            features: unrooted_protocol::Features::from_names(&client.features),
            ..WireContext::new(version, store_dir)
        },
        settings: ClientSettings::default(),
        id,
    };
    serve_requests(&mut session, &mut reader, &mut out)
}

/// The server's side of the handshake, within [`HANDSHAKE_TIMEOUT`].
fn handshake(
    reader: &mut Reader,
    out: &mut Out,
    trusted: bool,
    store_dir: &unrooted_format::StoreDir,
) -> Result<ClientHello, ProtocolError> {
    let hello = ServerHello {
        version: ProtocolVersion::RECOMMENDED,
        daemon_version: DAEMON_VERSION.to_owned(),
        trust: if trusted {
            TrustedFlag::Trusted
        } else {
            TrustedFlag::NotTrusted
        },
        // Protocol 1.38's features this daemon honours; the connection uses the
        // intersection with the client's (none for a client that sends none).
        features: unrooted_protocol::Features::SERVED.names(),
    };
    let limits = WireContext::new(ProtocolVersion::MIN_SUPPORTED, store_dir.clone()).limits;
    // A client has a bounded time to finish the handshake, so a connection that is
    // opened and never spoken on does not hold its slot for ever. After the
    // handshake a client may stay idle (Nix keeps pooled connections open while it
    // evaluates), so the limit is lifted.
    set_read_timeout(reader, Some(HANDSHAKE_TIMEOUT))?;
    let client = server_handshake(reader, out.get_mut(), &hello, &limits)?;
    set_read_timeout(reader, None)?;
    Ok(client)
}

/// Reads and performs requests until the client hangs up or the stream is lost.
fn serve_requests(
    session: &mut Session<'_>,
    reader: &mut Reader,
    out: &mut Out,
) -> Result<(), ProtocolError> {
    loop {
        let request = match read_request(reader, &session.cx) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                if e.body_to_drain() == Some(BodyKind::Framed) {
                    FramedReader::new(&mut *reader, session.cx.limits.max_frame)
                        .drain()
                        .map_err(|source| ProtocolError::Read {
                            field: "framed body",
                            source,
                        })?;
                }
                out.error(&WireError::from(&e))?;
                continue;
            }
            Err(e) => {
                // The stream position is unknown: say why once, then hang up.
                let _ = out.error(&WireError::from(&e));
                return Err(e);
            }
        };
        let op = request.opcode();
        match ops::perform(session, request, reader, out) {
            Ok(()) => {}
            Err(OpError::Client(msg)) => {
                tracing::debug!("{op:?} failed: {msg}");
                out.error(&WireError::new(msg))?;
            }
            Err(OpError::Fatal(e)) => {
                let _ = out.error(&WireError::from(&e));
                return Err(e);
            }
        }
        out.flush()?;
    }
}

fn set_read_timeout(
    reader: &BufReader<UnixStream>,
    timeout: Option<std::time::Duration>,
) -> Result<(), ProtocolError> {
    reader
        .get_ref()
        .set_read_timeout(timeout)
        .map_err(|source| ProtocolError::Read {
            field: "connection",
            source,
        })
}
