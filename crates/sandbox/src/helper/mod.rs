//! The helper process: started by the daemon with a socket on stdin and the log on
//! stdout/stderr, it reads one [`Plan`], clones the sandboxed child into new
//! namespaces, writes the child's id maps from outside, relays whether the builder
//! started, and stays as the builder's waiter until it ends.
//!
//! It is single-threaded whenever it clones, which is what makes `clone` and the
//! child's setup (allocation, std I/O) sound; the daemon, being multi-threaded, could
//! do neither after `fork`. (One short-lived thread runs `newgidmap` beside
//! `newuidmap` after the sandbox's clone and is joined before anything else.)

mod build;
mod idmap;
mod network;

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::builtins::Builtin;
use crate::error::Step;
use crate::wire::{self, Report, Request};

/// The helper's entry point without builtin builders (a plan naming one fails at
/// the exec step); see [`helper_main_with_builtins`].
pub fn helper_main() -> ! {
    helper_main_with_builtins(&[])
}

/// The helper's entry point: call it from a binary's `main` (the crate's
/// `unrooted-sandbox helper`, or a hidden verb of the daemon's own binary), with the
/// builtin builders that binary provides. Exits 0 after reporting the builder's end, 1
/// after reporting a setup failure, 2 when it cannot even talk to the daemon.
pub fn helper_main_with_builtins(builtins: &[Builtin]) -> ! {
    // Until a request comes (at once, or after a wait as the daemon's spare) it is
    // `sandbox-spare` in `ps`, then `sandbox-helper`.
    let _ = rustix::thread::set_name(c"sandbox-spare");
    let Ok(sock) = std::io::stdin().as_fd().try_clone_to_owned() else {
        std::process::exit(2)
    };
    let mut sock = std::fs::File::from(sock);
    let code = match run(&mut sock, builtins) {
        Ok((report, fd)) => {
            let _ = report.send_with_fd(sock.as_fd(), fd.as_ref().map(|f| f.as_fd()));
            0
        }
        Err(report) => {
            let _ = sock.write_all(&report.encode());
            1
        }
    };
    std::process::exit(code)
}

pub(super) fn errno_of(e: &std::io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

/// Counts this process's threads (`Threads:` in `/proc/self/status`).
fn thread_count() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

/// Serves the daemon's one request; the final report may carry a descriptor (a mapped
/// user namespace).
fn run(
    sock: &mut std::fs::File,
    builtins: &[Builtin],
) -> Result<(Report, Option<OwnedFd>), Report> {
    let (request, passed) =
        wire::read_request_with_fds(sock.as_fd()).map_err(|e| Report::Failed {
            step: Step::ReadingPlan,
            path: None,
            errno: errno_of(&e),
        })?;
    // What it does now, for `ps` (and the tests, which tell a build's helper from the
    // short-lived ones by it).
    let _ = rustix::thread::set_name(match request {
        Request::Build(_) => c"sandbox-helper",
        Request::Reclaim { .. } => c"sandbox-reclaim",
        Request::MapNamespace { .. } => c"sandbox-idmap",
    });
    // clone() below is only sound in a single-threaded process.
    if thread_count() != Some(1) {
        return Err(Report::Failed {
            step: Step::CreatingNamespaces,
            path: None,
            errno: libc::EDEADLK,
        });
    }
    let plan = match request {
        Request::Build(plan) => plan,
        Request::Reclaim { id_maps, paths } => {
            return idmap::reclaim(&id_maps, &paths).map(|r| (r, None))
        }
        Request::MapNamespace { id_maps } => {
            return idmap::map_namespace(&id_maps).map(|fd| (Report::Exited { code: 0 }, Some(fd)))
        }
    };
    build::build(sock, &plan, passed, builtins).map(|r| (r, None))
}

/// Waits for the sandbox's init. While waiting, a hang-up or any byte from the daemon
/// kills it: a daemon that dies or drops the build must not leave it running.
pub(super) fn wait_for(child: Pid, sock: Option<&mut std::fs::File>) -> Result<Report, Report> {
    if let (Some(sock), Ok(pidfd)) = (
        sock,
        rustix::process::pidfd_open(child, rustix::process::PidfdFlags::empty()),
    ) {
        watch(&pidfd, sock, child);
    }
    loop {
        match rustix::process::waitpid(Some(child), WaitOptions::empty()) {
            Ok(Some((_, status))) => {
                if let Some(code) = status.exit_status() {
                    return Ok(Report::Exited { code });
                }
                if let Some(signal) = status.terminating_signal() {
                    return Ok(Report::Signaled { signal });
                }
            }
            Ok(None) => {}
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => {
                return Err(Report::Failed {
                    step: Step::ExecutingBuilder,
                    path: None,
                    errno: e.raw_os_error(),
                })
            }
        }
    }
}

fn watch(pidfd: &OwnedFd, sock: &std::fs::File, child: Pid) {
    loop {
        let mut fds = [
            PollFd::new(pidfd, PollFlags::IN),
            PollFd::new(sock, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return,
        }
        if !fds[0].revents().is_empty() {
            return;
        }
        if !fds[1].revents().is_empty() {
            let _ = rustix::process::kill_process(child, Signal::KILL);
            return;
        }
    }
}
