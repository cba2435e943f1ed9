//! `unrooted-find-roots`: answers "which store paths are roots?" for the store owner,
//! as root, and nothing else. See README.md for what it reads, reveals and how it is
//! confined.
#![forbid(unsafe_code)]

use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use unrooted_roots::{absolute, scan_all, write_answer, write_error, Limits};

const USAGE: &str = "usage: unrooted-find-roots --store-dir DIR --state-dir DIR --owner-uid UID
    (--inetd [--peer-instance N-PID-UID] | --listen SOCKET)
    [--max-entries N] [--max-seconds S] [--max-depth D] [--proc DIR]";

/// How long a client may take to read the answer before the helper gives up on it.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

struct Args {
    store_dir: PathBuf,
    state_dir: PathBuf,
    proc: PathBuf,
    owner_uid: u32,
    mode: Mode,
    limits: Limits,
}

enum Mode {
    /// systemd `Accept=yes`: the connection is stdin/stdout.
    Inetd { peer_instance: Option<String> },
    /// Bind and serve one connection at a time, forever.
    Listen(PathBuf),
}

fn parse_args(mut argv: impl Iterator<Item = String>) -> Result<Args, String> {
    let (mut store, mut state, mut uid, mut mode) = (None, None, None, None);
    let (mut peer, mut limits, mut proc) = (None, Limits::default(), PathBuf::from("/proc"));
    while let Some(flag) = argv.next() {
        if flag == "--inetd" {
            mode = Some(Mode::Inetd {
                peer_instance: None,
            });
            continue;
        }
        let value = argv.next().ok_or(format!("{flag} needs a value"))?;
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        let path = |v: String| absolute(PathBuf::from(v)).ok_or(format!("{flag}: not absolute"));
        match flag.as_str() {
            "--store-dir" => store = Some(path(value)?),
            "--state-dir" => state = Some(path(value)?),
            "--proc" => proc = path(value)?,
            "--listen" => mode = Some(Mode::Listen(path(value)?)),
            "--peer-instance" => peer = Some(value),
            "--owner-uid" => uid = Some(u32::try_from(num(&value)?).map_err(|e| e.to_string())?),
            "--max-entries" => limits.max_entries = num(&value)?,
            "--max-seconds" => limits.max_time = Duration::from_secs(num(&value)?),
            "--max-depth" => limits.max_depth = usize::try_from(num(&value)?).unwrap_or(64),
            _ => return Err(format!("unknown argument {flag}")),
        }
    }
    let mut mode = mode.ok_or("one of --inetd or --listen is required")?;
    if let Mode::Inetd { peer_instance } = &mut mode {
        *peer_instance = peer;
    }
    Ok(Args {
        store_dir: store.ok_or("--store-dir is required")?,
        state_dir: state.ok_or("--state-dir is required")?,
        owner_uid: uid.ok_or("--owner-uid is required")?,
        proc,
        mode,
        limits,
    })
}

fn answer(args: &Args, out: &mut dyn Write) -> io::Result<()> {
    let scan = scan_all(&args.store_dir, &args.state_dir, &args.proc, args.limits);
    for e in &scan.errors {
        eprintln!("unrooted-find-roots: {e}");
    }
    if scan.unreadable_proc_entries > 0 {
        let n = scan.unreadable_proc_entries;
        eprintln!("unrooted-find-roots: {n} /proc entries not readable (missing CAP_SYS_PTRACE?)");
    }
    write_answer(out, &scan)
}

/// systemd names an `Accept=yes` instance for an AF_UNIX peer `<n>-<pid>-<uid>`; the
/// uid is the kernel's SO_PEERCRED, which std cannot read itself.
fn peer_allowed(instance: &str, owner: u32) -> bool {
    instance
        .rsplit('-')
        .next()
        .and_then(|u| u.parse::<u32>().ok())
        == Some(owner)
}

/// The socket's directory and every ancestor must be owned by root and writable by
/// nobody else; otherwise the store owner could swap the path under us between
/// `bind` and `chmod`/`chown` and make root change the mode of another file.
fn check_socket_dir(socket: &Path) -> Result<(), String> {
    let mut dir = socket.parent();
    while let Some(d) = dir {
        let m = std::fs::symlink_metadata(d).map_err(|e| format!("{}: {e}", d.display()))?;
        let sticky_root = m.mode() & 0o1000 != 0;
        if !m.is_dir() || m.uid() != 0 || (m.mode() & 0o022 != 0 && !sticky_root) {
            return Err(format!(
                "{} must be a directory owned by root, writable only by root",
                d.display()
            ));
        }
        dir = d.parent();
    }
    Ok(())
}

fn listen(args: &Args, socket: &Path) -> Result<(), String> {
    check_socket_dir(socket)?;
    if std::fs::symlink_metadata(socket).is_ok_and(|m| m.file_type().is_socket_like()) {
        std::fs::remove_file(socket)
            .map_err(|e| format!("removing old {}: {e}", socket.display()))?;
    }
    let listener =
        UnixListener::bind(socket).map_err(|e| format!("binding {}: {e}", socket.display()))?;
    // Only the owner may connect: std cannot read SO_PEERCRED, so the socket's mode is
    // the access check (connecting needs write permission on the socket file).
    std::fs::set_permissions(socket, PermissionsExt::from_mode(0o600))
        .and_then(|()| std::os::unix::fs::lchown(socket, Some(args.owner_uid), None))
        .map_err(|e| format!("restricting {}: {e}", socket.display()))?;
    for conn in listener.incoming() {
        match conn {
            Ok(stream) => serve(args, stream),
            Err(e) => eprintln!("unrooted-find-roots: accept: {e}"),
        }
    }
    Ok(())
}

fn serve(args: &Args, mut stream: UnixStream) {
    let result = stream
        .set_write_timeout(Some(WRITE_TIMEOUT))
        .and_then(|()| answer(args, &mut io::BufWriter::new(&mut stream)))
        .and_then(|()| stream.shutdown(std::net::Shutdown::Both));
    if let Err(e) = result {
        eprintln!("unrooted-find-roots: answering: {e}");
    }
}

trait SocketLike {
    fn is_socket_like(&self) -> bool;
}

impl SocketLike for std::fs::FileType {
    fn is_socket_like(&self) -> bool {
        std::os::unix::fs::FileTypeExt::is_socket(self)
    }
}

fn main() -> ExitCode {
    let args = match parse_args(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("unrooted-find-roots: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let result = match &args.mode {
        Mode::Inetd { peer_instance } => {
            if let Some(i) = peer_instance
                .as_deref()
                .filter(|i| !peer_allowed(i, args.owner_uid))
            {
                let why = format!("refusing peer {i}: not uid {}", args.owner_uid);
                eprintln!("unrooted-find-roots: {why}");
                // The peer learns why (it gets no end-of-answer item, so it refuses
                // to collect either way).
                let _ = write_error(&mut io::stdout().lock(), &why);
                return ExitCode::from(1);
            }
            answer(&args, &mut io::BufWriter::new(io::stdout().lock())).map_err(|e| e.to_string())
        }
        Mode::Listen(socket) => listen(&args, socket),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("unrooted-find-roots: {e}");
            ExitCode::from(1)
        }
    }
}
