//! The rootless build sandbox: a builder runs in new user, mount, PID, IPC, UTS and
//! network namespaces, as uid 1000 / gid 100 mapped either to the daemon's own ids or,
//! when the store owner has subordinate ids, to ids of a slice of its range that own
//! nothing of the store (see [`IdMaps`]; [`Sandbox::reclaim`] gives such a build's
//! files back to the store owner afterwards), in a fresh
//! root laid out as Nix 2.8's sandbox (`/build`, generated `/etc`, a minimal `/dev`, a
//! new `/proc`, the store dir holding only the read-only input closure), with its mounts
//! locked by a nested user namespace, no capabilities, no inherited descriptors and
//! Nix's seccomp filter. What to do is a pure [`Plan`] (unit-tested without privileges);
//! applying it is one executor in a separate **helper process**, and the only unsafe
//! code is the `sys` module. The crate is synchronous. Why a helper: the daemon is
//! multi-threaded, and after `fork` a multi-threaded process may only make
//! async-signal-safe calls until `exec`, while the setup needs allocation, file I/O and
//! a second process outside the namespaces to write the id maps. So the daemon starts
//! the helper with an ordinary spawn (fork+exec, sound anywhere) and sends it the plan;
//! the helper, single-threaded, `clone`s the child into the namespaces (making it PID 1
//! at once), writes its maps from outside (or, for an id slice, first enters the user
//! namespace mapped for that slice once and kept by [`Sandbox`]), relays setup failures
//! as typed errors naming the step, and stays as the builder's waiter; killing the
//! helper kills the sandbox.
//!
//! **Builtin builders** (`builtin:fetchurl`, `builtin:buildenv`,
//! `builtin:unpack-channel`) run inside the sandbox too, never in the daemon: a plan
//! whose program is [`Program::Builtin`] gets exactly the same setup (namespaces,
//! mounts, `pivot_root`, locked mounts, dropped capabilities, no_new_privs, seccomp),
//! then the sandbox's init empties its capability sets (which an exec would have
//! cleared), closes every descriptor from 3 up and *calls* the builtin in-process
//! instead of executing a file, and exits with its status (an error goes to the build
//! log). The builtins themselves are not in this crate: the binary that runs
//! the helper passes a table of them to [`helper_main_with_builtins`] (the `unrooted`
//! binary passes `unrooted-builder`'s), so the sandbox depends on no build logic and the
//! builtins on no sandbox internals; a name missing from the table fails the setup at
//! the exec step. [`builtin_main`] runs one unsandboxed, for `sandbox = false`.
//!
//! **Fixed-output builds' network** (issue 15, item 2). A fixed-output build needs
//! the network, but the host's network namespace also holds the host's abstract Unix
//! sockets (over which a builder can hand a descriptor of its output to another
//! user's process: Nix's CVE-2024-27297), its loopback listeners and its `/proc/net`.
//! So, by default, a plan with [`Plan::pasta`] gives the build a network namespace
//! of its own, connected to the world by `pasta` (Debian's `passt`, 2023-03 in
//! bookworm), a user-mode network stack translating the build's packets into the
//! host's ordinary TCP/UDP/ICMP sockets. As in Lix (`pasta-path`), the interface is
//! `eth0` with [`PASTA_ADDRESS`]/[`PASTA_PREFIX`] and [`PASTA_GATEWAY`] as gateway and
//! DNS forwarder (the sandbox's `/etc/resolv.conf` names it, see
//! [`pasta_resolv_conf`]); connections to the gateway reach the host's loopback, while
//! `127.0.0.1` is the sandbox's own. Unlike Lix, no port is forwarded either way
//! (`-t/-u/-T/-U none`: the default `auto` binds the host's listening ports on the
//! sandbox's loopback, which would put the host's loopback back at `127.0.0.1`, and
//! the builder's listeners on the host).
//!
//! *How pasta attaches, and with what rights.* The namespace is made by the sandbox's
//! init together with the nested user namespace (`unshare(CLONE_NEWUSER | CLONE_NEWNS
//! | CLONE_NEWNET)`), so it belongs to that nested namespace, the builder's own, not
//! to the one in which the store owner is root and the sandbox's mounts were made.
//! The init brings `lo` up, tells the helper, and waits. The helper forks a child
//! that enters the build's outer user namespace (as the store owner's inner id),
//! drops the store owner's supplementary groups, takes the builder's ids, enters the
//! nested namespace (which it may: it now owns it), becomes uid 1000 / gid 100 there
//! (also in the `uid-range` layout, where the builder is root) and keeps only
//! `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` in that namespace (ambient, so they survive the
//! exec): what creating the tap device in the namespace and pasta's own isolation
//! need. It sets no_new_privs, the builder's Landlock scopes (a compromised pasta,
//! which stays in the host's network namespace, still cannot connect to a host
//! abstract socket or signal a host process), a parent-death signal, and executes
//! `pasta --netns /proc/self/fd/0 --netns-only …` with the namespace on stdin and a
//! pipe on stdout as its pid file: pasta writes its pid once the interface is
//! configured and it has isolated itself, and only then does the init go on to the
//! builder. That wait is what pasta costs: 25–80 ms (median about 60 ms) on the
//! shared 2-CPU development machine, nearly all of it pasta's own start-up, which
//! touches its 31 MB of packet buffers (its resident memory per running fixed-output
//! build). `./scripts/bench.sh --only build`, release build, load 3–5, two runs: one
//! `sandbox-run` of `/bin/sh -c true` 3.37 / 3.58 ms with the host's network, 58.3 /
//! 58.2 ms with its own namespace and pasta; one trivial fixed-output `nix-build`
//! 0.062 / 0.080 s on pasta against nix-daemon 2.8's 0.048 / 0.079 s on the host's
//! network (1.27x / 1.01x), while ordinary builds, which get no pasta, stay at 0.45x /
//! 0.43x (one) and 0.29x / 0.35x (200). The helper kills pasta once the
//! builder's init has been reaped. So pasta has no more rights than the builder:
//! on the host it is the builder's uid (in the id-range mode an id of the build's
//! slice that owns nothing of the store; in the single-id mode the store owner, as
//! the builder itself is there), with no capability in the host's or the outer
//! user namespace and only the two above in the builder's nested one, where the
//! builder (a process of it, or root there in the `uid-range` layout) already acts.
//! pasta's own sandboxing then takes it further (`isolation.c`): it moves to new IPC,
//! UTS and mount namespaces whose root is an empty read-only tmpfs (`pivot_root`),
//! drops `CAP_NET_ADMIN` once the interface is configured, clears its dumpable flag,
//! sets no_new_privs and installs a seccomp allow-list of the few calls its packet
//! loop uses, all before it reads a single packet. Seen in `/proc/<pasta>/status`
//! while a build runs: `CapEff` = `CapPrm` = `CAP_SYS_ADMIN` (in the builder's nested
//! user namespace), `CapAmb` 0, `NoNewPrivs` 1, `Seccomp` 2, a mount namespace of its
//! own and the host's network namespace (its bounding set stays full, as dropping it
//! needs `CAP_SETPCAP`, which it is not given; with no_new_privs nothing can raise a
//! capability from it). What a builder that took pasta over could reach is therefore: the
//! network, as it may anyway, its own build's namespaces, as it may anyway, and
//! nothing of the host's file system, abstract sockets or processes. A host's TCP and
//! UDP loopback services are reached through the gateway, as they were on the host's
//! network (they cannot carry descriptors).
//!
//! The host's network is used only when the administrator asks for it
//! (`fixed-output-network = host`, warned about at the daemon's start): the plan then
//! has no network namespace at all, as in Nix 2.8, and Landlock's scope is what keeps
//! the host's abstract sockets out of reach. When pasta is not installed, a
//! fixed-output build that executes a program fails with an error naming it (failing
//! closed, as Lix does not); `builtin:fetchurl`, which runs the daemon's own fetcher in
//! the sandbox (not a program of the derivation) and cannot be made to open an
//! abstract socket, falls back to the host's network with a warning, so
//! `<nix/fetchurl.nix>` keeps working on a machine without `passt`.
//!
//! Unprivileged user namespaces are required: without them spawning fails with
//! [`SandboxError::UserNamespacesUnavailable`] saying how to enable them, never by
//! running unsandboxed.
#![deny(unsafe_code)]

