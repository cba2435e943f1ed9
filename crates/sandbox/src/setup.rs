//! The executor: runs in the cloned child (PID 1 of the new namespaces), applies a
//! [`Plan`] in order, locks the mounts, drops what the builder must not have, and execs
//! it, or, for a builtin builder, closes every inherited descriptor and calls it. Any
//! setup failure is sent to the helper as a [`Report`] on the error pipe.

use std::ffi::{OsStr, OsString};
use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

use rustix::fs::{self as rfs, Mode, OFlags, StatVfsMountFlags};
use rustix::io::Errno;
use rustix::mount::{self, MountFlags, MountPropagationFlags, UnmountFlags};

use crate::builtins::{call_builtin, Builtin, BuiltinFn};
use crate::error::Step;
use crate::plan::{IdMapEntry, IdMaps, MountOp, Plan, Program};
use crate::seccomp;
use crate::sys;
use crate::wire::Report;

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
    let builtin = match &plan.exec.program {
        Program::Path(_) => None,
        Program::Builtin(name) => Some(
            builtins
                .iter()
                .find(|(n, _)| *n == name.as_str())
                .copied()
                .ok_or_else(|| {
                    fail(
                        Step::ExecutingBuilder,
                        Some(Path::new(&format!("builtin:{name}"))),
                        libc::ENOENT,
                    )
                })?,
        ),
    };
    // If the helper dies, the whole sandbox dies with it (it is our only way out).
    at(
        Step::SettingParentDeathSignal,
        None,
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)),
    )?;
    // The helper writes our id maps, then one byte; EOF means it died or gave up.
    let mut byte = [0u8; 1];
    match rustix::io::read(&go, &mut byte) {
        Ok(1) => {}
        Ok(_) => return Err(fail(Step::WaitingForIdMaps, None, libc::EPIPE)),
        Err(e) => return Err(fail(Step::WaitingForIdMaps, None, e.raw_os_error())),
    }
    drop(go);

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

    at(
        Step::ChangingDirectory,
        Some(root),
        rustix::process::chdir(root.as_path()),
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
    )?;

    if plan.id_maps.switch_ids {
        switch_to_builder(&plan.id_maps, err)?;
    }
    let with_pasta = plan.pasta.is_some();
    enter_nested_namespace(&plan.id_maps, with_pasta)?;
    if with_pasta {
        attach_network(net)?;
    }
    // Guix's check, on every build: a locked mount cannot be unmounted even by the
    // namespace's own root (EINVAL). Anything else means the builder could uncover
    // what lies beneath its mounts, so it must not run.
    match mount::unmount("/proc", UnmountFlags::DETACH) {
        Err(Errno::INVAL) => {}
        Ok(()) => return Err(Report::NotLocked { errno: 0 }),
        Err(e) => {
            return Err(Report::NotLocked {
                errno: e.raw_os_error(),
            })
        }
    }

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
    at(
        Step::SettingLimits,
        None,
        rustix::process::setrlimit(
            rustix::process::Resource::Core,
            rustix::process::Rlimit {
                current: Some(0),
                maximum: None,
            },
        )
        .or_else(|_| {
            // Lowering only the soft limit needs no privilege; keep the hard one.
            let hard = rustix::process::getrlimit(rustix::process::Resource::Core).maximum;
            rustix::process::setrlimit(
                rustix::process::Resource::Core,
                rustix::process::Rlimit {
                    current: Some(0),
                    maximum: hard,
                },
            )
        }),
    )?;

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
    at_io(Step::ClosingDescriptors, None, sys::cloexec_from_3())?;

    let program = match &plan.exec.program {
        Program::Path(p) => p,
        Program::Builtin(_) => {
            // An exec by a non-root uid would clear the capabilities the nested user
            // namespace gave this process; without one they must be dropped here, or
            // the builtin would hold every capability inside (mount, chown, …). With
            // nothing permitted they cannot come back.
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
            )?;
            return builtin.ok_or(fail(Step::ExecutingBuilder, None, libc::EPROTO));
        }
    };
    let mut cmd = std::process::Command::new(program);
    if let Some(argv0) = plan.exec.argv.first() {
        cmd.arg0(argv0);
    }
    cmd.args(plan.exec.argv.iter().skip(1));
    cmd.env_clear();
    cmd.envs(plan.exec.env.iter().map(|(k, v)| (k, v)));
    let err = cmd.exec();
    Err(fail(
        Step::ExecutingBuilder,
        Some(program),
        err.raw_os_error().unwrap_or(libc::EIO),
    ))
}

