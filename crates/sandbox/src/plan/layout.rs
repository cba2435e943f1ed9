//! The layout of Nix 2.8's sandbox: [`Plan::new`].

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

use super::spec::check_sandbox_path;
use super::*;
use crate::error::PlanError;

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
        check_spec_paths(spec)?;
        let id_maps = id_maps_for(spec)?;
        let mut l = Layout {
            ops: Vec::new(),
            dirs: BTreeSet::new(),
            targets: BTreeSet::new(),
        };
        l.build_dir(spec, &id_maps)?;
        l.etc(spec)?;
        let dev_in_sandbox_paths = spec
            .sandbox_paths
            .iter()
            .any(|p| p.target == Path::new("/dev"));
        // As in Nix: a `/dev` sandbox path replaces the whole minimal /dev.
        if !dev_in_sandbox_paths {
            l.dev(spec)?;
        }
        l.mkdir(Path::new("/proc"), 0o555);
        l.ops.push(MountOp::Proc {
            target: "/proc".into(),
        });
        l.store(spec, &id_maps)?;
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
            exec: exec_of(spec),
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

/// The spec's paths: host paths absolute, sandbox paths absolute and normal.
fn check_spec_paths(spec: &SandboxSpec) -> Result<(), PlanError> {
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
    Ok(())
}

/// The id maps the spec asks for: one id, a slice, or a `uid-range` slice.
fn id_maps_for(spec: &SandboxSpec) -> Result<IdMaps, PlanError> {
    Ok(match (&spec.id_slice, spec.uid_range) {
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
    })
}

/// What the builder runs: the builder program with its basename as `argv[0]`, or the
/// builtin; in the build directory, with the spec's environment.
fn exec_of(spec: &SandboxSpec) -> Exec {
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
    Exec {
        program,
        argv,
        env: spec.env.clone(),
        cwd: spec.sandbox_build_dir.clone(),
    }
}

impl Layout {
    /// The build directory first: it is the one writable place besides /tmp and the
    /// store dir.
    fn build_dir(&mut self, spec: &SandboxSpec, id_maps: &IdMaps) -> Result<(), PlanError> {
        self.bind(&spec.host_build_dir, &spec.sandbox_build_dir, false, false)?;
        if id_maps.switch_ids {
            // The setup runs as inner root; the builder must own its build directory.
            self.ops.push(MountOp::Chown {
                path: spec.sandbox_build_dir.clone(),
                uid: id_maps.builder_uid,
                gid: id_maps.builder_gid,
            });
        }
        self.disk_dir(Path::new("/tmp"), 0o1777);
        Ok(())
    }

    /// `/etc`: `passwd`, `group`, and the hosts file or, with the network, the name
    /// service files.
    fn etc(&mut self, spec: &SandboxSpec) -> Result<(), PlanError> {
        self.mkdir(Path::new("/etc"), 0o555);
        self.file(
            Path::new("/etc/passwd"),
            &etc_passwd(&spec.sandbox_build_dir),
        )?;
        self.file(Path::new("/etc/group"), ETC_GROUP)?;
        if spec.network {
            self.file(Path::new("/etc/nsswitch.conf"), ETC_NSSWITCH_NETWORK)?;
            if let Some(resolv) = &spec.resolv_conf {
                self.file(Path::new("/etc/resolv.conf"), resolv)?;
            }
            for f in &spec.network_files {
                self.bind(&f.source, &f.target, true, f.optional)?;
            }
        } else {
            self.file(Path::new("/etc/hosts"), ETC_HOSTS)?;
        }
        Ok(())
    }

    /// The minimal `/dev`: the host's [`DEVICES`] (and `kvm` on request), `shm`,
    /// `pts` and the standard links.
    fn dev(&mut self, spec: &SandboxSpec) -> Result<(), PlanError> {
        self.mkdir(Path::new("/dev"), 0o755);
        for dev in DEVICES {
            let p = Path::new("/dev").join(dev);
            self.bind(&p, &p, false, false)?;
        }
        if spec.kvm {
            self.bind(Path::new("/dev/kvm"), Path::new("/dev/kvm"), false, true)?;
        }
        self.mkdir(Path::new("/dev/shm"), 0o1777);
        self.ops.push(MountOp::Tmpfs {
            target: "/dev/shm".into(),
            options: format!("size={}", spec.dev_shm_size),
        });
        self.mkdir(Path::new("/dev/pts"), 0o755);
        self.ops.push(MountOp::Devpts {
            target: "/dev/pts".into(),
        });
        self.symlink("/proc/self/fd", "/dev/fd")?;
        self.symlink("/proc/self/fd/0", "/dev/stdin")?;
        self.symlink("/proc/self/fd/1", "/dev/stdout")?;
        self.symlink("/proc/self/fd/2", "/dev/stderr")?;
        self.symlink("/dev/pts/ptmx", "/dev/ptmx")
    }

    /// The store dir, holding only the closure (outputs are created in it, 1775 as
    /// in Nix), and the sandbox paths.
    fn store(&mut self, spec: &SandboxSpec, id_maps: &IdMaps) -> Result<(), PlanError> {
        self.disk_dir(&spec.store_dir, 0o1775);
        if id_maps.switch_ids {
            // As with Nix's build users: the store dir belongs to root and the
            // builder's group, so the builder can create its outputs (1775) but not
            // chmod the directory or remove others' entries.
            self.ops.push(MountOp::Chown {
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
            self.bind(input, input, true, false)?;
        }
        for sp in &spec.sandbox_paths {
            // A store path already in the closure is bound once.
            if sp.source == sp.target && spec.inputs.contains(&sp.target) {
                continue;
            }
            self.bind(&sp.source, &sp.target, true, sp.optional)?;
        }
        Ok(())
    }
}
