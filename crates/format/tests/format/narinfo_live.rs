//! Live comparisons with the real Nix 2.8: key files from
//! `nix-store --generate-binary-cache-key`, signatures from `nix store sign`, and the
//! narinfo files and `nix-cache-info` written by `nix copy --to file://…`.
//!
//! Each test uses a private store (`NixEnv`); under `CI=true` a missing Nix fails.

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};

use unrooted_format::narinfo::{CacheInfo, Compression, NarInfo};
use unrooted_format::signature::{fingerprint, PublicKey, SecretKey, Signature, TrustedKeys};
use unrooted_format::{Hash, StoreDir, StorePath};
use unrooted_testkit::{nix_tool, NixEnv};

/// A private store holding a key pair and three paths: `hello.txt` (no references),
/// `withref` (references hello.txt) and `two` (references both).
struct Fixture {
    env: NixEnv,
    dir: StoreDir,
    paths: Vec<String>,
    secret_file: PathBuf,
    public_file: PathBuf,
}

fn os(s: &str) -> &OsStr {
    OsStr::new(s)
}

fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("nix printed UTF-8")
}

fn fixture() -> Option<Fixture> {
    nix_tool("nix-store")?;
    nix_tool("nix-instantiate")?;
    nix_tool("nix")?;
    let env = NixEnv::new();
    let dir = StoreDir::new(env.store_dir().to_str().expect("UTF-8 temp dir"))
        .expect("the private store dir is canonical");
    let secret_file = env.root().join("sec");
    let public_file = env.root().join("pub");
    env.run(
        "nix-store",
        &[
            os("--generate-binary-cache-key"),
            os("live-test-1"),
            secret_file.as_os_str(),
            public_file.as_os_str(),
        ],
    );
    let hello = env.root().join("hello.txt");
    fs::write(&hello, "hello\n").unwrap();
    let p = text(env.run("nix-store", &[os("--add"), hello.as_os_str()]));
    let p = p.trim().to_owned();
    let to_file = |name: &str, body: &str| {
        let expr = format!("builtins.toFile \"{name}\" \"{body}\"");
        let out = text(env.run(
            "nix-instantiate",
            &[os("--eval"), os("--read-write-mode"), os("-E"), os(&expr)],
        ));
        out.trim().trim_matches('"').to_owned()
    };
    let t = to_file("withref", &format!("see ${{builtins.storePath {p}}}"));
    let u = to_file(
        "two",
        &format!("${{builtins.storePath {p}}} ${{builtins.storePath {t}}}"),
    );
    Some(Fixture {
        env,
        dir,
        paths: vec![p, t, u],
        secret_file,
        public_file,
    })
}

impl Fixture {
    fn nix(&self, args: &[&str]) -> Vec<u8> {
        let mut all = vec![os("--extra-experimental-features"), os("nix-command")];
        all.extend(args.iter().map(|a| os(a)));
        self.env.run("nix", &all)
    }

    fn path_args(&self) -> Vec<&str> {
        self.paths.iter().map(String::as_str).collect()
    }

    fn copy_to_cache(&self, name: &str, query: &str) -> PathBuf {
        let cache = self.env.root().join(name);
        let url = format!("file://{}?{query}", cache.display());
        let mut args = vec!["copy", "--to", url.as_str()];
        args.extend(self.path_args());
        self.nix(&args);
        cache
    }
}

#[test]
fn generated_key_files_load_and_print_back() {
    let Some(fx) = fixture() else { return };
    let sec_text = fs::read_to_string(&fx.secret_file).unwrap();
    let pub_text = fs::read_to_string(&fx.public_file).unwrap();
    let secret = SecretKey::parse(&sec_text).unwrap();
    let public = PublicKey::parse(&pub_text).unwrap();
    assert_eq!(secret.name(), "live-test-1");
    assert_eq!(secret.to_file_text(), sec_text);
    assert_eq!(public.to_string(), pub_text);
    assert_eq!(secret.to_public(), public);
}

