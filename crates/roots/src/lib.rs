//! The roots scan of `unrooted-find-roots`, the privileged garbage collector roots
//! helper: everything under `<state>/gcroots` and `<state>/profiles` (direct,
//! indirect and per-user roots) and the runtime roots in `/proc`, reduced to
//! top-level store paths. It is a library so that the unprivileged collector reuses
//! the same scan for what it can read itself, and so that tests can drive it; the
//! binary in `main.rs` only adds the socket. Everything it reads is treated as
//! hostile: walks follow no directory symlinks, symlink chains are followed at most
//! one hop (Nix's rule for indirect roots), and the directory depth, the number of
//! entries, the bytes read from one file and the total time are bounded by
//! [`Limits`]. What cannot be read, and a limit that was hit, become errors in the
//! answer, never a silently shorter list. It uses only the standard library and no
//! `unsafe`.
#![forbid(unsafe_code)]

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Length of a store path's hash part.
const HASH_LEN: usize = 32;
/// Longest store path name after the hash part and the dash.
const MAX_NAME_LEN: usize = 211;
/// Kernel files naming a program the kernel may start (Nix reads the same three).
const KERNEL_FILES: &[&str] = &["modprobe", "fbsplash", "poweroff_cmd"];

/// Bounds on one scan; a scan that reaches one reports an error instead of a partial
/// answer, because a partial answer would let the collector delete a rooted path.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Directory depth below `gcroots` or `profiles`.
    pub max_depth: usize,
    /// Directory entries, links and `/proc` entries examined in total.
    pub max_entries: u64,
    /// Bytes read from one `/proc/<pid>/maps` or `environ`, or one kernel file.
    pub max_file_bytes: u64,
    /// Wall-clock time for the whole scan.
    pub max_time: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_depth: 64,
            // A million entries in a user's per-user directory still get an answer.
            max_entries: 4_000_000,
            max_file_bytes: 16 << 20,
            max_time: Duration::from_secs(10),
        }
    }
}

/// Whether an error reading something is the helper's problem (`Strict`: report it,
/// the answer would be incomplete) or expected (`Lenient`: the unprivileged
/// collector scanning `/proc` cannot read other users' processes, and says so
/// elsewhere).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strictness {
    /// Report every unreadable root as an error.
    Strict,
    /// Skip what cannot be read (only for the runtime scan).
    Lenient,
}

/// One scan's state and results.
#[derive(Debug)]
pub struct Scan {
    store_dir: Vec<u8>,
    limits: Limits,
    started: Instant,
    entries: u64,
    exhausted: bool,
    /// Top-level store paths found, as absolute paths.
    pub roots: BTreeSet<Vec<u8>>,
    /// Roots that could not be read and limits that were hit, as messages.
    pub errors: Vec<String>,
    /// `/proc` entries this process may not read (EACCES, EPERM).
    pub unreadable_proc_entries: u64,
}

impl Scan {
    /// A scan for paths of `store_dir` (no trailing slash) within `limits`.
    pub fn new(store_dir: &Path, limits: Limits) -> Self {
        let mut dir = store_dir.as_os_str().as_bytes().to_vec();
        while dir.len() > 1 && dir.ends_with(b"/") {
            dir.pop();
        }
        Self {
            store_dir: dir,
            limits,
            started: Instant::now(),
            entries: 0,
            exhausted: false,
            roots: BTreeSet::new(),
            errors: Vec::new(),
            unreadable_proc_entries: 0,
        }
    }

    /// Counts one more entry; false (with one error recorded) once a limit is hit.
    fn tick(&mut self) -> bool {
        if self.exhausted {
            return false;
        }
        self.entries += 1;
        let what = if self.entries > self.limits.max_entries {
            format!("more than {} entries", self.limits.max_entries)
        } else if self.started.elapsed() > self.limits.max_time {
            format!("more than {:?}", self.limits.max_time)
        } else {
            return true;
        };
        self.exhausted = true;
        self.errors
            .push(format!("the roots scan took {what}; answer incomplete"));
        false
    }

    /// The top-level store path `text` is or is inside, if any.
    pub fn top_level(&self, text: &[u8]) -> Option<Vec<u8>> {
        let rest = text.strip_prefix(&self.store_dir[..])?.strip_prefix(b"/")?;
        let base = rest.split(|&b| b == b'/').next()?;
        is_base_name(base).then(|| [&self.store_dir[..], b"/", base].concat())
    }

    fn found(&mut self, target: &[u8]) -> bool {
        match self.top_level(target) {
            Some(p) => {
                self.roots.insert(p);
                true
            }
            None => false,
        }
    }

    /// Scans `<state>/gcroots` and `<state>/profiles` (per-user roots included).
    pub fn scan_root_dirs(&mut self, state_dir: &Path) {
        for sub in ["gcroots", "profiles"] {
            self.walk(&state_dir.join(sub), 0);
        }
    }

