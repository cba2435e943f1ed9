//! The pure sandbox plan: which namespaces, which id maps, and the ordered list of
//! filesystem operations that build the builder's root (Nix 2.8's layout,
//! `docs/spec/sandbox.md` §2–§4). Nothing here touches the system; the
//! executor in the helper applies a [`Plan`] in order.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::error::PlanError;

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

/// The gateway address of a fixed-output build's user-mode network, as the builder
/// sees it (Lix's choice: an IPv4 link-local address, which no host network routes).
/// `pasta` maps connections to it to the host's loopback (so a service listening on
/// the host's `127.0.0.1` is reached at this address, never at the sandbox's own
/// `127.0.0.1`) and forwards DNS sent to it to the host's first resolver.
pub const PASTA_GATEWAY: &str = "169.254.1.1";
/// The builder's own address in that network.
pub const PASTA_ADDRESS: &str = "169.254.1.2";
/// Its prefix length.
pub const PASTA_PREFIX: &str = "16";
/// The interface `pasta` creates in the build's network namespace.
pub const PASTA_INTERFACE: &str = "eth0";

/// `pasta` (Debian's `passt` package), the user-mode network stack of a fixed-output
/// build: the program and the arguments [`Pasta::new`] gives it. The helper starts it
/// once the build's network namespace exists, as the builder's own ids with only
/// `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` in the builder's nested user namespace (see
/// the crate's documentation), and the namespace's descriptor on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pasta {
    /// The `pasta` executable (an absolute path).
    pub program: PathBuf,
    /// Its arguments (after argv\[0\]).
    pub args: Vec<OsString>,
}

impl Pasta {
    /// `program` with the arguments every build uses: stay in the foreground (the
    /// helper kills it when the build ends), log only errors, configure the interface
    /// with [`PASTA_ADDRESS`] and [`PASTA_GATEWAY`] (where DNS is forwarded to the
    /// host's resolver), forward no port in either direction (`-t`, `-u`, `-T`, `-U`
    /// `none`: the default `auto` would make the host's loopback listeners appear on
    /// the sandbox's own loopback, and the builder's listeners on the host), and write
    /// its pid to stdout once it is ready. The network namespace is its stdin.
    pub fn new(program: PathBuf) -> Self {
        let args = [
            "--foreground",
            "--quiet",
            "--config-net",
            "--netns",
            "/proc/self/fd/0",
            "--netns-only",
            "--no-netns-quit",
            "--ns-ifname",
            PASTA_INTERFACE,
            "--address",
            PASTA_ADDRESS,
            "--netmask",
            PASTA_PREFIX,
            "--gateway",
            PASTA_GATEWAY,
            "--dns-forward",
            PASTA_GATEWAY,
            "-t",
            "none",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
            "--pid",
            "/proc/self/fd/1",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        Pasta { program, args }
    }
}

/// The `/etc/resolv.conf` of a build on `pasta`'s network: the host's, with its
/// `nameserver` lines replaced by [`PASTA_GATEWAY`], where `pasta` forwards DNS to the
/// host's first resolver (which may be on the host's loopback, out of the builder's
/// reach), as Lix does. `search`, `options` and the rest are kept.
pub fn pasta_resolv_conf(host: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(host.len() + 32);
    for line in host.split_inclusive(|&b| b == b'\n') {
        let word = line
            .split(|b| b.is_ascii_whitespace())
            .find(|w| !w.is_empty());
        if word == Some(b"nameserver".as_slice()) {
            continue;
        }
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(format!("nameserver {PASTA_GATEWAY}\n").as_bytes());
    out
}

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

/// One line of a uid or gid map: `inner outer count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdMapEntry {
    /// First id inside the namespace.
    pub inner: u32,
    /// First id outside.
    pub outer: u32,
    /// How many ids.
    pub count: u32,
}

/// How the helper writes the maps of the sandbox's user namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IdMapMethod {
    /// Write `/proc/<pid>/{setgroups,uid_map,gid_map}` directly: only one id each, with
    /// `setgroups` = `deny` (what an unprivileged process may do).
    Direct,
    /// Run the setuid `newuidmap`/`newgidmap` with ranges from `/etc/subuid` and
    /// `/etc/subgid` (several ids; `setgroups` stays allowed).
    NewIdMap {
        /// Path of `newuidmap`.
        newuidmap: PathBuf,
        /// Path of `newgidmap`.
        newgidmap: PathBuf,
    },
    /// Enter a user namespace that already has exactly these maps: the daemon had one
    /// mapped with `newuidmap`/`newgidmap` for the slice once and keeps its descriptor,
    /// which travels with the plan (`SCM_RIGHTS`). Nothing is written and no setuid
    /// program runs, so a build pays neither. Only [`crate::Sandbox`] sets it.
    Enter,
}

