//! The daemon's side: start the helper with a plan, learn whether the builder started,
//! wait for it or kill it.

use std::collections::HashMap;
use std::ffi::OsString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};

use crate::error::{MountLockOutcome, SandboxError, Step};
use crate::plan::{IdMapEntry, IdMapMethod, Plan, SandboxSpec};
use crate::userns;
use crate::wire::{self, Report};

/// How to start the sandbox helper (a binary whose `main` calls
/// [`crate::helper_main`]).
///
/// It also keeps, for each set of id maps it has built with, a user namespace mapped
/// with them once (see [`IdMapMethod::Enter`]): a build of an id slice then enters it
/// instead of having `newuidmap` and `newgidmap` (two setuid programs, about 2 ms)
/// write a new one's maps. Only the helper and the sandbox's init before it switches
/// to the builder's ids ever act in such a namespace: the builder itself runs in a
/// nested namespace made for each build, and the namespaces' per-namespace state
/// (keyrings, `binfmt_misc`, resource counts) belongs to that nested one. Clones share
/// the kept namespaces; they are closed with the last clone.
#[derive(Debug, Clone)]
pub struct Sandbox {
    program: PathBuf,
    args: Vec<OsString>,
    namespaces: Arc<Mutex<HashMap<MapsKey, Arc<OwnedFd>>>>,
    spare: Option<Arc<SpareOwner>>,
}

/// One helper started ahead of the build that will use it (see
/// [`Sandbox::with_spare_helper`]), and the thread that starts the next.
#[derive(Debug, Default)]
struct SpareSlot {
    state: Mutex<SpareState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct SpareState {
    ready: Option<(Child, UnixStream)>,
    closed: bool,
}

impl SpareSlot {
    fn state(&self) -> std::sync::MutexGuard<'_, SpareState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Takes the spare helper if it still runs. The thread starts the next one only
    /// when the returned guard goes, once the build that took it ended: starting a
    /// process meanwhile would compete with the build's own set-up for the CPUs.
    fn take(self: &Arc<Self>) -> (Refill, Option<(Child, UnixStream)>) {
        let taken = self.state().ready.take();
        let refill = Refill(Some(Arc::clone(self)));
        let Some((mut child, sock)) = taken else {
            return (refill, None);
        };
        match child.try_wait() {
            Ok(None) => (refill, Some((child, sock))),
            // Killed while it waited (or not ours to wait for): reaped, not used.
            _ => (refill, None),
        }
    }

    /// The starting thread: keeps one spare ready until the slot is closed, then ends
    /// it (its socket closes, so it exits).
    fn keep_one(&self, start: impl Fn() -> io::Result<(Child, UnixStream)>) {
        loop {
            let mut state = self.state();
            while state.ready.is_some() && !state.closed {
                state = self.changed.wait(state).unwrap_or_else(|e| e.into_inner());
            }
            if state.closed {
                if let Some((mut child, sock)) = state.ready.take() {
                    drop(sock);
                    let _ = child.wait();
                }
                return;
            }
            drop(state);
            match start() {
                Ok(spare) => self.state().ready = Some(spare),
                // Builds start their own helper meanwhile; try again later.
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(500)),
            }
        }
    }
}

/// Has the spare slot's thread start the next spare helper when dropped.
#[derive(Debug, Default)]
struct Refill(Option<Arc<SpareSlot>>);

impl Drop for Refill {
    fn drop(&mut self) {
        if let Some(slot) = &self.0 {
            slot.changed.notify_all();
        }
    }
}

/// Closes the spare slot when the last clone of the [`Sandbox`] goes.
#[derive(Debug)]
struct SpareOwner(Arc<SpareSlot>);

impl Drop for SpareOwner {
    fn drop(&mut self) {
        self.0.state().closed = true;
        self.0.changed.notify_all();
    }
}

/// The uid and gid maps a kept namespace has.
type MapsKey = (Vec<IdMapEntry>, Vec<IdMapEntry>);

/// At most this many namespaces are kept (one descriptor each): a pool of 128 slices
/// in both layouts fits.
const MAX_KEPT_NAMESPACES: usize = 256;

/// Starts `program args…` as a helper: its stdin is a new socket whose other end is
/// returned, stdout and stderr are `output` (the build log) or `/dev/null`, and its
/// environment is empty.
fn start_helper(
    program: &std::path::Path,
    args: &[OsString],
    output: Option<BorrowedFd<'_>>,
) -> io::Result<(Child, UnixStream)> {
    let (ours, theirs) = UnixStream::pair()?;
    let stdio = || -> io::Result<Stdio> {
        Ok(match output {
            Some(fd) => Stdio::from(fd.try_clone_to_owned()?),
            None => Stdio::null(),
        })
    };
    let child = Command::new(program)
        .args(args)
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .stdout(stdio()?)
        .stderr(stdio()?)
        .env_clear()
        .spawn()?;
    Ok((child, ours))
}