    fn walk(&mut self, path: &Path, depth: usize) {
        if !self.tick() {
            return;
        }
        match fs::symlink_metadata(path) {
            Ok(m) => self.visit(path, m.file_type(), depth),
            Err(e) if gone(&e) => {}
            Err(e) => self.error(path, &e),
        }
    }

    /// One entry whose type is known (from the directory listing: no `lstat`).
    fn visit(&mut self, path: &Path, kind: fs::FileType, depth: usize) {
        if kind.is_symlink() {
            return self.link(path);
        }
        if kind.is_file() {
            // A file named like a store path is a root (Nix's "regular file" roots).
            if let Some(name) = path.file_name() {
                if is_base_name(name.as_bytes()) {
                    let full = [&self.store_dir[..], b"/", name.as_bytes()].concat();
                    self.roots.insert(full);
                }
            }
            return;
        }
        if !kind.is_dir() {
            return;
        }
        if depth >= self.limits.max_depth {
            let msg = format!("{} is nested too deeply; answer incomplete", path.display());
            return self.errors.push(msg);
        }
        let entries = match fs::read_dir(path) {
            Ok(r) => r,
            Err(e) if gone(&e) => return,
            Err(e) => return self.error(path, &e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => return self.error(path, &e),
            };
            if !self.tick() {
                return;
            }
            // The listing's d_type: only file systems that leave it unknown cost an
            // `lstat`.
            match entry.file_type() {
                Ok(kind) => self.visit(&entry.path(), kind, depth + 1),
                Err(e) if gone(&e) => {}
                Err(e) => self.error(&entry.path(), &e),
            }
            if self.exhausted {
                return;
            }
        }
    }

    /// A link under the roots directories: into the store, a direct root; else an
    /// indirect root, whose target is read once more (never further).
    fn link(&mut self, path: &Path) {
        let target = match fs::read_link(path) {
            Ok(t) => t,
            Err(e) if gone(&e) => return,
            Err(e) => return self.error(path, &e),
        };
        if self.found(target.as_os_str().as_bytes()) {
            return;
        }
        let inner = path.parent().unwrap_or(Path::new("/")).join(&target);
        if !self.tick() {
            return;
        }
        match fs::symlink_metadata(&inner) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(_) => return,
            Err(e) if gone(&e) => return,
            Err(e) => return self.error(&inner, &e),
        }
        match fs::read_link(&inner) {
            Ok(t) => {
                self.found(t.as_os_str().as_bytes());
            }
            Err(e) if gone(&e) => {}
            Err(e) => self.error(&inner, &e),
        }
    }

    fn error(&mut self, path: &Path, e: &io::Error) {
        self.errors.push(format!(
            "cannot read potential root '{}': {e}",
            path.display()
        ));
    }

    /// Scans the runtime roots: `/proc/<pid>/{exe,cwd,root,fd/*}`, store paths in
    /// `/proc/<pid>/{maps,environ}`, and `/proc/sys/kernel/{modprobe,fbsplash,poweroff_cmd}`.
    pub fn scan_runtime(&mut self, proc: &Path, strictness: Strictness) {
        for name in KERNEL_FILES {
            if let Some(bytes) = self.read_bounded(&proc.join("sys/kernel").join(name), strictness)
            {
                let line = bytes.split(|&b| b == b'\n').next().unwrap_or_default();
                self.found(line);
            }
        }
        let pids = match fs::read_dir(proc) {
            Ok(r) => r,
            Err(e) => return self.error(proc, &e),
        };
        for entry in pids.flatten() {
            let name = entry.file_name();
            if !name.as_bytes().iter().all(u8::is_ascii_digit) || !self.tick() {
                continue;
            }
            let dir = entry.path();
            for link in ["exe", "cwd", "root"] {
                self.proc_link(&dir.join(link), strictness);
            }
            match fs::read_dir(dir.join("fd")) {
                Ok(fds) => {
                    for fd in fds.flatten() {
                        if !self.tick() {
                            return;
                        }
                        self.proc_link(&fd.path(), strictness);
                    }
                }
                Err(e) => self.proc_error(&dir.join("fd"), &e, strictness),
            }
            for file in ["maps", "environ"] {
                if let Some(bytes) = self.read_bounded(&dir.join(file), strictness) {
                    self.scan_text(&bytes);
                }
            }
            if self.exhausted {
                return;
            }
        }
    }

    fn proc_link(&mut self, path: &Path, strictness: Strictness) {
        match fs::read_link(path) {
            Ok(t) => {
                self.found(t.as_os_str().as_bytes());
            }
            Err(e) => self.proc_error(path, &e, strictness),
        }
    }

    /// Processes come and go while they are read, and kernel threads have no exe:
    /// those errors mean "no root here". EACCES/EPERM come from processes even root
    /// may not inspect (another container's init, ptrace restrictions); Nix skips
    /// them too, and failing on them would make collection impossible in containers,
    /// so they are only counted in `unreadable_processes`. Anything else (EIO…), for
    /// the helper, means the answer would be incomplete.
    fn proc_error(&mut self, path: &Path, e: &io::Error, strictness: Strictness) {
        if matches!(e.raw_os_error(), Some(13 /* EACCES */ | 1 /* EPERM */)) {
            self.unreadable_proc_entries += 1;
            return;
        }
        let benign = gone(e) || e.raw_os_error() == Some(3 /* ESRCH */);
        if strictness == Strictness::Strict && !benign {
            self.errors.push(format!(
                "cannot read runtime root '{}': {e}",
                path.display()
            ));
        }
    }

    fn read_bounded(&mut self, path: &Path, strictness: Strictness) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        let result = fs::File::open(path)
            .and_then(|f| f.take(self.limits.max_file_bytes).read_to_end(&mut out));
        match result {
            Ok(_) => Some(out),
            Err(e) => {
                self.proc_error(path, &e, strictness);
                None
            }
        }
    }

    /// Every store path named anywhere in `text` (maps lines, NUL-separated
    /// environment strings): the store directory, a slash, then a valid base name.
    pub fn scan_text(&mut self, text: &[u8]) {
        let needle = [&self.store_dir[..], b"/"].concat();
        let mut at = 0;
        while let Some(pos) = find(&text[at..], &needle) {
            let start = at + pos + needle.len();
            let len = text[start..]
                .iter()
                .take_while(|&&b| is_name_char(b))
                .count();
            let base = &text[start..start + len];
            if is_base_name(base) {
                self.roots.insert([&needle[..], base].concat());
            }
            at = start;
        }
    }
}

