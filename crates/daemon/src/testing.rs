//! The daemon in-process, for tests any user can run (feature `test-support`, which
//! only this crate's own tests enable; no shipped path reaches this module).
//!
//! [`InProcessDaemon`] opens the store a [`Config`] names, as the current user, and
//! serves its socket from a thread of the test process: the same connection code,
//! authorisation and operations as `unrooted daemon`, without root, other users or
//! a second process. Two things differ, both for tests only:
//!
//! - **The peer's identity can be chosen.** The kernel names the current user for
//!   every connection a test makes, and the store owner is always trusted, so trust
//!   rules could not be tested. [`InProcessDaemon::set_socket_peer`] names whom the
//!   socket's next connections are from (for the real Nix client), and
//!   [`InProcessDaemon::connect_as`] serves one end of a socket pair as a given
//!   peer. Either way the peer then goes through the configured `allowed-users` and
//!   `trusted-users` exactly as a kernel-named one would.
//! - **The sandbox helper is named** ([`InProcessDaemon::start`]'s `exe`), the
//!   current executable being a test binary.
//!
//! The daemon stops when the value is dropped (connections still open are served to
//! their end by their threads).

use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crate::connection;
use crate::state::DaemonState;
use crate::trust::Peer;
use crate::{Config, DaemonError};

/// A daemon served from threads of this process.
pub struct InProcessDaemon {
    shared: Arc<Shared>,
    socket: PathBuf,
    acceptor: Option<JoinHandle<()>>,
}

struct Shared {
    state: DaemonState,
    stop: AtomicBool,
    /// Whom connections over the socket are from; `None`: whom the kernel says.
    socket_peer: Mutex<Option<Peer>>,
    active: AtomicUsize,
}

impl Shared {
    fn serve(&self, stream: UnixStream, peer: Peer) {
        self.active.fetch_add(1, Ordering::SeqCst);
        connection::serve_peer(&self.state, stream, peer);
        if self.active.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.state.store.release_idle_readers();
        }
    }
}

impl InProcessDaemon {
    /// Opens the store `config` names as the current user and serves
    /// `config.locations.socket_path`. `exe` stands for the daemon's executable:
    /// builders in the sandbox are started by `unrooted-sandbox helper` found beside
    /// it, builtin builders by `exe sandbox-helper`.
    pub fn start(config: Config, exe: &Path) -> Result<Self, DaemonError> {
        let own_uid = rustix::process::geteuid().as_raw();
        let state = DaemonState::open_for(config, own_uid, exe)?;
        crate::userdirs::repair_parents(&state.config.locations.state_dir, own_uid);
        let socket = state.config.locations.socket_path.clone();
        let listener = crate::server::bind(&socket)?;
        let shared = Arc::new(Shared {
            state,
            stop: AtomicBool::new(false),
            socket_peer: Mutex::new(None),
            active: AtomicUsize::new(0),
        });
        let acceptor = {
            let shared = Arc::clone(&shared);
            std::thread::Builder::new()
                .name("test-acceptor".into())
                .spawn(move || accept(&shared, &listener))
                .map_err(DaemonError::Serve)?
        };
        Ok(Self {
            shared,
            socket,
            acceptor: Some(acceptor),
        })
    }

    /// The socket it serves.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &Config {
        &self.shared.state.config
    }

    /// The uid it runs as (the store owner's).
    pub fn own_uid(&self) -> u32 {
        self.shared.state.own_uid
    }

    /// Makes the connections accepted from now on over the socket come from `peer`
    /// (`None`: from whom the kernel names, as in the daemon).
    pub fn set_socket_peer(&self, peer: Option<Peer>) {
        *self
            .shared
            .socket_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = peer;
    }

    /// A connection from `peer`: one end of a socket pair, the other served by the
    /// daemon on a thread of its own.
    pub fn connect_as(&self, peer: Peer) -> std::io::Result<UnixStream> {
        let (ours, theirs) = UnixStream::pair()?;
        let shared = Arc::clone(&self.shared);
        std::thread::Builder::new()
            .name("test-connection".into())
            .spawn(move || shared.serve(theirs, peer))?;
        Ok(ours)
    }

    /// A peer with an account's ids as the kernel would report it (names from the
    /// user database, decimal ids where there are none).
    pub fn peer(pid: u32, uid: u32, gid: u32) -> Peer {
        Peer::from_ids(pid, uid, gid)
    }
}

fn accept(shared: &Arc<Shared>, listener: &UnixListener) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let stream = match stream {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                continue;
            }
        };
        let chosen = shared
            .socket_peer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let peer = match chosen {
            Some(p) => p,
            None => match Peer::of_socket(&stream) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!("{e}");
                    continue;
                }
            },
        };
        let shared = Arc::clone(shared);
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .spawn(move || shared.serve(stream, peer));
        if let Err(e) = spawned {
            tracing::warn!("starting a connection thread: {e}");
        }
    }
}

impl Drop for InProcessDaemon {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wakes the acceptor, which then sees the flag.
        let _ = UnixStream::connect(&self.socket);
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.socket);
    }
}