/// How a sandboxed builder ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildStatus {
    /// It exited with this code.
    Exited(i32),
    /// It (the sandbox's init) was killed by this signal.
    Signaled(i32),
}

impl BuildStatus {
    /// Exit code 0.
    pub fn success(self) -> bool {
        self == BuildStatus::Exited(0)
    }
}

/// A running sandboxed builder.
#[derive(Debug)]
pub struct SandboxChild {
    helper: Child,
    sock: UnixStream,
    pid: u32,
    status: Option<BuildStatus>,
    reclaimed: bool,
    /// Dropped last (after the helper is reaped): then the next spare is started.
    _refill: Refill,
}

impl Sandbox {
    /// A sandbox started through `program args… ` (e.g. the daemon's own executable
    /// with a hidden verb, or `unrooted-sandbox helper`).
    pub fn new(program: impl Into<PathBuf>, args: Vec<OsString>) -> Self {
        Sandbox {
            program: program.into(),
            args,
            namespaces: Arc::default(),
            spare: None,
        }
    }

    /// This crate's own helper, `unrooted-sandbox helper`, when it is installed beside
    /// `exe` (as `cargo build` and `cargo install` put it). It has no builtin
    /// builders, and being a fraction of the size of a daemon's binary it starts in
    /// about half the time, which every sandboxed build pays; builtins still need the
    /// daemon's own helper.
    pub fn beside(exe: &std::path::Path) -> Option<Self> {
        use std::os::unix::fs::PermissionsExt;
        let program = exe.with_file_name("unrooted-sandbox");
        let meta = std::fs::metadata(&program).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o111 != 0)
            .then(|| Sandbox::new(program, vec!["helper".into()]))
    }

    /// The helper's program.
    pub fn program(&self) -> &std::path::Path {
        &self.program
    }

    /// The arguments the helper's program is started with.
    pub fn args(&self) -> &[OsString] {
        &self.args
    }

    /// Keeps one helper started ahead of the next build (by a thread of its own, again
    /// after each build takes it): the build then only sends it the plan, with the log
    /// passed along, instead of paying the helper's start (a fork and exec, about a
    /// millisecond) in its latency. The spare waits named `sandbox-spare` and renames
    /// itself `sandbox-helper` once it has a plan; it exits when the daemon
    /// closes its socket (with the last clone of this, or by dying). A spare found dead
    /// is replaced by a helper started for the build, as without this.
    pub fn with_spare_helper(mut self) -> Self {
        let slot = Arc::new(SpareSlot::default());
        let (program, args) = (self.program.clone(), self.args.clone());
        let thread_slot = Arc::clone(&slot);
        let started = std::thread::Builder::new()
            .name("spare-helper".into())
            .stack_size(256 << 10)
            .spawn(move || thread_slot.keep_one(|| start_helper(&program, &args, None)));
        if started.is_ok() {
            self.spare = Some(Arc::new(SpareOwner(slot)));
        }
        self
    }

    /// Starts the builder described by `plan`, its stdout and stderr on `log`. Returns
    /// once it has been executed inside the finished sandbox, or with the step that
    /// failed.
    pub fn spawn(&self, plan: &Plan, log: BorrowedFd<'_>) -> Result<SandboxChild, SandboxError> {
        let userns = match plan.id_maps.method {
            IdMapMethod::NewIdMap { .. } => self.mapped_namespace(&plan.id_maps),
            _ => None,
        };
        let helper_io = |source| SandboxError::HelperIo { source };
        let userns_fd = userns.as_ref().map(|ns| ns.as_fd());
        let (refill, spare) = match &self.spare {
            Some(s) => s.0.take(),
            None => (Refill::default(), None),
        };
        let (mut helper, mut ours) = match spare.and_then(|(mut helper, ours)| {
            // A spare has no log yet: it comes with the plan. One that died since it
            // was checked fails the send, and a helper of the build's own does it.
            match wire::send_plan(ours.as_fd(), plan, userns_fd, Some(log)) {
                Ok(()) => Some((helper, ours)),
                Err(_) => {
                    let _ = helper.kill();
                    let _ = helper.wait();
                    None
                }
            }
        }) {
            Some(sent) => sent,
            None => {
                let (mut helper, ours) = self.start(Some(log))?;
                if let Err(e) = wire::send_plan(ours.as_fd(), plan, userns_fd, None) {
                    let _ = helper.kill();
                    let _ = helper.wait();
                    return Err(helper_io(e));
                }
                (helper, ours)
            }
        };
        let started = Report::read(&mut ours).map_err(helper_io);
        let report = match started {
            Ok(r) => r,
            Err(e) => {
                let _ = helper.kill();
                let _ = helper.wait();
                return Err(e);
            }
        };
        match report {
            Some(Report::Started { pid }) => Ok(SandboxChild {
                helper,
                sock: ours,
                pid,
                status: None,
                reclaimed: false,
                _refill: refill,
            }),
            other => {
                let _ = helper.wait();
                Err(setup_error(other))
            }
        }
    }

    /// Starts a helper for one request (see [`start_helper`]).
    fn start(&self, output: Option<BorrowedFd<'_>>) -> Result<(Child, UnixStream), SandboxError> {
        start_helper(&self.program, &self.args, output).map_err(|source| {
            SandboxError::SpawningHelper {
                helper: self.program.clone(),
                source,
            }
        })
    }

    /// The kept namespace with `ids`' maps, made now if there is none yet; `None` if
    /// making one failed, in which case the build's helper maps a namespace of its own
    /// as it would without this (and reports the failure, if it fails again).
    fn mapped_namespace(&self, ids: &crate::IdMaps) -> Option<Arc<OwnedFd>> {
        let key = (ids.uid_map.clone(), ids.gid_map.clone());
        let kept = |m: &Mutex<HashMap<MapsKey, Arc<OwnedFd>>>| {
            m.lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .cloned()
        };
        if let Some(ns) = kept(&self.namespaces) {
            return Some(ns);
        }
        // Two builds of one slice never run at once (the slice's lock), so making it
        // outside the lock races at most with a build of another slice.
        let ns = Arc::new(self.map_namespace(ids).ok()?);
        let mut map = self.namespaces.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() < MAX_KEPT_NAMESPACES {
            return Some(Arc::clone(map.entry(key).or_insert(ns)));
        }
        Some(ns)
    }

    /// Has a helper make a user namespace with `ids`' maps and returns its descriptor.
    fn map_namespace(&self, ids: &crate::IdMaps) -> Result<OwnedFd, SandboxError> {
        let helper_io = |source| SandboxError::HelperIo { source };
        let (mut helper, ours) = self.start(None)?;
        let answer = wire::send_map_namespace(ours.as_fd(), ids)
            .and_then(|()| Report::read_with_fd(ours.as_fd()))
            .map_err(helper_io);
        let _ = helper.wait();
        match answer? {
            (Some(Report::Exited { code: 0 }), Some(fd)) => Ok(fd),
            (Some(Report::Failed { step, path, errno }), _) => Err(SandboxError::Setup {
                step,
                path,
                source: io::Error::from_raw_os_error(errno),
            }),
            _ => Err(SandboxError::HelperProtocol {
                what: "the helper sent no mapped user namespace",
            }),
        }
    }

    /// Gives a finished build's files back to the store owner: every entry under each of
    /// `paths` (host paths; symlinks are never followed) is chowned to the owner, in a
    /// user namespace whose root is the owner and which maps the build's whole slice
    /// (`ids` from [`crate::IdMaps::reclaim`]). Modes are left as they are. Call it only
    /// once the build's sandbox has ended (its slice still held), so nothing running as
    /// the slice's ids can change the trees meanwhile.
    pub fn reclaim(&self, ids: &crate::IdMaps, paths: &[PathBuf]) -> Result<(), SandboxError> {
        let helper_io = |source| SandboxError::HelperIo { source };
        let (mut helper, mut ours) = self.start(None)?;
        let report = wire::write_reclaim(&mut ours, ids, paths)
            .and_then(|()| Report::read(&mut ours))
            .map_err(helper_io);
        let _ = helper.wait();
        match report? {
            Some(Report::Exited { code: 0 }) => Ok(()),
            Some(Report::Failed { step, path, errno }) => Err(SandboxError::Setup {
                step,
                path,
                source: io::Error::from_raw_os_error(errno),
            }),
            _ => Err(SandboxError::HelperProtocol {
                what: "the reclaiming helper ended without success",
            }),
        }
    }

    /// Plans, spawns and waits: the whole life of a one-off sandboxed command (the
    /// debugging verb). The caller owns `spec.root` and the build directory.
    pub fn run(
        &self,
        spec: &SandboxSpec,
        log: BorrowedFd<'_>,
    ) -> Result<BuildStatus, SandboxError> {
        let plan = Plan::new(spec)?;
        self.spawn(&plan, log)?.wait()
    }
}

