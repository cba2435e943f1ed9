//! The only unsafe code of the workspace: the few kernel calls rustix does not wrap
//! safely. Each is small, takes checked arguments, and says why it is sound.
//!
//! Everything here runs in the single-threaded helper process or its cloned child,
//! never in the multi-threaded daemon, except [`peer_groups`]: one `getsockopt` on a
//! descriptor the caller owns, which is sound on any thread.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;

use crate::seccomp::BpfInsn;

/// Which side of [`clone_into_namespaces`] we are on.
pub(crate) enum Cloned {
    /// In the new child (PID 1 of its PID namespace).
    Child,
    /// In the caller; the child's pid.
    Parent(u32),
}

/// `clone(flags | SIGCHLD)` without a new stack: like `fork`, but the child starts in
/// the new namespaces, so it is PID 1 of the new PID namespace from its first
/// instruction (`unshare(CLONE_NEWPID)` would only apply to a later child).
///
/// Must only be called from a single-threaded process (the helper): the child gets a
/// copy of this thread alone, so no lock held by another thread can be inherited.
pub(crate) fn clone_into_namespaces(flags: libc::c_int) -> io::Result<Cloned> {
    // SAFETY: raw clone with a null stack behaves like fork: the child continues on a
    // copy of the caller's stack. The helper is single-threaded when it calls this
    // (documented above and asserted by `helper::run` reading /proc/self/stat's thread
    // count), so the child inherits no lock held by another thread, and glibc caches
    // no pid since 2.25. The remaining arguments (parent_tid, child_tid, tls) are unused
    // without CLONE_*SETTID/CLONE_SETTLS and may be null.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone,
            (flags | libc::SIGCHLD) as libc::c_ulong,
            std::ptr::null_mut::<libc::c_void>(),
            std::ptr::null_mut::<libc::c_int>(),
            std::ptr::null_mut::<libc::c_int>(),
            0 as libc::c_ulong,
        )
    };
    match r {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Cloned::Child),
        pid => Ok(Cloned::Parent(pid as u32)),
    }
}

