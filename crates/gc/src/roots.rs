//! Finding roots: the walk of `<state>/gcroots` and `<state>/profiles` the daemon
//! does itself, the question to the roots helper, and root registration.
//!
//! The walk follows Nix's `findRoots`: directories are entered (never through a
//! symlink), a symlink into the store is a direct root, a symlink elsewhere is an
//! indirect root whose target is read once more (chains are not followed), and a
//! regular file named like a store path is a root. What differs is what happens
//! when something cannot be read: Nix logs "cannot read potential root" and goes
//! on; here it is recorded as *unresolved*, and the collector refuses to delete
//! unless the helper, which reads as root, answered for it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use unrooted_format::{HashAlgo, Hasher, StoreDir, StorePath};
use unrooted_roots::{END_OF_ANSWER, ERROR_PREFIX};

use crate::error::GcError;

/// Deepest directory nesting walked below `gcroots` or `profiles`.
const MAX_DEPTH: usize = 64;
/// Most entries walked (users can write per-user directories): a million entries
/// in one of them still gives an answer; more makes the walk unresolved.
const MAX_ENTRIES: u64 = 4_000_000;
/// Longest the walk may take; longer makes it unresolved.
const MAX_WALK_TIME: Duration = Duration::from_secs(60);
/// Largest helper answer read (about a million roots).
const MAX_HELPER_ANSWER: u64 = 256 << 20;

/// The top-level store path `text` names or lies inside, if it is in `store_dir`.
pub(crate) fn top_level(store_dir: &StoreDir, text: &[u8]) -> Option<StorePath> {
    let rest = text
        .strip_prefix(store_dir.as_str().as_bytes())?
        .strip_prefix(b"/")?;
    let base = rest.split(|&b| b == b'/').next()?;
    StorePath::from_base_name(std::str::from_utf8(base).ok()?).ok()
}

/// A root the daemon could not read.
#[derive(Debug)]
pub(crate) struct Unresolved {
    pub(crate) link: PathBuf,
    pub(crate) source: io::Error,
}

/// What the daemon's own walk found.
#[derive(Debug, Default)]
pub(crate) struct Found {
    /// Store path → the links rooting it.
    pub(crate) roots: BTreeMap<StorePath, BTreeSet<String>>,
    pub(crate) unresolved: Vec<Unresolved>,
}

pub(crate) struct Walk<'a> {
    pub(crate) store_dir: &'a StoreDir,
    pub(crate) auto_dir: PathBuf,
    pub(crate) found: Found,
    pub(crate) log: &'a mut dyn FnMut(&str),
    entries: u64,
    max_entries: u64,
    deadline: Instant,
    /// A bound was hit: the walk stopped, and said so once in `found.unresolved`.
    exhausted: bool,
}

impl<'a> Walk<'a> {
    pub(crate) fn new(
        store_dir: &'a StoreDir,
        state_dir: &Path,
        log: &'a mut dyn FnMut(&str),
    ) -> Self {
        Self::with_limits(store_dir, state_dir, log, MAX_ENTRIES, MAX_WALK_TIME)
    }

    fn with_limits(
        store_dir: &'a StoreDir,
        state_dir: &Path,
        log: &'a mut dyn FnMut(&str),
        max_entries: u64,
        max_time: Duration,
    ) -> Self {
        Self {
            store_dir,
            auto_dir: state_dir.join("gcroots/auto"),
            found: Found::default(),
            log,
            entries: 0,
            max_entries,
            deadline: Instant::now() + max_time,
            exhausted: false,
        }
    }

    fn unresolved(&mut self, link: &Path, source: io::Error) {
        self.found.unresolved.push(Unresolved {
            link: link.to_owned(),
            source,
        });
    }

    fn root(&mut self, link: &Path, target: &[u8]) -> bool {
        match top_level(self.store_dir, target) {
            Some(p) => {
                let link = link.to_string_lossy().into_owned();
                self.found.roots.entry(p).or_default().insert(link);
                true
            }
            None => false,
        }
    }