/// Turns a helper's failure report into the typed error; namespace failures become
/// [`SandboxError::UserNamespacesUnavailable`] with the reason.
fn setup_error(report: Option<Report>) -> SandboxError {
    match report {
        Some(Report::Failed { step, path, errno }) => {
            let userns_step = matches!(
                step,
                Step::CreatingNamespaces
                    | Step::WritingSetgroups
                    | Step::WritingUidMap
                    | Step::WritingGidMap
            );
            if step == Step::CreatingNamespaces && errno != libc::EDEADLK {
                return userns::explain_clone_failure(errno).into();
            }
            if userns_step {
                // AppArmor lets the namespace be created but without capabilities, so
                // the refusal shows up as a failed map write.
                if let Err(unavailable) = userns::check_user_namespaces() {
                    return unavailable.into();
                }
            }
            SandboxError::Setup {
                step,
                path,
                source: io::Error::from_raw_os_error(errno),
            }
        }
        Some(Report::NotLocked { errno }) => SandboxError::MountsNotLocked {
            outcome: if errno == 0 {
                MountLockOutcome::Unmounted
            } else {
                MountLockOutcome::Errno(errno)
            },
        },
        Some(_) => SandboxError::HelperProtocol {
            what: "expected a start or failure report",
        },
        None => SandboxError::HelperProtocol {
            what: "the helper exited without a report",
        },
    }
}

