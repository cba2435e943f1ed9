//! One build: clone the sandbox's init into its namespaces, give it its ids, relay
//! whether the builder started, wait for it and give its files back.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use super::idmap::{reclaim_in, write_id_maps};
use super::network::{open_ns, start_network};
use super::{errno_of, wait_for};
use crate::builtins::Builtin;
use crate::error::Step;
use crate::plan::{IdMapMethod, Plan};
use crate::setup;
use crate::sys::{self, Cloned};
use crate::wire::Report;

/// Runs one build: clones the sandbox's init into its namespaces, gives it its ids,
/// relays whether the builder started, waits for it and gives its files back.
pub(super) fn build(
    sock: &mut std::fs::File,
    plan: &Plan,
    passed: Vec<OwnedFd>,
    builtins: &[Builtin],
) -> Result<Report, Report> {
    let entered = take_passed(plan, passed)?;
    let InitPipes {
        go_r,
        go_w,
        err_r,
        err_w,
        net_ours,
        net_theirs,
    } = init_pipes(plan)?;
    let pid = match sys::clone_into_namespaces(clone_flags(plan, entered)) {
        Ok(Cloned::Child) => {
            drop(go_w);
            drop(err_r);
            drop(net_ours);
            setup::run_child(plan, go_r, err_w, net_theirs, builtins)
        }
        Ok(Cloned::Parent(pid)) => pid,
        Err(e) => {
            return Err(Report::Failed {
                step: Step::CreatingNamespaces,
                path: None,
                errno: errno_of(&e),
            })
        }
    };
    drop(go_r);
    drop(err_w);
    drop(net_theirs);
    let child = Pid::from_raw(pid as i32).expect("clone returned a positive pid");
    let namespaces = prepare_init(plan, pid, entered).inspect_err(|_| kill_and_reap(child))?;
    if rustix::io::write(&go_w, b"g").is_err() {
        // The child is gone; its status says why.
        return wait_for(child, None);
    }
    drop(go_w);
    // Killed (and reaped) on every way out of this function.
    let _pasta = match (&plan.pasta, net_ours) {
        (Some(pasta), Some(net)) => {
            start_network(plan, pasta, namespaces.outer.as_ref(), pid, &net)
                .inspect_err(|_| kill_and_reap(child))?
        }
        _ => None,
    };
    wait_for_exec(err_r, child)?;
    sock.write_all(&Report::Started { pid }.encode())
        .map_err(|e| Report::Failed {
            step: Step::ExecutingBuilder,
            path: None,
            errno: errno_of(&e),
        })?;
    let ended = wait_for(child, Some(sock))?;
    // The init is reaped, so its PID namespace is empty: nothing runs as the build's
    // ids any more.
    give_files_back(plan, namespaces.build, entered)?;
    Ok(ended)
}

/// Takes the descriptors that came with the plan: the namespace to enter first, when
/// the plan says so, then the build log when this helper was started before the
/// build. Returns whether it entered a premapped namespace.
fn take_passed(plan: &Plan, passed: Vec<OwnedFd>) -> Result<bool, Report> {
    let mut passed = passed.into_iter();
    let userns = match plan.id_maps.method {
        IdMapMethod::Enter => passed.next(),
        _ => None,
    };
    if let Some(log) = passed.next() {
        rustix::stdio::dup2_stdout(&log)
            .and_then(|()| rustix::stdio::dup2_stderr(&log))
            .map_err(|e| Report::Failed {
                step: Step::ReadingPlan,
                path: None,
                errno: e.raw_os_error(),
            })?;
    }
    // With a namespace mapped beforehand this process enters it, so the init is
    // cloned into it rather than into a new one that would still need its maps. The
    // helper is then the store owner's inner id there, with every capability in it
    // (it is the namespace's owner), which it keeps for the reclaim below.
    let entered = plan.id_maps.method == IdMapMethod::Enter;
    if entered {
        let failed = |errno| Report::Failed {
            step: Step::EnteringPremappedNamespace,
            path: None,
            errno,
        };
        let userns = userns.ok_or(failed(libc::EBADF))?;
        rustix::thread::move_into_link_name_space(
            userns.as_fd(),
            Some(rustix::thread::LinkNameSpaceType::User),
        )
        .map_err(|e| failed(e.raw_os_error()))?;
    }
    Ok(entered)
}

/// The pipes between the helper and the init: `go` (the ids are mapped), `err` (the
/// exec failed, or EOF when it succeeded) and, with pasta, `net` (the init says when
/// its network namespace exists, and hears when pasta is attached to it).
struct InitPipes {
    go_r: OwnedFd,
    go_w: OwnedFd,
    err_r: OwnedFd,
    err_w: OwnedFd,
    net_ours: Option<UnixStream>,
    net_theirs: Option<OwnedFd>,
}

