//! The builder's ids: switching to them, the nested user and mount namespace that
//! locks every mount, and the network pasta attaches to.

use std::os::fd::OwnedFd;
use std::path::Path;

use super::{at, at_io, fail, Setup};
use crate::error::Step;
use crate::plan::{IdMapEntry, IdMaps};
use crate::sys;

/// In the id-range mode the setup ran as inner root (the store owner); the builder
/// gets its own ids and no supplementary groups (the store owner's would still grant
/// access to host files by group). Changing the effective uid clears the parent-death
/// signal and the dumpable flag, so both are set again, and the helper's liveness checked once more: a write end
/// of a pipe whose reader is gone polls as `POLLERR`.
pub(super) fn switch_to_builder(ids: &IdMaps, err: &OwnedFd) -> Setup<()> {
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
pub(super) fn enter_nested_namespace(ids: &IdMaps, net: bool) -> Setup<()> {
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
pub(super) fn attach_network(net: Option<OwnedFd>) -> Setup<()> {
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
