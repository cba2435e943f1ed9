//! Test support for unrooted's integration tests (never a dependency of shipped code).
//!
//! Tests compare unrooted against the real Nix 2.8 tools, so this crate finds them,
//! gives each test a private store under a temporary directory (Nix honours
//! `NIX_STORE_DIR` and friends), and generates file trees with the shapes that break
//! serialisers: executables, symlinks, empty directories, odd names and large files.
//! Under `CI=true` a missing Nix tool fails the test instead of skipping it, so a
//! comparison can never pass by not running.

use std::ffi::OsStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Whether we run under CI, where every comparison must really run.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Reports that a test cannot run here for want of `why`: under `CI=true`, where every
/// test must really run, a failure (this panics); otherwise a `skipping: <why>` line
/// on stderr, and the caller returns. Tests that need root or the test users are
/// marked `#[ignore]` instead, so that outside CI they show as ignored, not passed.
pub fn skip(why: &str) {
    assert!(
        !in_ci(),
        "{why}, but CI=true: every test must really run there"
    );
    eprintln!("skipping: {why}");
}

/// `ok`, after [`skip`]ping with `why` when it is false.
pub fn require(ok: bool, why: &str) -> bool {
    if !ok {
        skip(why);
    }
    ok
}

/// Finds a Nix tool (`nix-store`, `nix-hash`, ...) on `PATH`.
///
/// Returns `None` (the caller skips) when it is missing outside CI; panics under
/// `CI=true`, because a comparison test that silently skips proves nothing.
pub fn nix_tool(name: &str) -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(name))
            .find(|p| p.is_file())
    });
    if found.is_none() {
        skip(&format!(
            "{name} is not installed (apt-get install nix-bin to run this comparison)"
        ));
    }
    found
}

/// Builds the binary `bin` of the workspace's `package` and returns its path.
///
/// Integration tests of another crate get no `CARGO_BIN_EXE_` for it, and the
/// binary in `target/<profile>` exists only if something built it. So it is built
/// here with the `cargo` that builds the tests, into `target/<subdir>`, a target
/// directory of its own, so it never waits on the outer cargo's lock on `target/`
/// (keep such packages small: they are built from scratch there once).
pub fn workspace_binary(package: &str, bin: &str, subdir: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"))
        .join(subdir);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let status = Command::new(cargo)
        .args(["build", "-q", "-p", package, "--bin", bin])
        .env("CARGO_TARGET_DIR", &target)
        .current_dir(&workspace)
        .status()
        .unwrap_or_else(|e| panic!("running cargo to build {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    target.join("debug").join(bin)
}

/// Starts `cmd` with its stdout piped and waits for the first line it prints: a
/// process that says when it is ready (`sh -c "exec 3<file; echo ready; exec sleep
/// 30"`), instead of a test sleeping for a while and hoping it is.
pub fn spawn_ready(cmd: &mut Command) -> std::process::Child {
    use std::io::BufRead;
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawning");
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().expect("piped stdout"))
        .read_line(&mut line)
        .expect("reading the ready line");
    assert!(!line.is_empty(), "the process ended before it was ready");
    child
}

/// A private Nix store and state under a temporary directory, for running the real
/// Nix tools in local mode without touching `/nix`.
pub struct NixEnv {
    root: tempfile::TempDir,
}

impl NixEnv {
    /// Creates the directories; the store lives at `<tmp>/store`.
    pub fn new() -> Self {
        let root = tempfile::Builder::new()
            .prefix("unrooted-nix-")
            .tempdir()
            .expect("creating a temporary directory");
        for sub in ["store", "state", "log", "conf"] {
            fs::create_dir_all(root.path().join(sub)).expect("creating store dirs");
        }
        fs::write(
            root.path().join("conf/nix.conf"),
            "sandbox = false\nexperimental-features = nix-command\nsubstituters =\n",
        )
        .expect("writing nix.conf");
        Self { root }
    }

    /// The store directory (`NIX_STORE_DIR`).
    pub fn store_dir(&self) -> PathBuf {
        self.root.path().join("store")
    }

    /// The temporary root holding store, state, logs and configuration.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// A command for `program` with this store's environment set.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let r = self.root.path();
        cmd.env("NIX_STORE_DIR", r.join("store"))
            .env("NIX_STATE_DIR", r.join("state"))
            .env("NIX_LOG_DIR", r.join("log"))
            .env("NIX_CONF_DIR", r.join("conf"))
            .env("HOME", r)
            .env_remove("NIX_REMOTE");
        cmd
    }

    /// Runs `program args…` in this store, panicking with its stderr on failure.
    pub fn run(&self, program: &str, args: &[&OsStr]) -> Vec<u8> {
        let out = self.command(program).args(args).output().expect("spawning");
        expect_success(program, &out);
        out.stdout
    }
}

impl Default for NixEnv {
    fn default() -> Self {
        Self::new()
    }
}

