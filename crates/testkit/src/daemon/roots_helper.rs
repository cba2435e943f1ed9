//! The privileged roots helper (`unrooted-find-roots`), run as root beside a test's daemon.

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::TestDaemon;

/// The roots helper binary `unrooted-find-roots`, built once per test process.
///
/// Integration tests of another crate get no `CARGO_BIN_EXE_` for it, and the
/// binary next to `unrooted` in `target/<profile>` exists only if something built
/// it. So it is built here with the `cargo` that builds the tests, into a target
/// directory of its own (`target/roots-helper-build`): the crate has no
/// dependencies, so this takes seconds, and it never waits on the outer cargo's
/// lock on `target/`. `UNROOTED_FIND_ROOTS` names a prebuilt binary instead. The
/// binary is run as root, so it must live where the daemon's user cannot write.
pub fn roots_helper_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Some(p) = std::env::var_os("UNROOTED_FIND_ROOTS") {
                return PathBuf::from(p);
            }
            crate::workspace_binary(
                "unrooted-roots",
                "unrooted-find-roots",
                "roots-helper-build",
            )
        })
        .clone()
}

impl TestDaemon {
    /// The roots helper's socket, which the daemon's `nix.conf` names.
    pub fn roots_helper_socket(&self) -> PathBuf {
        self.root.path().join("roots-helper/socket")
    }

    /// Starts the roots helper as root on [`TestDaemon::roots_helper_socket`] (made
    /// mode 0600 and owned by the daemon user) and waits until it listens.
    pub fn start_roots_helper(&mut self) {
        self.stop_roots_helper();
        let socket = self.roots_helper_socket();
        let _ = fs::remove_file(&socket);
        let log = fs::File::create(self.root.path().join("roots-helper.log")).expect("log");
        let child = Command::new(roots_helper_exe())
            .arg("--store-dir")
            .arg(self.store_dir())
            .arg("--state-dir")
            .arg(self.state_dir())
            .args(["--owner-uid", &self.daemon_uid.to_string(), "--listen"])
            .arg(&socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting unrooted-find-roots");
        self.helper = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let owned = fs::symlink_metadata(&socket)
                .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == self.daemon_uid)
                .unwrap_or(false);
            if owned {
                return;
            }
            if let Some(status) = self
                .helper
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "unrooted-find-roots exited with {status}: {}",
                    fs::read_to_string(self.root.path().join("roots-helper.log"))
                        .unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "the roots helper did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the roots helper (by its pid) and removes its socket.
    pub fn stop_roots_helper(&mut self) {
        if let Some(mut child) = self.helper.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = fs::remove_file(self.roots_helper_socket());
    }

    /// The roots helper's process id, when it runs.
    pub fn roots_helper_pid(&self) -> Option<u32> {
        self.helper.as_ref().map(Child::id)
    }

    /// Kills the roots helper with SIGKILL (by its pid) and waits for it, leaving its
    /// socket behind as a crashed helper would.
    pub fn kill_roots_helper(&mut self) {
        if let Some(mut child) = self.helper.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
