//! `post-build-hook`, as Nix 2.8 runs it after every local build: the program named by
//! the setting, run by the daemon (here: the store owner, never root) with the
//! daemon's environment plus `DRV_PATH` (the `.drv`), `OUT_PATHS` (the built output
//! paths, space-separated) and `NIX_CONFIG` (the settings in effect, unless the
//! daemon's environment has one); its standard output and error are one stream, each
//! line relayed to the client (`post-build-hook` activity, `postBuildLogLine`
//! results). It runs once the outputs are registered; when it fails the request fails
//! with Nix's message (`program '<hook>' failed with exit code N`), and the outputs
//! stay valid.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use thiserror::Error;

use crate::log::BuildLog;
use crate::run::log_pipe;

/// Why the hook failed.
#[derive(Debug, Error)]
pub enum HookError {
    /// It could not be started.
    #[error("executing '{}'", hook.display())]
    Start {
        /// The hook.
        hook: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// It exited unsuccessfully (Nix's `ExecError`).
    #[error("program '{}' {status}", hook.display())]
    Failed {
        /// The hook.
        hook: PathBuf,
        /// `failed with exit code N` or `failed due to signal N`.
        status: String,
    },
}

/// Runs `hook` for the build of `drv_path` that produced `out_paths` (printed);
/// `on_line` gets each line of its output.
pub(crate) fn run_post_build_hook(
    hook: &Path,
    drv_path: &str,
    out_paths: &[String],
    config: &str,
    on_line: &mut dyn FnMut(&str),
) -> Result<(), HookError> {
    let start = |source| HookError::Start {
        hook: hook.to_path_buf(),
        source,
    };
    let (read, write) = log_pipe().map_err(|e| start(std::io::Error::other(e)))?;
    let out = write.try_clone().map_err(start)?;
    let mut cmd = Command::new(hook);
    cmd.env("DRV_PATH", drv_path)
        .env("OUT_PATHS", out_paths.join(" "))
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(write));
    // Nix adds its settings only where the daemon's environment has no NIX_CONFIG.
    if std::env::var_os("NIX_CONFIG").is_none() {
        cmd.env("NIX_CONFIG", config);
    }
    let mut child = cmd.spawn().map_err(start)?;
    // The command holds the write ends until it is dropped: only the hook (and what
    // it starts) has them now, so the read ends when they are all gone.
    drop(cmd);
    let mut lines = BuildLog::create(None, 0).map_err(start)?;
    let mut pipe = std::fs::File::from(read);
    let mut buf = vec![0u8; 16 << 10];
    loop {
        match pipe.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => lines.push(&buf[..n], on_line),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    lines.finish(on_line);
    let status = child.wait().map_err(start)?;
    let failed = match (status.code(), status.signal()) {
        (Some(0), _) => return Ok(()),
        (Some(code), _) => format!("failed with exit code {code}"),
        (None, Some(sig)) => format!("failed due to signal {sig}"),
        (None, None) => "failed".to_owned(),
    };
    Err(HookError::Failed {
        hook: hook.to_path_buf(),
        status: failed,
    })
}