#[test]
fn our_signatures_equal_nix_store_sign() {
    let Some(fx) = fixture() else { return };
    let secret = SecretKey::parse(&fs::read_to_string(&fx.secret_file).unwrap()).unwrap();
    let public = PublicKey::parse(&fs::read_to_string(&fx.public_file).unwrap()).unwrap();
    let key_file = fx.secret_file.to_str().unwrap();
    let mut args = vec!["store", "sign", "--key-file", key_file];
    args.extend(fx.path_args());
    fx.nix(&args);
    let mut args = vec!["path-info", "--json", "--sigs"];
    args.extend(fx.path_args());
    let json: serde_json::Value = serde_json::from_slice(&fx.nix(&args)).unwrap();
    let infos = json.as_array().unwrap();
    assert_eq!(infos.len(), 3);
    let mut with_refs = 0;
    for info in infos {
        let path = fx.dir.parse_path(info["path"].as_str().unwrap()).unwrap();
        let nar_hash = Hash::parse_prefixed(info["narHash"].as_str().unwrap()).unwrap();
        let nar_size = info["narSize"].as_u64().unwrap();
        let refs: BTreeSet<StorePath> = info["references"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| fx.dir.parse_path(r.as_str().unwrap()).unwrap())
            .collect();
        with_refs += usize::from(!refs.is_empty());
        let fp = fingerprint(&fx.dir, &path, &nar_hash, nar_size, &refs).unwrap();
        let nix_sigs: Vec<Signature> = info["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| Signature::parse(s.as_str().unwrap()).unwrap())
            .collect();
        let ours = secret.sign(&fp);
        assert_eq!(nix_sigs, vec![ours.clone()], "{}", fx.dir.display(&path));
        assert!(public.verify(&fp, &nix_sigs[0]));
        assert!(!public.verify(&format!("{fp}x"), &nix_sigs[0]));
    }
    assert_eq!(with_refs, 2, "two of the paths have references");
}

fn narinfos(cache: &Path) -> Vec<(PathBuf, String)> {
    let mut out: Vec<_> = fs::read_dir(cache)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "narinfo"))
        .map(|p| {
            let t = fs::read_to_string(&p).unwrap();
            (p, t)
        })
        .collect();
    out.sort();
    out
}

fn check_cache(fx: &Fixture, cache: &Path, compression: Compression, signed: bool) {
    let info_text = fs::read_to_string(cache.join("nix-cache-info")).unwrap();
    let info = CacheInfo::parse(&info_text).unwrap();
    assert_eq!(info.store_dir.as_ref(), Some(&fx.dir));
    assert_eq!(info.to_text(), info_text);
    let trusted = TrustedKeys::parse(&fs::read_to_string(&fx.public_file).unwrap()).unwrap();
    let files = narinfos(cache);
    assert_eq!(files.len(), 3);
    for (file, text) in files {
        let parsed = NarInfo::parse(&fx.dir, &text).unwrap();
        assert_eq!(parsed.to_text(&fx.dir), text, "{}", file.display());
        assert_eq!(
            file.file_name().unwrap().to_str().unwrap(),
            format!("{}.narinfo", parsed.store_path.hash_part())
        );
        assert_eq!(parsed.compression, compression);
        let file_hash = parsed.file_hash.expect("nix writes FileHash");
        assert_eq!(parsed.url, compression.nar_url(&file_hash));
        let nar = fs::read(cache.join(&parsed.url)).unwrap();
        assert_eq!(nar.len() as u64, parsed.file_size);
        assert_eq!(unrooted_format::hash::sha256(&nar), file_hash.digest());
        let valid = parsed.count_valid_signatures(&fx.dir, &trusted).unwrap();
        assert_eq!(valid, usize::from(signed), "{}", file.display());
    }
}

#[test]
fn nix_copy_uncompressed_narinfos_round_trip() {
    let Some(fx) = fixture() else { return };
    let cache = fx.copy_to_cache("cache-none", "compression=none");
    check_cache(&fx, &cache, Compression::None, false);
}

#[test]
fn nix_copy_xz_signed_narinfos_round_trip_and_verify() {
    let Some(fx) = fixture() else { return };
    let query = format!("compression=xz&secret-key={}", fx.secret_file.display());
    let cache = fx.copy_to_cache("cache-xz", &query);
    check_cache(&fx, &cache, Compression::Xz, true);
}

#[test]
fn nix_reads_a_narinfo_we_print() {
    let Some(fx) = fixture() else { return };
    let cache = fx.copy_to_cache("cache-ours", "compression=none");
    // Re-sign every narinfo with our code and rewrite it from our printer; Nix must
    // accept the result as a substituter-quality binary cache entry.
    let secret = SecretKey::parse(&fs::read_to_string(&fx.secret_file).unwrap()).unwrap();
    let mut ours = std::collections::BTreeMap::new();
    for (file, text) in narinfos(&cache) {
        let mut info = NarInfo::parse(&fx.dir, &text).unwrap();
        info.signatures.clear();
        info.sign(&fx.dir, &secret).unwrap();
        let sig = info.signatures.iter().next().unwrap().to_string();
        ours.insert(
            fx.dir.display(&info.store_path),
            (sig, info.nar_hash, info.nar_size),
        );
        fs::write(&file, info.to_text(&fx.dir)).unwrap();
    }
    let store = format!("file://{}", cache.display());
    let mut args = vec!["path-info", "--json", "--sigs", "--store", store.as_str()];
    args.extend(fx.path_args());
    let json: serde_json::Value = serde_json::from_slice(&fx.nix(&args)).unwrap();
    let infos = json.as_array().unwrap();
    assert_eq!(infos.len(), 3);
    for info in infos {
        let (sig, nar_hash, nar_size) = &ours[info["path"].as_str().unwrap()];
        let sigs: Vec<&str> = info["signatures"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap())
            .collect();
        assert_eq!(sigs, [sig.as_str()]);
        assert_eq!(
            &Hash::parse_prefixed(info["narHash"].as_str().unwrap()).unwrap(),
            nar_hash
        );
        assert_eq!(info["narSize"].as_u64(), Some(*nar_size));
    }
}
