//! The pure sandbox plan: which namespaces, which id maps, and the ordered list of
//! filesystem operations that build the builder's root (Nix 2.8's layout,
//! `docs/spec/sandbox.md` §2–§4). Nothing here touches the system; the
//! executor in the helper applies a [`Plan`] in order.

mod ids;
mod layout;
mod network;
mod spec;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

pub use ids::{IdMapEntry, IdMapMethod, IdMaps, IdSlice, UID_RANGE_IDS};
pub use network::{
    host_network_files, pasta_resolv_conf, Pasta, ETC_NSSWITCH_NETWORK, PASTA_ADDRESS,
    PASTA_GATEWAY, PASTA_INTERFACE, PASTA_PREFIX,
};
pub use spec::{SandboxPath, SandboxSpec};

/// `/etc/passwd` in the sandbox, Nix 2.8's bytes with the home field = the sandbox build
/// dir.
pub fn etc_passwd(sandbox_build_dir: &Path) -> Vec<u8> {
    let home = sandbox_build_dir.as_os_str().as_bytes();
    let mut out = Vec::new();
    for (user, uid, gid, desc, home) in [
        ("root", 0, 0, "Nix build user", home),
        ("nixbld", BUILDER_UID, BUILDER_GID, "Nix build user", home),
        ("nobody", 65534, 65534, "Nobody", b"/".as_slice()),
    ] {
        out.extend_from_slice(format!("{user}:x:{uid}:{gid}:{desc}:").as_bytes());
        out.extend_from_slice(home);
        out.extend_from_slice(b":/noshell\n");
    }
    out
}

/// `/etc/group` in the sandbox (Nix 2.8's bytes).
pub const ETC_GROUP: &[u8] = b"root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n";

/// `/etc/hosts` for sandboxed (non-fixed-output) builds (Nix 2.8's bytes).
pub const ETC_HOSTS: &[u8] = b"127.0.0.1 localhost\n::1 localhost\n";

/// The builder's uid inside the sandbox (Nix's `nixbld`).
pub const BUILDER_UID: u32 = 1000;
/// The builder's gid inside the sandbox.
pub const BUILDER_GID: u32 = 100;

/// Mount data of the tmpfs that is the sandbox's `/`: it holds only mount points,
/// `/etc`'s three files and `/dev`'s symlinks, so a builder that owns it (the
/// single-id mode) cannot fill memory through it.
pub const ROOT_TMPFS_OPTIONS: &str = "size=1m,mode=0755";

/// The host devices bound into `/dev` (Nix 2.8's list; `kvm` is added on request).
pub const DEVICES: [&str; 6] = ["full", "null", "random", "tty", "urandom", "zero"];

/// Which namespaces the sandbox gets. User, mount and PID are always new; a plan without
/// them is refused by the executor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Namespaces {
    /// A new network namespace (false only for fixed-output derivations on the host's
    /// network). With [`Plan::pasta`] it is made with the nested user namespace, so it
    /// belongs to that one (see the crate's documentation).
    pub net: bool,
    /// A new IPC namespace.
    pub ipc: bool,
    /// A new UTS namespace (hostname `localhost`).
    pub uts: bool,
}

/// One filesystem operation in the new root. Paths named `path`/`target`/`link` are
/// absolute paths *inside* the sandbox; the executor prefixes the host root. Applied in
/// order by one function, so the list is the whole description of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountOp {
    /// Create a directory (its parent exists) and set its mode exactly.
    Mkdir {
        /// Sandbox path.
        path: PathBuf,
        /// Mode, umask ignored.
        mode: u32,
    },
    /// A directory kept on the host root's own filesystem (the store dir, where the
    /// outputs are made and renamed into the store from, and `/tmp`): the same path
    /// under the host root, created before the root is covered by the sandbox's
    /// tmpfs, bound at `path` (made like [`MountOp::Mkdir`]), its mode set exactly.
    /// Everything else of the root lives in that tmpfs, which vanishes with the
    /// sandbox, so nothing but these directories is left to delete.
    DiskDir {
        /// Sandbox path, and the path under the host root.
        path: PathBuf,
        /// Mode, umask ignored.
        mode: u32,
    },
    /// Create a file with these bytes and mode.
    WriteFile {
        /// Sandbox path.
        path: PathBuf,
        /// Contents.
        contents: Vec<u8>,
        /// Mode.
        mode: u32,
    },
    /// Create a symlink `link` → `target`.
    Symlink {
        /// What the link points to (verbatim).
        target: PathBuf,
        /// Sandbox path of the link.
        link: PathBuf,
    },
    /// Bind `source` (a host path) at `target`: a directory recursively, a file or device
    /// as itself, a symlink recreated as a symlink. The mount point is created here.
    Bind {
        /// Host path.
        source: PathBuf,
        /// Sandbox path.
        target: PathBuf,
        /// Remount read-only afterwards, keeping the locked flags (nosuid, nodev, noexec),
        /// submounts included.
        read_only: bool,
        /// A missing source is skipped instead of failing (`?` in `sandbox-paths`).
        optional: bool,
    },
    /// Mount a new procfs (of the sandbox's PID namespace) on an existing directory.
    Proc {
        /// Sandbox path.
        target: PathBuf,
    },
    /// Mount a tmpfs on an existing directory.
    Tmpfs {
        /// Sandbox path.
        target: PathBuf,
        /// Kernel mount data, e.g. `size=50%`.
        options: String,
    },
    /// Mount a new devpts instance on an existing directory.
    Devpts {
        /// Sandbox path.
        target: PathBuf,
    },
    /// Change the owner of an existing entry (not following a symlink), in the
    /// sandbox's ids: the build directory becomes the builder's in the id-range mode.
    Chown {
        /// Sandbox path.
        path: PathBuf,
        /// Inner uid.
        uid: u32,
        /// Inner gid.
        gid: u32,
    },
}