fn init_pipes(plan: &Plan) -> Result<InitPipes, Report> {
    let pipe = |step| {
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| Report::Failed {
            step,
            path: None,
            errno: e.raw_os_error(),
        })
    };
    let (go_r, go_w) = pipe(Step::WaitingForIdMaps)?;
    let (err_r, err_w) = pipe(Step::ExecutingBuilder)?;
    let (net_ours, net_theirs) = match &plan.pasta {
        Some(_) => {
            let (a, b) = UnixStream::pair().map_err(|e| Report::Failed {
                step: Step::WaitingForNetwork,
                path: None,
                errno: errno_of(&e),
            })?;
            (Some(a), Some(OwnedFd::from(b)))
        }
        None => (None, None),
    };
    Ok(InitPipes {
        go_r,
        go_w,
        err_r,
        err_w,
        net_ours,
        net_theirs,
    })
}

/// The namespaces the init is cloned into.
fn clone_flags(plan: &Plan, entered: bool) -> i32 {
    let mut flags = libc::CLONE_NEWNS | libc::CLONE_NEWPID;
    if !entered {
        flags |= libc::CLONE_NEWUSER;
    }
    // On pasta's network the namespace is made later, with the nested user namespace.
    if plan.namespaces.net && plan.pasta.is_none() {
        flags |= libc::CLONE_NEWNET;
    }
    if plan.namespaces.ipc {
        flags |= libc::CLONE_NEWIPC;
    }
    if plan.namespaces.uts {
        flags |= libc::CLONE_NEWUTS;
    }
    flags
}

/// User namespaces of the init the helper holds on to.
struct InitNamespaces {
    /// The build's, kept so that the reclaim after the build enters it instead of
    /// mapping a new one.
    build: Option<OwnedFd>,
    /// The one the init was cloned into, which pasta enters the build's from.
    outer: Option<OwnedFd>,
}

/// Writes the init's id maps and opens the namespaces kept for later.
fn prepare_init(plan: &Plan, pid: u32, entered: bool) -> Result<InitNamespaces, Report> {
    write_id_maps(pid, &plan.id_maps)?;
    // The build's user namespace outlives its processes while this descriptor is
    // open.
    let build = if plan.id_maps.switch_ids && !plan.reclaim.is_empty() && !entered {
        let path = format!("/proc/{pid}/ns/user");
        let fd = rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| Report::Failed {
            step: Step::Reclaiming,
            path: Some(path.into()),
            errno: e.raw_os_error(),
        })?;
        Some(fd)
    } else {
        None
    };
    // Pasta enters the build's user namespace from the one the init was cloned into,
    // which this helper is already in when it entered a premapped one.
    let outer = match (&plan.pasta, entered) {
        (Some(_), false) => Some(open_ns(pid, "user")?),
        _ => None,
    };
    Ok(InitNamespaces { build, outer })
}

/// Kills and reaps the init after a failure of the helper's side of its setup.
fn kill_and_reap(child: Pid) {
    let _ = rustix::process::kill_process(child, Signal::KILL);
    let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
}

/// Waits for the builder's exec: the error pipe is close-on-exec, so EOF with nothing
/// read means the builder runs; anything read is the init's failure report.
fn wait_for_exec(err_r: OwnedFd, child: Pid) -> Result<(), Report> {
    let mut err = std::fs::File::from(err_r);
    let mut buf = Vec::new();
    let _ = (&mut err).take(8192).read_to_end(&mut buf);
    if buf.is_empty() {
        return Ok(());
    }
    let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
    Err(Report::read(&mut buf.as_slice())
        .ok()
        .flatten()
        .unwrap_or(Report::Failed {
            step: Step::ExecutingBuilder,
            path: None,
            errno: libc::EPROTO,
        }))
}

/// Gives the build's files back to the store owner: from inside the build's kept
/// namespace, or, in a premapped namespace the helper is in already, as the owner's
/// inner ids there.
fn give_files_back(plan: &Plan, userns: Option<OwnedFd>, entered: bool) -> Result<(), Report> {
    if let Some(userns) = userns {
        reclaim_in(&userns, &plan.id_maps, &plan.reclaim)?;
    } else if entered && plan.id_maps.switch_ids {
        let (uid, gid) = (
            rustix::process::getuid().as_raw(),
            rustix::process::getgid().as_raw(),
        );
        for p in &plan.reclaim {
            crate::cleanup::chown_tree(p, uid, gid).map_err(|(path, e)| Report::Failed {
                step: Step::Reclaiming,
                path: Some(path),
                errno: e.raw_os_error(),
            })?;
        }
    }
    Ok(())
}
