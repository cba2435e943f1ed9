//! The acceptance battery of `docs/spec/sandbox.md` §8, run in real namespaces as an
//! unprivileged user: when the tests run as root (as CI does), the sandbox is started through
//! `setpriv` as `unrooted-test-daemon` with no capabilities; otherwise as ourselves.
//!
//! The builder is Debian's static busybox (`busybox-static`), bound in as a store
//! path. Errnos are checked through busybox's exact messages (its text for EPERM from
//! `mount` is "permission denied (are you root?)") and, for calls busybox cannot make
//! (`setxattr`), through `unrooted-sandbox probe`, which prints the raw errno. Under
//! `CI=true` a missing busybox, test user or user-namespace support fails the test.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{chown, symlink, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{is_root, test_user, DAEMON_USER};

const BUSYBOX: &str = "/bin/busybox";
const BB: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-busybox";
const DATA: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-data";
const FILE: &str = "cccccccccccccccccccccccccccccccc-file";
const LINK: &str = "dddddddddddddddddddddddddddddddd-link";

/// A private store, build directories and the probe binary, reachable by the
/// unprivileged user.
struct Lab {
    dir: tempfile::TempDir,
    /// uid/gid to switch to (when running as root).
    user: Option<(u32, u32)>,
}

/// Copies an executable with `cp` rather than in this process: other test threads
/// fork children that would inherit the copy's write descriptor until they exec, and
/// any exec of the file meanwhile fails with ETXTBSY ("Text file busy").
fn copy_executable(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp")
        .arg(from)
        .arg(to)
        .status()
        .expect("running cp");
    assert!(status.success(), "cp {} {}", from.display(), to.display());
}

fn skip(why: &str) -> Option<Lab> {
    unrooted_testkit::skip(why);
    None
}

