//! One client connection: authorisation, the handshake, then requests until the
//! client hangs up.
//!
//! A request's failure is reported to the client as one `STDERR_ERROR` and the
//! session goes on when the stream position is still known (the request was read to
//! its end, framed bodies drained); otherwise one error is sent and the connection is
//! closed, since nothing further on it could be parsed reliably.

use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicU64, Ordering};

use unrooted_format::signature::TrustedKeys;
use unrooted_format::StorePath;
use unrooted_gc::{GcConfig, TempRoots};
use unrooted_protocol::handshake::{ServerHello, TrustedFlag};
use unrooted_protocol::request::ClientSettings;
use unrooted_protocol::{
    read_request, server_handshake, BodyKind, DaemonError as WireError, FramedReader,
    ProtocolError, ProtocolVersion, StderrWriter, WireContext,
};
use unrooted_store::{LocalStore, LocalStoreConfig};

use crate::config::Config;
use crate::ops::{self, OpError};
use crate::payer::Charge;
use crate::trust::{self, Peer};
use crate::DaemonError;
use crate::LayerSettings;

/// The version string the handshake reports (shown by `nix store ping` as
/// `Version: …`): the version of Nix whose daemon this one stands in for first, as
/// `nix-daemon` reports its own (Nix's tests/store-ping.sh looks for it), then ours.
pub(crate) const DAEMON_VERSION: &str = concat!("2.8.0 (unrooted ", env!("CARGO_PKG_VERSION"), ")");

/// How long a new connection may take to complete the handshake.
const HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// What all connections share.
pub(crate) struct DaemonState {
    /// The configuration.
    pub config: Config,
    /// The store.
    pub store: LocalStore,
    /// The daemon's own uid (the store owner).
    pub own_uid: u32,
    /// Builds for every connection.
    pub scheduler: unrooted_builder::Scheduler,
    /// Temporary roots of open connections (by connection id) and of adds and builds
    /// in progress: paths in use, which the collector must keep.
    pub temp_roots: TempRoots,
    /// The collector's settings.
    pub gc_config: GcConfig,
    /// Keeps deleting collections apart from adds of paths not known in advance.
    pub gc_barrier: crate::gc_ops::GcBarrier,
    /// Automatic collection from `min-free`/`max-free`.
    pub auto_gc: crate::gc_ops::AutoGc,
    /// What binary caches answered lately (shared by all connections).
    pub narinfo_cache: Option<std::sync::Arc<unrooted_substitute::NarInfoCache>>,
    /// `post-build-upload`: outputs built here go to these caches afterwards.
    pub uploader: Option<crate::post_build::Uploader>,
    next_connection: AtomicU64,
}

impl DaemonState {
    /// Opens the store the configuration names.
    pub fn open(config: Config, own_uid: u32) -> Result<Self, DaemonError> {
        Self::open_for(config, own_uid, &crate::build_ops::daemon_exe())
    }

    /// [`DaemonState::open`] with `exe` standing for the daemon's executable (see
    /// [`crate::build_ops::scheduler_for`]).
    pub fn open_for(
        config: Config,
        own_uid: u32,
        exe: &std::path::Path,
    ) -> Result<Self, DaemonError> {
        let l = &config.locations;
        let mut store_config = LocalStoreConfig::new(
            l.store_dir.clone(),
            l.store_dir.as_str().into(),
            l.state_dir.clone(),
            l.log_dir.clone(),
        );
        let keys = config.settings.trusted_public_keys.join(" ");
        store_config.trusted_public_keys = TrustedKeys::parse(&keys).unwrap_or_else(|e| {
            tracing::warn!("ignoring trusted-public-keys: {e}");
            TrustedKeys::new()
        });
        store_config.require_sigs = config.settings.require_sigs;
        // Durability against a system crash (power loss), beyond what a killed
        // process needs: Nix's `fsync-metadata` (default true) governs the database;
        // `fsync-store-paths` (default false, as Nix, which never flushes added
        // files) flushes each added path before it is registered. A killed daemon
        // loses nothing either way: the page cache outlives the process.
        if config.raw.get("fsync-metadata") == Some("false") {
            store_config.db.fsync_metadata = false;
        }
        store_config.fsync_paths = config.raw.get("fsync-store-paths") == Some("true");
        // The scheduler first: it gives back what builds of a killed daemon left, which
        // the store's sweep of old temporary areas could not remove otherwise.
        let scheduler =
            crate::build_ops::scheduler_for(&config, exe).map_err(DaemonError::Build)?;
        let store = LocalStore::open(store_config).map_err(|source| DaemonError::Store {
            store_dir: l.store_dir.to_string(),
            source: Box::new(source),
        })?;
        let gc_config = config.gc_config()?;
        let s = &config.settings;
        let auto_gc = crate::gc_ops::AutoGc::new(s.min_free, s.max_free, s.min_free_check_interval);
        let narinfo_cache = crate::subst_ops::open_narinfo_cache(&config);
        let uploader = crate::post_build::Uploader::start(&config);
        Ok(Self {
            uploader,
            narinfo_cache,
            config,
            store,
            own_uid,
            scheduler,
            temp_roots: TempRoots::new(),
            gc_config,
            gc_barrier: crate::gc_ops::GcBarrier::default(),
            auto_gc,
            next_connection: AtomicU64::new(1),
        })
    }
}

/// The state of one session.
pub(crate) struct Session<'a> {
    /// What all connections share.
    pub state: &'a DaemonState,
    /// Who is connected.
    pub peer: Peer,
    /// Whether the peer is in `trusted-users`.
    pub trusted: bool,
    /// The negotiated protocol version and store directory.
    pub cx: WireContext,
    /// The client's settings from SetOptions, already filtered by trust.
    pub settings: ClientSettings,
    /// This connection's id in [`DaemonState::temp_roots`].
    pub id: u64,
}

impl Session<'_> {
    /// Keeps `path` alive until the connection closes. Waits while a collection is
    /// deleting it, so a caller that then finds it valid can rely on it.
    pub fn add_temp_root(&self, path: &StorePath) {
        self.state.temp_roots.add(self.id, path.clone());
    }
}

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
    let id = state.next_connection.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(user = %peer.user, pid = peer.pid, trusted, "connection {id} accepted");
    if let Err(e) = run(state, stream, peer, trusted, id) {
        tracing::debug!("connection {id} ended: {e}");
    }
    state.temp_roots.remove_owner(id);
}

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
    let store_dir = state.config.locations.store_dir.clone();
    let limits = WireContext::new(ProtocolVersion::MIN_SUPPORTED, store_dir.clone()).limits;
    // A client has a bounded time to finish the handshake, so a connection that is
    // opened and never spoken on does not hold its slot for ever. After the
    // handshake a client may stay idle (Nix keeps pooled connections open while it
    // evaluates), so the limit is lifted.
    set_read_timeout(&reader, Some(HANDSHAKE_TIMEOUT))?;
    let client = server_handshake(&mut reader, out.get_mut(), &hello, &limits)?;
    set_read_timeout(&reader, None)?;
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
    loop {
        let request = match read_request(&mut reader, &session.cx) {
            Ok(Some(r)) => r,
            Ok(None) => return Ok(()),
            Err(e) if e.is_recoverable() => {
                if e.body_to_drain() == Some(BodyKind::Framed) {
                    FramedReader::new(&mut reader, session.cx.limits.max_frame)
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
        match ops::perform(&mut session, request, &mut reader, &mut out) {
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