    /// Counts one more entry at `path`; false once a bound is hit, which stops the
    /// whole walk and leaves it unresolved at `path` (never a silently shorter list).
    fn tick(&mut self, path: &Path) -> bool {
        if self.exhausted {
            return false;
        }
        self.entries += 1;
        let what = if self.entries > self.max_entries {
            format!(
                "more than {} entries under the roots directories",
                self.max_entries
            )
        } else if self.entries.is_multiple_of(1024) && Instant::now() > self.deadline {
            "the walk of the roots directories took too long".to_owned()
        } else {
            return true;
        };
        self.exhausted = true;
        self.unresolved(path, io::Error::other(what));
        false
    }

    pub(crate) fn walk(&mut self, path: &Path, depth: usize) -> Result<(), GcError> {
        if !self.tick(path) {
            return Ok(());
        }
        match fs::symlink_metadata(path) {
            Ok(m) => self.visit(path, m.file_type(), depth),
            Err(e) if leads_nowhere(&e) => Ok(()),
            Err(e) => {
                self.unresolved(path, e);
                Ok(())
            }
        }
    }

    /// One entry whose type is known (from the directory listing: no `lstat`).
    fn visit(&mut self, path: &Path, kind: fs::FileType, depth: usize) -> Result<(), GcError> {
        if kind.is_symlink() {
            return self.link(path);
        }
        if kind.is_file() {
            let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
            let full = [self.store_dir.as_str().as_bytes(), b"/", name].concat();
            self.root(path, &full);
            return Ok(());
        }
        if !kind.is_dir() {
            return Ok(());
        }
        if depth >= MAX_DEPTH {
            let e = io::Error::other("nested too deeply");
            self.unresolved(path, e);
            return Ok(());
        }
        let entries = match fs::read_dir(path) {
            Ok(r) => r,
            Err(e) if leads_nowhere(&e) => return Ok(()),
            Err(e) => {
                self.unresolved(path, e);
                return Ok(());
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    self.unresolved(path, e);
                    break;
                }
            };
            let child = entry.path();
            if !self.tick(&child) {
                break;
            }
            // `file_type` is the listing's d_type; only file systems that leave it
            // unknown cost an `lstat`.
            match entry.file_type() {
                Ok(kind) => self.visit(&child, kind, depth + 1)?,
                Err(e) if leads_nowhere(&e) => {}
                Err(e) => self.unresolved(&child, e),
            }
        }
        Ok(())
    }

    fn link(&mut self, path: &Path) -> Result<(), GcError> {
        let target = match fs::read_link(path) {
            Ok(t) => t,
            Err(e) if leads_nowhere(&e) => return Ok(()),
            Err(e) => {
                self.unresolved(path, e);
                return Ok(());
            }
        };
        if self.root(path, target.as_os_str().as_bytes()) {
            return Ok(());
        }
        let inner = path.parent().unwrap_or(Path::new("/")).join(&target);
        match fs::symlink_metadata(&inner) {
            Ok(m) if m.file_type().is_symlink() => {}
            Ok(_) => return Ok(()),
            Err(e) if leads_nowhere(&e) => {
                if path.starts_with(&self.auto_dir) {
                    (self.log)(&format!(
                        "removing stale link from '{}' to '{}'",
                        path.display(),
                        inner.display()
                    ));
                    match fs::remove_file(path) {
                        Err(e) if e.kind() != io::ErrorKind::NotFound => {
                            return Err(GcError::RemoveStaleLink {
                                path: path.to_owned(),
                                source: e,
                            })
                        }
                        _ => {}
                    }
                }
                return Ok(());
            }
            Err(e) => {
                self.unresolved(&inner, e);
                return Ok(());
            }
        }
        match fs::read_link(&inner) {
            Ok(t) => {
                self.root(&inner, t.as_os_str().as_bytes());
            }
            Err(e) if leads_nowhere(&e) => {}
            Err(e) => self.unresolved(&inner, e),
        }
        Ok(())
    }
}

/// ENOENT, ENOTDIR, ELOOP: the path resolves to nothing, so it roots nothing (a
/// symlink loop planted by a user included).
fn leads_nowhere(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || e.raw_os_error() == Some(rustix::io::Errno::NOTDIR.raw_os_error())
        || e.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error())
}