impl Lab {
    fn new() -> Option<Lab> {
        if !Path::new(BUSYBOX).exists() {
            return skip("/bin/busybox is missing (apt-get install busybox-static)");
        }
        if let Err(e) = unrooted_sandbox::check_user_namespaces() {
            return skip(&e.to_string());
        }
        let user = if is_root() {
            match test_user(DAEMON_USER) {
                Some(ids) => Some(ids),
                None => return skip("cannot create the unprivileged test user"),
            }
        } else {
            None
        };
        // Under /var/tmp so the store's top directory (`var`) differs from `/tmp`.
        let dir = tempfile::Builder::new()
            .prefix("unrooted-sandbox-")
            .tempdir_in("/var/tmp")
            .expect("temporary directory");
        let lab = Lab { dir, user };
        let root = lab.dir.path();
        fs::set_permissions(root, fs::Permissions::from_mode(0o755)).unwrap();
        copy_executable(
            Path::new(env!("CARGO_BIN_EXE_unrooted-sandbox")),
            &root.join("unrooted-sandbox"),
        );
        fs::set_permissions(
            root.join("unrooted-sandbox"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();

        // A store as the daemon keeps it: owned by the daemon user, canonical modes.
        let store = lab.store();
        fs::create_dir_all(store.join(BB).join("bin")).unwrap();
        copy_executable(Path::new(BUSYBOX), &store.join(BB).join("bin/busybox"));
        fs::create_dir(store.join(DATA)).unwrap();
        fs::write(store.join(DATA).join("file"), b"original\n").unwrap();
        fs::write(store.join(FILE), b"a file input\n").unwrap();
        symlink(store.join(BB), store.join(LINK)).unwrap();
        for (p, mode) in [
            (store.join(BB).join("bin/busybox"), 0o555),
            (store.join(BB).join("bin"), 0o555),
            (store.join(BB), 0o555),
            (store.join(DATA).join("file"), 0o444),
            (store.join(DATA), 0o555),
            (store.join(FILE), 0o444),
            (store.clone(), 0o755),
        ] {
            fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
        }
        for d in ["builds", "work"] {
            fs::create_dir(root.join(d)).unwrap();
            fs::set_permissions(root.join(d), fs::Permissions::from_mode(0o700)).unwrap();
        }
        lab.give(&[
            store.join(BB).join("bin/busybox"),
            store.join(BB).join("bin"),
            store.join(BB),
            store.join(DATA).join("file"),
            store.join(DATA),
            store.join(FILE),
            store.clone(),
            root.join("builds"),
            root.join("work"),
        ]);
        Some(lab)
    }

    fn give(&self, paths: &[PathBuf]) {
        if let Some((uid, gid)) = self.user {
            for p in paths {
                chown(p, Some(uid), Some(gid)).unwrap();
            }
        }
    }

    fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }

    fn input(&self, name: &str) -> PathBuf {
        self.store().join(name)
    }

    /// A fresh build directory (0700, owned by the daemon user).
    fn build_dir(&self, name: &str) -> PathBuf {
        let p = self.dir.path().join("builds").join(name);
        fs::create_dir(&p).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o700)).unwrap();
        self.give(std::slice::from_ref(&p));
        p
    }

    /// A command run as the unprivileged user, without capabilities.
    fn as_daemon(&self, program: &Path) -> Command {
        match self.user {
            Some((uid, gid)) => {
                let mut c = Command::new("setpriv");
                c.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .args(["--init-groups", "--inh-caps=-all"])
                    .arg(program);
                c
            }
            None => Command::new(program),
        }
    }

    fn probe(&self) -> PathBuf {
        self.dir.path().join("unrooted-sandbox")
    }

    /// The arguments of `unrooted-sandbox run` with the inputs and extra options.
    fn run_args(&self, build: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
        let mut a: Vec<std::ffi::OsString> = vec!["run".into(), "--store-dir".into()];
        a.push(self.store().into());
        a.push("--build-dir".into());
        a.push(build.into());
        a.push("--work-dir".into());
        a.push(self.dir.path().join("work").into());
        a.extend(["--cores".into(), "4".into()]);
        for input in [BB, DATA, FILE, LINK] {
            a.push("--input".into());
            a.push(self.input(input).into());
        }
        a.extend(extra.iter().map(Into::into));
        a
    }

    /// `unrooted-sandbox run` as the unprivileged user.
    fn sandbox(&self, build: &Path, extra: &[&str]) -> Command {
        let mut c = self.as_daemon(&self.probe());
        c.args(self.run_args(build, extra)).current_dir("/");
        c
    }

    fn busybox(&self) -> PathBuf {
        self.input(BB).join("bin/busybox")
    }

    /// Runs `busybox sh -c script` (with `B` = busybox, `I` = the data input) in a
    /// sandbox; the builder's stdout and stderr both go to the log, our stdout.
    fn sh(&self, extra: &[&str], script: &str) -> Output {
        let build = self.build_dir("b");
        let out = self.sh_in(&build, extra, script);
        fs::remove_dir_all(&build).ok();
        out
    }

    fn sh_in(&self, build: &Path, extra: &[&str], script: &str) -> Output {
        let prelude = format!(
            "B={bb}; I={data}; ",
            bb = self.busybox().display(),
            data = self.input(DATA).display()
        );
        let out = self
            .sandbox(build, extra)
            .arg("--")
            .arg(self.busybox())
            .args(["sh", "-c"])
            .arg(prelude + script)
            .stdin(Stdio::null())
            .output()
            .expect("running unrooted-sandbox");
        eprintln!(
            "--- sandbox stdout:\n{}--- stderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn builder_is_pid_1_uid_1000_gid_100_and_sees_only_its_root() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(&[], "echo $$; $B id -u; $B id -g; $B ls /");
    assert!(out.status.success());
    assert_eq!(
        text(&out),
        "1\n1000\n100\nbuild\ndev\netc\nproc\ntmp\nvar\n"
    );
}

#[test]
fn store_dir_holds_only_the_closure_and_a_symlink_input_stays_a_symlink() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(
        &[],
        "$B ls $NIX_STORE; $B readlink $NIX_STORE/dddddddddddddddddddddddddddddddd-link; \
         $B stat -c %a $NIX_STORE",
    );
    assert!(out.status.success());
    assert_eq!(
        text(&out),
        format!(
            "{BB}\n{DATA}\n{FILE}\n{LINK}\n{}\n1775\n",
            lab.input(BB).display()
        )
    );
}

