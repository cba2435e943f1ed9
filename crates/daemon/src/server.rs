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

use crate::payer::{Charge, Payer, SubUidOwners};

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
    let listener = unrooted_store::unix_socket::bind(path).map_err(|source| ServerError::Bind {
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

/// The bounds on connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The most connections served at once.
    pub max_total: usize,
    /// The most connections charged to one user (see [`crate::payer`]) at once.
    pub max_per_user: usize,
    /// The last connections of `max_total`, which only users holding fewer than
    /// [`FEW`] connections may take: however many users fill the rest, a user who
    /// holds few can still connect.
    pub reserved: usize,
}

/// A user holding fewer connections than this may take one of the reserve.
pub const FEW: usize = 4;

impl Limits {
    /// The bounds, with the reserve a quarter of `max_total` at most (so that a few
    /// heavy users still get most of the daemon).
    pub fn new(max_total: usize, max_per_user: usize, reserved: usize) -> Self {
        Self {
            max_total,
            max_per_user,
            reserved: reserved.min(max_total / 4),
        }
    }
}

/// Why a connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// `max_total` connections are open.
    Full,
    /// Its payer holds `max_per_user`.
    PerUser,
    /// Only the reserve is left, and its payer holds [`FEW`] or more.
    Reserve,
}

/// Accepts connections forever, running `handle` on a thread of its own for each,
/// within `limits` (further clients are closed at once, with a log line, rather
/// than queued without bound). Each connection is charged to a user by `owners`: a
/// subordinate uid to the user owning its range, so one user cannot take every
/// connection by connecting from many of its ids; the reserve keeps the last
/// connections for users who hold few.
pub fn serve<F>(
    listener: UnixListener,
    limits: Limits,
    mut owners: SubUidOwners,
    handle: F,
) -> io::Result<()>
where
    F: Fn(UnixStream, Charge) + Send + Sync + 'static,
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
        // The uid decides only the charge here; authorisation happens in the
        // connection's own thread. A peer whose credentials cannot be read counts as
        // one anonymous user.
        let uid = rustix::net::sockopt::socket_peercred(&stream)
            .map(|c| c.uid.as_raw())
            .unwrap_or(u32::MAX);
        owners.refresh();
        let charge = owners.charge(uid);
        let guard = match slots.take(&charge.payer, &limits) {
            Ok(g) => g,
            Err(why) => {
                log_refusal(&charge, why, &limits);
                drop(stream);
                continue;
            }
        };
        let handle = Arc::clone(&handle);
        // The guard travels into the thread; if the thread cannot start, the closure
        // and the guard are dropped here, so the counts cannot leak either way.
        let spawned = std::thread::Builder::new()
            .name("connection".into())
            .stack_size(512 << 10)
            .spawn(move || {
                let _guard = guard;
                handle(stream, charge);
            });
        if let Err(e) = spawned {
            tracing::warn!("starting a connection thread: {e}");
        }
    }
}

fn log_refusal(charge: &Charge, why: Refusal, limits: &Limits) {
    let who = if charge.subordinate {
        format!("uid {} (a subordinate id of {})", charge.uid, charge.payer)
    } else {
        format!("uid {}", charge.uid)
    };
    match why {
        Refusal::Full => tracing::warn!(
            "refusing a connection from {who}: {} connections are open",
            limits.max_total
        ),
        Refusal::PerUser => tracing::warn!(
            "refusing a connection from {who}: {} has {} open",
            charge.payer,
            limits.max_per_user
        ),
        Refusal::Reserve => tracing::warn!(
            "refusing a connection from {who}: only the {} kept for users with fewer than {FEW} are left",
            limits.reserved
        ),
    }
}

/// Connection counts, in total and per payer.
#[derive(Default)]
struct Slots {
    counts: Mutex<(usize, HashMap<Payer, usize>)>,
}

impl Slots {
    /// Takes a slot for `payer`, or says which bound refuses it.
    fn take(self: &Arc<Self>, payer: &Payer, limits: &Limits) -> Result<Release, Refusal> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_user) = &mut *counts;
        let mine = per_user.get(payer).copied().unwrap_or(0);
        if *total >= limits.max_total {
            return Err(Refusal::Full);
        }
        if mine >= limits.max_per_user {
            return Err(Refusal::PerUser);
        }
        if *total >= limits.max_total - limits.reserved && mine >= FEW {
            return Err(Refusal::Reserve);
        }
        *total += 1;
        *per_user.entry(payer.clone()).or_insert(0) += 1;
        Ok(Release {
            slots: Arc::clone(self),
            payer: payer.clone(),
        })
    }
}

/// Gives back a connection slot when dropped, even if the handler panicked.
struct Release {
    slots: Arc<Slots>,
    payer: Payer,
}

impl Drop for Release {
    fn drop(&mut self) {
        let mut counts = self.slots.counts.lock().unwrap_or_else(|e| e.into_inner());
        let (total, per_user) = &mut *counts;
        *total -= 1;
        if let Some(n) = per_user.get_mut(&self.payer) {
            *n -= 1;
            if *n == 0 {
                per_user.remove(&self.payer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reserve_is_for_users_holding_few() {
        let slots = Arc::new(Slots::default());
        let limits = Limits::new(16, 16, 4);
        let heavy = Payer::Uid(1);
        let held: Vec<Release> = (0..12)
            .map(|_| slots.take(&heavy, &limits).unwrap())
            .collect();
        // 12 of 16 taken: the heavy user is held back from the last 4.
        assert_eq!(slots.take(&heavy, &limits).err(), Some(Refusal::Reserve));
        // Users holding fewer than FEW get them.
        let light: Vec<Release> = (0..4)
            .map(|_| slots.take(&Payer::Uid(2), &limits).unwrap())
            .collect();
        assert_eq!(
            slots.take(&Payer::Uid(3), &limits).err(),
            Some(Refusal::Full)
        );
        drop(light);
        let a: Vec<Release> = (0..FEW)
            .map(|_| slots.take(&Payer::Uid(4), &limits).unwrap())
            .collect();
        drop(a);
        drop(held);
        assert_eq!(slots.counts.lock().unwrap().0, 0);
        assert!(slots.counts.lock().unwrap().1.is_empty());
    }

    #[test]
    fn per_user_bound_and_limits() {
        let slots = Arc::new(Slots::default());
        let limits = Limits::new(100, 3, 1000);
        assert_eq!(limits.reserved, 25, "at most a quarter");
        let p = Payer::Name("ghost".into());
        let _held: Vec<Release> = (0..3).map(|_| slots.take(&p, &limits).unwrap()).collect();
        assert_eq!(slots.take(&p, &limits).err(), Some(Refusal::PerUser));
        assert!(slots.take(&Payer::Uid(7), &limits).is_ok());
    }
}