/// What the helper said: roots, or the first error item of an incomplete scan.
pub(crate) enum HelperAnswer {
    Roots(BTreeSet<StorePath>),
    Incomplete(String),
}

/// How a helper's answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// Ours: the last item is [`END_OF_ANSWER`]; an answer without it was cut short
    /// (the helper refused, crashed, was killed or timed out) and is an error.
    EndMarker,
    /// Nix 2.34's `nix store roots-daemon`: the connection's end is the answer's.
    Eof,
}

/// Asks the roots helper at `socket`: one connection, no request, NUL-terminated
/// items until EOF. Items are absolute paths (roots; those outside our store are
/// ignored, those inside a store path count for its top-level path) or, from our
/// helper, error reports that do not start with `/` and the end-of-answer item.
pub(crate) fn ask_helper(
    socket: &Path,
    store_dir: &StoreDir,
    framing: Framing,
    timeout: Duration,
) -> Result<HelperAnswer, GcError> {
    let err = |source| GcError::AskHelper {
        socket: socket.to_owned(),
        source,
    };
    let stream = unrooted_store::unix_socket::connect(socket).map_err(err)?;
    stream.set_read_timeout(Some(timeout)).map_err(err)?;
    let mut bytes = Vec::new();
    (&stream)
        .take(MAX_HELPER_ANSWER + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no complete answer within {} s", timeout.as_secs_f32()),
            )),
            _ => err(e),
        })?;
    if bytes.len() as u64 > MAX_HELPER_ANSWER {
        return Err(err(io::Error::other("answer too large")));
    }
    parse_helper_answer(&bytes, store_dir, framing).map_err(err)
}

/// Parses the helper's bytes (exposed to the crate's tests through `ask_helper`).
/// With [`Framing::EndMarker`], only an answer whose last item is the end marker is
/// an answer at all; an error item makes it incomplete either way.
pub(crate) fn parse_helper_answer(
    bytes: &[u8],
    store_dir: &StoreDir,
    framing: Framing,
) -> io::Result<HelperAnswer> {
    let cut_short = |what: &str| io::Error::new(io::ErrorKind::UnexpectedEof, what.to_owned());
    if !bytes.is_empty() && !bytes.ends_with(b"\0") {
        return Err(cut_short("answer cut short (last item not NUL-terminated)"));
    }
    let mut items: Vec<&[u8]> = bytes.split(|&b| b == 0).collect();
    items.pop(); // after the last NUL (or the whole of an empty answer)
    let mut first_error = None;
    let mut ended = false;
    let mut roots = BTreeSet::new();
    for item in items {
        if ended {
            return Err(malformed("an item after the end of the answer"));
        }
        if framing == Framing::EndMarker && item == END_OF_ANSWER {
            ended = true;
        } else if item.starts_with(b"/") {
            if let Some(p) = top_level(store_dir, item) {
                roots.insert(p);
            }
        } else if framing == Framing::EndMarker && !item.starts_with(ERROR_PREFIX.as_bytes()) {
            return Err(malformed(
                "an item that is neither a path, an error nor the end",
            ));
        } else {
            first_error.get_or_insert_with(|| String::from_utf8_lossy(item).into_owned());
        }
    }
    if let Some(message) = first_error {
        return Ok(HelperAnswer::Incomplete(message));
    }
    if framing == Framing::EndMarker && !ended {
        return Err(cut_short(if bytes.is_empty() {
            "the helper closed the connection without answering (it refused this \
             daemon's uid, crashed, or was stopped)"
        } else {
            "answer cut short (no end-of-answer item: the helper crashed or was stopped)"
        }));
    }
    Ok(HelperAnswer::Roots(roots))
}

fn malformed(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed answer: {what}"),
    )
}