#[test]
fn writing_or_chmodding_an_input_gives_erofs_and_leaves_it_unchanged() {
    let Some(lab) = Lab::new() else { return };
    let file_input = lab.input(FILE);
    let out = lab.sh(
        &[],
        &format!(
            "echo x > $I/file; $B chmod 777 $I/file; $B chmod 777 $I; $B touch $I/new; \
             echo x > {f}; $B chmod 666 {f}",
            f = file_input.display()
        ),
    );
    let err = text(&out);
    let data = lab.input(DATA);
    for expected in [
        format!(
            "sh: can't create {}/file: Read-only file system",
            data.display()
        ),
        format!("chmod: {}/file: Read-only file system", data.display()),
        format!("chmod: {}: Read-only file system", data.display()),
        format!("touch: {}/new: Read-only file system", data.display()),
        format!(
            "sh: can't create {}: Read-only file system",
            file_input.display()
        ),
        format!("chmod: {}: Read-only file system", file_input.display()),
    ] {
        assert!(err.contains(&expected), "missing {expected:?}");
    }
    assert_eq!(fs::read(data.join("file")).unwrap(), b"original\n");
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&data.join("file")), 0o444);
    assert_eq!(mode(&data), 0o555);
    assert_eq!(mode(&file_input), 0o444);
    assert!(!data.join("new").exists());
}

#[test]
fn remounting_an_input_read_write_gives_eperm() {
    let Some(lab) = Lab::new() else { return };
    // Directly (no capabilities), and as root of a further user namespace, where the
    // locked read-only flag is what refuses.
    let out = lab.sh(
        &[],
        "$B mount -o remount,rw,bind $I; echo direct=$?; \
         $B unshare -rm $B mount -o remount,rw,bind $I; echo nested=$?; \
         echo x > $I/file",
    );
    let err = text(&out);
    assert_eq!(
        err.matches("mount: permission denied (are you root?)")
            .count(),
        2,
        "busybox's text for EPERM"
    );
    assert!(err.contains("\ndirect=1\n") && err.contains("\nnested=1\n"));
    assert!(err.contains("Read-only file system"));
    assert_eq!(
        fs::read(lab.input(DATA).join("file")).unwrap(),
        b"original\n"
    );
}

#[test]
fn unmounting_an_input_or_proc_gives_einval() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(
        &[],
        "$B unshare -rm $B umount /proc; $B unshare -rm $B umount $I; \
         $B unshare -rm $B umount -l $I; $B umount /proc",
    );
    let err = text(&out);
    let data = lab.input(DATA);
    assert!(err.contains("umount: can't unmount /proc: Invalid argument\n"));
    assert_eq!(
        err.matches(&format!(
            "umount: can't unmount {}: Invalid argument",
            data.display()
        ))
        .count(),
        2
    );
    // Without a namespace of its own the builder lacks the privilege to even try.
    assert!(err.contains("umount: can't unmount /proc: Operation not permitted\n"));
}

#[test]
fn mkdir_in_the_root_gives_eacces() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(&[], "$B mkdir /x; $B mkdir /etc/x; $B touch /y");
    let err = text(&out);
    assert!(err.contains("mkdir: can't create directory '/x': Permission denied"));
    assert!(err.contains("mkdir: can't create directory '/etc/x': Permission denied"));
    assert!(err.contains("touch: /y: Permission denied"));
}

#[test]
fn build_dir_dev_null_and_outputs_are_writable() {
    let Some(lab) = Lab::new() else { return };
    let build = lab.build_dir("w");
    let out = lab.sh_in(
        &build,
        &[],
        "$B mkdir $NIX_BUILD_TOP/x && echo hi > /dev/null && echo tmp > /tmp/t && \
         $B mkdir $NIX_STORE/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-out && echo ok; \
         echo $? > $NIX_BUILD_TOP/x/status",
    );
    assert!(out.status.success());
    assert_eq!(text(&out), "ok\n");
    assert_eq!(fs::read(build.join("x/status")).unwrap(), b"0\n");
}