/// `unshare(CLONE_NEWUSER | CLONE_NEWNS)` for the nested namespace that locks the
/// mounts, with `CLONE_NEWNET` too when `net` (the network namespace of a build on
/// `pasta`'s network, which then belongs to the nested user namespace).
pub(crate) fn unshare_user_and_mount(net: bool) -> io::Result<()> {
    use rustix::thread::UnshareFlags;
    let mut flags = UnshareFlags::NEWUSER | UnshareFlags::NEWNS;
    if net {
        flags |= UnshareFlags::NEWNET;
    }
    // SAFETY: the unsafety of unshare_unsafe concerns CLONE_FILES, which makes other
    // threads' descriptors invalid; these flags do not include it, and the sandboxed
    // child has a single thread anyway.
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// Installs a seccomp filter for this thread (its children inherit it).
/// `PR_SET_NO_NEW_PRIVS` must be set first, as an unprivileged process cannot install
/// one otherwise.
pub(crate) fn install_seccomp_filter(prog: &[BpfInsn]) -> io::Result<()> {
    let filters: Vec<libc::sock_filter> = prog
        .iter()
        .map(|i| libc::sock_filter {
            code: i.code,
            jt: i.jt,
            jf: i.jf,
            k: i.k,
        })
        .collect();
    let len = u16::try_from(filters.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "seccomp filter too long"))?;
    let fprog = libc::sock_fprog {
        len,
        filter: filters.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: fprog points at `len` initialised sock_filter values in `filters`, which
    // outlives the call; the kernel copies the program and does not keep the pointer.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER as libc::c_ulong,
            &fprog as *const libc::sock_fprog,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// `struct landlock_ruleset_attr` (ABI 6: with `scoped`).
#[repr(C)]
struct LandlockRulesetAttr {
    handled_access_fs: u64,
    handled_access_net: u64,
    scoped: u64,
}

/// `LANDLOCK_SCOPE_ABSTRACT_UNIX_SOCKET | LANDLOCK_SCOPE_SIGNAL`.
const LANDLOCK_SCOPES: u64 = 0x1 | 0x2;
/// `LANDLOCK_CREATE_RULESET_VERSION`.
const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
/// The first Landlock ABI with scopes (Linux 6.12).
pub const LANDLOCK_SCOPE_ABI: i64 = 6;

/// The kernel's Landlock ABI version, or `None` without Landlock.
pub fn landlock_abi() -> Option<i64> {
    // SAFETY: with a null attribute, size 0 and the VERSION flag the call reads and
    // writes no memory; it only returns the ABI version (or fails).
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<LandlockRulesetAttr>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (v > 0).then_some(v)
}

/// Calls one of Linux 6.13's `*xattrat` system calls, by number, on `path` (relative
/// to the working directory) with the attribute name `user.unrooted` and no value:
/// the probe that shows what the builder's seccomp filter answers. Without the filter
/// the kernel answers EINVAL, ENODATA or a size; with it, ENOTSUP.
pub fn xattrat_by_number(nr: libc::c_long, path: &std::ffi::CStr) -> io::Result<libc::c_long> {
    let name = c"user.unrooted";
    // SAFETY: `path` and `name` are NUL-terminated and outlive the call. The fifth
    // argument is null with size 0: setxattrat/getxattrat refuse a size below their
    // argument struct's without reading it, listxattrat with size 0 only returns the
    // length it would need (writing nothing), removexattrat takes four arguments.
    let r = unsafe {
        libc::syscall(
            nr,
            libc::AT_FDCWD,
            path.as_ptr(),
            0 as libc::c_int,
            name.as_ptr(),
            std::ptr::null::<u8>(),
            0usize,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// The calls [`call_with_no_memory`] may make: each reads and writes no memory of ours
/// when every argument is 0 or null.
pub const CALLS_WITH_NO_MEMORY: [(&str, libc::c_long); 2] =
    [("io_uring_setup", 425), ("open_tree_attr", 467)];

/// Calls one of [`CALLS_WITH_NO_MEMORY`] with all arguments 0 (null pointers, size 0):
/// the probe that shows the builder's filter answering io_uring and calls newer than
/// it audited with ENOSYS. `None` for a name not in the list.
pub fn call_with_no_memory(name: &str) -> Option<io::Result<libc::c_long>> {
    let &(_, nr) = CALLS_WITH_NO_MEMORY.iter().find(|(n, _)| *n == name)?;
    // SAFETY: both calls take (number, pointer[, ...]) and with a null pointer and zero
    // sizes fail before reading or writing user memory (io_uring_setup: EFAULT or
    // EINVAL; open_tree_attr: EFAULT or EBADF); no resource is created.
    let r = unsafe { libc::syscall(nr, 0usize, 0usize, 0usize, 0usize, 0usize) };
    Some(if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    })
}

/// Confines this thread (and what it executes) to its own Landlock domain for
/// abstract Unix sockets and signals: it can no longer connect to an abstract socket
/// or signal a process made outside the domain. Restricts no file or network access.
/// `PR_SET_NO_NEW_PRIVS` must be set first.
pub(crate) fn landlock_scope() -> io::Result<()> {
    let attr = LandlockRulesetAttr {
        handled_access_fs: 0,
        handled_access_net: 0,
        scoped: LANDLOCK_SCOPES,
    };
    // SAFETY: attr is a live, initialised landlock_ruleset_attr of the size passed;
    // the kernel copies it and keeps no pointer.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            &attr as *const LandlockRulesetAttr,
            std::mem::size_of::<LandlockRulesetAttr>(),
            0u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = libc::c_int::try_from(fd).map_err(|_| io::Error::other("landlock fd"))?;
    // SAFETY: fd is the ruleset descriptor just returned, owned here and closed once.
    let r = unsafe { libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) };
    let err = io::Error::last_os_error();
    // SAFETY: fd is open and not used after this.
    unsafe { libc::close(fd) };
    if r == 0 {
        Ok(())
    } else {
        Err(err)
    }
}

/// Sets `IFF_UP` on `lo` in the current network namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    use rustix::net::{socket, AddressFamily, SocketType};
    let sock = socket(AddressFamily::INET, SocketType::DGRAM, None)?;
    // SAFETY: ifreq is a plain C struct for which all-zero bytes are a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the NUL-terminated name and writes ifru_flags within
    // the ifreq we own; the socket fd is open for the duration of the call.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: SIOCGIFFLAGS succeeded, so the flags member of the union is the
    // initialised one.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as for SIOCGIFFLAGS; SIOCSIFFLAGS only reads the ifreq.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Marks every descriptor from 3 up close-on-exec (`close_range(3, ~0U,
/// CLOSE_RANGE_CLOEXEC)`): no daemon descriptor reaches the builder, while the helper's
/// error pipe stays usable until the `execve` that closes it.
pub(crate) fn cloexec_from_3() -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes descriptor flags; it
    // closes nothing, so no Rust owner of a descriptor is invalidated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Closes every descriptor from 3 up (`close_range(3, ~0U, 0)`): a builtin builder runs
/// in the sandbox's init instead of an `execve` that would have closed them.
///
/// Call it only in the sandboxed child, once its setup is complete and every
/// descriptor it still uses has been dropped, in a function that never returns (the
/// child ends with [`exit_child`]).
pub(crate) fn close_from_3() -> io::Result<()> {
    // SAFETY: the child is single-threaded and calls this from `setup::run_child`,
    // which never returns, after dropping the descriptors it owns (the error pipe);
    // the Rust owners of the other descriptors (the helper's socket, in frames of
    // the helper that the child never resumes) are never used or dropped again, so
    // no owner is left holding a descriptor number that could be reused under it.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Ends the cloned child without running the parent's exit handlers or flushing its
/// copies of the parent's buffers.
pub(crate) fn exit_child(code: i32) -> ! {
    // SAFETY: _exit is always safe to call; it never returns.
    unsafe { libc::_exit(code) }
}

/// Most supplementary groups a process can have (`NGROUPS_MAX`), so the most
/// [`peer_groups`] returns.
pub const MAX_PEER_GROUPS: usize = 65536;

/// `SO_PEERGROUPS` (Linux 4.13): not in the `libc` crate; 59 but on SPARC.
#[cfg(any(target_arch = "sparc", target_arch = "sparc64"))]
const SO_PEERGROUPS: libc::c_int = 0x3d;
#[cfg(not(any(target_arch = "sparc", target_arch = "sparc64")))]
const SO_PEERGROUPS: libc::c_int = 59;

/// The supplementary groups of the process at the other end of the Unix socket
/// `socket`, as the kernel recorded them when it connected (`SO_PEERGROUPS`, in the
/// caller's user namespace), at most [`MAX_PEER_GROUPS`]. rustix has no wrapper.
pub fn peer_groups(socket: impl std::os::fd::AsFd) -> io::Result<Vec<u32>> {
    let fd = socket.as_fd().as_raw_fd();
    let size = std::mem::size_of::<libc::gid_t>();
    let mut groups: Vec<libc::gid_t> = vec![0; 32];
    loop {
        let mut len = libc::socklen_t::try_from(groups.len() * size)
            .map_err(|_| io::Error::from_raw_os_error(libc::ERANGE))?;
        // SAFETY: `groups` holds `len` writable bytes and outlives the call; the kernel
        // writes at most `len` bytes there and the used length into `len`, a valid
        // socklen_t. `fd` is borrowed from `socket` for the duration of the call.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                SO_PEERGROUPS,
                groups.as_mut_ptr().cast::<libc::c_void>(),
                &mut len,
            )
        };
        if r == 0 {
            groups.truncate((len as usize / size).min(groups.len()));
            return Ok(groups);
        }
        let e = io::Error::last_os_error();
        // Too small: the kernel said how much is needed in `len`.
        let needed = len as usize / size;
        if e.raw_os_error() != Some(libc::ERANGE)
            || needed <= groups.len()
            || needed > MAX_PEER_GROUPS
        {
            return Err(e);
        }
        groups.resize(needed, 0);
    }
}
