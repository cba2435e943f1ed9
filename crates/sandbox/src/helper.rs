//! The helper process: started by the daemon with a socket on stdin and the log on
//! stdout/stderr, it reads one [`Plan`], clones the sandboxed child into new
//! namespaces, writes the child's id maps from outside, relays whether the builder
//! started, and stays as the builder's waiter until it ends.
//!
//! It is single-threaded whenever it clones, which is what makes `clone` and the
//! child's setup (allocation, std I/O) sound; the daemon, being multi-threaded, could
//! do neither after `fork`. (One short-lived thread runs `newgidmap` beside
//! `newuidmap` after the sandbox's clone and is joined before anything else.)

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;

use rustix::event::{poll, PollFd, PollFlags};
use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use crate::error::Step;
use crate::plan::{IdMapMethod, IdMaps, Plan};
use crate::setup;
use crate::sys::{self, Cloned};
use crate::wire::{self, Report, Request};

/// A builtin builder, called in the sandbox's init (PID 1, uid 1000 / gid 100 inside,
/// cwd the build directory, every lock of the sandbox in place) with the build's whole
/// environment, exactly what an executed builder would get; it makes `$out` as a
/// builder would. Its error is written to the build log and the build fails with exit
/// code 1.
pub type BuiltinFn = fn(&[(OsString, OsString)]) -> Result<(), Box<dyn std::error::Error>>;

/// A named builtin: `("fetchurl", f)` serves `builtin:fetchurl`.
pub type Builtin = (&'static str, BuiltinFn);

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

/// Runs the builtin `name` of `builtins` in this process, unsandboxed, with this
/// process's environment and working directory, and exits with its status: what a
/// daemon configured with `sandbox = false` starts in place of a builder. An unknown
/// name exits 127, as an exec of a missing file would.
pub fn builtin_main(builtins: &[Builtin], name: &str) -> ! {
    let Some((_, f)) = builtins.iter().find(|(n, _)| *n == name) else {
        eprintln!("error: unsupported builtin builder 'builtin:{name}'");
        std::process::exit(127)
    };
    let env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    std::process::exit(call_builtin(name, *f, &env))
}

/// Calls a builtin and turns its outcome into an exit code, its error (with every
/// cause) or panic written to stderr, which is the build log.
pub(crate) fn call_builtin(name: &str, f: BuiltinFn, env: &[(OsString, OsString)]) -> i32 {
    let code = match std::panic::catch_unwind(|| f(env)) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            let mut msg = e.to_string();
            let mut cause = e.source();
            while let Some(c) = cause {
                msg.push_str(": ");
                msg.push_str(&c.to_string());
                cause = c.source();
            }
            eprintln!("error: {msg}");
            1
        }
        Err(_) => {
            eprintln!("error: builtin:{name} panicked");
            1
        }
    };
    let _ = std::io::stdout().flush();
    code
}

fn errno_of(e: &std::io::Error) -> i32 {
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
        Request::Reclaim { id_maps, paths } => return reclaim(&id_maps, &paths).map(|r| (r, None)),
        Request::MapNamespace { id_maps } => {
            return map_namespace(&id_maps).map(|fd| (Report::Exited { code: 0 }, Some(fd)))
        }
    };
    build(sock, &plan, passed, builtins).map(|r| (r, None))
}

