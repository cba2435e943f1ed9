//! The running daemon and the roots helper, asked over their sockets.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use unrooted_format::StoreDir;
use unrooted_protocol::client::Client;
use unrooted_protocol::ProtocolVersion;

use super::{finding, read_bounded, Finding, Verdict, MAX_PROC_READ, MAX_ROOTS_ANSWER};
use crate::accounts;
use crate::host::Layout;
use crate::Host;

fn connect(path: &Path, timeout: Duration) -> std::io::Result<UnixStream> {
    let s = UnixStream::connect(path)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    Ok(s)
}

/// A `Uid:` or `CapEff:` line of `/proc/PID/status`.
fn proc_status(host: &Host, pid: i32, key: &str) -> Option<String> {
    let text = read_bounded(
        &host.path(&PathBuf::from(format!("/proc/{pid}/status"))),
        MAX_PROC_READ,
    )?;
    text.lines().find_map(|l| {
        l.strip_prefix(key)?
            .strip_prefix(':')
            .map(|v| v.trim().to_owned())
    })
}

pub(super) fn daemon(host: &Host, l: &Layout, timeout: Duration, out: &mut Vec<Finding>) {
    let socket = host.path(&l.daemon_socket());
    let start_fix = "systemctl enable --now unrooted-daemon.socket; journalctl -u unrooted-daemon";
    let stream = match connect(&socket, timeout) {
        Ok(s) => s,
        Err(e) => {
            out.push(finding(
                "daemon socket",
                Verdict::Fail,
                format!("cannot connect to {}: {e}", socket.display()),
                Some(start_fix),
            ));
            return;
        }
    };
    let Ok(store_dir) = StoreDir::new(&l.store_dir.to_string_lossy()) else {
        out.push(finding(
            "daemon socket",
            Verdict::Fail,
            "invalid store directory".into(),
            None,
        ));
        return;
    };
    // Peer credentials before the handshake: on socket activation the pid is the
    // daemon's once it accepted, which happens by the time the handshake answers.
    let reader = match stream.try_clone() {
        Ok(r) => r,
        Err(e) => {
            out.push(finding("daemon socket", Verdict::Fail, e.to_string(), None));
            return;
        }
    };
    match Client::handshake(reader, &stream, store_dir, ProtocolVersion::NIX_2_8) {
        Ok(c) => out.push(finding(
            "daemon socket",
            Verdict::Ok,
            format!(
                "{} answers (protocol {}.{}{})",
                l.daemon_socket().display(),
                c.server_info().version.major(),
                c.server_info().version.minor(),
                c.server_info()
                    .daemon_version
                    .as_ref()
                    .map(|v| format!(", daemon {v}"))
                    .unwrap_or_default()
            ),
            None,
        )),
        Err(e) => {
            out.push(finding(
                "daemon socket",
                Verdict::Fail,
                format!("{} accepts but the handshake failed: {e}", socket.display()),
                Some(start_fix),
            ));
            return;
        }
    }
    // SO_PEERCRED names whoever created the listening socket: under socket
    // activation that is systemd (pid 1, root), not the daemon. The daemon is the
    // process holding the listening socket (pid 1 aside), found through
    // /proc/net/unix and /proc/*/fd; the peer's pid is the fallback.
    let holders = fs::canonicalize(&socket)
        .ok()
        .and_then(|real| listening_inode(host, &real))
        .map(|inode| socket_holders(host, inode))
        .unwrap_or_default();
    let pids: Vec<i32> = match (
        holders.is_empty(),
        rustix::net::sockopt::socket_peercred(&stream),
    ) {
        (false, _) => holders,
        (true, Ok(c)) => vec![c.pid.as_raw_nonzero().get()],
        (true, Err(e)) => {
            out.push(finding(
                "daemon identity",
                Verdict::Warn,
                format!("no process holds the socket, and SO_PEERCRED: {e}"),
                None,
            ));
            return;
        }
    };
    for pid in pids {
        out.push(identity(host, pid));
    }
}

/// The finding for the daemon process `pid`: root is a failure, capabilities a warning.
fn identity(host: &Host, pid: i32) -> Finding {
    let uids = proc_status(host, pid, "Uid").unwrap_or_default();
    let cap_eff = proc_status(host, pid, "CapEff");
    if uids.is_empty() || uids.split_whitespace().any(|x| x == "0") {
        return finding(
            "daemon identity",
            Verdict::Fail,
            format!("the daemon (pid {pid}) runs as root (Uid: {uids})"),
            Some("stop nix-daemon (systemctl disable --now nix-daemon.socket nix-daemon.service) and start unrooted-daemon.socket"),
        );
    }
    let uid = uids.split_whitespace().next().unwrap_or("?");
    let caps = cap_eff.unwrap_or_else(|| "?".into());
    let v = if caps.trim_start_matches('0').is_empty() {
        Verdict::Ok
    } else {
        Verdict::Warn
    };
    finding(
        "daemon identity",
        v,
        format!("pid {pid}, uid {uid}, effective capabilities {caps}"),
        (v != Verdict::Ok).then_some("the daemon should hold no capabilities: check AmbientCapabilities= in unrooted-daemon.service"),
    )
}