#[test]
fn writing_dev_full_gives_enospc() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(&[], "echo x > /dev/full");
    assert!(text(&out).contains("write error: No space left on device"));
}

#[test]
fn setuid_and_setgid_chmods_give_eperm() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(
        &[],
        "$B touch f; $B chmod u+s f; $B chmod g+s f; $B chmod 4755 f; \
         $B mkdir $NIX_STORE/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-out; \
         $B chmod 2755 $NIX_STORE/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-out; \
         $B chmod 755 f && $B chmod 1777 $NIX_STORE/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-out && \
         $B stat -c %a f",
    );
    let err = text(&out);
    assert_eq!(err.matches("chmod: f: Operation not permitted").count(), 3);
    assert!(err.contains("eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-out: Operation not permitted"));
    assert!(
        err.ends_with("Operation not permitted\n755\n"),
        "ordinary modes stay allowed"
    );
}

#[test]
fn extended_attribute_calls_give_enotsup_as_in_nix() {
    let Some(lab) = Lab::new() else { return };
    let probe_path = format!("/probe={}", lab.probe().display());
    // The probe binary is dynamically linked: bring in the host's libraries.
    let out = lab.sh(
        &[
            "--sandbox-path",
            "/usr",
            "--sandbox-path",
            "/lib?",
            "--sandbox-path",
            "/lib64?",
            "--sandbox-path",
            &probe_path,
        ],
        "$B touch f; for c in setxattr lsetxattr fsetxattr getxattr listxattr \
         setxattrat getxattrat listxattrat removexattrat removexattr; \
         do echo \"$c $(/probe probe $c f)\"; done",
    );
    // Nix 2.35's answers, and the 6.13 `*xattrat` calls alike; removexattr is left to
    // the kernel, as Nix leaves it (no attribute: ENODATA, 61).
    assert_eq!(
        text(&out),
        "setxattr errno=95\nlsetxattr errno=95\nfsetxattr errno=95\ngetxattr errno=95\n\
         listxattr errno=95\nsetxattrat errno=95\ngetxattrat errno=95\n\
         listxattrat errno=95\nremovexattrat errno=95\nremovexattr errno=61\n"
    );
}

#[test]
fn io_uring_and_calls_newer_than_the_filter_give_enosys() {
    let Some(lab) = Lab::new() else { return };
    let probe_path = format!("/probe={}", lab.probe().display());
    let out = lab.sh(
        &[
            "--sandbox-path",
            "/usr",
            "--sandbox-path",
            "/lib?",
            "--sandbox-path",
            "/lib64?",
            "--sandbox-path",
            &probe_path,
        ],
        "/probe probe io_uring_setup; /probe probe open_tree_attr",
    );
    // ENOSYS (38) both: io_uring carries operations no filter sees; open_tree_attr
    // (Linux 6.15) is newer than the filter's audit. Outside the sandbox the kernel
    // answers EFAULT/EINVAL and EFAULT/EBADF (checked below).
    assert_eq!(text(&out), "errno=38\nerrno=38\n");
    let outside = std::process::Command::new(lab.probe())
        .args(["probe", "io_uring_setup"])
        .output()
        .unwrap();
    assert_ne!(String::from_utf8_lossy(&outside.stdout), "errno=38\n");
}

#[test]
fn only_loopback_is_reachable() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(
        &[],
        "$B nc 127.0.0.1 80; $B nc 1.1.1.1 80; $B ip link 2>/dev/null",
    );
    let err = text(&out);
    assert!(err.contains("nc: can't connect to remote host (127.0.0.1): Connection refused"));
    assert!(err.contains("nc: can't connect to remote host (1.1.1.1): Network is unreachable"));
}

#[test]
fn inherited_descriptors_are_closed() {
    let Some(lab) = Lab::new() else { return };
    // --leak-fd leaves a descriptor (7) open without close-on-exec in the caller.
    let out = lab.sh(&["--leak-fd"], "$B cat <&7; $B ls /proc/self/fd");
    // 3 is the one ls opens to list the directory.
    assert_eq!(text(&out), "sh: 7: Bad file descriptor\n0\n1\n2\n3\n");
}