/// Runs one build: clones the sandbox's init into its namespaces, gives it its ids,
/// relays whether the builder started, waits for it and gives its files back.
fn build(
    sock: &mut std::fs::File,
    plan: &Plan,
    passed: Vec<OwnedFd>,
    builtins: &[Builtin],
) -> Result<Report, Report> {
    // The descriptors that came with the plan: the namespace to enter first, when the
    // plan says so, then the build log when this helper was started before the build.
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

    let pipe = |step| {
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| Report::Failed {
            step,
            path: None,
            errno: e.raw_os_error(),
        })
    };
    let (go_r, go_w) = pipe(Step::WaitingForIdMaps)?;
    let (err_r, err_w) = pipe(Step::ExecutingBuilder)?;
    // With pasta: the init says when its network namespace exists, and hears when
    // pasta is attached to it.
    let (net_ours, net_theirs) = match &plan.pasta {
        Some(_) => {
            let (a, b) = std::os::unix::net::UnixStream::pair().map_err(|e| Report::Failed {
                step: Step::WaitingForNetwork,
                path: None,
                errno: errno_of(&e),
            })?;
            (Some(a), Some(OwnedFd::from(b)))
        }
        None => (None, None),
    };

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
    let pid = match sys::clone_into_namespaces(flags) {
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

    if let Err(report) = write_id_maps(pid, &plan.id_maps) {
        let _ = rustix::process::kill_process(child, Signal::KILL);
        let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
        return Err(report);
    }
    // The build's user namespace outlives its processes while this descriptor is
    // open: the reclaim after the build enters it instead of mapping a new one.
    let userns = if plan.id_maps.switch_ids && !plan.reclaim.is_empty() && !entered {
        let path = format!("/proc/{pid}/ns/user");
        match rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        ) {
            Ok(fd) => Some(fd),
            Err(e) => {
                let _ = rustix::process::kill_process(child, Signal::KILL);
                let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
                return Err(Report::Failed {
                    step: Step::Reclaiming,
                    path: Some(path.into()),
                    errno: e.raw_os_error(),
                });
            }
        }
    } else {
        None
    };
    // Pasta enters the build's user namespace from the one the init was cloned into,
    // which this helper is already in when it entered a premapped one.
    let outer_userns = match (&plan.pasta, entered) {
        (Some(_), false) => Some(open_ns(pid, "user").inspect_err(|_| {
            let _ = rustix::process::kill_process(child, Signal::KILL);
            let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
        })?),
        _ => None,
    };
    if rustix::io::write(&go_w, b"g").is_err() {
        // The child is gone; its status says why.
        return wait_for(child, None);
    }
    drop(go_w);
    // Killed (and reaped) on every way out of this function.
    let _pasta = match (&plan.pasta, net_ours) {
        (Some(pasta), Some(net)) => {
            match start_network(plan, pasta, outer_userns.as_ref(), pid, &net) {
                Ok(p) => p,
                Err(report) => {
                    let _ = rustix::process::kill_process(child, Signal::KILL);
                    let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
                    return Err(report);
                }
            }
        }
        _ => None,
    };

    // The error pipe is close-on-exec: EOF with nothing read means the builder runs.
    let mut err = std::fs::File::from(err_r);
    let mut buf = Vec::new();
    let _ = (&mut err).take(8192).read_to_end(&mut buf);
    if !buf.is_empty() {
        let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
        let report = Report::read(&mut buf.as_slice())
            .ok()
            .flatten()
            .unwrap_or(Report::Failed {
                step: Step::ExecutingBuilder,
                path: None,
                errno: libc::EPROTO,
            });
        return Err(report);
    }
    sock.write_all(&Report::Started { pid }.encode())
        .map_err(|e| Report::Failed {
            step: Step::ExecutingBuilder,
            path: None,
            errno: errno_of(&e),
        })?;
    let ended = wait_for(child, Some(sock))?;
    // The init is reaped, so its PID namespace is empty: nothing runs as the build's
    // ids any more.
    if let Some(userns) = userns {
        reclaim_in(&userns, &plan.id_maps, &plan.reclaim)?;
    } else if entered && plan.id_maps.switch_ids {
        // Already in the build's namespace as the owner's inner ids.
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
    Ok(ended)
}

