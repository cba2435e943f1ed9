//! The executor: runs in the cloned child (PID 1 of the new namespaces), applies a
//! [`Plan`] in order, locks the mounts, drops what the builder must not have, and execs
//! it, or, for a builtin builder, closes every inherited descriptor and calls it. Any
//! setup failure is sent to the helper as a [`Report`] on the error pipe.

mod ids;
mod mounts;

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;

use rustix::fs::{self as rfs, Mode, OFlags};
use rustix::io::Errno;
use rustix::mount::{self, MountFlags, MountPropagationFlags, UnmountFlags};

use crate::builtins::{call_builtin, Builtin, BuiltinFn};
use crate::error::Step;
use crate::plan::{MountOp, Plan, Program};
use crate::seccomp;
use crate::sys;
use crate::wire::Report;

use ids::{attach_network, enter_nested_namespace, switch_to_builder};
use mounts::{apply, bind_disk_dir, c_string, disk_dirs};

type Setup<T> = Result<T, Report>;

fn fail(step: Step, path: Option<&Path>, errno: i32) -> Report {
    Report::Failed {
        step,
        path: path.map(Path::to_path_buf),
        errno,
    }
}

fn at<T>(step: Step, path: Option<&Path>, r: rustix::io::Result<T>) -> Setup<T> {
    r.map_err(|e| fail(step, path, e.raw_os_error()))
}

fn at_io<T>(step: Step, path: Option<&Path>, r: io::Result<T>) -> Setup<T> {
    r.map_err(|e| fail(step, path, e.raw_os_error().unwrap_or(libc::EIO)))
}

/// The child's whole life: wait for the id maps, set up, exec (or call the builtin).
/// Never returns.
pub(crate) fn run_child(
    plan: &Plan,
    go: OwnedFd,
    err: OwnedFd,
    net: Option<OwnedFd>,
    builtins: &[Builtin],
) -> ! {
    let report = match prepare_and_exec(plan, go, &err, net, builtins) {
        Ok((name, f)) => {
            // The setup is complete: closing the error pipe tells the helper the
            // builder runs, as the exec's close-on-exec does for a program. Nothing
            // inherited may stay open while the builtin runs (the daemon's socket to
            // the helper among them), as the exec would have closed it.
            drop(err);
            if sys::close_from_3().is_err() {
                eprintln!("error: closing inherited descriptors before builtin:{name}");
                sys::exit_child(1)
            }
            let code = call_builtin(name, f, &plan.exec.env);
            sys::exit_child(code)
        }
        Err(r) => r,
    };
    let mut err = std::fs::File::from(err);
    let _ = err.write_all(&report.encode());
    sys::exit_child(127)
}

/// Sets the sandbox up and execs the builder; returns only with a builtin to call
/// (everything but the exec done) or with the step that failed.
fn prepare_and_exec<'b>(
    plan: &Plan,
    go: OwnedFd,
    err: &OwnedFd,
    net: Option<OwnedFd>,
    builtins: &'b [Builtin],
) -> Setup<(&'b str, BuiltinFn)> {
    // A builtin this binary does not have fails before anything is set up.
    let builtin = find_builtin(plan, builtins)?;
    wait_for_id_maps(go)?;
    set_up_namespaces(plan)?;
    build_root(plan)?;
    if plan.id_maps.switch_ids {
        switch_to_builder(&plan.id_maps, err)?;
    }
    let with_pasta = plan.pasta.is_some();
    enter_nested_namespace(&plan.id_maps, with_pasta)?;
    if with_pasta {
        attach_network(net)?;
    }
    check_mounts_locked()?;
    prepare_process(plan)?;
    restrict_builder()?;
    match &plan.exec.program {
        Program::Path(program) => Err(exec(plan, program)),
        Program::Builtin(_) => {
            drop_capabilities()?;
            builtin.ok_or(fail(Step::ExecutingBuilder, None, libc::EPROTO))
        }
    }
}