/// The id maps of the sandbox's user namespace and the identity the builder runs as.
///
/// Two layouts exist:
///
/// * **single id** ([`IdMaps::single`], no subordinate ids): inner 1000 → the store
///   owner, inner 100 → its group; the builder *is* the store owner outside.
/// * **id range** ([`IdMaps::ranged`], a slice of the store owner's `/etc/subuid` and
///   `/etc/subgid` ranges, written by `newuidmap`/`newgidmap`): inner 0 → the store
///   owner (so the sandbox's `/`, `/etc` and the store directory belong to inner root,
///   which the builder is not), inner `n` → `slice + n` for `1 ≤ n < count`. The
///   setup runs as inner root, then drops to the builder's 1000/100 (supplementary
///   groups cleared) before the nested namespace. Outside, the builder's processes and
///   files belong to `slice + 1000` / `slice_gid + 100`, ids that own nothing of the
///   store. For the `uid-range` system feature ([`IdMaps::uid_range`]) inner
///   0..65535 → the slice and the store owner is inner 65536; the builder runs as root
///   with 65,536 ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdMaps {
    /// uid map lines.
    pub uid_map: Vec<IdMapEntry>,
    /// gid map lines.
    pub gid_map: Vec<IdMapEntry>,
    /// How they are written.
    pub method: IdMapMethod,
    /// The builder's uid inside (the nested namespace maps it to itself).
    pub builder_uid: u32,
    /// The builder's gid inside.
    pub builder_gid: u32,
    /// The setup does not run as the builder: it switches to `builder_uid` /
    /// `builder_gid` with no supplementary groups before entering the nested namespace.
    pub switch_ids: bool,
    /// The nested namespace maps inner 0..65535 to themselves (the `uid-range`
    /// feature) instead of the builder's own ids only.
    pub nested_range: bool,
}

/// A build's slice of the store owner's subordinate ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdSlice {
    /// First host uid of the slice.
    pub uid: u32,
    /// First host gid of the slice.
    pub gid: u32,
    /// How many ids (uids and gids each).
    pub count: u32,
    /// Path of `newuidmap`.
    pub newuidmap: PathBuf,
    /// Path of `newgidmap`.
    pub newgidmap: PathBuf,
}

/// The ids a build gets inside with the `uid-range` feature (Nix's `maxIdsPerBuild`).
pub const UID_RANGE_IDS: u32 = 65536;

impl IdMaps {
    /// Nix's rootless mapping: inner 1000 → `host_uid`, inner 100 → `host_gid`.
    pub fn single(host_uid: u32, host_gid: u32) -> Self {
        IdMaps {
            uid_map: vec![IdMapEntry {
                inner: BUILDER_UID,
                outer: host_uid,
                count: 1,
            }],
            gid_map: vec![IdMapEntry {
                inner: BUILDER_GID,
                outer: host_gid,
                count: 1,
            }],
            method: IdMapMethod::Direct,
            builder_uid: BUILDER_UID,
            builder_gid: BUILDER_GID,
            switch_ids: false,
            nested_range: false,
        }
    }

    fn new_id_map(slice: &IdSlice) -> IdMapMethod {
        IdMapMethod::NewIdMap {
            newuidmap: slice.newuidmap.clone(),
            newgidmap: slice.newgidmap.clone(),
        }
    }

    /// The id-range layout: inner 0 → the store owner, inner `n` → `slice + n` for
    /// `1 ≤ n < slice.count`; the builder is 1000/100. `None` when the slice is too small
    /// to hold the builder's ids.
    pub fn ranged(owner_uid: u32, owner_gid: u32, slice: &IdSlice) -> Option<Self> {
        if slice.count <= BUILDER_UID.max(BUILDER_GID) {
            return None;
        }
        let map = |owner: u32, first: u32| {
            vec![
                IdMapEntry {
                    inner: 0,
                    outer: owner,
                    count: 1,
                },
                IdMapEntry {
                    inner: 1,
                    outer: first + 1,
                    count: slice.count - 1,
                },
            ]
        };
        Some(IdMaps {
            uid_map: map(owner_uid, slice.uid),
            gid_map: map(owner_gid, slice.gid),
            method: Self::new_id_map(slice),
            builder_uid: BUILDER_UID,
            builder_gid: BUILDER_GID,
            switch_ids: true,
            nested_range: false,
        })
    }

    /// The `uid-range` layout: inner 0..65535 → the slice, the store owner → inner
    /// 65536; the builder is root. `None` when the slice holds fewer than 65,536 ids.
    pub fn uid_range(owner_uid: u32, owner_gid: u32, slice: &IdSlice) -> Option<Self> {
        if slice.count < UID_RANGE_IDS {
            return None;
        }
        let map = |owner: u32, first: u32| {
            vec![
                IdMapEntry {
                    inner: 0,
                    outer: first,
                    count: UID_RANGE_IDS,
                },
                IdMapEntry {
                    inner: UID_RANGE_IDS,
                    outer: owner,
                    count: 1,
                },
            ]
        };
        Some(IdMaps {
            uid_map: map(owner_uid, slice.uid),
            gid_map: map(owner_gid, slice.gid),
            method: Self::new_id_map(slice),
            builder_uid: 0,
            builder_gid: 0,
            switch_ids: true,
            nested_range: true,
        })
    }

    /// The maps of the namespace that reclaims a finished build's files: inner 0 → the
    /// store owner and inner `1 + k` → `slice + k` for the whole slice, so every id the
    /// build could have used is mapped and inner root may chown it back to the owner.
    pub fn reclaim(owner_uid: u32, owner_gid: u32, slice: &IdSlice) -> Self {
        let map = |owner: u32, first: u32| {
            vec![
                IdMapEntry {
                    inner: 0,
                    outer: owner,
                    count: 1,
                },
                IdMapEntry {
                    inner: 1,
                    outer: first,
                    count: slice.count,
                },
            ]
        };
        IdMaps {
            uid_map: map(owner_uid, slice.uid),
            gid_map: map(owner_gid, slice.gid),
            method: Self::new_id_map(slice),
            builder_uid: 0,
            builder_gid: 0,
            switch_ids: false,
            nested_range: false,
        }
    }

