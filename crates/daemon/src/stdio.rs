//! `unrooted daemon --stdio`: one worker-protocol connection on stdin and stdout, what
//! an `ssh-ng://` client runs on the far side (Nix 2.8 runs `<remote-program> --stdio`,
//! `remote-program` defaulting to `nix-daemon`, with `--store <uri>` appended when
//! the client's URI names a remote store).
//!
//! Like Nix 2.8's `nix-daemon --stdio` when a daemon serves the store, this relays the
//! bytes between stdin/stdout and the running daemon's socket. It never serves the
//! store itself: the daemon sees the relaying process as an ordinary socket client,
//! so the SSH user's peer credentials go through exactly the trust rules
//! (`allowed-users`, `trusted-users`) any local client goes through. (Nix, finding no
//! daemon, serves the store in-process with full trust; unrooted refuses instead,
//! since the store belongs to its owner and only the daemon writes it.)

use std::fs::File;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why a `--stdio` relay failed.
#[derive(Debug, Error)]
pub enum StdioError {
    /// No daemon accepts connections on the socket.
    #[error("connecting to the unrooted daemon at {path} (is `unrooted daemon` running for this store?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Standard input or output could not be taken over.
    #[error("taking over standard input and output")]
    Streams(#[source] io::Error),
    /// Relaying from the daemon to standard output failed.
    #[error("relaying the daemon's replies to standard output")]
    ToClient(#[source] io::Error),
}

/// Relays stdin to the daemon at `socket` and the daemon's replies to stdout until
/// the daemon closes the connection (after the client closed stdin, or on its own).
pub fn relay(socket: &Path) -> Result<(), StdioError> {
    let stream = UnixStream::connect(socket).map_err(|source| StdioError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    // Raw descriptors, not `Stdout`: its line buffering would hold back binary
    // frames that end without a newline.
    let stdin = File::from(
        io::stdin()
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::Streams)?,
    );
    let stdout = File::from(
        io::stdout()
            .as_fd()
            .try_clone_to_owned()
            .map_err(StdioError::Streams)?,
    );
    let to_daemon = stream.try_clone().map_err(StdioError::Streams)?;
    // Client to daemon on a thread of its own. When the client closes its side (or
    // reading fails), the daemon is told the client has finished, ends the
    // connection, and the loop below ends.
    std::thread::Builder::new()
        .name("stdio-to-daemon".into())
        .spawn(move || {
            let mut stdin = stdin;
            let mut to = &to_daemon;
            if let Err(e) = pump(&mut stdin, &mut to) {
                tracing::debug!("relaying the client's requests: {e}");
            }
            let _ = to_daemon.shutdown(Shutdown::Write);
        })
        .map_err(StdioError::Streams)?;
    let mut from = &stream;
    let mut out = &stdout;
    let copied = pump(&mut from, &mut out);
    // Whatever ended the relay, the daemon's side is done with.
    let _ = stream.shutdown(Shutdown::Both);
    copied.map_err(StdioError::ToClient)?;
    Ok(())
}

/// Copies `from` to `to` until `from` ends, passing on each read at once.
///
/// Not `io::copy`: on Linux it splices between pipes and sockets with a length of
/// gigabytes, and a splice from a pipe may then wait for more of the client's bytes
/// before passing on the request already there (measured: `nix store ping` over
/// `ssh-ng://` hung that way, intermittently).
fn pump(from: &mut impl Read, to: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        to.flush()?;
    }
}