/// In the id-range mode the setup ran as inner root (the store owner); the builder
/// gets its own ids and no supplementary groups (the store owner's would still grant
/// access to host files by group). Changing the effective uid clears the parent-death
/// signal and the dumpable flag, so both are set again, and the helper's liveness checked once more: a write end
/// of a pipe whose reader is gone polls as `POLLERR`.
fn switch_to_builder(ids: &IdMaps, err: &OwnedFd) -> Setup<()> {
    use rustix::process::{Gid, Uid};
    at(
        Step::SwitchingToBuilder,
        None,
        rustix::thread::set_thread_groups(&[]),
    )?;
    let gid = Gid::from_raw(ids.builder_gid);
    at(
        Step::SwitchingToBuilder,
        None,
        rustix::thread::set_thread_res_gid(gid, gid, gid),
    )?;
    let uid = Uid::from_raw(ids.builder_uid);
    at(
        Step::SwitchingToBuilder,
        None,
        rustix::thread::set_thread_res_uid(uid, uid, uid),
    )?;
    at(
        Step::SettingParentDeathSignal,
        None,
        rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL)),
    )?;
    // The uid change also cleared the dumpable flag, which makes `/proc/self/*` root's:
    // the nested namespace's maps could not be written. The exec resets it anyway.
    at(
        Step::SwitchingToBuilder,
        None,
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::Dumpable),
    )?;
    let mut fds = [rustix::event::PollFd::new(
        err,
        rustix::event::PollFlags::OUT,
    )];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    if rustix::event::poll(&mut fds, Some(&zero)).is_ok()
        && fds[0].revents().contains(rustix::event::PollFlags::ERR)
    {
        return Err(fail(Step::SettingParentDeathSignal, None, libc::ESRCH));
    }
    Ok(())
}

/// Enters a nested user + mount namespace with identity maps of the builder's ids:
/// every mount inherited into it is locked (mount_namespaces(7)), so the builder can
/// neither remount nor unmount them.
///
/// A process may map its own ids (one each) in a namespace it just created. The
/// `uid-range` layout maps 65,536 ids, which needs `CAP_SETUID` in the *outer*
/// namespace: a forked writer that stays there writes those maps.
fn enter_nested_namespace(ids: &IdMaps, net: bool) -> Setup<()> {
    if ids.nested_range {
        return enter_nested_namespace_range(net);
    }
    at_io(
        Step::EnteringNestedNamespace,
        None,
        sys::unshare_user_and_mount(net),
    )?;
    // A process may map its own ids in a namespace it just created; no helper needed.
    let write = |step, file: &str, text: String| {
        let path = Path::new("/proc/self").join(file);
        at_io(step, Some(&path), std::fs::write(&path, text))
    };
    write(Step::WritingSetgroups, "setgroups", "deny".to_owned())?;
    let identity = |id| {
        IdMaps::map_text(&[IdMapEntry {
            inner: id,
            outer: id,
            count: 1,
        }])
    };
    write(Step::WritingUidMap, "uid_map", identity(ids.builder_uid))?;
    write(Step::WritingGidMap, "gid_map", identity(ids.builder_gid))?;
    Ok(())
}

