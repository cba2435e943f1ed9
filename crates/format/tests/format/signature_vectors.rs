//! Signature vectors V23 and V24 (`docs/spec/store-formats.md` §8) and malformed key
//! files.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use unrooted_format::signature::{
    fingerprint, PublicKey, SecretKey, Signature, SignatureError, TrustedKeys,
};
use unrooted_format::{Hash, StoreDir};

fn vector(name: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/narinfo")
        .join(name);
    fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

fn secret() -> SecretKey {
    SecretKey::parse(&vector("test-key-1.secret")).unwrap()
}

fn public() -> PublicKey {
    PublicKey::parse(&vector("test-key-1.public")).unwrap()
}

#[test]
fn key_files_round_trip_byte_for_byte() {
    assert_eq!(secret().to_file_text(), vector("test-key-1.secret"));
    assert_eq!(public().to_string(), vector("test-key-1.public"));
    assert_eq!(secret().to_public(), public());
    assert_eq!(secret().name(), "test-key-1");
}

#[test]
fn key_file_with_trailing_newline_loads_like_nix() {
    let text = vector("test-key-1.secret") + "\n";
    assert_eq!(
        SecretKey::parse(&text).unwrap().to_file_text(),
        vector("test-key-1.secret")
    );
}

#[test]
fn v23_fingerprint_is_built_exactly() {
    let dir = StoreDir::new("/nix/store").unwrap();
    let path = dir
        .parse_path("/nix/store/vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep")
        .unwrap();
    let refs: BTreeSet<_> = [
        "/nix/store/vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep",
        "/nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev",
    ]
    .iter()
    .map(|p| dir.parse_path(p).unwrap())
    .collect();
    let nar_hash = Hash::parse_prefixed(
        "sha256:a621e9feec4fd3d21f8be15b31b1eaaa9f312247f8a57dd599dad260d88552b7",
    )
    .unwrap();
    let fp = fingerprint(&dir, &path, &nar_hash, 232, &refs).unwrap();
    assert_eq!(fp, vector("v23-dep.fingerprint"));
}

#[test]
fn v24_fingerprint_without_references_ends_in_semicolon() {
    let dir = StoreDir::new("/nix/store").unwrap();
    let path = dir
        .parse_path("/nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev")
        .unwrap();
    let nar_hash =
        Hash::parse_prefixed("sha256:0kmjdfisy712dahs30c8hqb2fwy0mk5lwsj0i2ln84symgbyygbc")
            .unwrap();
    let fp = fingerprint(&dir, &path, &nar_hash, 288, &BTreeSet::new()).unwrap();
    assert_eq!(fp, vector("v24-multi-dev.fingerprint"));
}

#[test]
fn fingerprint_of_zero_nar_size_is_refused() {
    let dir = StoreDir::new("/nix/store").unwrap();
    let path = dir
        .parse_path("/nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev")
        .unwrap();
    let h = Hash::sha256([0; 32]);
    assert!(matches!(
        fingerprint(&dir, &path, &h, 0, &BTreeSet::new()),
        Err(SignatureError::ZeroNarSize { path }) if path == "/nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev"
    ));
}

#[test]
fn signing_the_vectors_gives_the_spec_signatures() {
    for name in ["v23-dep", "v24-multi-dev"] {
        let fp = vector(&format!("{name}.fingerprint"));
        let sig = secret().sign(&fp);
        assert_eq!(sig.to_string(), vector(&format!("{name}.sig")), "{name}");
        assert_eq!(
            Signature::parse(&vector(&format!("{name}.sig"))).unwrap(),
            sig
        );
    }
}

#[test]
fn verify_accepts_and_rejects() {
    let fp = vector("v23-dep.fingerprint");
    let sig = Signature::parse(&vector("v23-dep.sig")).unwrap();
    let key = public();
    assert!(key.verify(&fp, &sig));
    // One changed byte of the fingerprint (the NAR size).
    let tampered = fp.replace(";232;", ";233;");
    assert_ne!(tampered, fp);
    assert!(!key.verify(&tampered, &sig));
    // A signature under another key name does not count, even with the same bytes.
    let renamed = Signature::new("test-key-2", *sig.bytes());
    assert!(!key.verify(&fp, &renamed));
    // One flipped signature bit.
    let mut bytes = *sig.bytes();
    bytes[10] ^= 1;
    assert!(!key.verify(&fp, &Signature::new("test-key-1", bytes)));
}

#[test]
fn trusted_keys_count_only_known_valid_signatures() {
    let fp = vector("v23-dep.fingerprint");
    let good = Signature::parse(&vector("v23-dep.sig")).unwrap();
    let unknown = Signature::new("cache.example.org-1", *good.bytes());
    let wrong = Signature::parse(&vector("v24-multi-dev.sig")).unwrap();
    let other = SecretKey::from_seed("other-key", &[9; 32]);
    let trusted = TrustedKeys::parse(&format!(
        "{}  {}\n",
        vector("test-key-1.public"),
        other.to_public()
    ))
    .unwrap();
    let sigs = [
        good.clone(),
        unknown.clone(),
        wrong.clone(),
        other.sign(&fp),
    ];
    assert_eq!(trusted.count_valid(&fp, &sigs), 2);
    assert!(trusted.verify(&fp, &good));
    assert!(!trusted.verify(&fp, &unknown));
    assert!(!trusted.verify(&fp, &wrong));
    assert_eq!(TrustedKeys::new().count_valid(&fp, &sigs), 0);
}

#[test]
fn generated_keys_sign_and_verify() {
    let a = SecretKey::generate("gen-1").unwrap();
    let b = SecretKey::generate("gen-1").unwrap();
    assert_ne!(
        a.to_file_text(),
        b.to_file_text(),
        "two keys from the OS RNG are distinct"
    );
    let reloaded = SecretKey::parse(&a.to_file_text()).unwrap();
    let sig = reloaded.sign("1;x;y;1;");
    assert!(a.to_public().verify("1;x;y;1;", &sig));
    assert!(!b.to_public().verify("1;x;y;1;", &sig));
}

#[test]
fn secret_key_never_appears_in_debug() {
    let key = secret();
    let text = vector("test-key-1.secret");
    let b64 = text.split_once(':').unwrap().1;
    let debug = format!("{key:?} {key:#?}");
    assert!(!debug.contains(b64), "{debug}");
    assert!(!debug.contains(&b64[..20]), "{debug}");
    assert!(debug.contains("test-key-1"));
}

fn negative(name: &str) -> String {
    vector(&format!("negative/{name}"))
}

#[test]
fn malformed_key_files_give_the_right_errors() {
    assert!(matches!(
        SecretKey::parse(&negative("secret-key-wrong-length.key")),
        Err(SignatureError::Length { what: "secret key", expected: 64, actual: 32, ref name }) if name == "test-key-1"
    ));
    assert!(matches!(
        SecretKey::parse(&negative("secret-key-bad-base64.key")),
        Err(SignatureError::Base64 {
            what: "secret key",
            ..
        })
    ));
    assert_eq!(
        SecretKey::parse(&negative("secret-key-no-colon.key")).unwrap_err(),
        SignatureError::MissingColon { what: "secret key" }
    );
    assert_eq!(
        SecretKey::parse(&negative("secret-key-empty-name.key")).unwrap_err(),
        SignatureError::MissingColon { what: "secret key" }
    );
    assert_eq!(
        SecretKey::parse(&negative("secret-key-public-half-mismatch.key")).unwrap_err(),
        SignatureError::KeyPairMismatch {
            name: "test-key-1".into()
        }
    );
    assert!(matches!(
        PublicKey::parse(&negative("public-key-wrong-length.key")),
        Err(SignatureError::Length {
            what: "public key",
            expected: 32,
            actual: 64,
            ..
        })
    ));
    assert_eq!(
        PublicKey::parse(&negative("public-key-no-colon.key")).unwrap_err(),
        SignatureError::MissingColon { what: "public key" }
    );
    assert!(matches!(
        Signature::parse("test-key-1:AAAA"),
        Err(SignatureError::Length {
            what: "signature",
            expected: 64,
            actual: 3,
            ..
        })
    ));
    assert!(matches!(
        SecretKey::parse(&"k:".repeat(5000)),
        Err(SignatureError::TooLong {
            what: "secret key",
            len: 10000
        })
    ));
}
