//! Id maps: writing a build's, mapping a namespace ahead of builds, and giving a
//! build's files back to the store owner (reclaim).

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::process::Command;

use rustix::pipe::{pipe_with, PipeFlags};
use rustix::process::{Pid, Signal, WaitOptions};

use super::{errno_of, wait_for};
use crate::error::Step;
use crate::plan::{IdMapMethod, IdMaps};
use crate::sys::{self, Cloned};
use crate::wire::Report;

/// Makes a user namespace with `ids` written by `newuidmap`/`newgidmap` and returns its
/// descriptor, for the daemon to keep and builds to enter ([`IdMapMethod::Enter`]). The
/// namespace lives as long as a descriptor of it is open; the child made to hold it
/// exits at once.
pub(super) fn map_namespace(ids: &IdMaps) -> Result<OwnedFd, Report> {
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
pub(super) fn reclaim_in(
    userns: &OwnedFd,
    ids: &IdMaps,
    paths: &[std::path::PathBuf],
) -> Result<(), Report> {
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
pub(super) fn reclaim(ids: &IdMaps, paths: &[std::path::PathBuf]) -> Result<Report, Report> {
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
pub(super) fn write_id_maps(pid: u32, ids: &IdMaps) -> Result<(), Report> {
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