    /// The text written to `uid_map` or `gid_map`.
    pub fn map_text(entries: &[IdMapEntry]) -> String {
        entries
            .iter()
            .map(|e| format!("{} {} {}\n", e.inner, e.outer, e.count))
            .collect()
    }
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

/// One `sandbox-paths` entry: `target=source` or `path`, with `?` = optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxPath {
    /// Where it appears in the sandbox.
    pub target: PathBuf,
    /// The host path.
    pub source: PathBuf,
    /// A missing source is skipped.
    pub optional: bool,
}

impl SandboxPath {
    /// Parses Nix's syntax: `/bin/sh=/nix/store/…-bash/bin/bash`, `/dev/kvm?`, `/etc`.
    pub fn parse(entry: &OsStr) -> Result<SandboxPath, PlanError> {
        let bad = || PlanError::InvalidSandboxPath {
            entry: entry.to_owned(),
        };
        let mut bytes = entry.as_bytes();
        let optional = bytes.last() == Some(&b'?');
        if optional {
            bytes = &bytes[..bytes.len() - 1];
        }
        if bytes.is_empty() {
            return Err(bad());
        }
        let (target, source) = match bytes.iter().position(|&b| b == b'=') {
            Some(i) => (&bytes[..i], &bytes[i + 1..]),
            None => (bytes, bytes),
        };
        if target.is_empty() || source.is_empty() {
            return Err(bad());
        }
        Ok(SandboxPath {
            target: PathBuf::from(OsStr::from_bytes(target)),
            source: PathBuf::from(OsStr::from_bytes(source)),
            optional,
        })
    }
}

/// What a build needs from the sandbox; [`Plan::new`] turns it into a [`Plan`].
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Host path of the fresh, empty root directory (see [`Plan::root`]).
    pub root: PathBuf,
    /// The store directory (`/nix/store`), the same path inside and outside.
    pub store_dir: PathBuf,
    /// The host build directory (mode 0700 inside a daemon-only parent).
    pub host_build_dir: PathBuf,
    /// Where the build directory appears (`sandbox-build-dir`, default `/build`).
    pub sandbox_build_dir: PathBuf,
    /// The input closure: store paths bound read-only.
    pub inputs: Vec<PathBuf>,
    /// `sandbox-paths` and `extra-sandbox-paths`, bound read-only.
    pub sandbox_paths: Vec<SandboxPath>,
    /// A fixed-output build's network access: the host's network, or with `pasta` a
    /// user-mode network of its own; otherwise only loopback.
    pub network: bool,
    /// With `network`: reach the network through this `pasta` in a network namespace of
    /// the build's own instead of sharing the host's.
    pub pasta: Option<Pasta>,
    /// With `network`: the sandbox's `/etc/resolv.conf` (see [`pasta_resolv_conf`]),
    /// written instead of a host file bound.
    pub resolv_conf: Option<Vec<u8>>,
    /// The daemon's uid, which the builder's uid 1000 maps to.
    pub host_uid: u32,
    /// The daemon's gid, which gid 100 maps to.
    pub host_gid: u32,
    /// The build's slice of subordinate ids (the id-range mode); `None` maps the
    /// builder to `host_uid`/`host_gid` (the single-id mode).
    pub id_slice: Option<IdSlice>,
    /// The `uid-range` system feature: the builder runs as root with 65,536 ids
    /// (needs `id_slice`).
    pub uid_range: bool,
    /// With `id_slice`: host paths given back to the store owner after the build
    /// (see [`Plan::reclaim`]).
    pub reclaim: Vec<PathBuf>,
    /// The builder's path inside the sandbox.
    pub builder: PathBuf,
    /// Arguments after argv\[0\] (which is the builder's basename, as in Nix).
    pub args: Vec<OsString>,
    /// The complete environment (see [`nix_base_env`]).
    pub env: Vec<(OsString, OsString)>,
    /// Run this builtin builder (`fetchurl` for `builtin:fetchurl`) in the sandbox's
    /// init instead of executing `builder` (which is then ignored).
    pub builtin: Option<String>,
    /// With `network`: host files bound read-only into the sandbox's `/etc`, as Nix
    /// gives fixed-output derivations `/etc/resolv.conf`, `/etc/services` and
    /// `/etc/hosts` (see [`host_network_files`]).
    pub network_files: Vec<SandboxPath>,
    /// `/dev/shm` size (`sandbox-dev-shm-size`, default `50%`).
    pub dev_shm_size: String,
    /// Bind `/dev/kvm` when present (the `kvm` system feature).
    pub kvm: bool,
}

impl SandboxSpec {
    /// A spec with Nix's defaults: `/build`, no inputs or sandbox-paths, no network, an
    /// empty environment, `/dev/shm` at 50%, no kvm.
    pub fn new(
        root: PathBuf,
        store_dir: PathBuf,
        host_build_dir: PathBuf,
        builder: PathBuf,
    ) -> Self {
        SandboxSpec {
            root,
            store_dir,
            host_build_dir,
            sandbox_build_dir: PathBuf::from("/build"),
            inputs: Vec::new(),
            sandbox_paths: Vec::new(),
            network: false,
            pasta: None,
            resolv_conf: None,
            host_uid: rustix::process::getuid().as_raw(),
            host_gid: rustix::process::getgid().as_raw(),
            id_slice: None,
            uid_range: false,
            reclaim: Vec::new(),
            builder,
            args: Vec::new(),
            env: Vec::new(),
            builtin: None,
            network_files: Vec::new(),
            dev_shm_size: "50%".to_owned(),
            kvm: false,
        }
    }
}