/// The builtin the plan names, among those of this binary.
fn find_builtin<'b>(plan: &Plan, builtins: &'b [Builtin]) -> Setup<Option<(&'b str, BuiltinFn)>> {
    let Program::Builtin(name) = &plan.exec.program else {
        return Ok(None);
    };
    builtins
        .iter()
        .find(|(n, _)| *n == name.as_str())
        .copied()
        .map(Some)
        .ok_or_else(|| {
            fail(
                Step::ExecutingBuilder,
                Some(Path::new(&format!("builtin:{name}"))),
                libc::ENOENT,
            )
        })
}

/// Dies with the helper, and waits until it wrote the id maps.
fn wait_for_id_maps(go: OwnedFd) -> Setup<()> {
    // If the helper dies, the whole sandbox dies with it (it is our only way out).
    at(
        Step::SettingParentDeathSignal,
        None,
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)),
    )?;
    // The helper writes our id maps, then one byte; EOF means it died or gave up.
    let mut byte = [0u8; 1];
    match rustix::io::read(&go, &mut byte) {
        Ok(1) => Ok(()),
        Ok(_) => Err(fail(Step::WaitingForIdMaps, None, libc::EPIPE)),
        Err(e) => Err(fail(Step::WaitingForIdMaps, None, e.raw_os_error())),
    }
}

/// Private mount propagation, the host and domain names, and loopback.
fn set_up_namespaces(plan: &Plan) -> Setup<()> {
    // Nothing we mount may propagate back to the host.
    at(
        Step::MakingMountsPrivate,
        None,
        mount::mount_change(
            "/",
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        ),
    )?;
    if plan.namespaces.uts {
        at(
            Step::SettingHostname,
            None,
            rustix::system::sethostname(plan.hostname.as_bytes()),
        )?;
        at(
            Step::SettingDomainname,
            None,
            rustix::system::setdomainname(plan.domainname.as_bytes()),
        )?;
    }
    // A build on pasta's network gets its network namespace with the nested user
    // namespace below instead.
    if plan.namespaces.net && plan.pasta.is_none() {
        at_io(Step::BringingUpLoopback, None, sys::loopback_up())?;
    }
    Ok(())
}

/// Builds the root from the plan's mount operations and pivots into it.
fn build_root(plan: &Plan) -> Setup<()> {
    let root = &plan.root;
    // The directories that stay on the host root's filesystem are made, and held by
    // a descriptor, before the root is covered.
    let disk = disk_dirs(root, &plan.mounts)?;
    // The root is a tmpfs of its own (a mount point, as pivot_root needs): its mount
    // points and files vanish with the sandbox instead of being deleted one by one.
    at(
        Step::BindingRoot,
        Some(root),
        mount::mount(
            "tmpfs",
            root.as_path(),
            "tmpfs",
            MountFlags::NOSUID | MountFlags::NODEV,
            Some(c_string(crate::plan::ROOT_TMPFS_OPTIONS.as_bytes())?.as_c_str()),
        ),
    )?;
    let mut disk = disk.into_iter();
    for op in &plan.mounts {
        match op {
            MountOp::DiskDir { path, mode } => {
                let fd = disk
                    .next()
                    .ok_or(fail(Step::BindMounting, Some(path), libc::EPROTO))?;
                bind_disk_dir(root, path, *mode, &fd)?;
            }
            op => apply(root, op)?,
        }
    }
    at(
        Step::Chmod,
        Some(root),
        rfs::chmod(root.as_path(), Mode::from_raw_mode(plan.root_mode)),
    )?;
    pivot_into(root)
}

/// Makes `root` the root and detaches the old one.
fn pivot_into(root: &Path) -> Setup<()> {
    at(
        Step::ChangingDirectory,
        Some(root),
        rustix::process::chdir(root),
    )?;
    at(
        Step::PivotingRoot,
        Some(root),
        rustix::process::pivot_root(".", "."),
    )?;
    at(
        Step::DetachingOldRoot,
        None,
        mount::unmount(".", UnmountFlags::DETACH),
    )?;
    at(
        Step::ChangingDirectory,
        Some(Path::new("/")),
        rustix::process::chdir("/"),
    )
}

