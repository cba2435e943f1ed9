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
//! binary passes `unrooted-build`'s), so the sandbox depends on no build logic and the
//! builtins on no sandbox internals; a name missing from the table fails the setup at
//! the exec step. [`builtin_main`] runs one unsandboxed, for `sandbox = false`.
//!
//! Unprivileged user namespaces are required: without them spawning fails with
//! [`SandboxError::UserNamespacesUnavailable`] saying how to enable them, never by
//! running unsandboxed.
#![deny(unsafe_code)]

mod cleanup;
mod error;
mod helper;
mod plan;
pub mod seccomp;
mod setup;
mod spawn;
pub mod subids;
mod sys;
mod userns;
pub mod wire;

pub use cleanup::{empty_dir, remove_tree};
pub use error::{CleanupError, MountLockOutcome, PlanError, SandboxError, Step};
pub use helper::{builtin_main, helper_main, helper_main_with_builtins, Builtin, BuiltinFn};
pub use plan::{
    etc_passwd, host_network_files, nix_base_env, pasta_resolv_conf, Exec, IdMapEntry, IdMapMethod,
    IdMaps, IdSlice, MountOp, Namespaces, Pasta, Plan, Program, SandboxPath, SandboxSpec,
    BUILDER_GID, BUILDER_UID, DEVICES, ETC_GROUP, ETC_HOSTS, ETC_NSSWITCH_NETWORK, PASTA_ADDRESS,
    PASTA_GATEWAY, PASTA_INTERFACE, PASTA_PREFIX, ROOT_TMPFS_OPTIONS, UID_RANGE_IDS,
};
pub use spawn::{BuildStatus, Sandbox, SandboxChild};
pub use sys::{landlock_abi, peer_groups, LANDLOCK_SCOPE_ABI, MAX_PEER_GROUPS};
pub use userns::{check_user_namespaces, reason_from_settings, UsernsReason, UsernsUnavailable};
