//! The build's network through `pasta`.

use std::os::fd::{AsFd, OwnedFd};

use rustix::event::{poll, PollFd, PollFlags};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use super::errno_of;
use crate::error::Step;
use crate::plan::Plan;
use crate::sys::{self, Cloned};
use crate::wire::Report;

/// Opens `/proc/<pid>/ns/<name>`.
pub(super) fn open_ns(pid: u32, name: &str) -> Result<OwnedFd, Report> {
    let path = format!("/proc/{pid}/ns/{name}");
    rustix::fs::open(
        path.as_str(),
        rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::empty(),
    )
    .map_err(|e| Report::Failed {
        step: Step::StartingPasta,
        path: Some(path.into()),
        errno: e.raw_os_error(),
    })
}

/// The running `pasta` of a build: killed and reaped when dropped (the build has
/// ended, or failed to start).
pub(super) struct PastaProcess(Pid);

impl Drop for PastaProcess {
    fn drop(&mut self) {
        let _ = rustix::process::kill_process(self.0, Signal::KILL);
        let _ = rustix::process::waitpid(Some(self.0), WaitOptions::empty());
    }
}

/// Longest `pasta` may take to attach to the namespace before the build fails.
const PASTA_READY_TIMEOUT_MS: i32 = 60_000;

/// Waits for the init's word that its network namespace exists (`n` on `net`), starts
/// `pasta` on it ([`pasta_child`]) and, once pasta wrote its pid (it is ready: the
/// interface is configured and pasta has isolated itself), tells the init (`p`).
/// `None` when the init ended before asking (its report says why).
pub(super) fn start_network(
    plan: &Plan,
    pasta: &crate::plan::Pasta,
    outer_userns: Option<&OwnedFd>,
    pid: u32,
    net: &std::os::unix::net::UnixStream,
) -> Result<Option<PastaProcess>, Report> {
    let failed = |errno| Report::Failed {
        step: Step::StartingPasta,
        path: Some(pasta.program.clone()),
        errno,
    };
    let mut byte = [0u8; 1];
    match rustix::io::read(net, &mut byte) {
        Ok(1) if byte == *b"n" => {}
        // The init failed before: the error pipe has its report.
        _ => return Ok(None),
    }
    // The build's nested user namespace and the network namespace it owns.
    let inner_userns = open_ns(pid, "user")?;
    let netns = open_ns(pid, "net")?;
    let (ready_r, ready_w) = pipe_with(PipeFlags::CLOEXEC).map_err(|e| failed(e.raw_os_error()))?;
    // pasta reopens it as its pid file (`/proc/self/fd/1`) with the builder's ids:
    // the pipe, this helper's, must let them write (only a process that may look
    // into pasta's descriptors can name it).
    rustix::fs::fchmod(&ready_w, rustix::fs::Mode::from_raw_mode(0o222))
        .map_err(|e| failed(e.raw_os_error()))?;
    let helper = rustix::process::getpid();
    let started = match sys::clone_into_namespaces(0) {
        Ok(Cloned::Child) => {
            drop(ready_r);
            pasta_child(
                plan,
                pasta,
                outer_userns,
                &inner_userns,
                netns,
                ready_w,
                helper,
            )
        }
        Ok(Cloned::Parent(p)) => p,
        Err(e) => return Err(failed(errno_of(&e))),
    };
    drop(ready_w);
    drop(netns);
    drop(inner_userns);
    let process =
        PastaProcess(Pid::from_raw(started as i32).expect("clone returned a positive pid"));
    // Its pid, written once it is ready; EOF if it exited first.
    let mut got = Vec::new();
    loop {
        let mut fds = [PollFd::new(&ready_r, PollFlags::IN)];
        let timeout = rustix::event::Timespec {
            tv_sec: i64::from(PASTA_READY_TIMEOUT_MS / 1000),
            tv_nsec: 0,
        };
        match poll(&mut fds, Some(&timeout)) {
            Ok(0) => return Err(failed(libc::ETIMEDOUT)),
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(failed(e.raw_os_error())),
        }
        let mut buf = [0u8; 32];
        match rustix::io::read(&ready_r, &mut buf) {
            Ok(0) => return Err(failed(libc::ECHILD)),
            Ok(n) => {
                got.extend_from_slice(&buf[..n]);
                if got.contains(&b'\n') || got.len() > 64 {
                    break;
                }
            }
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(failed(e.raw_os_error())),
        }
    }
    if !got.first().is_some_and(u8::is_ascii_digit) {
        return Err(failed(libc::EPROTO));
    }
    rustix::io::write(net, b"p").map_err(|e| failed(e.raw_os_error()))?;
    Ok(Some(process))
}

