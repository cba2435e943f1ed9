//! The roots helper's filesystem inputs: the input describes a tree (directories,
//! files, symlinks with hostile targets, files named like store paths) under
//! `gcroots`, `profiles` and a fake `/proc`; it is built in a fresh directory and
//! scanned as `unrooted-find-roots` scans the real ones, with small limits. The scan
//! must end (no hang through symlink loops or deep nesting), never panic, and
//! report only top-level paths of the store directory it was given.
#![no_main]

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use unrooted_fuzz::Bytes;
use unrooted_roots::{is_base_name, Limits, Scan, Strictness};

const NIX32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
const MAX_NODES: usize = 64;

/// A name for a directory entry: never empty, `.`, `..`, or containing `/` or NUL.
fn entry_name(input: &mut Bytes<'_>, index: usize) -> Vec<u8> {
    let len = usize::from(input.byte() % 12);
    let mut name: Vec<u8> = input
        .take(len)
        .iter()
        .map(|&b| if b == b'/' || b == 0 { b'x' } else { b })
        .collect();
    if name.is_empty() || name == b"." || name == b".." {
        name = format!("n{index}").into_bytes();
    }
    name
}

/// A base name that is (mostly) shaped like a store path's, built from the input.
fn store_base(input: &mut Bytes<'_>) -> Vec<u8> {
    let mut base: Vec<u8> = (0..32)
        .map(|_| NIX32[usize::from(input.byte()) % NIX32.len()])
        .collect();
    base.push(b'-');
    let len = usize::from(input.byte() % 8);
    base.extend(input.take(len).iter().map(|&b| match b {
        b'/' | 0 => b'_',
        b => b,
    }));
    base
}

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("temporary directory");
    let store = tmp.path().join("store");
    let state = tmp.path().join("state");
    let proc = tmp.path().join("proc");
    let mut dirs: Vec<PathBuf> = vec![
        state.join("gcroots"),
        state.join("profiles"),
        proc.clone(),
        proc.join("1"),
        proc.join("1/fd"),
        proc.join("sys/kernel"),
    ];
    for d in &dirs {
        fs::create_dir_all(d).expect("mkdir");
    }
    let mut input = Bytes::new(data);
    let mut nodes = 0;
    while !input.is_empty() && nodes < MAX_NODES {
        nodes += 1;
        let kind = input.byte() % 5;
        let parent = dirs[usize::from(input.byte()) % dirs.len()].clone();
        let path = if kind == 3 {
            parent.join(std::ffi::OsStr::from_bytes(&store_base(&mut input)))
        } else {
            parent.join(std::ffi::OsStr::from_bytes(&entry_name(&mut input, nodes)))
        };
        if fs::symlink_metadata(&path).is_ok() {
            continue;
        }
        match kind {
            0 if fs::create_dir(&path).is_ok() => dirs.push(path),
            0 => {}
            // A plain file, or one named like a store path; contents may name store
            // paths (what `maps` and `environ` hold).
            1 | 3 => {
                let mut contents = Vec::new();
                if input.byte().is_multiple_of(2) {
                    contents.extend_from_slice(store.as_os_str().as_bytes());
                    contents.push(b'/');
                    contents.extend(store_base(&mut input));
                }
                let len = usize::from(input.byte() % 64);
                contents.extend_from_slice(input.take(len));
                let _ = fs::write(&path, contents);
            }
            2 => {
                let mut target = match input.byte() % 4 {
                    // Into the store: a direct root, maybe inside a store path.
                    0 => [store.as_os_str().as_bytes(), b"/", &store_base(&mut input)].concat(),
                    // To another node: an indirect root, or a loop.
                    1 => dirs[usize::from(input.byte()) % dirs.len()]
                        .as_os_str()
                        .as_bytes()
                        .to_vec(),
                    2 => b"../".to_vec(),
                    _ => Vec::new(),
                };
                let len = usize::from(input.byte() % 48);
                target.extend(
                    input
                        .take(len)
                        .iter()
                        .map(|&b| if b == 0 { b'/' } else { b }),
                );
                if target.is_empty() {
                    target.push(b'.');
                }
                let _ = symlink(std::ffi::OsStr::from_bytes(&target), &path);
            }
            // A pipe under the roots directories, where users can plant one: the walk
            // must never open it. (Not in the fake /proc: the helper reads files there,
            // and the real /proc has no pipes.)
            _ if parent.starts_with(&state) => {
                let _ = rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                );
            }
            _ => {}
        }
    }
    let limits = Limits {
        max_depth: 8,
        max_entries: 4096,
        max_file_bytes: 4096,
        max_time: Duration::from_secs(2),
    };
    let mut scan = Scan::new(&store, limits);
    scan.scan_root_dirs(&state);
    scan.scan_runtime(&proc, Strictness::Strict);
    scan.scan_text(data);
    let prefix = [store.as_os_str().as_bytes(), b"/"].concat();
    for root in &scan.roots {
        let base = root
            .strip_prefix(&prefix[..])
            .expect("a root outside the store");
        assert!(is_base_name(base), "not a top-level store path: {root:?}");
    }
});