/// `/etc/nsswitch.conf` of network (fixed-output) builds, Nix 2.8's bytes: names and
/// services come from files and DNS only, whatever the host configures.
pub const ETC_NSSWITCH_NETWORK: &[u8] = b"hosts: files dns\nservices: files\n";

/// The host files a network (fixed-output) build sees, as in Nix 2.8:
/// `/etc/resolv.conf`, `/etc/services` and `/etc/hosts`, each only if it exists. A
/// symlink (`/etc/resolv.conf` → `/run/systemd/resolve/stub-resolv.conf`) is resolved
/// here, on the host, so the file itself is bound: the executor recreates a symlink
/// source as a symlink, which would dangle in the sandbox.
pub fn host_network_files() -> Vec<SandboxPath> {
    ["/etc/resolv.conf", "/etc/services", "/etc/hosts"]
        .into_iter()
        .filter_map(|p| {
            let source = std::fs::canonicalize(p).ok()?;
            Some(SandboxPath {
                target: PathBuf::from(p),
                source,
                optional: true,
            })
        })
        .collect()
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

/// Checks that `path` is absolute with only normal components (no `.`, `..`, `//`
/// games), since the executor joins it under the root.
fn check_sandbox_path(path: &Path) -> Result<(), PlanError> {
    if !path.is_absolute() {
        return Err(PlanError::NotAbsolute {
            path: path.to_path_buf(),
        });
    }
    let normal = path
        .components()
        .skip(1)
        .all(|c| matches!(c, Component::Normal(_)));
    // `components()` hides a trailing slash and repeated slashes; the byte form must be
    // canonical too so that two spellings cannot name one mount point.
    let bytes = path.as_os_str().as_bytes();
    let canonical =
        !bytes.windows(2).any(|w| w == b"//") && (bytes.len() == 1 || !bytes.ends_with(b"/"));
    if normal && canonical {
        Ok(())
    } else {
        Err(PlanError::NotNormal {
            path: path.to_path_buf(),
        })
    }
}

/// Collects the operations, creating each missing ancestor directory once.
struct Layout {
    ops: Vec<MountOp>,
    dirs: BTreeSet<PathBuf>,
    targets: BTreeSet<PathBuf>,
}

impl Layout {
    fn mkdir(&mut self, path: &Path, mode: u32) {
        if path == Path::new("/") || self.dirs.contains(path) {
            return;
        }
        if let Some(parent) = path.parent() {
            self.mkdir(parent, 0o755);
        }
        self.dirs.insert(path.to_path_buf());
        self.ops.push(MountOp::Mkdir {
            path: path.to_path_buf(),
            mode,
        });
    }

    /// A directory on the host root's filesystem (see [`MountOp::DiskDir`]).
    fn disk_dir(&mut self, path: &Path, mode: u32) {
        if path == Path::new("/") || self.dirs.contains(path) {
            return;
        }
        if let Some(parent) = path.parent() {
            self.mkdir(parent, 0o755);
        }
        self.dirs.insert(path.to_path_buf());
        self.ops.push(MountOp::DiskDir {
            path: path.to_path_buf(),
            mode,
        });
    }

    fn claim(&mut self, target: &Path) -> Result<(), PlanError> {
        check_sandbox_path(target)?;
        if !self.targets.insert(target.to_path_buf()) || self.dirs.contains(target) {
            return Err(PlanError::Duplicate {
                path: target.to_path_buf(),
            });
        }
        Ok(())
    }

    fn bind(
        &mut self,
        source: &Path,
        target: &Path,
        read_only: bool,
        optional: bool,
    ) -> Result<(), PlanError> {
        self.claim(target)?;
        if !source.is_absolute() {
            return Err(PlanError::NotAbsolute {
                path: source.to_path_buf(),
            });
        }
        if let Some(parent) = target.parent() {
            self.mkdir(parent, 0o755);
        }
        self.ops.push(MountOp::Bind {
            source: source.to_path_buf(),
            target: target.to_path_buf(),
            read_only,
            optional,
        });
        Ok(())
    }

    fn file(&mut self, path: &Path, contents: &[u8]) -> Result<(), PlanError> {
        self.claim(path)?;
        self.ops.push(MountOp::WriteFile {
            path: path.to_path_buf(),
            contents: contents.to_vec(),
            mode: 0o444,
        });
        Ok(())
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<(), PlanError> {
        self.claim(Path::new(link))?;
        self.ops.push(MountOp::Symlink {
            target: target.into(),
            link: link.into(),
        });
        Ok(())
    }
}

impl Plan {
    /// The layout of Nix 2.8's sandbox (`docs/spec/sandbox.md` §4) for this spec.
    pub fn new(spec: &SandboxSpec) -> Result<Plan, PlanError> {
        for p in [&spec.root, &spec.host_build_dir] {
            if !p.is_absolute() {
                return Err(PlanError::NotAbsolute { path: p.clone() });
            }
        }
        check_sandbox_path(&spec.store_dir)?;
        check_sandbox_path(&spec.sandbox_build_dir)?;
        if spec.builtin.is_none() {
            check_sandbox_path(&spec.builder)?;
        }
        let id_maps = match (&spec.id_slice, spec.uid_range) {
            (None, false) => IdMaps::single(spec.host_uid, spec.host_gid),
            (None, true) => return Err(PlanError::UidRangeUnavailable),
            (Some(slice), false) => IdMaps::ranged(spec.host_uid, spec.host_gid, slice).ok_or(
                PlanError::IdSliceTooSmall {
                    count: slice.count,
                    needed: BUILDER_UID + 1,
                },
            )?,
            (Some(slice), true) => IdMaps::uid_range(spec.host_uid, spec.host_gid, slice).ok_or(
                PlanError::IdSliceTooSmall {
                    count: slice.count,
                    needed: UID_RANGE_IDS,
                },
            )?,
        };
        let mut l = Layout {
            ops: Vec::new(),
            dirs: BTreeSet::new(),
            targets: BTreeSet::new(),
        };

        // The build directory first: it is the one writable place besides /tmp and
        // the store dir.
        l.bind(&spec.host_build_dir, &spec.sandbox_build_dir, false, false)?;
        if id_maps.switch_ids {
            // The setup runs as inner root; the builder must own its build directory.
            l.ops.push(MountOp::Chown {
                path: spec.sandbox_build_dir.clone(),
                uid: id_maps.builder_uid,
                gid: id_maps.builder_gid,
            });
        }
        l.disk_dir(Path::new("/tmp"), 0o1777);

        l.mkdir(Path::new("/etc"), 0o555);
        l.file(
            Path::new("/etc/passwd"),
            &etc_passwd(&spec.sandbox_build_dir),
        )?;
        l.file(Path::new("/etc/group"), ETC_GROUP)?;
        if spec.network {
            l.file(Path::new("/etc/nsswitch.conf"), ETC_NSSWITCH_NETWORK)?;
            if let Some(resolv) = &spec.resolv_conf {
                l.file(Path::new("/etc/resolv.conf"), resolv)?;
            }
            for f in &spec.network_files {
                l.bind(&f.source, &f.target, true, f.optional)?;
            }
        } else {
            l.file(Path::new("/etc/hosts"), ETC_HOSTS)?;
        }

        let dev_in_sandbox_paths = spec
            .sandbox_paths
            .iter()
            .any(|p| p.target == Path::new("/dev"));
        // As in Nix: a `/dev` sandbox path replaces the whole minimal /dev.
        if !dev_in_sandbox_paths {
            l.mkdir(Path::new("/dev"), 0o755);
            for dev in DEVICES {
                let p = Path::new("/dev").join(dev);
                l.bind(&p, &p, false, false)?;
            }
            if spec.kvm {
                l.bind(Path::new("/dev/kvm"), Path::new("/dev/kvm"), false, true)?;
            }
            l.mkdir(Path::new("/dev/shm"), 0o1777);
            l.ops.push(MountOp::Tmpfs {
                target: "/dev/shm".into(),
                options: format!("size={}", spec.dev_shm_size),
            });
            l.mkdir(Path::new("/dev/pts"), 0o755);
            l.ops.push(MountOp::Devpts {
                target: "/dev/pts".into(),
            });
            l.symlink("/proc/self/fd", "/dev/fd")?;
            l.symlink("/proc/self/fd/0", "/dev/stdin")?;
            l.symlink("/proc/self/fd/1", "/dev/stdout")?;
            l.symlink("/proc/self/fd/2", "/dev/stderr")?;
            l.symlink("/dev/pts/ptmx", "/dev/ptmx")?;
        }

        l.mkdir(Path::new("/proc"), 0o555);
        l.ops.push(MountOp::Proc {
            target: "/proc".into(),
        });

        // The store dir holds only the closure; outputs are created in it (1775, as Nix).
        l.disk_dir(&spec.store_dir, 0o1775);
        if id_maps.switch_ids {
            // As with Nix's build users: the store dir belongs to root and the
            // builder's group, so the builder can create its outputs (1775) but not
            // chmod the directory or remove others' entries.
            l.ops.push(MountOp::Chown {
                path: spec.store_dir.clone(),
                uid: 0,
                gid: id_maps.builder_gid,
            });
        }
        let mut inputs: Vec<&PathBuf> = spec.inputs.iter().collect();
        inputs.sort();
        inputs.dedup();
        for input in inputs {
            check_sandbox_path(input)?;
            if input.parent() != Some(spec.store_dir.as_path()) {
                return Err(PlanError::InputOutsideStore {
                    path: input.clone(),
                    store_dir: spec.store_dir.clone(),
                });
            }
            l.bind(input, input, true, false)?;
        }
        for sp in &spec.sandbox_paths {
            // A store path already in the closure is bound once.
            if sp.source == sp.target && spec.inputs.contains(&sp.target) {
                continue;
            }
            l.bind(&sp.source, &sp.target, true, sp.optional)?;
        }

        let (program, argv) = match &spec.builtin {
            Some(name) => (
                Program::Builtin(name.clone()),
                vec![OsString::from(format!("builtin:{name}"))],
            ),
            None => {
                let basename = spec
                    .builder
                    .file_name()
                    .map(OsStr::to_owned)
                    .unwrap_or_else(|| spec.builder.as_os_str().to_owned());
                let mut argv = vec![basename];
                argv.extend(spec.args.iter().cloned());
                (Program::Path(spec.builder.clone()), argv)
            }
        };

        Ok(Plan {
            namespaces: Namespaces {
                net: !spec.network || spec.pasta.is_some(),
                ipc: true,
                uts: true,
            },
            id_maps,
            root: spec.root.clone(),
            root_mode: 0o555,
            mounts: l.ops,
            hostname: "localhost".into(),
            domainname: "(none)".into(),
            exec: Exec {
                program,
                argv,
                env: spec.env.clone(),
                cwd: spec.sandbox_build_dir.clone(),
            },
            reclaim: if spec.id_slice.is_some() {
                spec.reclaim.clone()
            } else {
                Vec::new()
            },
            pasta: if spec.network {
                spec.pasta.clone()
            } else {
                None
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> SandboxSpec {
        let mut s = SandboxSpec::new(
            "/var/lib/unrooted/chroots/x".into(),
            "/nix/store".into(),
            "/var/lib/unrooted/builds/x".into(),
            "/nix/store/aaaa-busybox/bin/sh".into(),
        );
        s.host_uid = 1234;
        s.host_gid = 567;
        s.inputs = vec![
            "/nix/store/aaaa-busybox".into(),
            "/nix/store/bbbb-src.tar".into(),
        ];
        s.args = vec!["-e".into(), "builder.sh".into()];
        s
    }

    #[test]
    fn passwd_group_hosts_are_nix_bytes() {
        assert_eq!(
            etc_passwd(Path::new("/build")),
            b"root:x:0:0:Nix build user:/build:/noshell\n\
              nixbld:x:1000:100:Nix build user:/build:/noshell\n\
              nobody:x:65534:65534:Nobody:/:/noshell\n"
        );
        assert_eq!(ETC_GROUP, b"root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n");
        assert_eq!(ETC_HOSTS, b"127.0.0.1 localhost\n::1 localhost\n");
    }

    #[test]
    fn id_maps_are_nix_rootless() {
        let plan = Plan::new(&spec()).unwrap();
        assert_eq!(IdMaps::map_text(&plan.id_maps.uid_map), "1000 1234 1\n");
        assert_eq!(IdMaps::map_text(&plan.id_maps.gid_map), "100 567 1\n");
        assert_eq!(plan.id_maps.method, IdMapMethod::Direct);
        assert!(plan.namespaces.net && plan.namespaces.ipc && plan.namespaces.uts);
        assert_eq!(plan.hostname, "localhost");
        assert_eq!(plan.domainname, "(none)");
        assert_eq!(plan.root_mode, 0o555);
    }

    fn slice() -> IdSlice {
        IdSlice {
            uid: 100_000,
            gid: 300_000,
            count: 65536,
            newuidmap: "/usr/bin/newuidmap".into(),
            newgidmap: "/usr/bin/newgidmap".into(),
        }
    }

    #[test]
    fn id_range_maps_owner_to_root_and_hands_the_build_dir_to_the_builder() {
        let mut s = spec();
        s.id_slice = Some(slice());
        let plan = Plan::new(&s).unwrap();
        let ids = &plan.id_maps;
        assert_eq!(IdMaps::map_text(&ids.uid_map), "0 1234 1\n1 100001 65535\n");
        assert_eq!(IdMaps::map_text(&ids.gid_map), "0 567 1\n1 300001 65535\n");
        assert!(ids.switch_ids && !ids.nested_range);
        assert_eq!((ids.builder_uid, ids.builder_gid), (1000, 100));
        assert!(matches!(ids.method, IdMapMethod::NewIdMap { .. }));
        assert_eq!(
            plan.mounts[1],
            MountOp::Chown {
                path: "/build".into(),
                uid: 1000,
                gid: 100
            }
        );
        assert!(plan.mounts.contains(&MountOp::Chown {
            path: "/nix/store".into(),
            uid: 0,
            gid: 100
        }));

        s.uid_range = true;
        let ids = Plan::new(&s).unwrap().id_maps;
        assert_eq!(
            IdMaps::map_text(&ids.uid_map),
            "0 100000 65536\n65536 1234 1\n"
        );
        assert_eq!((ids.builder_uid, ids.nested_range), (0, true));

        let r = IdMaps::reclaim(1234, 567, &slice());
        assert_eq!(IdMaps::map_text(&r.uid_map), "0 1234 1\n1 100000 65536\n");

        let mut small = slice();
        small.count = 1000;
        s.id_slice = Some(small);
        assert!(matches!(
            Plan::new(&s),
            Err(PlanError::IdSliceTooSmall { .. })
        ));
        s.id_slice = None;
        assert!(matches!(Plan::new(&s), Err(PlanError::UidRangeUnavailable)));
    }

    #[test]
    fn exec_uses_basename_as_argv0_and_build_dir_as_cwd() {
        let plan = Plan::new(&spec()).unwrap();
        assert_eq!(plan.exec.argv, ["sh", "-e", "builder.sh"]);
        assert_eq!(plan.exec.cwd, Path::new("/build"));
    }

    #[test]
    fn layout_in_order() {
        let plan = Plan::new(&spec()).unwrap();
        let show: Vec<String> = plan
            .mounts
            .iter()
            .map(|op| match op {
                MountOp::Mkdir { path, mode } => format!("mkdir {} {mode:o}", path.display()),
                MountOp::DiskDir { path, mode } => {
                    format!("disk dir {} {mode:o}", path.display())
                }
                MountOp::WriteFile { path, mode, .. } => {
                    format!("file {} {mode:o}", path.display())
                }
                MountOp::Symlink { target, link } => {
                    format!("symlink {} -> {}", link.display(), target.display())
                }
                MountOp::Bind {
                    source,
                    target,
                    read_only,
                    optional,
                } => format!(
                    "bind {} {}{}{}",
                    source.display(),
                    target.display(),
                    if *read_only { " ro" } else { "" },
                    if *optional { " optional" } else { "" }
                ),
                MountOp::Proc { target } => format!("proc {}", target.display()),
                MountOp::Tmpfs { target, options } => {
                    format!("tmpfs {} {options}", target.display())
                }
                MountOp::Devpts { target } => format!("devpts {}", target.display()),
                MountOp::Chown { path, uid, gid } => {
                    format!("chown {} {uid}:{gid}", path.display())
                }
            })
            .collect();
        assert_eq!(
            show,
            [
                "bind /var/lib/unrooted/builds/x /build",
                "disk dir /tmp 1777",
                "mkdir /etc 555",
                "file /etc/passwd 444",
                "file /etc/group 444",
                "file /etc/hosts 444",
                "mkdir /dev 755",
                "bind /dev/full /dev/full",
                "bind /dev/null /dev/null",
                "bind /dev/random /dev/random",
                "bind /dev/tty /dev/tty",
                "bind /dev/urandom /dev/urandom",
                "bind /dev/zero /dev/zero",
                "mkdir /dev/shm 1777",
                "tmpfs /dev/shm size=50%",
                "mkdir /dev/pts 755",
                "devpts /dev/pts",
                "symlink /dev/fd -> /proc/self/fd",
                "symlink /dev/stdin -> /proc/self/fd/0",
                "symlink /dev/stdout -> /proc/self/fd/1",
                "symlink /dev/stderr -> /proc/self/fd/2",
                "symlink /dev/ptmx -> /dev/pts/ptmx",
                "mkdir /proc 555",
                "proc /proc",
                "mkdir /nix 755",
                "disk dir /nix/store 1775",
                "bind /nix/store/aaaa-busybox /nix/store/aaaa-busybox ro",
                "bind /nix/store/bbbb-src.tar /nix/store/bbbb-src.tar ro",
            ]
        );
    }

    #[test]
    fn network_builds_get_no_private_hosts_and_share_the_netns() {
        let mut s = spec();
        s.network = true;
        s.network_files = vec![
            SandboxPath {
                target: "/etc/resolv.conf".into(),
                source: "/run/systemd/resolve/stub-resolv.conf".into(),
                optional: true,
            },
            SandboxPath::parse(OsStr::new("/etc/hosts?")).unwrap(),
        ];
        let plan = Plan::new(&s).unwrap();
        assert!(!plan.namespaces.net);
        assert!(!plan.mounts.iter().any(
            |op| matches!(op, MountOp::WriteFile { path, .. } if path == Path::new("/etc/hosts"))
        ));
        // Nix 2.8's fixed-output /etc: its own nsswitch.conf, the host's files bound.
        let etc: Vec<&MountOp> = plan
            .mounts
            .iter()
            .skip_while(
                |op| !matches!(op, MountOp::Mkdir { path, .. } if path == Path::new("/etc")),
            )
            .take(6)
            .collect();
        assert_eq!(
            etc[3],
            &MountOp::WriteFile {
                path: "/etc/nsswitch.conf".into(),
                contents: b"hosts: files dns\nservices: files\n".to_vec(),
                mode: 0o444
            }
        );
        assert_eq!(
            etc[4],
            &MountOp::Bind {
                source: "/run/systemd/resolve/stub-resolv.conf".into(),
                target: "/etc/resolv.conf".into(),
                read_only: true,
                optional: true
            }
        );
        assert_eq!(
            etc[5],
            &MountOp::Bind {
                source: "/etc/hosts".into(),
                target: "/etc/hosts".into(),
                read_only: true,
                optional: true
            }
        );

        // Without the network, the host's files are never bound.
        s.network = false;
        let plan = Plan::new(&s).unwrap();
        assert!(plan.namespaces.net);
        assert!(!plan
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Bind { target, .. } if target.starts_with("/etc"))));
        assert!(!plan.mounts.iter().any(
            |op| matches!(op, MountOp::WriteFile { path, .. } if path == Path::new("/etc/nsswitch.conf"))
        ));
    }

    #[test]
    fn pasta_builds_get_their_own_netns_and_the_gateway_as_resolver() {
        let mut s = spec();
        s.network = true;
        s.pasta = Some(Pasta::new("/usr/bin/pasta".into()));
        s.resolv_conf = Some(pasta_resolv_conf(
            b"# generated\nnameserver 127.0.0.53\nsearch example.org\nnameserver ::1\noptions edns0",
        ));
        let plan = Plan::new(&s).unwrap();
        assert!(plan.namespaces.net);
        assert_eq!(
            plan.pasta.as_ref().unwrap().program,
            Path::new("/usr/bin/pasta")
        );
        let args: Vec<&str> = plan
            .pasta
            .as_ref()
            .unwrap()
            .args
            .iter()
            .map(|a| a.to_str().unwrap())
            .collect();
        // No port is forwarded either way.
        for flag in ["-t", "-u", "-T", "-U"] {
            let i = args.iter().position(|a| *a == flag).unwrap();
            assert_eq!(args[i + 1], "none", "{flag}");
        }
        assert!(plan.mounts.contains(&MountOp::WriteFile {
            path: "/etc/resolv.conf".into(),
            contents: b"# generated\nsearch example.org\noptions edns0\nnameserver 169.254.1.1\n"
                .to_vec(),
            mode: 0o444,
        }));
        // Without the network, pasta is not planned.
        s.network = false;
        assert_eq!(Plan::new(&s).unwrap().pasta, None);
    }

    #[test]
    fn host_network_files_resolve_links_and_skip_missing_files() {
        for f in host_network_files() {
            assert!(f.optional);
            assert!(f.target.starts_with("/etc"));
            let meta = std::fs::symlink_metadata(&f.source).unwrap();
            assert!(!meta.file_type().is_symlink(), "{}", f.source.display());
            assert!(
                std::fs::canonicalize(&f.target).unwrap() == f.source,
                "{}",
                f.target.display()
            );
        }
    }

    #[test]
    fn builtin_plans_call_the_builtin_instead_of_a_program() {
        let mut s = spec();
        s.builder = "builtin:buildenv".into();
        assert!(matches!(Plan::new(&s), Err(PlanError::NotAbsolute { .. })));
        s.builtin = Some("buildenv".into());
        let plan = Plan::new(&s).unwrap();
        assert_eq!(plan.exec.program, Program::Builtin("buildenv".into()));
        assert_eq!(plan.exec.argv, ["builtin:buildenv"]);
        assert_eq!(plan.exec.cwd, Path::new("/build"));
        // The same sandbox as a program gets.
        s.builtin = None;
        s.builder = "/nix/store/aaaa-busybox/bin/sh".into();
        assert_eq!(Plan::new(&s).unwrap().mounts, plan.mounts);
    }

    #[test]
    fn sandbox_paths_parse_and_bind_read_only() {
        let p = SandboxPath::parse(OsStr::new("/bin/sh=/nix/store/cccc-bash/bin/bash")).unwrap();
        assert_eq!(p.target, Path::new("/bin/sh"));
        assert_eq!(p.source, Path::new("/nix/store/cccc-bash/bin/bash"));
        assert!(!p.optional);
        let p = SandboxPath::parse(OsStr::new("/dev/kvm?")).unwrap();
        assert_eq!(
            (p.target.as_path(), p.optional),
            (Path::new("/dev/kvm"), true)
        );
        assert_eq!(p.source, Path::new("/dev/kvm"));
        for bad in ["", "?", "=/x", "/x="] {
            assert!(SandboxPath::parse(OsStr::new(bad)).is_err(), "{bad}");
        }

        let mut s = spec();
        s.sandbox_paths = vec![
            SandboxPath::parse(OsStr::new("/usr/bin/env=/bin/env?")).unwrap(),
            SandboxPath::parse(OsStr::new("/nix/store/aaaa-busybox")).unwrap(),
        ];
        let plan = Plan::new(&s).unwrap();
        let tail: Vec<&MountOp> = plan.mounts.iter().rev().take(3).collect();
        assert_eq!(
            tail[0],
            &MountOp::Bind {
                source: "/bin/env".into(),
                target: "/usr/bin/env".into(),
                read_only: true,
                optional: true
            }
        );
        assert_eq!(
            tail[1],
            &MountOp::Mkdir {
                path: "/usr/bin".into(),
                mode: 0o755
            }
        );
    }

    #[test]
    fn dev_sandbox_path_replaces_minimal_dev() {
        let mut s = spec();
        s.sandbox_paths = vec![SandboxPath::parse(OsStr::new("/dev")).unwrap()];
        let plan = Plan::new(&s).unwrap();
        assert!(!plan
            .mounts
            .iter()
            .any(|op| matches!(op, MountOp::Devpts { .. })));
    }

    #[test]
    fn rejects_unsafe_paths() {
        let mut s = spec();
        s.inputs.push("/nix/store/../../etc".into());
        assert!(matches!(Plan::new(&s), Err(PlanError::NotNormal { .. })));
        let mut s = spec();
        s.inputs.push("/etc/shadow".into());
        assert!(matches!(
            Plan::new(&s),
            Err(PlanError::InputOutsideStore { .. })
        ));
        let mut s = spec();
        s.inputs.push("/nix/store/aaaa-busybox/bin".into());
        assert!(matches!(
            Plan::new(&s),
            Err(PlanError::InputOutsideStore { .. })
        ));
        let mut s = spec();
        s.sandbox_paths = vec![SandboxPath::parse(OsStr::new("/build=/tmp")).unwrap()];
        assert!(matches!(Plan::new(&s), Err(PlanError::Duplicate { .. })));
        let mut s = spec();
        s.sandbox_paths = vec![SandboxPath::parse(OsStr::new("relative=/tmp")).unwrap()];
        assert!(matches!(Plan::new(&s), Err(PlanError::NotAbsolute { .. })));
        let mut s = spec();
        s.store_dir = "/nix//store".into();
        assert!(matches!(Plan::new(&s), Err(PlanError::NotNormal { .. })));
    }

    #[test]
    fn base_env_is_nix() {
        let env = nix_base_env(Path::new("/nix/store"), Path::new("/build"), 4);
        let names: Vec<&str> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "PATH",
                "HOME",
                "NIX_STORE",
                "NIX_BUILD_CORES",
                "NIX_BUILD_TOP",
                "TMPDIR",
                "TEMPDIR",
                "TMP",
                "TEMP",
                "PWD",
                "NIX_LOG_FD",
                "TERM"
            ]
        );
        assert_eq!(env[0].1, "/path-not-set");
        assert_eq!(env[1].1, "/homeless-shelter");
        assert_eq!(env[3].1, "4");
        assert_eq!(env[11].1, "xterm-256color");
    }
}
