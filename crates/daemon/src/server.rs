//! The socket server: one listening Unix socket (bound here, or handed over by
//! systemd through `LISTEN_FDS`), one thread per connection, a bound on connections.
//!
//! Threads, not async: every operation ends in blocking SQLite and file system work,
//! connections are few (one per running Nix command), and a thread per connection
//! keeps one slow or dead client from ever blocking another without any care about
//! blocking inside an executor.

use std::collections::HashMap;
use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use thiserror::Error;

/// Why the server could not start or stopped.
#[derive(Debug, Error)]
pub enum ServerError {
    /// The socket's directory could not be created.
    #[error("creating the socket directory {path}")]
    SocketDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A stale socket could not be removed.
    #[error("removing the stale socket {path}")]
    RemoveStale {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Binding the socket failed.
    #[error("binding the socket {path}")]
    Bind {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The socket's mode could not be set.
    #[error("making the socket {path} accessible to every user")]
    Chmod {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// systemd passed something unusable in `LISTEN_FDS`.
    #[error("taking the socket passed by systemd (LISTEN_FDS)")]
    Activation(#[source] io::Error),
}

/// Takes the listening socket systemd passed (`LISTEN_FDS`), if any, and makes it
/// close-on-exec. systemd passes it without: every program the daemon started (the
/// spare sandbox helper, `newuidmap`) inherited it and held the listening socket for as
/// long as it ran. Called before the daemon starts any program.
pub fn take_activated() -> Result<Option<UnixListener>, ServerError> {
    let mut fds = listenfd::ListenFd::from_env();
    if fds.len() == 0 {
        return Ok(None);
    }
    let listener = fds.take_unix_listener(0).map_err(ServerError::Activation)?;
    if let Some(l) = &listener {
        rustix::io::fcntl_setfd(l, rustix::io::FdFlags::CLOEXEC)
            .map_err(|e| ServerError::Activation(e.into()))?;
    }
    Ok(listener)
}

/// Gets the listening socket: the one systemd passed (`LISTEN_FDS`, see
/// [`take_activated`]), or a fresh one bound at `path`, mode 0666 so every user can
/// connect (who may actually use the daemon is decided per connection from the
/// peer's credentials).
pub fn listen(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(listener) = take_activated()? {
        return Ok(listener);
    }
    bind(path)
}

/// Binds a fresh listening socket at `path` (see [`listen`]).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|source| ServerError::SocketDir {
            path: dir.into(),
            source,
        })?;
    }
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::RemoveStale {
                path: path.into(),
                source,
            })
        }
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.into(),
        source,
    })?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o666)).map_err(|source| {
        ServerError::Chmod {
            path: path.into(),
            source,
        }
    })?;
    Ok(listener)
}

/// Accepts connections forever, running `handle` on a thread of its own for each,
/// with at most `max_connections` at once and at most `max_per_user` for any one uid
/// (further clients are closed at once, with a log line, rather than queued without
/// bound). The per-user bound is what keeps one user who opens connections and
/// leaves them idle from locking every other user out.
pub fn serve<F>(
    listener: UnixListener,
    max_connections: usize,
    max_per_user: usize,
    handle: F,
) -> io::Result<()>
where
    F: Fn(UnixStream) + Send + Sync + 'static,
{
    let handle = Arc::new(handle);
    let slots = Arc::new(Slots::default());
    loop {
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            // Running out of fds or memory is transient: report and keep serving.
            Err(e) => {
                tracing::warn!("accepting a connection: {e}");
                std::thread::sleep(std::time::Duration::from_millis(50));
                continue;
            }
        };
        // The uid decides only the per-user bound here; authorisation happens in the
        // connection's own thread. A peer whose credentials cannot be read counts as
        // one anonymous user.
        let uid = rustix::net::sockopt::socket_peercred(&stream)
            .map(|c| c.uid.as_raw())
            .unwrap_or(u32::MAX);
        let Some(guard) = slots.take(uid, max_connections, max_per_user) else {
            drop(stream);
            continue;
        };
        let handle = Arc::clone(&handle);
        // The guard travels into the thread; if the thread cannot start, the closure
        // and the guard are dropped here, so the counts cannot leak either way.
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(512 << 10)
            .spawn(move || {
                let _guard = guard;
                handle(stream);
            });
        if let Err(e) = spawned {
            tracing::warn!("starting a connection thread: {e}");
        }
    }
}

/// Connection counts, in total and per uid.
#[derive(Default)]
struct Slots {
    counts: Mutex<(usize, HashMap<u32, usize>)>,
}

impl Slots {
    /// Takes a slot for `uid`, or refuses when either bound is reached.
    fn take(self: &Arc<Self>, uid: u32, max_total: usize, max_per_user: usize) -> Option<Release> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_user) = &mut *counts;
        let mine = per_user.entry(uid).or_insert(0);
        if *total >= max_total {
            tracing::warn!("refusing a connection: {max_total} connections are open");
            return None;
        }
        if *mine >= max_per_user {
            tracing::warn!("refusing a connection from uid {uid}: it has {max_per_user} open");
            return None;
        }
        *total += 1;
        *mine += 1;
        Some(Release {
            slots: Arc::clone(self),
            uid,
        })
    }
}

/// Gives back a connection slot when dropped, even if the handler panicked.
struct Release {
    slots: Arc<Slots>,
    uid: u32,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_user) = &mut *counts;
        *total -= 1;
        if let Some(n) = per_user.get_mut(&self.uid) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.uid);
            }
        }
    }
}