/// The helper's reply decoder for the fuzz targets in `fuzz/` (not an API: the
/// collector only reaches it through `ask_helper`). `Ok(Ok(roots))` is a complete
/// answer, `Ok(Err(message))` an incomplete scan, `Err` a malformed reply.
#[doc(hidden)]
pub fn fuzz_parse_helper_answer(
    bytes: &[u8],
    store_dir: &StoreDir,
    end_marker: bool,
) -> io::Result<Result<BTreeSet<StorePath>, String>> {
    let framing = if end_marker {
        Framing::EndMarker
    } else {
        Framing::Eof
    };
    Ok(match parse_helper_answer(bytes, store_dir, framing)? {
        HelperAnswer::Roots(roots) => Ok(roots),
        HelperAnswer::Incomplete(message) => Err(message),
    })
}

/// The name of the `gcroots/auto` link for an indirect root at `link`: Nix base-32
/// of the SHA-1 of its absolute path.
pub fn indirect_root_name(link: &Path) -> String {
    let mut h = Hasher::new(HashAlgo::Sha1);
    h.update(link.as_os_str().as_bytes());
    h.finish().to_base32()
}

/// Registers the client-made symlink `link` (absolute) as an indirect root
/// (AddIndirectRoot; AddPermRoot after making the link): creates
/// `<state>/gcroots/auto/<name>` → `link` atomically (a temporary link renamed into
/// place), replacing an older one.
pub fn add_indirect_root(state_dir: &Path, link: &Path) -> Result<(), GcError> {
    let dir = state_dir.join("gcroots/auto");
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| GcError::CreateRoot { path, source }
    };
    if !link.is_absolute() {
        return Err(err(link)(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an indirect root must be an absolute path",
        )));
    }
    let name = dir.join(indirect_root_name(link));
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = dir.join(format!(".tmp-{}-{n}", std::process::id()));
    // Two system calls in the usual case (symlink, rename), as Nix's makeSymlink:
    // the directory is made only when the link cannot be, and a leftover of an
    // earlier process with this pid is removed only when it is in the way.
    if let Err(e) = std::os::unix::fs::symlink(link, &tmp) {
        match e.kind() {
            io::ErrorKind::NotFound => fs::create_dir_all(&dir).map_err(err(&dir))?,
            io::ErrorKind::AlreadyExists => fs::remove_file(&tmp).map_err(err(&tmp))?,
            _ => return Err(err(&tmp)(e)),
        }
        std::os::unix::fs::symlink(link, &tmp).map_err(err(&tmp))?;
    }
    fs::rename(&tmp, &name).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        err(&name)(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A walk that hits a bound stops there and is unresolved (the collection is
    /// refused), never a shorter list of roots; within the bound it finds them all.
    #[test]
    fn walk_bounds_make_it_unresolved_not_shorter() {
        let tmp = tempfile::tempdir().unwrap();
        let state = tmp.path().join("state");
        let many = state.join("gcroots/per-user/mallory");
        fs::create_dir_all(&many).unwrap();
        for i in 0..100 {
            fs::write(many.join(format!("f{i}")), b"").unwrap();
        }
        let store_dir = StoreDir::new("/nix/store").unwrap();
        let root = "/nix/store/00000000000000000000000000000000-kept";
        std::os::unix::fs::symlink(root, state.join("gcroots/r")).unwrap();
        let mut log = |_: &str| {};
        let walk = |max_entries, max_time, log: &mut dyn FnMut(&str)| {
            let mut w = Walk::with_limits(&store_dir, &state, log, max_entries, max_time);
            w.walk(&state.join("gcroots"), 0).unwrap();
            w.found
        };
        let found = walk(1000, Duration::from_secs(60), &mut log);
        assert!(found.unresolved.is_empty(), "{:?}", found.unresolved);
        assert_eq!(found.roots.len(), 1);

        let found = walk(50, Duration::from_secs(60), &mut log);
        assert_eq!(found.unresolved.len(), 1, "one report, then the walk stops");
        assert!(found.unresolved[0]
            .source
            .to_string()
            .contains("more than 50 entries"));

        // Past the deadline: checked every 1024 entries.
        for i in 100..2100 {
            fs::write(many.join(format!("f{i}")), b"").unwrap();
        }
        let found = walk(1_000_000, Duration::ZERO, &mut log);
        assert_eq!(found.unresolved.len(), 1);
        assert!(found.unresolved[0].source.to_string().contains("too long"));
    }
}
