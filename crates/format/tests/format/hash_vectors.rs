//! The hash and store-path vectors of `docs/spec/store-formats.md` §8 (V1–V13), read
//! from the data files in `vectors/hash/` (provenance in `vectors/README.md`).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use unrooted_format::base32;
use unrooted_format::hash::{sha256, Hash, HashAlgo, HashError};
use unrooted_format::{ContentAddress, StoreDir, StorePathName};

fn vector_file(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/hash")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn rows(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
}

#[test]
fn encodings_match_nix() {
    let text = vector_file("encodings.txt");
    let mut checked = 0;
    for row in rows(&text) {
        let cols: Vec<&str> = row.split(' ').collect();
        let algo: HashAlgo = cols[1].parse().unwrap();
        let hash = Hash::parse_bare(cols[2], algo).unwrap();
        assert_eq!(hash.to_base16(), cols[2], "{row}");
        assert_eq!(hash.to_base32(), cols[3], "{}: base32", cols[0]);
        assert_eq!(
            Hash::parse_bare(cols[3], algo).unwrap(),
            hash,
            "{}",
            cols[0]
        );
        assert_eq!(
            base32::decode(cols[3].as_bytes(), algo.size()).unwrap(),
            hash.digest()
        );
        if let Some(b64) = cols.get(4) {
            assert_eq!(hash.to_base64(), *b64, "{}: base64", cols[0]);
            assert_eq!(Hash::parse_any(&hash.to_sri(), None).unwrap(), hash);
        }
        for prefixed in [hash.to_prefixed_base16(), hash.to_prefixed_base32()] {
            assert_eq!(Hash::parse_any(&prefixed, None).unwrap(), hash);
        }
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn digests_of_empty_input_match_v1_to_v4() {
    for (algo, b16) in [
        (HashAlgo::Md5, "d41d8cd98f00b204e9800998ecf8427e"),
        (HashAlgo::Sha1, "da39a3ee5e6b4b0d3255bfef95601890afd80709"),
        (
            HashAlgo::Sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
    ] {
        assert_eq!(algo.digest(b"").to_base16(), b16);
    }
    assert_eq!(
        HashAlgo::Md5.digest(b"").to_sri(),
        "md5-1B2M2Y8AsgTpgAmY7PhCfg=="
    );
}

#[test]
fn invalid_hashes_are_refused_with_the_right_error() {
    let text = vector_file("invalid.txt");
    let mut checked = 0;
    for row in rows(&text) {
        let cols: Vec<&str> = row.split(' ').collect();
        let context = (cols[1] != "-").then(|| cols[1].parse::<HashAlgo>().unwrap());
        let err = Hash::parse_any(cols[2], context).expect_err(row);
        let kind = match err {
            HashError::Encoding { .. } => "encoding",
            HashError::Length { .. } => "length",
            HashError::UnknownAlgo { .. } => "unknown-algo",
            HashError::AlgoMismatch { .. } => "mismatch",
            HashError::MissingAlgo { .. } => "missing-algo",
        };
        // A base32 digest that overflows is reported as a base-32 encoding error
        // naming the whole text, as Nix's "invalid base-32 hash".
        let expected = if cols[0] == "overflow" {
            "encoding"
        } else {
            cols[0]
        };
        assert_eq!(kind, expected, "{row}: {err}");
        assert!(
            err.to_string().contains(cols[2]) || kind == "unknown-algo",
            "{err}"
        );
        checked += 1;
    }
    assert_eq!(checked, 9);
}

#[test]
fn store_paths_from_content_addresses_match_nix() {
    let text = vector_file("store-paths.txt");
    let mut checked = 0;
    for row in rows(&text) {
        let cols: Vec<&str> = row.split('\t').collect();
        let dir = StoreDir::new(cols[1]).unwrap();
        let name = StorePathName::new(cols[2]).unwrap();
        let ca = ContentAddress::parse(cols[3]).unwrap();
        let refs: BTreeSet<_> = if cols[4] == "-" {
            BTreeSet::new()
        } else {
            cols[4]
                .split(',')
                .map(|p| dir.parse_path(p).unwrap())
                .collect()
        };
        let path = ca.store_path(&dir, &name, &refs, false).unwrap();
        assert_eq!(dir.display(&path), cols[5], "{}", cols[0]);
        checked += 1;
    }
    assert_eq!(checked, 12);
}

#[test]
fn text_paths_from_contents_match_nix() {
    let text = vector_file("text-paths.txt");
    let mut checked = 0;
    for row in rows(&text) {
        let cols: Vec<&str> = row.split('\t').collect();
        let dir = StoreDir::new(cols[0]).unwrap();
        let name = StorePathName::new(cols[1]).unwrap();
        let contents = cols[2].replace("\\n", "\n");
        let refs: BTreeSet<_> = if cols[3] == "-" {
            BTreeSet::new()
        } else {
            cols[3]
                .split(',')
                .map(|p| dir.parse_path(p).unwrap())
                .collect()
        };
        let path = dir.make_text_path(&name, &sha256(contents.as_bytes()), &refs);
        assert_eq!(dir.display(&path), cols[4]);
        checked += 1;
    }
    assert_eq!(checked, 5);
}

#[test]
fn fingerprint_and_fold_match_v9() {
    let dir = StoreDir::new("/nix/store").unwrap();
    let name = StorePathName::new("hello.txt").unwrap();
    let nar = Hash::parse_bare(
        "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13",
        HashAlgo::Sha256,
    )
    .unwrap();
    let mut inner = [0u8; 32];
    inner.copy_from_slice(nar.digest());
    let fp = dir.fingerprint("source", &inner, &name);
    assert_eq!(
        fp,
        "source:sha256:1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13:/nix/store:hello.txt"
    );
    let digest = sha256(fp.as_bytes());
    assert_eq!(
        Hash::sha256(digest).to_base16(),
        "fe50c26088fb1e2ba70dc3de7815d4b7fe5c6f8a83fb6464fb3da70023809016"
    );
    let folded = unrooted_format::store_path::compress_hash(&digest, 20);
    assert_eq!(
        folded
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>(),
        "7daba60473c6b92b848d53c87815d4b7fe5c6f8a"
    );
}

#[test]
fn references_are_refused_where_nix_refuses_them() {
    let dir = StoreDir::new("/nix/store").unwrap();
    let name = StorePathName::new("x").unwrap();
    let r = dir
        .parse_path("/nix/store/5nw3di7akby6ah73vh1qa8ig75zm49h5-builder.sh")
        .unwrap();
    let refs = BTreeSet::from([r]);
    let flat =
        ContentAddress::parse("fixed:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")
            .unwrap();
    assert!(flat.store_path(&dir, &name, &refs, false).is_err());
    let text =
        ContentAddress::parse("text:sha256:00xyyr3fi8l6hb839bv3f7yb86yjv7xi1cgh1xnhipym4asvb4aq")
            .unwrap();
    assert!(text
        .store_path(&dir, &name, &BTreeSet::new(), true)
        .is_err());
}