fn enter_nested_namespace_range(net: bool) -> Setup<()> {
    let (ready_r, ready_w) = at(
        Step::WritingNestedMaps,
        None,
        rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC),
    )?;
    let writer = match at_io(Step::WritingNestedMaps, None, sys::clone_into_namespaces(0))? {
        sys::Cloned::Child => {
            drop(ready_w);
            let mut byte = [0u8; 1];
            let code = match rustix::io::read(&ready_r, &mut byte) {
                Ok(1) => {
                    let text = IdMaps::map_text(&[IdMapEntry {
                        inner: 0,
                        outer: 0,
                        count: crate::plan::UID_RANGE_IDS,
                    }]);
                    // The parent is this PID namespace's init.
                    let ok = std::fs::write("/proc/1/uid_map", &text).is_ok()
                        && std::fs::write("/proc/1/gid_map", &text).is_ok();
                    if ok {
                        0
                    } else {
                        1
                    }
                }
                _ => 1,
            };
            sys::exit_child(code)
        }
        sys::Cloned::Parent(pid) => pid,
    };
    drop(ready_r);
    let writer = rustix::process::Pid::from_raw(writer as i32).ok_or(fail(
        Step::WritingNestedMaps,
        None,
        libc::ECHILD,
    ))?;
    let unshared = at_io(
        Step::EnteringNestedNamespace,
        None,
        sys::unshare_user_and_mount(net),
    );
    if unshared.is_ok() {
        let _ = rustix::io::write(&ready_w, b"g");
    }
    drop(ready_w);
    let status = at(
        Step::WritingNestedMaps,
        None,
        rustix::process::waitpid(Some(writer), rustix::process::WaitOptions::empty()),
    )?;
    unshared?;
    match status.and_then(|(_, s)| s.exit_status()) {
        Some(0) => Ok(()),
        _ => Err(fail(Step::WritingNestedMaps, None, libc::EPERM)),
    }
}

/// A build on pasta's network, just after its network namespace was made with the
/// nested user namespace: brings `lo` up, tells the helper (one byte on `net`), which
/// starts `pasta` on the namespace, and waits until the helper says pasta is ready
/// (one byte back). EOF means the helper could not start it (its report says why).
fn attach_network(net: Option<OwnedFd>) -> Setup<()> {
    let net = net.ok_or(fail(Step::WaitingForNetwork, None, libc::EBADF))?;
    at_io(Step::BringingUpLoopback, None, sys::loopback_up())?;
    at(Step::WaitingForNetwork, None, rustix::io::write(&net, b"n"))?;
    let mut byte = [0u8; 1];
    match rustix::io::read(&net, &mut byte) {
        Ok(1) if byte == *b"p" => Ok(()),
        Ok(_) => Err(fail(Step::WaitingForNetwork, None, libc::EPIPE)),
        Err(e) => Err(fail(Step::WaitingForNetwork, None, e.raw_os_error())),
    }
}

/// Creates each [`MountOp::DiskDir`] under the host root (on its own filesystem, the
/// root not yet covered), in plan order, and opens it (`O_PATH`, never following a
/// symlink) for [`bind_disk_dir`]. The root is a fresh directory of the daemon's, so
/// only what this creates is in it.
fn disk_dirs(root: &Path, ops: &[MountOp]) -> Setup<Vec<OwnedFd>> {
    let mut out = Vec::new();
    for op in ops {
        let MountOp::DiskDir { path, .. } = op else {
            continue;
        };
        let shown = host(root, path);
        let open = |dir: &OwnedFd, name: &OsStr| {
            at(
                Step::CreatingDirectory,
                Some(&shown),
                rfs::openat(
                    dir,
                    name,
                    OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                ),
            )
        };
        let mut dir = at(
            Step::CreatingDirectory,
            Some(root),
            rfs::open(
                root,
                OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            ),
        )?;
        for name in path.components().filter_map(|c| match c {
            std::path::Component::Normal(n) => Some(n),
            _ => None,
        }) {
            match rfs::mkdirat(&dir, name, Mode::from_raw_mode(0o700)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => {
                    return Err(fail(
                        Step::CreatingDirectory,
                        Some(&shown),
                        e.raw_os_error(),
                    ))
                }
            }
            dir = open(&dir, name)?;
        }
        out.push(dir);
    }
    Ok(out)
}

/// Makes the mount point of a [`MountOp::DiskDir`] in the root's tmpfs, binds the
/// directory `fd` holds (covered by that tmpfs, so reached through the descriptor)
/// on it, and sets its mode.
fn bind_disk_dir(root: &Path, path: &Path, mode: u32, fd: &OwnedFd) -> Setup<()> {
    use std::os::fd::AsRawFd;
    let p = host(root, path);
    match rfs::mkdir(&p, Mode::from_raw_mode(0o755)) {
        Ok(()) | Err(Errno::EXIST) => {}
        Err(e) => return Err(fail(Step::CreatingDirectory, Some(&p), e.raw_os_error())),
    }
    let source = format!("/proc/self/fd/{}", fd.as_raw_fd());
    at(
        Step::BindMounting,
        Some(&p),
        mount::mount_bind(source.as_str(), &p),
    )?;
    at(
        Step::Chmod,
        Some(&p),
        rfs::chmod(&p, Mode::from_raw_mode(mode)),
    )
}