#[test]
fn builder_has_no_capabilities() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(&[], "$B grep -E '^Cap(Inh|Prm|Eff|Amb)' /proc/self/status; $B grep NoNewPrivs /proc/self/status; $B grep Seccomp: /proc/self/status");
    assert_eq!(
        text(&out),
        "CapInh:\t0000000000000000\nCapPrm:\t0000000000000000\nCapEff:\t0000000000000000\n\
         CapAmb:\t0000000000000000\nNoNewPrivs:\t1\nSeccomp:\t2\n"
    );
}

#[test]
fn unreadable_directories_in_the_build_dir_are_removed() {
    let Some(lab) = Lab::new() else { return };
    let build = lab.build_dir("chmod000");
    let out = lab.sh_in(
        &build,
        &["--remove-build-dir"],
        "$B mkdir -p x/y/z; $B touch x/y/f; $B chmod 000 x/y x; $B chmod 500 .; echo done",
    );
    assert!(out.status.success(), "cleanup as the daemon user failed");
    assert_eq!(text(&out), "done\n");
    assert!(!build.exists());
    // The sandbox root is gone too.
    assert_eq!(
        fs::read_dir(lab.dir.path().join("work")).unwrap().count(),
        0
    );
}

#[test]
fn kill_minus_one_only_kills_the_sandbox() {
    let Some(lab) = Lab::new() else { return };
    // Another process of the same host user, outside the sandbox.
    let mut bystander = lab
        .as_daemon(Path::new(BUSYBOX))
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let out = lab.sh(
        &[],
        "$B sleep 100 & $B sleep 100 & $B kill -9 -1; wait; echo survived",
    );
    assert!(out.status.success());
    assert_eq!(text(&out), "survived\n");
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "kill -1 reached outside"
    );
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

/// A builder cannot name a process outside its build: not the daemon, not a process
/// of the same host user, not another build. Signals, `/proc/<pid>/root` and
/// everything `ptrace` or `pidfd_open` would need start from a pid, and outside pids
/// do not exist in the build's PID namespace.
#[test]
fn processes_outside_cannot_be_signalled_traced_or_entered() {
    let Some(lab) = Lab::new() else { return };
    let mut bystander = lab
        .as_daemon(Path::new(BUSYBOX))
        .args(["sleep", "60"])
        .spawn()
        .unwrap();
    let pid = bystander.id();
    assert!(
        pid > 100,
        "host pid {pid} could collide with the build's own"
    );
    let out = lab.sh(
        &[],
        &format!(
            "$B kill -0 {pid} 2>/dev/null; echo kill=$?; \
             $B ls /proc/{pid}/root >/dev/null 2>&1; echo root=$?; \
             $B ls /proc | $B grep -c '^[0-9]'"
        ),
    );
    // kill: no such process; /proc/<pid>: absent; /proc lists only the build's own
    // few processes (init, sh, ls, grep).
    let said = text(&out);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines[..2], ["kill=1", "root=1"], "{said}");
    let own: u32 = lines[2].parse().unwrap();
    assert!(own <= 5, "{said}");
    assert!(bystander.try_wait().unwrap().is_none());
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[test]
fn killing_the_sandbox_kills_its_whole_pid_namespace() {
    let Some(lab) = Lab::new() else { return };
    let build = lab.build_dir("timeout");
    // The late writer holds the write end of a FIFO whose read end this test opened
    // first: end-of-file on it means every process that could still write `late` is
    // gone, so the test waits for that instead of sleeping past the writer's 2 s.
    let alive = build.join("alive");
    let made = Command::new("mkfifo")
        .args(["-m", "0600"])
        .arg(&alive)
        .status()
        .unwrap();
    assert!(made.success(), "mkfifo");
    lab.give(std::slice::from_ref(&alive));
    let mut reader = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&alive)
        .unwrap();
    let started = Instant::now();
    let out = lab.sh_in(
        &build,
        &["--timeout-ms", "500"],
        "(exec 3>/build/alive; : > /build/opened; $B sleep 2; echo late > /build/late) & \
         $B setsid $B sleep 100 & \
         while ! $B test -e /build/opened; do $B usleep 10000; done; echo started; exec $B sleep 100",
    );
    assert_eq!(out.status.code(), Some(128 + 9), "killed by SIGKILL");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(
        build.join("opened").exists(),
        "the late writer did not start before the timeout"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 16];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "a process outlived the sandbox (it still holds /build/alive)"
                );
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(e) => panic!("reading the FIFO: {e}"),
        }
    }
    assert!(
        !build.join("late").exists(),
        "a process outlived the sandbox"
    );
}