mod builtins;
mod cleanup;
mod error;
mod helper;
mod plan;
mod sandbox_run;
pub mod seccomp;
mod setup;
mod spawn;
pub mod subids;
mod sys;
mod userns;
pub mod wire;

pub use builtins::{builtin_main, Builtin, BuiltinFn};
pub use cleanup::{empty_dir, remove_tree};
pub use error::{CleanupError, MountLockOutcome, PlanError, SandboxError, Step};
pub use helper::{helper_main, helper_main_with_builtins};
pub use plan::{
    etc_passwd, host_network_files, nix_base_env, pasta_resolv_conf, Exec, IdMapEntry, IdMapMethod,
    IdMaps, IdSlice, MountOp, Namespaces, Pasta, Plan, Program, SandboxPath, SandboxSpec,
    BUILDER_GID, BUILDER_UID, DEVICES, ETC_GROUP, ETC_HOSTS, ETC_NSSWITCH_NETWORK, PASTA_ADDRESS,
    PASTA_GATEWAY, PASTA_INTERFACE, PASTA_PREFIX, ROOT_TMPFS_OPTIONS, UID_RANGE_IDS,
};
pub use sandbox_run::{exit_code, PreparedRun, SandboxRun, SandboxRunError};
pub use spawn::{BuildStatus, Sandbox, SandboxChild};
pub use sys::{
    call_with_no_memory, landlock_abi, peer_groups, xattrat_by_number, CALLS_WITH_NO_MEMORY,
    LANDLOCK_SCOPE_ABI, MAX_PEER_GROUPS,
};
pub use userns::{check_user_namespaces, reason_from_settings, UsernsReason, UsernsUnavailable};