/// Guix's check, on every build: a locked mount cannot be unmounted even by the
/// namespace's own root (EINVAL). Anything else means the builder could uncover
/// what lies beneath its mounts, so it must not run.
fn check_mounts_locked() -> Setup<()> {
    match mount::unmount("/proc", UnmountFlags::DETACH) {
        Err(Errno::INVAL) => Ok(()),
        Ok(()) => Err(Report::NotLocked { errno: 0 }),
        Err(e) => Err(Report::NotLocked {
            errno: e.raw_os_error(),
        }),
    }
}

/// The builder's process: its directory, a session, stdin from `/dev/null`, the
/// umask, and no core dumps.
fn prepare_process(plan: &Plan) -> Setup<()> {
    let cwd = plan.exec.cwd.as_path();
    at(
        Step::ChangingDirectory,
        Some(cwd),
        rustix::process::chdir(cwd),
    )?;
    at(Step::StartingSession, None, rustix::process::setsid())?;
    let devnull = at(
        Step::RedirectingStdin,
        None,
        rfs::open("/dev/null", OFlags::RDONLY | OFlags::CLOEXEC, Mode::empty()),
    )?;
    at(
        Step::RedirectingStdin,
        None,
        rustix::stdio::dup2_stdin(&devnull),
    )?;
    drop(devnull);
    rustix::process::umask(Mode::from_raw_mode(0o022));
    at(Step::SettingLimits, None, no_core_dumps())
}

/// A core size limit of 0.
fn no_core_dumps() -> rustix::io::Result<()> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: None,
        },
    )
    .or_else(|_| {
        // Lowering only the soft limit needs no privilege; keep the hard one.
        let hard = getrlimit(Resource::Core).maximum;
        setrlimit(
            Resource::Core,
            Rlimit {
                current: Some(0),
                maximum: hard,
            },
        )
    })
}

/// What the builder must not have: ambient capabilities, new privileges, the host's
/// abstract sockets and processes (Landlock), the system calls seccomp refuses, and
/// inherited descriptors.
fn restrict_builder() -> Setup<()> {
    at(
        Step::DroppingCapabilities,
        None,
        rustix::thread::clear_ambient_capability_set(),
    )?;
    at(
        Step::SettingNoNewPrivs,
        None,
        rustix::thread::set_no_new_privs(true),
    )?;
    // Landlock's scopes where the kernel has them (Linux 6.12): no abstract Unix
    // socket of the host (fixed-output builds share its network namespace) and no
    // process outside the build can be reached, whatever the builder runs.
    if sys::landlock_abi().is_some_and(|v| v >= sys::LANDLOCK_SCOPE_ABI) {
        at_io(Step::ScopingWithLandlock, None, sys::landlock_scope())?;
    }
    let arch = seccomp::native_arch().ok_or(fail(Step::InstallingSeccomp, None, libc::ENOSYS))?;
    at_io(
        Step::InstallingSeccomp,
        None,
        sys::install_seccomp_filter(&seccomp::builder_filter_for(arch)),
    )?;
    at_io(Step::ClosingDescriptors, None, sys::cloexec_from_3())
}

/// An exec by a non-root uid would clear the capabilities the nested user namespace
/// gave this process; a builtin, without one, drops them here, or it would hold every
/// capability inside (mount, chown, …). With nothing permitted they cannot come back.
fn drop_capabilities() -> Setup<()> {
    let none = rustix::thread::CapabilitySet::empty();
    at(
        Step::DroppingCapabilities,
        None,
        rustix::thread::set_capabilities(
            None,
            rustix::thread::CapabilitySets {
                effective: none,
                permitted: none,
                inheritable: none,
            },
        ),
    )
}

/// Execs the builder `program`; returns only the failure.
fn exec(plan: &Plan, program: &Path) -> Report {
    let mut cmd = std::process::Command::new(program);
    if let Some(argv0) = plan.exec.argv.first() {
        cmd.arg0(argv0);
    }
    cmd.args(plan.exec.argv.iter().skip(1));
    cmd.env_clear();
    cmd.envs(plan.exec.env.iter().map(|(k, v)| (k, v)));
    let err = cmd.exec();
    fail(
        Step::ExecutingBuilder,
        Some(program),
        err.raw_os_error().unwrap_or(libc::EIO),
    )
}