#[test]
fn etc_files_are_nix_bytes() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(
        &[],
        "$B cat /etc/passwd; echo --; $B cat /etc/group; echo --; $B cat /etc/hosts",
    );
    assert_eq!(
        text(&out),
        "root:x:0:0:Nix build user:/build:/noshell\n\
         nixbld:x:1000:100:Nix build user:/build:/noshell\n\
         nobody:x:65534:65534:Nobody:/:/noshell\n--\n\
         root:x:0:\nnixbld:!:100:\nnogroup:x:65534:\n--\n\
         127.0.0.1 localhost\n::1 localhost\n"
    );
}

#[test]
fn environment_is_nixs() {
    let Some(lab) = Lab::new() else { return };
    let build = lab.build_dir("env");
    let out = lab
        .sandbox(&build, &[])
        .arg("--")
        .arg(lab.busybox())
        .arg("env")
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut lines: Vec<String> = text(&out).lines().map(str::to_owned).collect();
    lines.sort();
    let store = lab.store();
    let mut expected: Vec<String> = [
        "HOME=/homeless-shelter",
        "NIX_BUILD_CORES=4",
        "NIX_BUILD_TOP=/build",
        "NIX_LOG_FD=2",
        &format!("NIX_STORE={}", store.display()),
        "PATH=/path-not-set",
        "PWD=/build",
        "TEMP=/build",
        "TEMPDIR=/build",
        "TERM=xterm-256color",
        "TMP=/build",
        "TMPDIR=/build",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    expected.sort();
    assert_eq!(lines, expected);
}

#[test]
fn hostname_is_localhost_and_cwd_is_build() {
    let Some(lab) = Lab::new() else { return };
    let out = lab.sh(
        &[],
        "$B hostname; $B cat /proc/sys/kernel/domainname; $B pwd; $B stat -c %a /; \
         $B stat -c %a /tmp; $B readlink /dev/ptmx; $B ls /dev",
    );
    assert_eq!(
        text(&out),
        "localhost\n(none)\n/build\n555\n1777\n/dev/pts/ptmx\n\
         fd\nfull\nnull\nptmx\npts\nrandom\nshm\nstderr\nstdin\nstdout\ntty\nurandom\nzero\n"
    );
}

#[test]
fn missing_user_namespaces_is_a_typed_error_not_an_unsandboxed_run() {
    let Some(lab) = Lab::new() else { return };
    let build = lab.build_dir("nouserns");
    // max_user_namespaces is per user namespace: 0 inside one forbids nested ones.
    let mut args = vec![lab.probe().into_os_string()];
    args.extend(lab.run_args(&build, &[]));
    args.extend([
        "--".into(),
        lab.busybox().into_os_string(),
        "touch".into(),
        "/build/ran".into(),
    ]);
    let out = lab
        .as_daemon(Path::new("/usr/bin/unshare"))
        .args(["--user", "--map-root-user", "/bin/sh", "-c"])
        .arg("echo 0 > /proc/sys/user/max_user_namespaces && exec \"$@\"")
        .arg("sh")
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("{err}");
    assert_eq!(out.status.code(), Some(125));
    assert!(err.contains(
        "the build sandbox needs unprivileged user namespaces, and user.max_user_namespaces is 0"
    ));
    assert!(!build.join("ran").exists());
}