impl SandboxChild {
    /// The host pid of the sandbox's init (the builder itself, PID 1 inside).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Whether the helper gave the plan's `reclaim` paths back to the store owner
    /// after the builder ended (true once [`Self::wait`] returned a status; a helper
    /// that was killed reclaimed nothing, and [`Sandbox::reclaim`] must do it).
    pub fn reclaimed(&self) -> bool {
        self.reclaimed
    }

    /// The host pid of the helper waiting for the builder.
    pub fn helper_pid(&self) -> u32 {
        self.helper.id()
    }

    /// Waits for the builder to end.
    pub fn wait(&mut self) -> Result<BuildStatus, SandboxError> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let report = Report::read(&mut self.sock);
        let helper = self
            .helper
            .wait()
            .map_err(|source| SandboxError::HelperIo { source })?;
        let status = match report {
            Ok(Some(Report::Exited { code })) => {
                self.reclaimed = true;
                BuildStatus::Exited(code)
            }
            Ok(Some(Report::Signaled { signal })) => {
                self.reclaimed = true;
                BuildStatus::Signaled(signal)
            }
            // The builder ended but giving its files back failed.
            Ok(Some(Report::Failed { step, path, errno })) => {
                return Err(SandboxError::Setup {
                    step,
                    path,
                    source: io::Error::from_raw_os_error(errno),
                })
            }
            // The helper was killed (by `kill`), which killed the sandbox with it.
            Ok(None) | Err(_) => {
                use std::os::unix::process::ExitStatusExt;
                match helper.signal() {
                    Some(sig) => BuildStatus::Signaled(sig),
                    None => {
                        return Err(SandboxError::HelperProtocol {
                            what: "the helper exited without the builder's status",
                        })
                    }
                }
            }
            Ok(Some(_)) => {
                return Err(SandboxError::HelperProtocol {
                    what: "expected the builder's exit status",
                })
            }
        };
        self.status = Some(status);
        Ok(status)
    }

    /// Waits at most `timeout` for the builder to end; `Ok(None)` if it still runs.
    pub fn wait_timeout(
        &mut self,
        timeout: std::time::Duration,
    ) -> Result<Option<BuildStatus>, SandboxError> {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        if let Some(s) = self.status {
            return Ok(Some(s));
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let ts = Timespec {
                tv_sec: left.as_secs() as i64,
                tv_nsec: i64::from(left.subsec_nanos()),
            };
            // The helper's final report (or its death) makes the socket readable.
            let mut fds = [PollFd::new(&self.sock, PollFlags::IN)];
            match poll(&mut fds, Some(&ts)) {
                Ok(0) => return Ok(None),
                Ok(_) => return self.wait().map(Some),
                Err(rustix::io::Errno::INTR) => continue,
                Err(e) => {
                    return Err(SandboxError::HelperIo {
                        source: io::Error::from(e),
                    })
                }
            }
        }
    }

    /// Kills the builder and everything in its PID namespace. One byte on the socket
    /// makes the helper SIGKILL the sandbox's init and reap it, and the init's death
    /// ends the namespace only once every process in it is gone, so when [`Self::wait`]
    /// returns nothing of the build runs any more (what reclaiming its files needs).
    /// Should the helper not take the byte, it is killed itself, which sends the init
    /// its parent-death signal; the helper is our unreaped child, so its pid cannot be
    /// reused.
    pub fn kill(&mut self) -> Result<(), SandboxError> {
        use std::io::Write;
        if self.status.is_some() {
            return Ok(());
        }
        if (&self.sock).write_all(b"k").is_ok() {
            return Ok(());
        }
        self.helper
            .kill()
            .map_err(|source| SandboxError::HelperIo { source })
    }
}

impl Drop for SandboxChild {
    fn drop(&mut self) {
        if self.status.is_none() {
            let _ = self.kill();
            let _ = self.helper.wait();
        }
    }
}