/// The host path of a sandbox path under the new root (plan paths are validated as
/// absolute with normal components only).
fn host(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

fn apply(root: &Path, op: &MountOp) -> Setup<()> {
    match op {
        MountOp::Mkdir { path, mode } => {
            let p = host(root, path);
            match rfs::mkdir(&p, Mode::from_raw_mode(*mode)) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(fail(Step::CreatingDirectory, Some(&p), e.raw_os_error())),
            }
            // mkdir honours the umask; the plan's mode is exact.
            at(
                Step::Chmod,
                Some(&p),
                rfs::chmod(&p, Mode::from_raw_mode(*mode)),
            )
        }
        MountOp::WriteFile {
            path,
            contents,
            mode,
        } => {
            let p = host(root, path);
            let fd = at(
                Step::WritingFile,
                Some(&p),
                rfs::open(
                    &p,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o600),
                ),
            )?;
            let mut f = std::fs::File::from(fd);
            at_io(Step::WritingFile, Some(&p), f.write_all(contents))?;
            at(
                Step::Chmod,
                Some(&p),
                rfs::fchmod(&f, Mode::from_raw_mode(*mode)),
            )
        }
        MountOp::DiskDir { path, .. } => {
            // Handled with their descriptors by `prepare_and_exec`.
            Err(fail(Step::BindMounting, Some(path), libc::EPROTO))
        }
        MountOp::Symlink { target, link } => {
            let p = host(root, link);
            at(Step::CreatingSymlink, Some(&p), rfs::symlink(target, &p))
        }
        MountOp::Bind {
            source,
            target,
            read_only,
            optional,
        } => bind(root, source, target, *read_only, *optional),
        MountOp::Proc { target } => {
            let p = host(root, target);
            at(
                Step::MountingProc,
                Some(&p),
                mount::mount(
                    "proc",
                    &p,
                    "proc",
                    MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC,
                    None,
                ),
            )
        }
        MountOp::Tmpfs { target, options } => {
            let p = host(root, target);
            at(
                Step::MountingTmpfs,
                Some(&p),
                mount::mount(
                    "tmpfs",
                    &p,
                    "tmpfs",
                    MountFlags::NOSUID | MountFlags::NODEV,
                    Some(c_string(options.as_bytes())?.as_c_str()),
                ),
            )
        }
        MountOp::Chown { path, uid, gid } => {
            let p = host(root, path);
            at(
                Step::Chown,
                Some(&p),
                rfs::chownat(
                    rfs::CWD,
                    &p,
                    Some(rfs::Uid::from_raw(*uid)),
                    Some(rfs::Gid::from_raw(*gid)),
                    rfs::AtFlags::SYMLINK_NOFOLLOW,
                ),
            )
        }
        MountOp::Devpts { target } => {
            let p = host(root, target);
            at(
                Step::MountingDevpts,
                Some(&p),
                mount::mount(
                    "devpts",
                    &p,
                    "devpts",
                    MountFlags::NOSUID | MountFlags::NOEXEC,
                    Some(c"newinstance,ptmxmode=0666,mode=0620"),
                ),
            )
        }
    }
}

fn c_string(bytes: &[u8]) -> Setup<std::ffi::CString> {
    std::ffi::CString::new(bytes).map_err(|_| fail(Step::MountingTmpfs, None, libc::EINVAL))
}