/// Opens `/proc/<pid>/ns/<name>`.
fn open_ns(pid: u32, name: &str) -> Result<OwnedFd, Report> {
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
struct PastaProcess(Pid);

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
fn start_network(
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

/// Makes a user namespace with `ids` written by `newuidmap`/`newgidmap` and returns its
/// descriptor, for the daemon to keep and builds to enter ([`IdMapMethod::Enter`]). The
/// namespace lives as long as a descriptor of it is open; the child made to hold it
/// exits at once.
fn map_namespace(ids: &IdMaps) -> Result<OwnedFd, Report> {
    let failed = |step, path, errno| Report::Failed { step, path, errno };
    let (go_r, go_w) = pipe_with(PipeFlags::CLOEXEC)
        .map_err(|e| failed(Step::CreatingNamespaces, None, e.raw_os_error()))?;
    let pid = match sys::clone_into_namespaces(libc::CLONE_NEWUSER) {
        Ok(Cloned::Child) => {
            drop(go_w);
            // Wait for the helper to be done with this process's namespace.
            let mut byte = [0u8; 1];
            let _ = rustix::io::read(&go_r, &mut byte);
            sys::exit_child(0)
        }
        Ok(Cloned::Parent(pid)) => pid,
        Err(e) => return Err(failed(Step::CreatingNamespaces, None, errno_of(&e))),
    };
    drop(go_r);
    let child = Pid::from_raw(pid as i32).expect("clone returned a positive pid");
    let opened = write_id_maps(pid, ids).and_then(|()| {
        let path = format!("/proc/{pid}/ns/user");
        rustix::fs::open(
            path.as_str(),
            rustix::fs::OFlags::RDONLY | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        )
        .map_err(|e| {
            failed(
                Step::CreatingNamespaces,
                Some(path.into()),
                e.raw_os_error(),
            )
        })
    });
    drop(go_w);
    let _ = wait_for(child, None);
    opened
}

/// The inner id the store owner (this process's `outer`) has in `map`.
fn inner_of(map: &[crate::plan::IdMapEntry], outer: u32) -> Option<u32> {
    map.iter()
        .find(|e| outer >= e.outer && outer - e.outer < e.count)
        .map(|e| e.inner + (outer - e.outer))
}

/// Chowns each of `paths` to the store owner from inside the finished build's user
/// namespace: a forked child enters it (its owner may, with every capability there)
/// and acts as the owner's inner id, which every id of the build is mapped beside.
fn reclaim_in(userns: &OwnedFd, ids: &IdMaps, paths: &[std::path::PathBuf]) -> Result<(), Report> {
    let failed = |path: Option<std::path::PathBuf>, errno| Report::Failed {
        step: Step::Reclaiming,
        path,
        errno,
    };
    let uid = inner_of(&ids.uid_map, rustix::process::getuid().as_raw());
    let gid = inner_of(&ids.gid_map, rustix::process::getgid().as_raw());
    let (Some(uid), Some(gid)) = (uid, gid) else {
        return Err(failed(None, libc::EINVAL));
    };
    let (err_r, err_w) =
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| failed(None, e.raw_os_error()))?;
    let pid = match sys::clone_into_namespaces(0) {
        Ok(Cloned::Child) => {
            drop(err_r);
            let outcome = rustix::thread::move_into_link_name_space(
                userns.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::User),
            )
            .map_err(|e| failed(None, e.raw_os_error()))
            .and_then(|()| {
                paths.iter().try_for_each(|p| {
                    crate::cleanup::chown_tree(p, uid, gid)
                        .map_err(|(path, e)| failed(Some(path), e.raw_os_error()))
                })
            });
            let code = match outcome {
                Ok(()) => 0,
                Err(report) => {
                    let _ = std::fs::File::from(err_w).write_all(&report.encode());
                    1
                }
            };
            sys::exit_child(code)
        }
        Ok(Cloned::Parent(pid)) => pid,
        Err(e) => return Err(failed(None, errno_of(&e))),
    };
    drop(err_w);
    let mut buf = Vec::new();
    let _ = std::fs::File::from(err_r).take(8192).read_to_end(&mut buf);
    let child = Pid::from_raw(pid as i32).expect("clone returned a positive pid");
    let status = wait_for(child, None)?;
    if !buf.is_empty() {
        return Err(Report::read(&mut buf.as_slice())
            .ok()
            .flatten()
            .unwrap_or(failed(None, libc::EPROTO)));
    }
    match status {
        Report::Exited { code: 0 } => Ok(()),
        _ => Err(failed(None, libc::ECHILD)),
    }
}

