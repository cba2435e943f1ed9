//! Running a builder and watching it: its output is read from a pipe as it comes,
//! and it is killed (the whole sandbox, or the whole process group without one) when
//! it is silent too long, runs too long, writes too much log, or nobody wants the
//! result any more.

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{poll, PollFd, PollFlags, Timespec};
use unrooted_sandbox::{BuildStatus, SandboxChild};

use crate::error::BuildError;
use crate::log::BuildLog;

/// How often a quiet build is looked at (timeouts, cancellation, exit).
const TICK: Duration = Duration::from_millis(100);

/// A running builder.
pub(crate) enum Runner {
    /// In the user-namespace sandbox.
    Sandboxed(SandboxChild),
    /// Directly on the host (`sandbox = false`), in its own process group.
    Direct(Child),
}

/// How a watched builder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ended {
    /// It exited with this code.
    Exited(i32),
    /// It was killed by this signal (not by us).
    Signaled(i32),
    /// `timeout` passed.
    TimedOut(u64),
    /// `max-silent-time` passed without output.
    Silent(u64),
    /// It wrote more than `max-build-log-size`.
    LogLimit(u64),
    /// Nobody waits for it any more.
    Cancelled,
}

/// Time limits, in seconds (0 = none), and the log size limit in bytes.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub timeout: u64,
    pub max_silent: u64,
    pub max_log: u64,
}

/// Creates the log pipe: (read end, write end), both close-on-exec.
pub(crate) fn log_pipe() -> Result<(OwnedFd, OwnedFd), BuildError> {
    rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(|e| BuildError::io("creating the log pipe", "pipe")(e.into()))
}

/// Starts `builder` directly, in a new process group, with exactly `env`, in `cwd`.
pub(crate) fn spawn_direct(
    builder: &Path,
    args: &[OsString],
    env: &[(OsString, OsString)],
    cwd: &Path,
    log: &OwnedFd,
) -> Result<Child, BuildError> {
    let err = |source| BuildError::Spawn {
        builder: builder.to_path_buf(),
        source,
    };
    let out = log.try_clone().map_err(err)?;
    let errfd = log.try_clone().map_err(err)?;
    let argv0 = builder
        .file_name()
        .unwrap_or(builder.as_os_str())
        .to_owned();
    Command::new(builder)
        .arg0(argv0)
        .args(args)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(errfd))
        .process_group(0)
        .spawn()
        .map_err(err)
}

impl Runner {
    fn kill(&mut self) {
        match self {
            Runner::Sandboxed(c) => {
                let _ = c.kill();
            }
            Runner::Direct(c) => kill_group(c),
        }
    }

    /// The exit status if it has ended.
    fn try_wait(&mut self) -> Result<Option<Ended>, BuildError> {
        match self {
            Runner::Sandboxed(c) => Ok(c.wait_timeout(Duration::ZERO)?.map(from_sandbox)),
            Runner::Direct(c) => match c.try_wait() {
                Ok(Some(s)) => {
                    // Whatever it left behind in its group goes with it, as in Nix.
                    kill_group(c);
                    Ok(Some(from_exit(s)))
                }
                Ok(None) => Ok(None),
                Err(e) => Err(BuildError::io("waiting for the builder", "builder")(e)),
            },
        }
    }

    fn wait(&mut self) -> Result<Ended, BuildError> {
        match self {
            Runner::Sandboxed(c) => Ok(from_sandbox(c.wait()?)),
            Runner::Direct(c) => {
                let s = c
                    .wait()
                    .map_err(BuildError::io("waiting for the builder", "builder"))?;
                Ok(from_exit(s))
            }
        }
    }
}

fn kill_group(c: &Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(c.id() as i32) {
        let _ = rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
    }
}

fn from_sandbox(s: BuildStatus) -> Ended {
    match s {
        BuildStatus::Exited(c) => Ended::Exited(c),
        BuildStatus::Signaled(s) => Ended::Signaled(s),
    }
}

fn from_exit(s: std::process::ExitStatus) -> Ended {
    match (s.code(), s.signal()) {
        (Some(c), _) => Ended::Exited(c),
        (None, Some(sig)) => Ended::Signaled(sig),
        _ => Ended::Exited(-1),
    }
}

/// Reads the builder's output into `log` until it ends or must be stopped.
pub(crate) fn watch(
    runner: &mut Runner,
    read: OwnedFd,
    log: &mut BuildLog,
    limits: Limits,
    cancelled: &dyn Fn() -> bool,
    on_line: &mut dyn FnMut(&str),
) -> Result<Ended, BuildError> {
    let start = Instant::now();
    let mut last_output = start;
    let mut buf = vec![0u8; 64 << 10];
    let mut eof = false;
    loop {
        let stop = if cancelled() {
            Some(Ended::Cancelled)
        } else if limits.timeout != 0 && start.elapsed().as_secs() >= limits.timeout {
            Some(Ended::TimedOut(limits.timeout))
        } else if limits.max_silent != 0 && last_output.elapsed().as_secs() >= limits.max_silent {
            Some(Ended::Silent(limits.max_silent))
        } else if log.over_limit() {
            Some(Ended::LogLimit(limits.max_log))
        } else {
            None
        };
        if let Some(stop) = stop {
            runner.kill();
            let _ = runner.wait();
            return Ok(stop);
        }
        if eof {
            // The pipe is closed: the builder is gone or about to be.
            if let Some(ended) = runner.try_wait()? {
                return Ok(ended);
            }
            std::thread::sleep(TICK / 4);
            continue;
        }
        match read_some(&read, &mut buf, TICK)? {
            Some(0) => eof = true,
            Some(n) => {
                last_output = Instant::now();
                log.push(&buf[..n], on_line);
            }
            None => {
                if let Some(ended) = runner.try_wait()? {
                    // Take what is still buffered, then stop: a process that escaped
                    // the group may hold the pipe open forever.
                    while let Some(n) = read_some(&read, &mut buf, Duration::ZERO)? {
                        if n == 0 {
                            break;
                        }
                        log.push(&buf[..n], on_line);
                    }
                    return Ok(ended);
                }
            }
        }
    }
}

/// Waits up to `wait` for data; `None` if none came.
fn read_some(fd: &OwnedFd, buf: &mut [u8], wait: Duration) -> Result<Option<usize>, BuildError> {
    let ts = Timespec {
        tv_sec: wait.as_secs() as i64,
        tv_nsec: i64::from(wait.subsec_nanos()),
    };
    let mut fds = [PollFd::new(fd, PollFlags::IN)];
    match poll(&mut fds, Some(&ts)) {
        Ok(0) => return Ok(None),
        Ok(_) => {}
        Err(rustix::io::Errno::INTR) => return Ok(None),
        Err(e) => return Err(pipe_err(e.into())),
    }
    loop {
        match rustix::io::read(fd.as_fd(), &mut *buf) {
            Ok(n) => return Ok(Some(n)),
            Err(rustix::io::Errno::INTR) => continue,
            Err(rustix::io::Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(pipe_err(e.into())),
        }
    }
}

fn pipe_err(e: io::Error) -> BuildError {
    BuildError::Io {
        action: "reading the builder's output",
        path: PathBuf::from("pipe"),
        source: e,
    }
}