fn bind(root: &Path, source: &Path, target: &Path, read_only: bool, optional: bool) -> Setup<()> {
    let dst = host(root, target);
    let st = match rfs::lstat(source) {
        Ok(st) => st,
        Err(Errno::NOENT) if optional => return Ok(()),
        Err(e) => {
            return Err(fail(
                Step::InspectingBindSource,
                Some(source),
                e.raw_os_error(),
            ))
        }
    };
    let kind = rfs::FileType::from_raw_mode(st.st_mode);
    if kind == rfs::FileType::Symlink {
        // A symlink input is recreated, not bound: binding would follow it.
        let link = at(
            Step::InspectingBindSource,
            Some(source),
            rfs::readlink(source, Vec::new()),
        )?;
        let link = PathBuf::from(OsString::from_vec(link.into_bytes()));
        return at(Step::CreatingSymlink, Some(&dst), rfs::symlink(&link, &dst));
    }
    if kind == rfs::FileType::Directory {
        match rfs::mkdir(&dst, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(Errno::EXIST) => {}
            Err(e) => return Err(fail(Step::CreatingMountPoint, Some(&dst), e.raw_os_error())),
        }
        at(
            Step::BindMounting,
            Some(source),
            mount::mount_bind_recursive(source, &dst),
        )?;
    } else {
        match rfs::open(
            &dst,
            OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o444),
        ) {
            Ok(_) => {}
            Err(e) => return Err(fail(Step::CreatingMountPoint, Some(&dst), e.raw_os_error())),
        }
        at(
            Step::BindMounting,
            Some(source),
            mount::mount_bind(source, &dst),
        )?;
    }
    if read_only {
        remount_read_only(&dst)?;
        if kind == rfs::FileType::Directory {
            let info = at_io(
                Step::ReadingMountinfo,
                None,
                read_bounded("/proc/self/mountinfo", 16 << 20),
            )?;
            for sub in submounts_under(&info, &dst) {
                remount_read_only(&sub)?;
            }
        }
    }
    Ok(())
}

/// Remounts a bind mount read-only, keeping the flags it has: clearing a flag that is
/// locked (nosuid, nodev, noexec and the atime ones, inherited from the host) gives
/// EPERM.
fn remount_read_only(path: &Path) -> Setup<()> {
    let vfs = at(Step::ReadingMountFlags, Some(path), rfs::statvfs(path))?;
    let have = vfs.f_flag;
    let mut flags = MountFlags::BIND | MountFlags::RDONLY;
    for (st, ms) in [
        (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
        (StatVfsMountFlags::NODEV, MountFlags::NODEV),
        (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
        (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
        (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
        (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
    ] {
        if have.contains(st) {
            flags |= ms;
        }
    }
    at(
        Step::RemountingReadOnly,
        Some(path),
        mount::mount_remount(path, flags, ""),
    )
}

fn read_bounded(path: &str, limit: u64) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)?
        .take(limit)
        .read_to_end(&mut buf)?;
    Ok(buf)
}

/// Mount points strictly below `dir` in a `/proc/self/mountinfo` text, in order
/// (field 5, with the kernel's octal escapes undone).
pub(crate) fn submounts_under(mountinfo: &[u8], dir: &Path) -> Vec<PathBuf> {
    let mut prefix = dir.as_os_str().as_bytes().to_vec();
    prefix.push(b'/');
    mountinfo
        .split(|&b| b == b'\n')
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(unescape_mountinfo)
        .filter(|p| p.starts_with(&prefix))
        .map(|p| PathBuf::from(OsStr::from_bytes(&p)))
        .collect()
}

fn unescape_mountinfo(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 3 < field.len() {
            let oct = &field[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(b) = u8::try_from(v) {
                    out.push(b);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(field[i]);
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_submounts_with_escapes() {
        let info = b"22 1 0:21 / / rw - ext4 /dev/sda rw\n\
            30 22 0:30 / /r/nix/store/a rw - ext4 x rw\n\
            31 30 0:31 / /r/nix/store/a/sub\\040dir rw - tmpfs t rw\n\
            32 22 0:32 / /r/nix/store/ab rw - tmpfs t rw\n";
        assert_eq!(
            submounts_under(info, Path::new("/r/nix/store/a")),
            [PathBuf::from("/r/nix/store/a/sub dir")]
        );
        assert!(submounts_under(info, Path::new("/r/nix/store/ab")).is_empty());
    }

    #[test]
    fn unescape_leaves_odd_backslashes() {
        assert_eq!(unescape_mountinfo(b"a\\134b"), b"a\\b");
        assert_eq!(unescape_mountinfo(b"a\\9"), b"a\\9");
        assert_eq!(unescape_mountinfo(b"end\\"), b"end\\");
    }
}
