//! What a build asks of the sandbox: [`SandboxSpec`] and its `sandbox-paths`.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use super::{IdSlice, Pasta};
use crate::error::PlanError;

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

/// What a build needs from the sandbox; [`Plan::new`](crate::Plan::new) turns it into a [`Plan`](crate::Plan).
#[derive(Debug, Clone)]
pub struct SandboxSpec {
    /// Host path of the fresh, empty root directory (see [`Plan::root`](crate::Plan::root)).
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
    /// With `network`: the sandbox's `/etc/resolv.conf` (see [`pasta_resolv_conf`](crate::pasta_resolv_conf)),
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
    /// (see [`Plan::reclaim`](crate::Plan::reclaim)).
    pub reclaim: Vec<PathBuf>,
    /// The builder's path inside the sandbox.
    pub builder: PathBuf,
    /// Arguments after argv\[0\] (which is the builder's basename, as in Nix).
    pub args: Vec<OsString>,
    /// The complete environment (see [`nix_base_env`](crate::nix_base_env)).
    pub env: Vec<(OsString, OsString)>,
    /// Run this builtin builder (`fetchurl` for `builtin:fetchurl`) in the sandbox's
    /// init instead of executing `builder` (which is then ignored).
    pub builtin: Option<String>,
    /// With `network`: host files bound read-only into the sandbox's `/etc`, as Nix
    /// gives fixed-output derivations `/etc/resolv.conf`, `/etc/services` and
    /// `/etc/hosts` (see [`host_network_files`](crate::host_network_files)).
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

/// Checks that `path` is absolute with only normal components (no `.`, `..`, `//`
/// games), since the executor joins it under the root.
pub(super) fn check_sandbox_path(path: &Path) -> Result<(), PlanError> {
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
