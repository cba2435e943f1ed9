//! Reference scanning over NARs written by the real `nix-store --dump`, and a
//! throughput check.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::time::Instant;

use unrooted_format::refscan::RefScanner;
use unrooted_format::{StoreDir, StorePath};
use unrooted_testkit::{nix_tool, NixEnv, Rng};

fn path(s: &str) -> StorePath {
    StorePath::from_base_name(s).unwrap()
}

#[test]
fn scan_of_a_nix_dumped_tree_finds_exactly_the_written_paths() {
    if nix_tool("nix-store").is_none() {
        return;
    }
    let env = NixEnv::new();
    let dir = StoreDir::new("/nix/store").unwrap();
    let in_file = path("vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev");
    let in_link = path("94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple");
    let in_exe = path("2vmnikz9gvdskxvni5na3alrgzm86qqy-fod-flat");
    let bare_hash = path("vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep");
    let absent = path("3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv");
    let broken = path("f9b4r1gs4drbd9y8a5nfpi49vvxfn9gz-multi.drv");
    let tree = env.root().join("tree");
    fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    fs::write(
        tree.join("sub/deeper/file"),
        format!("junk\0\x01{}/bin/x\n", dir.display(&in_file)),
    )
    .unwrap();
    symlink(dir.display(&in_link) + "/lib", tree.join("link")).unwrap();
    let exe = tree.join("exe");
    fs::write(
        &exe,
        format!("#!/bin/sh\nexec {}/bin/y\n", dir.display(&in_exe)),
    )
    .unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    // Only the hash part, without store dir or name: still a reference for Nix.
    fs::write(tree.join("bare"), bare_hash.hash_part()).unwrap();
    // The hash part broken by a non-base32 byte ('e') is not a reference.
    let mut b = broken.hash_part().to_owned();
    b.replace_range(10..11, "e");
    fs::write(tree.join("broken"), b).unwrap();
    let nar = env.run("nix-store", &[OsStr::new("--dump"), tree.as_os_str()]);
    let candidates: BTreeSet<StorePath> =
        [&in_file, &in_link, &in_exe, &bare_hash, &absent, &broken]
            .into_iter()
            .cloned()
            .collect();
    let expected: BTreeSet<StorePath> = [&in_file, &in_link, &in_exe, &bare_hash]
        .into_iter()
        .cloned()
        .collect();
    let mut rng = Rng::new(7);
    for round in 0..50 {
        let mut scanner = RefScanner::for_paths(&candidates);
        let mut rest = nar.as_slice();
        while !rest.is_empty() {
            let n = if round == 0 {
                rest.len()
            } else {
                1 + rng.below(64) as usize
            };
            let (chunk, tail) = rest.split_at(n.min(rest.len()));
            scanner.update(chunk);
            rest = tail;
        }
        assert_eq!(scanner.found_paths(&candidates), expected, "round {round}");
    }
}

/// Scans 64 MiB of mixed data (binary, text, and base32-heavy runs like a NAR of
/// build outputs) and prints the rate. Run with `--release --nocapture` for a
/// meaningful figure; the assertion only guards against pathological slowness.
#[test]
fn throughput() {
    let mut rng = Rng::new(42);
    let size = 64 << 20;
    let mut data = Vec::with_capacity(size);
    let b32 = b"0123456789abcdfghijklmnpqrsvwxyz";
    while data.len() < size {
        match rng.below(3) {
            0 => data.extend((0..4096).map(|_| rng.below(256) as u8)),
            1 => data.extend(b"the quick brown fox /usr/lib/libfoo.so.1 jumps over ".repeat(64)),
            _ => data.extend((0..4096).map(|_| b32[rng.below(32) as usize])),
        }
    }
    let candidates: Vec<[u8; 32]> = (0..2000)
        .map(|_| std::array::from_fn(|_| b32[rng.below(32) as usize]))
        .collect();
    let mut scanner = RefScanner::new(candidates).unwrap();
    let start = Instant::now();
    for chunk in data.chunks(64 << 10) {
        scanner.update(chunk);
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = data.len() as f64 / secs / 1e6;
    eprintln!(
        "refscan: {} MiB in {secs:.3}s = {rate:.0} MB/s",
        data.len() >> 20
    );
    assert_eq!(scanner.found().count(), 0);
    assert!(rate > 5.0, "{rate} MB/s");
}