/// Panics with the command's stderr unless it succeeded.
pub fn expect_success(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A small deterministic pseudo-random generator (xorshift64*), so generated trees
/// are the same on every run and a failure can be reproduced from its seed.
pub struct Rng(u64);

impl Rng {
    /// A generator from a seed (0 is replaced, xorshift needs a non-zero state).
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A value in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }
}

/// Names that stress byte ordering and escaping in NAR listings.
const ODD_NAMES: &[&str] = &[
    ".x",
    "1",
    "A-b",
    "B",
    "_",
    "a",
    "é",
    "with space",
    "tab\there",
    "new\nline",
    "quote\"",
    "back\\slash",
    "%percent",
    "ünï",
    "z",
];

/// Generates a tree under `dir` (which must not exist) with `files` entries spread over
/// nested directories: regular files (some executable, some empty, some of
/// `large_size` bytes), symlinks (relative, absolute, dangling), empty directories and
/// odd names. Deterministic for a seed.
pub fn generate_tree(dir: &Path, seed: u64, files: usize, large_size: usize) {
    let mut rng = Rng::new(seed);
    fs::create_dir(dir).expect("creating tree root");
    let mut dirs = vec![dir.to_path_buf()];
    for i in 0..files {
        let parent = dirs[rng.below(dirs.len() as u64) as usize].clone();
        let name = if rng.below(4) == 0 {
            format!(
                "{}{}",
                ODD_NAMES[rng.below(ODD_NAMES.len() as u64) as usize],
                i
            )
        } else {
            format!("f{i}")
        };
        let path = parent.join(name);
        match rng.below(10) {
            0 => {
                fs::create_dir(&path).expect("mkdir");
                dirs.push(path);
            }
            1 => {
                let target = match rng.below(3) {
                    0 => "f0".to_owned(),
                    1 => "/nonexistent/dangling".to_owned(),
                    _ => "../some/where".to_owned(),
                };
                symlink(target, &path).expect("symlink");
            }
            2 => {
                fs::File::create(&path).expect("empty file");
            }
            _ => {
                let size = if rng.below(200) == 0 {
                    large_size
                } else {
                    rng.below(9000) as usize
                };
                write_random_file(&path, &mut rng, size);
                if rng.below(4) == 0 {
                    fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).expect("chmod");
                }
            }
        }
    }
}

/// A generated tree `<dir>/tree-<seed>` (see [`generate_tree`]) of `files` entries,
/// some of `large_size` bytes, plus one file `large` of `big_size` bytes, so large
/// contents are always covered.
pub fn seeded_tree(
    dir: &Path,
    seed: u64,
    files: usize,
    large_size: usize,
    big_size: usize,
) -> PathBuf {
    let root = dir.join(format!("tree-{seed}"));
    generate_tree(&root, seed, files, large_size);
    write_random_file(&root.join("large"), &mut Rng::new(seed), big_size);
    root
}

/// `nix-store --dump path` (the real Nix tool at `nix_store`): the NAR it writes.
pub fn nix_dump(nix_store: &Path, path: &Path) -> Vec<u8> {
    let out = Command::new(nix_store)
        .arg("--dump")
        .arg(path)
        .output()
        .expect("spawning nix-store");
    expect_success("nix-store --dump", &out);
    out.stdout
}

/// `nix-store --restore dest` fed `nar` on its stdin, panicking on failure.
pub fn nix_restore(nix_store: &Path, nar: &[u8], dest: &Path) {
    let mut child = Command::new(nix_store)
        .arg("--restore")
        .arg(dest)
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawning nix-store");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(nar)
        .expect("feeding nix-store");
    let out = child.wait_with_output().expect("waiting for nix-store");
    expect_success("nix-store --restore", &out);
}

/// Every path under `root` (relative, `root` itself as the empty path) with its file
/// type and permission bits (`st_mode`), sorted: two trees that should be the same
/// compare equal with this.
pub fn file_modes(root: &Path) -> Vec<(PathBuf, u32)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("reading metadata");
        out.push((
            path.strip_prefix(root).expect("under root").to_path_buf(),
            meta.mode(),
        ));
        if meta.is_dir() {
            stack.extend(
                fs::read_dir(&path)
                    .expect("reading a directory")
                    .map(|e| e.expect("a directory entry").path()),
            );
        }
    }
    out.sort();
    out
}

/// Writes `size` pseudo-random bytes to `path`.
pub fn write_random_file(path: &Path, rng: &mut Rng, size: usize) {
    let mut f = fs::File::create(path).expect("creating file");
    let mut buf = vec![0u8; 64 * 1024];
    let mut left = size;
    while left > 0 {
        let n = left.min(buf.len());
        for chunk in buf[..n].chunks_mut(8) {
            let v = rng.next_u64().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        f.write_all(&buf[..n]).expect("writing file");
        left -= n;
    }
}

#[cfg(feature = "store")]
pub mod store;

pub mod daemon;
pub mod http;
pub mod inputs;
pub mod trixie;