/// The child that becomes `pasta`, with no more rights than the builder: it enters
/// the user namespace the init was cloned into (unless the helper is in it already),
/// drops the store owner's supplementary groups and takes the builder's ids there,
/// which makes it the owner of the builder's nested user namespace, so it may enter
/// that one; there it keeps `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` only (ambient, so
/// they survive the exec as uid 1000), which is what attaching a tap device to the
/// namespace needs and nothing over the build's other namespaces or the host. Then
/// no_new_privs, the builder's Landlock scopes (no abstract socket or process of the
/// host can be reached even by a compromised pasta), a parent-death signal, the
/// network namespace on stdin and the readiness pipe on stdout (stderr stays the
/// build log), and the exec. Never returns; a failure is written to the log.
#[allow(clippy::too_many_arguments)]
fn pasta_child(
    plan: &Plan,
    pasta: &crate::plan::Pasta,
    outer_userns: Option<&OwnedFd>,
    inner_userns: &OwnedFd,
    netns: OwnedFd,
    ready: OwnedFd,
    helper: Pid,
) -> ! {
    use rustix::process::{Gid, Uid};
    use rustix::thread::{CapabilitySet, CapabilitySets, LinkNameSpaceType};
    let ids = &plan.id_maps;
    let run = || -> Result<std::convert::Infallible, (&'static str, std::io::Error)> {
        let io = |what| move |e: rustix::io::Errno| (what, std::io::Error::from(e));
        if let Some(userns) = outer_userns {
            rustix::thread::move_into_link_name_space(
                userns.as_fd(),
                Some(LinkNameSpaceType::User),
            )
            .map_err(io("entering the build's user namespace"))?;
        }
        if ids.switch_ids {
            rustix::thread::set_thread_groups(&[]).map_err(io("dropping supplementary groups"))?;
            let gid = Gid::from_raw(ids.builder_gid);
            rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(io("setting the gid"))?;
            let uid = Uid::from_raw(ids.builder_uid);
            rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(io("setting the uid"))?;
        }
        rustix::thread::move_into_link_name_space(
            inner_userns.as_fd(),
            Some(LinkNameSpaceType::User),
        )
        .map_err(io("entering the builder's nested user namespace"))?;
        // uid 1000 in every layout (the uid-range builder is root there: not pasta).
        rustix::thread::set_keep_capabilities(true).map_err(io("keeping capabilities"))?;
        let gid = Gid::from_raw(crate::plan::BUILDER_GID);
        rustix::thread::set_thread_res_gid(gid, gid, gid).map_err(io("setting the gid"))?;
        let uid = Uid::from_raw(crate::plan::BUILDER_UID);
        rustix::thread::set_thread_res_uid(uid, uid, uid).map_err(io("setting the uid"))?;
        let keep = CapabilitySet::NET_ADMIN | CapabilitySet::SYS_ADMIN;
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: keep,
                permitted: keep,
                inheritable: keep,
            },
        )
        .map_err(io("limiting capabilities"))?;
        rustix::thread::set_keep_capabilities(false).map_err(io("keeping capabilities"))?;
        for cap in [CapabilitySet::NET_ADMIN, CapabilitySet::SYS_ADMIN] {
            rustix::thread::configure_capability_in_ambient_set(cap, true)
                .map_err(io("raising ambient capabilities"))?;
        }
        rustix::thread::set_no_new_privs(true).map_err(io("setting no_new_privs"))?;
        if sys::landlock_abi().is_some_and(|v| v >= sys::LANDLOCK_SCOPE_ABI) {
            sys::landlock_scope().map_err(|e| ("scoping with Landlock", e))?;
        }
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))
            .map_err(io("setting the parent-death signal"))?;
        if rustix::process::getppid() != Some(helper) {
            return Err((
                "the helper ended",
                std::io::Error::from_raw_os_error(libc::ESRCH),
            ));
        }
        rustix::stdio::dup2_stdin(&netns).map_err(io("passing the network namespace"))?;
        rustix::stdio::dup2_stdout(&ready).map_err(io("passing the readiness pipe"))?;
        drop(netns);
        drop(ready);
        sys::cloexec_from_3().map_err(|e| ("closing descriptors", e))?;
        let mut cmd = std::process::Command::new(&pasta.program);
        std::os::unix::process::CommandExt::arg0(&mut cmd, "pasta");
        cmd.args(&pasta.args).env_clear();
        let e = std::os::unix::process::CommandExt::exec(&mut cmd);
        Err(("executing", e))
    };
    let Err((what, e)) = run();
    eprintln!(
        "unrooted: starting {} for the build's network: {what}: {e}",
        pasta.program.display()
    );
    sys::exit_child(127)
}