/// Gives a finished build's files back to the store owner: a child in a new user
/// namespace mapping the owner to inner 0 and the build's whole slice (see
/// [`IdMaps::reclaim`]) chowns each tree to 0:0. Reports `Exited { code: 0 }`, or the
/// entry that failed.
fn reclaim(ids: &IdMaps, paths: &[std::path::PathBuf]) -> Result<Report, Report> {
    let pipe = || {
        pipe_with(PipeFlags::CLOEXEC).map_err(|e| Report::Failed {
            step: Step::Reclaiming,
            path: None,
            errno: e.raw_os_error(),
        })
    };
    let (go_r, go_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let pid = match sys::clone_into_namespaces(libc::CLONE_NEWUSER) {
        Ok(Cloned::Child) => {
            drop(go_w);
            drop(err_r);
            let mut byte = [0u8; 1];
            let outcome = match rustix::io::read(&go_r, &mut byte) {
                Ok(1) => paths.iter().try_for_each(|p| {
                    crate::cleanup::chown_tree(p, 0, 0).map_err(|(path, e)| Report::Failed {
                        step: Step::Reclaiming,
                        path: Some(path),
                        errno: e.raw_os_error(),
                    })
                }),
                _ => Err(Report::Failed {
                    step: Step::WaitingForIdMaps,
                    path: None,
                    errno: libc::EPIPE,
                }),
            };
            let code = match outcome {
                Ok(()) => 0,
                Err(report) => {
                    let mut err = std::fs::File::from(err_w);
                    let _ = err.write_all(&report.encode());
                    1
                }
            };
            sys::exit_child(code)
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
    let child = Pid::from_raw(pid as i32).expect("clone returned a positive pid");
    if let Err(report) = write_id_maps(pid, ids) {
        let _ = rustix::process::kill_process(child, Signal::KILL);
        let _ = rustix::process::waitpid(Some(child), WaitOptions::empty());
        return Err(report);
    }
    let _ = rustix::io::write(&go_w, b"g");
    drop(go_w);
    let mut err = std::fs::File::from(err_r);
    let mut buf = Vec::new();
    let _ = (&mut err).take(8192).read_to_end(&mut buf);
    let status = wait_for(child, None)?;
    if !buf.is_empty() {
        return Err(Report::read(&mut buf.as_slice())
            .ok()
            .flatten()
            .unwrap_or(Report::Failed {
                step: Step::Reclaiming,
                path: None,
                errno: libc::EPROTO,
            }));
    }
    Ok(status)
}

/// Writes the child's `setgroups`, `uid_map` and `gid_map` from outside its namespace.
fn write_id_maps(pid: u32, ids: &IdMaps) -> Result<(), Report> {
    let proc_file = |name: &str| std::path::PathBuf::from(format!("/proc/{pid}/{name}"));
    match &ids.method {
        IdMapMethod::Direct => {
            // An unprivileged writer must deny setgroups before writing a gid map.
            for (step, file, text) in [
                (Step::WritingSetgroups, "setgroups", "deny".to_owned()),
                (
                    Step::WritingUidMap,
                    "uid_map",
                    IdMaps::map_text(&ids.uid_map),
                ),
                (
                    Step::WritingGidMap,
                    "gid_map",
                    IdMaps::map_text(&ids.gid_map),
                ),
            ] {
                let path = proc_file(file);
                std::fs::write(&path, text).map_err(|e| Report::Failed {
                    step,
                    path: Some(path),
                    errno: errno_of(&e),
                })?;
            }
        }
        // Nothing to write: the namespace was mapped when it was made.
        IdMapMethod::Enter => {}
        IdMapMethod::NewIdMap {
            newuidmap,
            newgidmap,
        } => {
            // Both run at once, each from a thread of its own: each is a fork and
            // exec of a setuid program, the main cost of the id-range mode, and one
            // thread spawning both waits for the first one's exec before the second
            // starts, which here left them one after the other. The threads end
            // before anything else is cloned, so the helper is single-threaded again
            // whenever that matters.
            let run = |tool: &std::path::PathBuf, map: &[crate::plan::IdMapEntry]| {
                let mut cmd = Command::new(tool);
                cmd.arg(pid.to_string());
                for e in map {
                    cmd.args([
                        e.inner.to_string(),
                        e.outer.to_string(),
                        e.count.to_string(),
                    ]);
                }
                let fail = |errno| Report::Failed {
                    step: Step::RunningNewIdMap,
                    path: Some(tool.clone()),
                    errno,
                };
                match cmd.spawn().and_then(|mut c| c.wait()) {
                    Ok(s) if s.success() => Ok(()),
                    Ok(_) => Err(fail(libc::EPERM)),
                    Err(e) => Err(fail(errno_of(&e))),
                }
            };
            let (uid, gid) = std::thread::scope(|s| {
                let gid = s.spawn(|| run(newgidmap, &ids.gid_map));
                let uid = run(newuidmap, &ids.uid_map);
                let gid = gid.join().unwrap_or_else(|_| {
                    Err(Report::Failed {
                        step: Step::RunningNewIdMap,
                        path: Some(newgidmap.clone()),
                        errno: libc::EIO,
                    })
                });
                (uid, gid)
            });
            uid?;
            gid?;
        }
    }
    Ok(())
}

/// Waits for the sandbox's init. While waiting, a hang-up or any byte from the daemon
/// kills it: a daemon that dies or drops the build must not leave it running.
fn wait_for(child: Pid, sock: Option<&mut std::fs::File>) -> Result<Report, Report> {
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