/// Most `/proc` entries, and descriptors of one process, examined.
const MAX_PROC_ENTRIES: usize = 1 << 20;

/// The socket-file system inode of the listening Unix socket bound at `path`, from
/// `/proc/net/unix` (`Num RefCount Protocol Flags Type St Inode Path`; state 01 is
/// listening).
fn listening_inode(host: &Host, path: &Path) -> Option<u64> {
    let table = read_bounded(&host.path(Path::new("/proc/net/unix")), 64 << 20)?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let listening = f.get(5) == Some(&"01");
        (listening && f.get(7).map(Path::new) == Some(path)).then_some(())?;
        f.get(6)?.parse().ok()
    })
}

/// The processes other than pid 1 (systemd, under socket activation) holding a
/// descriptor of the socket with `inode`.
fn socket_holders(host: &Host, inode: u64) -> Vec<i32> {
    let wanted = format!("socket:[{inode}]");
    let Ok(procs) = fs::read_dir(host.path(Path::new("/proc"))) else {
        return Vec::new();
    };
    let pids = procs
        .take(MAX_PROC_ENTRIES)
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != 1);
    pids.filter(|pid| {
        let fds = host.path(&PathBuf::from(format!("/proc/{pid}/fd")));
        fs::read_dir(fds).is_ok_and(|fds| {
            fds.take(MAX_PROC_ENTRIES)
                .filter_map(Result::ok)
                .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == wanted.as_str()))
        })
    })
    .collect()
}

pub(super) fn roots_helper(
    host: &Host,
    l: &Layout,
    owner: Option<&accounts::Account>,
    timeout: Duration,
    out: &mut Vec<Finding>,
) {
    let bin = l.roots_binary();
    match fs::symlink_metadata(host.path(&bin)) {
        Ok(m) if m.is_file() && m.uid() == 0 && m.mode() & 0o022 == 0 => {}
        Ok(m) if m.is_file() => out.push(finding(
            "roots helper binary",
            Verdict::Fail,
            format!(
                "{} is owned by uid {} mode {:04o}: whoever can write it runs code as root",
                bin.display(),
                m.uid(),
                m.mode() & 0o7777
            ),
            Some(&format!(
                "chown root:root {0} && chmod 0755 {0}",
                bin.display()
            )),
        )),
        _ => out.push(finding(
            "roots helper binary",
            Verdict::Warn,
            format!("{} is missing", bin.display()),
            Some("unrooted install --find-roots-binary PATH"),
        )),
    }
    let socket = host.path(&l.roots_socket());
    let started = Instant::now();
    let answer = connect(&socket, timeout).and_then(|s| {
        let mut buf = Vec::new();
        (&s).take(MAX_ROOTS_ANSWER).read_to_end(&mut buf)?;
        Ok(buf)
    });
    out.push(match answer {
        Ok(buf) => roots_answer(
            &buf,
            owner.map(|o| o.uid),
            rustix::process::geteuid().as_raw(),
            &l.roots_socket(),
            started.elapsed(),
        ),
        Err(e) => finding(
            "roots helper",
            Verdict::Warn,
            format!("cannot reach {}: {e}; garbage collection will refuse to run (builds are unaffected)", socket.display()),
            Some("systemctl enable --now unrooted-find-roots.socket"),
        ),
    });
}

/// The verdict on the roots helper's answer `buf` to uid `me`. The helper answers the
/// store owner only: anyone else (root running doctor) is refused with one error item
/// (`error: refusing peer …`, or nothing from an older helper), which shows it runs
/// and checks its peer. The owner gets roots, errors and the end-of-answer item.
pub(super) fn roots_answer(
    buf: &[u8],
    owner_uid: Option<u32>,
    me: u32,
    socket: &Path,
    took: Duration,
) -> Finding {
    use unrooted_roots::{END_OF_ANSWER, ERROR_PREFIX};
    let items: Vec<&[u8]> = buf.split(|&b| b == 0).filter(|i| !i.is_empty()).collect();
    let not_owner = owner_uid.is_some_and(|o| o != me);
    let refusal = [ERROR_PREFIX.as_bytes(), b"refusing peer"].concat();
    if not_owner && (items.is_empty() || (items.len() == 1 && items[0].starts_with(&refusal))) {
        return finding(
            "roots helper",
            Verdict::Ok,
            format!(
                "{} accepts connections (it answers only the store owner, and refused uid {me})",
                socket.display()
            ),
            None,
        );
    }
    let complete = items.last() == Some(&END_OF_ANSWER);
    let roots = items.iter().filter(|i| i.first() == Some(&b'/')).count();
    let errors = items.len() - roots - usize::from(complete);
    if errors > 0 || !complete {
        finding(
            "roots helper",
            Verdict::Warn,
            format!(
                "answered {roots} roots and {errors} errors{}: garbage collection will refuse to run",
                if complete { "" } else { ", cut short (no end-of-answer item)" }
            ),
            Some("journalctl -u 'unrooted-find-roots@*' shows what it could not read"),
        )
    } else {
        finding(
            "roots helper",
            Verdict::Ok,
            format!("answered {roots} roots in {} ms", took.as_millis()),
            None,
        )
    }
}