fn gone(e: &io::Error) -> bool {
    // ENOENT, ENOTDIR, ELOOP: the path leads nowhere, so it roots nothing.
    e.kind() == io::ErrorKind::NotFound || matches!(e.raw_os_error(), Some(20 | 40))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn is_name_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"+-._?=".contains(&b)
}

/// Whether `b` is in Nix's base-32 alphabet (`0-9a-z` without `e o t u`), the only
/// characters of a store path's hash part.
fn is_nix32(b: u8) -> bool {
    matches!(b, b'0'..=b'9' | b'a'..=b'd' | b'f'..=b'n' | b'p'..=b's' | b'v'..=b'z')
}

/// Whether `base` is `<32 base-32 characters>-<name>` as in a store path.
pub fn is_base_name(base: &[u8]) -> bool {
    base.len() > HASH_LEN + 1
        && base.len() <= HASH_LEN + 1 + MAX_NAME_LEN
        && base[..HASH_LEN].iter().all(|&b| is_nix32(b))
        && base[HASH_LEN] == b'-'
        && base[HASH_LEN + 1..].iter().all(|&b| is_name_char(b))
        && base[HASH_LEN + 1] != b'.'
}

/// Writes the answer: each root as an absolute store path followed by a NUL byte
/// (upstream Nix 2.34's roots-daemon format), then errors as items that do not
/// start with `/` (`error: …`), which upstream's client rejects as invalid store
/// paths and ours as a failed scan, then [`END_OF_ANSWER`]. Both readers refuse to
/// collect on an error item; ours also refuses an answer without the last item.
pub fn write_answer(out: &mut dyn Write, scan: &Scan) -> io::Result<()> {
    write_items(out, scan)?;
    out.write_all(END_OF_ANSWER)?;
    out.write_all(b"\0")?;
    out.flush()
}

/// The last item of every answer of this helper, written only once everything
/// before it was: a reader that has not seen it got a cut-short answer (a helper
/// that was killed, crashed, timed out, refused the peer or failed to write) and
/// must not delete anything on its strength. It does not start with `/`, so it is
/// never taken for a root; Nix's `nix store roots-daemon` has no such item.
pub const END_OF_ANSWER: &[u8] = b"end of answer";

/// The prefix of an item reporting why the answer is incomplete.
pub const ERROR_PREFIX: &str = "error: ";

/// Writes one error item: `error: <message>` (NUL bytes in it made spaces).
pub fn write_error(out: &mut dyn Write, message: &str) -> io::Result<()> {
    let text = format!("{ERROR_PREFIX}{message}").replace('\0', " ");
    out.write_all(text.as_bytes())?;
    out.write_all(b"\0")
}

fn write_items(out: &mut dyn Write, scan: &Scan) -> io::Result<()> {
    for root in &scan.roots {
        out.write_all(root)?;
        out.write_all(b"\0")?;
    }
    for error in &scan.errors {
        write_error(out, &error.to_string())?;
    }
    Ok(())
}

/// The whole scan the helper answers with: roots directories, then `/proc`.
pub fn scan_all(store_dir: &Path, state_dir: &Path, proc: &Path, limits: Limits) -> Scan {
    let mut scan = Scan::new(store_dir, limits);
    scan.scan_root_dirs(state_dir);
    scan.scan_runtime(proc, Strictness::Strict);
    scan
}

/// Returns `path` unless it is relative (every path argument must be absolute).
pub fn absolute(path: PathBuf) -> Option<PathBuf> {
    path.is_absolute().then_some(path)
}