/// What the sandbox's init runs once the sandbox is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Program {
    /// `execve` this file (a path inside the sandbox).
    Path(PathBuf),
    /// Call the builtin builder of this name (`fetchurl` for `builtin:fetchurl`) in
    /// the init itself, after exactly the same setup as an exec, and exit with its
    /// status. The function comes from the table handed to
    /// [`crate::helper_main_with_builtins`] by the binary that runs the helper, so this
    /// crate knows no builtin itself.
    Builtin(String),
}

/// What to execute once the sandbox is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exec {
    /// The builder.
    pub program: Program,
    /// argv, argv\[0\] included.
    pub argv: Vec<OsString>,
    /// The complete environment (nothing is inherited).
    pub env: Vec<(OsString, OsString)>,
    /// Working directory inside the sandbox.
    pub cwd: PathBuf,
}

/// Everything the executor does, decided in advance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Optional namespaces (user, mount and PID are always new).
    pub namespaces: Namespaces,
    /// Id maps of the user namespace.
    pub id_maps: IdMaps,
    /// Host path of the new root: an existing empty directory, owned by the daemon
    /// user inside a daemon-private parent, on the store's filesystem so outputs can be
    /// renamed into the store.
    pub root: PathBuf,
    /// Mode of the root once populated (0555: `mkdir /x` gives EACCES, not EROFS).
    /// The root itself is a small tmpfs mounted on this directory (see
    /// [`MountOp::DiskDir`] and [`ROOT_TMPFS_OPTIONS`]).
    pub root_mode: u32,
    /// The layout, applied in order.
    pub mounts: Vec<MountOp>,
    /// Hostname.
    pub hostname: OsString,
    /// NIS domain name.
    pub domainname: OsString,
    /// The builder.
    pub exec: Exec,
    /// Host paths whose trees the helper gives back to the store owner once the
    /// builder has ended, from inside the build's own user namespace (kept alive by a
    /// descriptor), so no second mapping is needed; only with `id_maps.switch_ids`.
    pub reclaim: Vec<PathBuf>,
    /// The user-mode network attached to the build's network namespace (fixed-output
    /// builds), or none (loopback only, or the host's network).
    pub pasta: Option<Pasta>,
}

/// The environment Nix gives every builder before the derivation's own variables
/// (`docs/spec/sandbox.md` §3.1): `PATH`, `HOME`, `NIX_STORE`, `NIX_BUILD_CORES`, the six
/// build-dir variables, `NIX_LOG_FD` and `TERM`.
pub fn nix_base_env(
    store_dir: &Path,
    sandbox_build_dir: &Path,
    cores: u32,
) -> Vec<(OsString, OsString)> {
    let mut env: Vec<(OsString, OsString)> = vec![
        ("PATH".into(), "/path-not-set".into()),
        ("HOME".into(), "/homeless-shelter".into()),
        ("NIX_STORE".into(), store_dir.as_os_str().to_owned()),
        ("NIX_BUILD_CORES".into(), cores.to_string().into()),
    ];
    for var in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.push((var.into(), sandbox_build_dir.as_os_str().to_owned()));
    }
    env.push(("NIX_LOG_FD".into(), "2".into()));
    env.push(("TERM".into(), "xterm-256color".into()));
    env
}
