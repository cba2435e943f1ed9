//! Reference scanning, hash rewriting and hashing modulo a hash part, checked against
//! the V19 build output and against naive implementations over generated streams.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::PathBuf;

use proptest::prelude::*;
use unrooted_format::hash::sha256;
use unrooted_format::refscan::{HashModuloSink, HashPart, HashRewriter, RefScanError, RefScanner};
use unrooted_format::{HashAlgo, Hasher, StoreDir};

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/refscan")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn part(s: &str) -> HashPart {
    s.as_bytes().try_into().unwrap()
}

#[test]
fn v19_output_references_multi_dev_and_itself() {
    let nar = vector("v19-dep-output.nar");
    assert_eq!(
        data_encoding::HEXLOWER.encode(&sha256(&nar)),
        "a621e9feec4fd3d21f8be15b31b1eaaa9f312247f8a57dd599dad260d88552b7"
    );
    let dir = StoreDir::new("/nix/store").unwrap();
    // The input closure and the output itself, as Nix's candidate set
    // (`docs/spec/store-formats.md` §5 item 4).
    let candidates: BTreeSet<_> = [
        "/nix/store/vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep",
        "/nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev",
        "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple",
        "/nix/store/2vmnikz9gvdskxvni5na3alrgzm86qqy-fod-flat",
        "/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv",
        "/nix/store/f9b4r1gs4drbd9y8a5nfpi49vvxfn9gz-multi.drv",
        "/nix/store/gws4wsdqh1v8by5c87x11iml32lx4irc-fod-flat.drv",
    ]
    .iter()
    .map(|p| dir.parse_path(p).unwrap())
    .collect();
    let expected: Vec<String> = vec![
        "vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev".into(),
        "vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep".into(),
    ];
    for chunk in [1, 2, 31, 32, 33, 100, 232] {
        let mut scanner = RefScanner::for_paths(&candidates);
        for c in nar.chunks(chunk) {
            scanner.write_all(c).unwrap();
        }
        let found: Vec<String> = scanner
            .found_paths(&candidates)
            .iter()
            .map(|p| p.to_base_name())
            .collect();
        assert_eq!(found, expected, "chunk size {chunk}");
    }
}

#[test]
fn candidates_must_be_base32() {
    assert!(matches!(
        RefScanner::new([part("e0000000000000000000000000000000")]),
        Err(RefScanError::NotBase32 { .. })
    ));
}

#[test]
fn non_base32_byte_inside_a_window_prevents_the_match() {
    let h = part("vb2485g3k8ww9m9s24gkmbgh9156aymz");
    let mut s = RefScanner::new([h]).unwrap();
    s.update(b"xxvb2485g3k8ww9m9s24gkmbgh9156aym");
    s.update(b"\0z");
    assert_eq!(s.found().count(), 0);
    s.update(b"vb2485g3k8ww9m9s24gkmbgh9156ay");
    s.update(b"mz");
    assert_eq!(s.found().collect::<Vec<_>>(), [&h]);
}

fn naive_found(data: &[u8], candidates: &[HashPart]) -> BTreeSet<HashPart> {
    candidates
        .iter()
        .filter(|c| data.windows(32).any(|w| w == &c[..]))
        .copied()
        .collect()
}

const B32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

fn hash_part() -> impl Strategy<Value = HashPart> {
    prop::collection::vec(prop::sample::select(B32.to_vec()), 32)
        .prop_map(|v| v.try_into().unwrap())
}

/// Data rich in base32 runs (so the skipping logic is exercised) with other bytes mixed in.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![4 => prop::sample::select(B32.to_vec()), 1 => any::<u8>()],
        0..400,
    )
}

fn chunked(data: &[u8], cuts: &[usize]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c % (data.len() + 1)).collect();
    points.push(0);
    points.push(data.len());
    points.sort_unstable();
    points
        .windows(2)
        .map(|w| data[w[0]..w[1]].to_vec())
        .collect()
}

proptest! {
    #[test]
    fn scanner_agrees_with_naive_search(
        mut bytes in data(),
        candidates in prop::collection::vec(hash_part(), 1..6),
        inserts in prop::collection::vec((0usize..6, any::<prop::sample::Index>()), 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        for (which, at) in inserts {
            let c = candidates[which % candidates.len()];
            let at = at.index(bytes.len() + 1);
            bytes.splice(at..at, c);
        }
        let mut scanner = RefScanner::new(candidates.iter().copied()).unwrap();
        for chunk in chunked(&bytes, &cuts) {
            scanner.update(&chunk);
        }
        let found: BTreeSet<HashPart> = scanner.found().copied().collect();
        prop_assert_eq!(found, naive_found(&bytes, &candidates));
    }

    #[test]
    fn rewriter_agrees_with_whole_buffer_rewrite(
        mut bytes in data(),
        from in hash_part(),
        to in hash_part(),
        at in prop::collection::vec(any::<prop::sample::Index>(), 0..4),
        cuts in prop::collection::vec(any::<usize>(), 0..12),
    ) {
        for i in at {
            let i = i.index(bytes.len() + 1);
            bytes.splice(i..i, from);
        }
        let (expected, expected_offsets) = naive_rewrite(&bytes, &from, &to);
        let mut w = HashRewriter::new(from, to, Vec::new());
        for chunk in chunked(&bytes, &cuts) {
            w.write_all(&chunk).unwrap();
        }
        let (out, offsets) = w.finish().unwrap();
        prop_assert_eq!(out, expected);
        prop_assert_eq!(offsets, expected_offsets);
    }
}

/// Nix's RewritingSink on one buffer: find from j, replace, search again from j.
fn naive_rewrite(data: &[u8], from: &HashPart, to: &HashPart) -> (Vec<u8>, Vec<u64>) {
    let mut s = data.to_vec();
    let mut offsets = Vec::new();
    let mut j = 0;
    while let Some(k) = s[j..].windows(32).position(|w| w == &from[..]) {
        j += k;
        offsets.push(j as u64);
        s[j..j + 32].copy_from_slice(to);
    }
    (s, offsets)
}

#[test]
fn hash_modulo_zeroes_occurrences_and_appends_offsets() {
    let h = part("c795hakzh87lws3vn3s88nbqzvd8ryw1");
    let mut data = b"prefix /nix/store/".to_vec();
    data.extend_from_slice(&h);
    data.extend_from_slice(b"-ca-self\nand again ");
    data.extend_from_slice(&h);
    data.push(b'\n');
    let mut expected_input = data.clone();
    expected_input[18..50].fill(0);
    expected_input[69..101].fill(0);
    expected_input.extend_from_slice(b"|18|69");
    let mut reference = Hasher::new(HashAlgo::Sha256);
    reference.update(&expected_input);
    let expected = reference.finish();
    for chunk in [1, 5, 31, 32, 200] {
        let mut sink = HashModuloSink::new(HashAlgo::Sha256, h);
        for c in data.chunks(chunk) {
            sink.write_all(c).unwrap();
        }
        let result = sink.finish();
        assert_eq!(result.hash, expected, "chunk {chunk}");
        assert_eq!(result.size, data.len() as u64);
        assert_eq!(result.occurrences, [18, 69]);
    }
    // Without occurrences it is the plain hash.
    let mut sink = HashModuloSink::new(HashAlgo::Sha256, h);
    sink.update(b"nothing here");
    assert_eq!(sink.finish().hash, HashAlgo::Sha256.digest(b"nothing here"));
}
