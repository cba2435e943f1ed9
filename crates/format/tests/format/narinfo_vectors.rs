//! narinfo vectors V23 and V24 (`docs/spec/store-formats.md` §8), negative vectors, and a
//! print → parse → print round trip over generated narinfos.

use std::fs;
use std::path::PathBuf;

use proptest::prelude::*;
use unrooted_format::narinfo::{
    CacheInfo, CacheInfoError, Compression, NarInfo, NarInfoError, MAX_NARINFO_LINES,
    MAX_NARINFO_SIZE,
};
use unrooted_format::signature::{SecretKey, Signature, TrustedKeys};
use unrooted_format::{ContentAddress, FileIngestionMethod, Hash, HashAlgo, StoreDir, StorePath};

fn vector(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/narinfo")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn nix_store() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

#[test]
fn v23_parses_and_prints_identical_bytes() {
    let text = vector("v23-dep.narinfo");
    let info = NarInfo::parse(&nix_store(), &text).unwrap();
    assert_eq!(info.to_text(&nix_store()), text);
    assert_eq!(
        info.store_path.to_base_name(),
        "vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep"
    );
    assert_eq!(info.compression, Compression::None);
    assert_eq!(info.nar_size, 232);
    assert_eq!(info.file_size, 232);
    assert_eq!(info.references.len(), 2);
    assert_eq!(
        info.deriver
            .as_ref()
            .map(StorePath::to_base_name)
            .as_deref(),
        Some("b9fahz5qcrx5x9a286hsd9vzgvkg7s7r-dep.drv")
    );
    assert_eq!(
        info.fingerprint(&nix_store()).unwrap(),
        vector("v23-dep.fingerprint")
    );
    let trusted = TrustedKeys::parse(&vector("test-key-1.public")).unwrap();
    assert_eq!(
        info.count_valid_signatures(&nix_store(), &trusted).unwrap(),
        1
    );
}

#[test]
fn v24_empty_references_keep_the_trailing_space() {
    let text = vector("v24-multi-dev.narinfo");
    assert!(text.contains("\nReferences: \n"));
    let info = NarInfo::parse(&nix_store(), &text).unwrap();
    assert!(info.references.is_empty());
    assert_eq!(info.to_text(&nix_store()), text);
    assert_eq!(
        info.fingerprint(&nix_store()).unwrap(),
        vector("v24-multi-dev.fingerprint")
    );
}

#[test]
fn signing_a_narinfo_reproduces_its_sig_line() {
    let text = vector("v23-dep.narinfo");
    let mut info = NarInfo::parse(&nix_store(), &text).unwrap();
    info.signatures.clear();
    info.sign(
        &nix_store(),
        &SecretKey::parse(&vector("test-key-1.secret")).unwrap(),
    )
    .unwrap();
    assert_eq!(info.to_text(&nix_store()), text);
}

#[test]
fn tampered_narinfo_no_longer_verifies() {
    let text = vector("v23-dep.narinfo").replace("NarSize: 232", "NarSize: 233");
    let info = NarInfo::parse(&nix_store(), &text).unwrap();
    let trusted = TrustedKeys::parse(&vector("test-key-1.public")).unwrap();
    assert_eq!(
        info.count_valid_signatures(&nix_store(), &trusted).unwrap(),
        0
    );
}

#[test]
fn nix_cache_info_round_trips() {
    let text = vector("nix-cache-info");
    let info = CacheInfo::parse(&text).unwrap();
    assert_eq!(info, CacheInfo::new(nix_store()));
    assert_eq!(info.to_text(), text);
    let served = "StoreDir: /nix/store\nWantMassQuery: 1\nPriority: 40\n";
    let info = CacheInfo::parse(served).unwrap();
    assert!(info.want_mass_query);
    assert_eq!(info.priority, Some(40));
    assert_eq!(info.to_text(), served);
    // As in Nix: values trimmed, colon-less lines and unknown keys skipped.
    let loose =
        CacheInfo::parse("junk\nStoreDir:   /gnu/store  \nFoo: bar\nWantMassQuery: 0").unwrap();
    assert_eq!(loose.store_dir, Some(StoreDir::new("/gnu/store").unwrap()));
    assert!(!loose.want_mass_query);
    assert!(matches!(
        CacheInfo::parse("StoreDir: relative\n"),
        Err(CacheInfoError::StoreDir { .. })
    ));
    assert!(matches!(
        CacheInfo::parse("Priority: high\n"),
        Err(CacheInfoError::Priority { .. })
    ));
}

#[test]
fn parsing_follows_nix_2_8_leniencies() {
    let base = vector("v23-dep.narinfo");
    let dir = nix_store();
    // Missing Compression means bzip2; unknown keys are ignored; unknown-deriver is none;
    // a later value replaces an earlier one; the key's value starts 2 bytes after ':'.
    let text = base.replace("Compression: none\n", "").replace(
        "Deriver: b9fahz5qcrx5x9a286hsd9vzgvkg7s7r-dep.drv",
        "Deriver: unknown-deriver",
    ) + "FutureField: whatever\nURL: nar/other.nar\nSystem: x86_64-linux\n";
    let info = NarInfo::parse(&dir, &text).unwrap();
    assert_eq!(info.compression, Compression::Bzip2);
    assert_eq!(info.deriver, None);
    assert_eq!(info.url, "nar/other.nar");
    assert_eq!(info.system.as_deref(), Some("x86_64-linux"));
    let printed = info.to_text(&dir);
    assert!(printed.contains("Compression: bzip2\n") && !printed.contains("Deriver"));
    assert!(printed.ends_with("System: x86_64-linux\nSig: test-key-1:vQjUf0yr0yq8n//vhkB44hjWF53oXydz5eSMK2Z/9m404Y1vgeQflOFwcZiprsl+bij4Le/rgc97cs2t2c9gBQ==\n"));
    // Hash fields in any prefixed form print back as sha256:base32.
    let sri = base.replace(
        "NarHash: sha256:1dsjhpc61lnsk7apv9gq8wi337xaxaqk2nz1icgx5lsgxkzfj8d6",
        "NarHash: sha256-piHp/uxP09Ifi+FbMbHqqp8xIkf4pX3VmdrSYNiFUrc=",
    );
    assert_ne!(sri, base);
    assert_eq!(NarInfo::parse(&dir, &sri).unwrap().to_text(&dir), base);
    let hex = base.replace(
        "NarHash: sha256:1dsjhpc61lnsk7apv9gq8wi337xaxaqk2nz1icgx5lsgxkzfj8d6",
        "NarHash: sha256:a621e9feec4fd3d21f8be15b31b1eaaa9f312247f8a57dd599dad260d88552b7",
    );
    assert_eq!(NarInfo::parse(&dir, &hex).unwrap().to_text(&dir), base);
    // Sig lines are a set: duplicates collapse, order is string order.
    let twice = base.clone() + &base.lines().last().map(|l| format!("{l}\n")).unwrap();
    assert_eq!(NarInfo::parse(&dir, &twice).unwrap().to_text(&dir), base);
    // A second empty References line, and an empty CA, are accepted (as by Nix).
    let empty_refs = vector("v24-multi-dev.narinfo") + "References: \nCA: \n";
    assert!(NarInfo::parse(&dir, &empty_refs).unwrap().ca.is_none());
}

#[test]
fn negative_vectors_give_the_right_errors() {
    use NarInfoError as E;
    let dir = nix_store();
    let parse =
        |name: &str| NarInfo::parse(&dir, &vector(&format!("negative/{name}"))).unwrap_err();
    assert_eq!(
        parse("missing-storepath.narinfo"),
        E::MissingField { field: "StorePath" }
    );
    assert_eq!(
        parse("missing-narhash.narinfo"),
        E::MissingField { field: "NarHash" }
    );
    assert_eq!(
        parse("missing-url.narinfo"),
        E::MissingField { field: "URL" }
    );
    assert_eq!(parse("empty-url.narinfo"), E::MissingField { field: "URL" });
    assert_eq!(
        parse("missing-narsize.narinfo"),
        E::MissingField { field: "NarSize" }
    );
    assert_eq!(parse("narsize-zero.narinfo"), E::ZeroNarSize);
    assert!(
        matches!(parse("narsize-not-a-number.narinfo"), E::Integer { field: "NarSize", ref value, .. } if value == "23x")
    );
    assert!(matches!(
        parse("narhash-bad-base32.narinfo"),
        E::Hash {
            field: "NarHash",
            ..
        }
    ));
    assert!(matches!(
        parse("narhash-unprefixed.narinfo"),
        E::Hash {
            field: "NarHash",
            ..
        }
    ));
    assert!(matches!(
        parse("filehash-wrong-length.narinfo"),
        E::Hash {
            field: "FileHash",
            ..
        }
    ));
    assert!(matches!(
        parse("storepath-outside-store.narinfo"),
        E::StorePath {
            field: "StorePath",
            ..
        }
    ));
    assert!(matches!(
        parse("reference-bad-hash-part.narinfo"),
        E::StorePath {
            field: "References",
            ..
        }
    ));
    assert_eq!(
        parse("references-twice.narinfo"),
        E::DuplicateField {
            field: "References"
        }
    );
    assert_eq!(parse("ca-twice.narinfo"), E::DuplicateField { field: "CA" });
    assert!(matches!(
        parse("ca-unknown-kind.narinfo"),
        E::ContentAddress { .. }
    ));
    assert_eq!(
        parse("compression-unknown.narinfo"),
        E::Compression {
            value: "rar".into()
        }
    );
    assert!(matches!(parse("sig-short.narinfo"), E::Signature { .. }));
    assert_eq!(
        parse("no-final-newline.narinfo"),
        E::MissingNewline { line: 10 }
    );
    assert_eq!(
        parse("line-without-colon.narinfo"),
        E::MalformedLine { line: 11 }
    );
}

#[test]
fn a_narinfo_for_another_store_dir_is_refused() {
    let other = StoreDir::new("/tmp/nixspec/store").unwrap();
    assert!(matches!(
        NarInfo::parse(&other, &vector("v23-dep.narinfo")),
        Err(NarInfoError::StorePath {
            field: "StorePath",
            ..
        })
    ));
}

#[test]
fn oversize_and_overlong_input_is_refused() {
    let dir = nix_store();
    let base = vector("v23-dep.narinfo");
    let big = base.clone() + "System: " + &"x".repeat(MAX_NARINFO_SIZE) + "\n";
    assert_eq!(
        NarInfo::parse(&dir, &big).unwrap_err(),
        NarInfoError::TooLarge {
            size: big.len(),
            max: MAX_NARINFO_SIZE
        }
    );
    let many = base + &"X: y\n".repeat(MAX_NARINFO_LINES);
    assert_eq!(
        NarInfo::parse(&dir, &many).unwrap_err(),
        NarInfoError::TooManyLines {
            max: MAX_NARINFO_LINES
        }
    );
    let big_info = "StoreDir: /nix/store\n".repeat(MAX_NARINFO_SIZE / 21 + 1);
    assert!(matches!(
        CacheInfo::parse(&big_info),
        Err(CacheInfoError::TooLarge { .. })
    ));
}

#[test]
fn nar_urls_follow_nix_naming() {
    let h = Hash::parse_prefixed("sha256:1dsjhpc61lnsk7apv9gq8wi337xaxaqk2nz1icgx5lsgxkzfj8d6")
        .unwrap();
    assert_eq!(
        Compression::None.nar_url(&h),
        "nar/1dsjhpc61lnsk7apv9gq8wi337xaxaqk2nz1icgx5lsgxkzfj8d6.nar"
    );
    assert_eq!(
        Compression::Xz.nar_url(&h),
        "nar/1dsjhpc61lnsk7apv9gq8wi337xaxaqk2nz1icgx5lsgxkzfj8d6.nar.xz"
    );
    let exts: Vec<_> = Compression::ALL.iter().map(|c| c.extension()).collect();
    assert_eq!(exts, ["", ".xz", ".bz2", ".zst", ".lzip", ".lz4", ".br"]);
}

// --- round trip over generated narinfos ---

const NAME_CHARS: &str = "[a-zA-Z0-9+._?=-]{1,40}";

fn store_path() -> impl Strategy<Value = StorePath> {
    (prop::array::uniform20(any::<u8>()), NAME_CHARS).prop_map(|(digest, name)| {
        StorePath::from_digest(&digest, unrooted_format::StorePathName::new(&name).unwrap())
    })
}

fn sha256() -> impl Strategy<Value = Hash> {
    prop::array::uniform32(any::<u8>()).prop_map(Hash::sha256)
}

fn signature() -> impl Strategy<Value = Signature> {
    ("[a-z0-9.-]{1,20}", prop::collection::vec(any::<u8>(), 64)).prop_map(|(name, bytes)| {
        let mut b = [0u8; 64];
        b.copy_from_slice(&bytes);
        Signature::new(&name, b)
    })
}

fn content_address() -> impl Strategy<Value = ContentAddress> {
    prop_oneof![
        sha256().prop_map(ContentAddress::Text),
        (any::<bool>(), sha256()).prop_map(|(r, hash)| ContentAddress::Fixed {
            method: if r {
                FileIngestionMethod::Recursive
            } else {
                FileIngestionMethod::Flat
            },
            hash,
        }),
        prop::collection::vec(any::<u8>(), 20).prop_map(|d| ContentAddress::Fixed {
            method: FileIngestionMethod::Flat,
            hash: Hash::from_digest(HashAlgo::Sha1, &d).unwrap(),
        }),
    ]
}

prop_compose! {
    fn narinfo()(
        store_path in store_path(),
        url in "[a-zA-Z0-9/._-]{1,60}",
        compression in prop::sample::select(Compression::ALL.to_vec()),
        file_hash in prop::option::of(sha256()),
        file_size in any::<u64>(),
        nar_hash in sha256(),
        nar_size in 1..u64::MAX,
        references in prop::collection::btree_set(store_path(), 0..6),
        deriver in prop::option::of(store_path()),
        system in prop::option::of("[a-z0-9_-]{1,20}"),
        signatures in prop::collection::btree_set(signature(), 0..4),
        ca in prop::option::of(content_address()),
    ) -> NarInfo {
        NarInfo { store_path, url, compression, file_hash, file_size, nar_hash, nar_size,
                  references, deriver, system, signatures, ca }
    }
}

proptest! {
    #[test]
    fn print_parse_print_round_trips(info in narinfo(), dir in "/[a-z]{1,8}(/[a-z]{1,8}){0,2}") {
        let dir = StoreDir::new(&dir).unwrap();
        let text = info.to_text(&dir);
        let parsed = NarInfo::parse(&dir, &text).unwrap();
        prop_assert_eq!(&parsed, &info);
        prop_assert_eq!(parsed.to_text(&dir), text);
    }

    #[test]
    fn arbitrary_text_never_panics(text in "(([A-Za-z]{0,10}): ?[ -~]{0,40}\n){0,12}") {
        let _ = NarInfo::parse(&nix_store(), &text);
        let _ = CacheInfo::parse(&text);
    }
}

#[test]
fn sig_lines_print_in_string_order() {
    let dir = nix_store();
    let mut info = NarInfo::parse(&dir, &vector("v24-multi-dev.narinfo")).unwrap();
    info.signatures.insert(Signature::new("a", [1; 64]));
    info.signatures.insert(Signature::new("a-b", [2; 64]));
    let text = info.to_text(&dir);
    let sigs: Vec<&str> = text.lines().filter(|l| l.starts_with("Sig: ")).collect();
    let mut sorted = sigs.clone();
    sorted.sort();
    assert_eq!(sigs, sorted);
    assert!(sigs[0].starts_with("Sig: a-b:"));
}
