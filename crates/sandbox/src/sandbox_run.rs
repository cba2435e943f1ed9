//! Running one command in a sandbox made from arguments, to see what a builder would
//! see: the one implementation behind both front ends, `unrooted sandbox-run` and
//! `unrooted-sandbox run` (which the integration tests drive).

use std::ffi::OsString;
use std::os::fd::BorrowedFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::{
    empty_dir, host_network_files, nix_base_env, pasta_resolv_conf, remove_tree, BuildStatus,
    CleanupError, Pasta, Plan, Sandbox, SandboxError, SandboxPath, SandboxSpec,
};

/// What to run, and in which sandbox.
#[derive(Debug, Clone)]
pub struct SandboxRun {
    /// The store directory as the builder sees it (inputs must be directly inside).
    pub store_dir: PathBuf,
    /// The host build directory, bound at `/build`.
    pub build_dir: PathBuf,
    /// Store paths bound read-only: the builder's input closure.
    pub inputs: Vec<PathBuf>,
    /// Extra `sandbox-paths` entries, bound read-only.
    pub sandbox_paths: Vec<SandboxPath>,
    /// Share the host network, as fixed-output derivations do (else loopback only).
    pub network: bool,
    /// A network namespace of its own, connected through this `pasta` (implies the
    /// network).
    pub pasta: Option<PathBuf>,
    /// With the network, give the builder the host's name-service files as the daemon
    /// does (on pasta's network, with a resolver file naming pasta's gateway).
    pub host_network_files: bool,
    /// Environment variables after Nix's own.
    pub env: Vec<(OsString, OsString)>,
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// Where the private parent of the sandbox root is made.
    pub work_dir: PathBuf,
    /// The builder (a path inside the sandbox) and its arguments.
    pub command: Vec<OsString>,
}

/// Why a [`SandboxRun`] could not run.
#[derive(Debug, thiserror::Error)]
pub enum SandboxRunError {
    /// The command line named no builder.
    #[error("no command given")]
    NoCommand,
    /// The sandbox root or its private parent could not be made.
    #[error("creating {}", path.display())]
    CreatingDirectory {
        /// The directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Emptying or removing the root, its parent or the build directory failed.
    #[error(transparent)]
    Cleanup(#[from] CleanupError),
    /// Planning, starting or waiting for the sandbox failed.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
}

/// A sandbox root made for a [`SandboxRun`], in a private (0700) parent only this
/// user can enter, as under the daemon, with the spec of its sandbox.
#[derive(Debug)]
pub struct PreparedRun {
    parent: PathBuf,
    root: PathBuf,
    build_dir: PathBuf,
    spec: SandboxSpec,
}

impl SandboxRun {
    /// Makes the sandbox root and the spec of its sandbox.
    pub fn prepare(&self) -> Result<PreparedRun, SandboxRunError> {
        let (builder, builder_args) = self
            .command
            .split_first()
            .ok_or(SandboxRunError::NoCommand)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let parent = self
            .work_dir
            .join(format!("unrooted-sandbox-{}-{nanos}", std::process::id()));
        private_dir(&parent)?;
        let root = parent.join("root");
        private_dir(&root)?;
        let mut spec = SandboxSpec::new(
            root.clone(),
            self.store_dir.clone(),
            self.build_dir.clone(),
            builder.into(),
        );
        spec.inputs = self.inputs.clone();
        spec.sandbox_paths = self.sandbox_paths.clone();
        spec.network = self.network || self.pasta.is_some();
        if let Some(pasta) = &self.pasta {
            spec.pasta = Some(Pasta::new(pasta.clone()));
        }
        if spec.network && self.host_network_files {
            network_files(&mut spec);
        }
        spec.args = builder_args.to_vec();
        spec.env = nix_base_env(&self.store_dir, &spec.sandbox_build_dir, self.cores);
        spec.env.extend(self.env.iter().cloned());
        Ok(PreparedRun {
            parent,
            root,
            build_dir: self.build_dir.clone(),
            spec,
        })
    }
}

/// The host's name-service files, as the daemon gives a fixed-output build: on
/// pasta's network all but `/etc/resolv.conf`, which names pasta's gateway instead.
fn network_files(spec: &mut SandboxSpec) {
    let files = host_network_files();
    if spec.pasta.is_some() {
        spec.network_files = files
            .into_iter()
            .filter(|f| f.target != Path::new("/etc/resolv.conf"))
            .collect();
        let host = std::fs::read("/etc/resolv.conf").unwrap_or_default();
        spec.resolv_conf = Some(pasta_resolv_conf(&host));
    } else {
        spec.network_files = files;
    }
}

fn private_dir(path: &Path) -> Result<(), SandboxRunError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .map_err(|source| SandboxRunError::CreatingDirectory {
            path: path.to_path_buf(),
            source,
        })
}

impl PreparedRun {
    /// The sandbox root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The root's private parent, which [`PreparedRun::remove`] removes.
    pub fn parent(&self) -> &Path {
        &self.parent
    }

    /// Runs the command once through `sandbox`, its output going to `log`, killing it
    /// (and its whole PID namespace) after `timeout`.
    pub fn run(
        &self,
        sandbox: &Sandbox,
        log: BorrowedFd<'_>,
        timeout: Option<Duration>,
    ) -> Result<BuildStatus, SandboxError> {
        let Some(timeout) = timeout else {
            return sandbox.run(&self.spec, log);
        };
        let plan = Plan::new(&self.spec)?;
        let mut child = sandbox.spawn(&plan, log)?;
        match child.wait_timeout(timeout)? {
            Some(status) => Ok(status),
            None => {
                child.kill()?;
                child.wait()
            }
        }
    }

    /// Empties the root and the build directory, as the daemon does between builds,
    /// and runs the command again.
    pub fn run_again(
        &self,
        sandbox: &Sandbox,
        log: BorrowedFd<'_>,
    ) -> Result<BuildStatus, SandboxRunError> {
        empty_dir(&self.root)?;
        empty_dir(&self.build_dir)?;
        Ok(sandbox.run(&self.spec, log)?)
    }

    /// Removes the root and its parent.
    pub fn remove(self) -> Result<(), CleanupError> {
        remove_tree(&self.parent)
    }
}

/// The exit code of a front end: the builder's, or 128+N for signal N.
pub fn exit_code(status: BuildStatus) -> ExitCode {
    match status {
        BuildStatus::Exited(code) => ExitCode::from(code.clamp(0, 255) as u8),
        BuildStatus::Signaled(sig) => ExitCode::from((128 + sig).clamp(0, 255) as u8),
    }
}
