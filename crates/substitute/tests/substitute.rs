//! Substituting closures from real caches on loopback: `unrooted serve`'s server
//! over one store, and `file://` caches written here; the failures each leave the
//! receiving store untouched.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::net::TcpListener;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use unrooted_format::hash::sha256;
use unrooted_format::narinfo::{CacheInfo, Compression, NarInfo};
use unrooted_format::signature::{SecretKey, TrustedKeys};
use unrooted_format::{nar, Hash, StoreDir, StorePath, StorePathName};
use unrooted_store::{CheckSigs, LocalStore, LocalStoreConfig, ValidPathInfo};
use unrooted_substitute::compression::Encoder;
use unrooted_substitute::server::{ServeConfig, Server};
use unrooted_substitute::{
    NarInfoCache, Observer, RetryPolicy, SubstituteError, Substituter, SubstituterConfig,
    DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL,
};

const STORE_DIR: &str = "/unrooted-subst-test/store";

fn key(name: &str, seed: u8) -> SecretKey {
    SecretKey::from_seed(name, &[seed; 32])
}

struct Store {
    dir: tempfile::TempDir,
    store: LocalStore,
}

impl Store {
    fn new(trusted: &[&SecretKey]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut config = LocalStoreConfig::new(
            StoreDir::new(STORE_DIR).unwrap(),
            dir.path().join("store"),
            dir.path().join("state"),
            dir.path().join("log"),
        );
        let mut keys = TrustedKeys::new();
        for k in trusted {
            keys.insert(k.to_public());
        }
        config.trusted_public_keys = keys;
        config.fsync_paths = false;
        config.reserved_space = 0;
        let store = LocalStore::open(config).unwrap();
        Self { dir, store }
    }

    fn serve(&self, compression: Compression, key: Option<SecretKey>) -> String {
        let mut config = ServeConfig::new(
            StoreDir::new(STORE_DIR).unwrap(),
            self.dir.path().join("store"),
            self.dir.path().join("state/db"),
        );
        config.compression = compression;
        config.secret_key = key;
        config.max_connections = 4;
        let server = Server::bind("127.0.0.1:0", config).unwrap();
        let addr = server.local_addr().unwrap();
        std::thread::spawn(move || server.run());
        format!("http://{addr}")
    }

    /// Adds a regular file `name` mentioning its references, unsigned.
    fn add(&self, name: &str, contents: &str, refs: &[&StorePath]) -> (StorePath, Vec<u8>) {
        let digest = sha256(format!("{name}\0{contents}").as_bytes());
        let mut d20 = [0u8; 20];
        d20.copy_from_slice(&digest[..20]);
        let path = StorePath::from_digest(&d20, StorePathName::new(name).unwrap());
        let mut text = contents.to_owned();
        for r in refs {
            text.push_str(&format!(" {}", r.hash_part()));
        }
        let (nar, info) = nar_of(&path, text.as_bytes(), refs);
        self.store
            .add_to_store_nar(&info, &mut &nar[..], false, CheckSigs::DontCheck)
            .unwrap();
        (path, nar)
    }

    fn valid(&self) -> BTreeSet<StorePath> {
        self.store.query_all_valid_paths().unwrap()
    }
}

fn nar_of(path: &StorePath, contents: &[u8], refs: &[&StorePath]) -> (Vec<u8>, ValidPathInfo) {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("f");
    fs::write(&file, contents).unwrap();
    let mut nar = Vec::new();
    nar::dump_path(&file, &mut nar).unwrap();
    let mut info = ValidPathInfo::new(path.clone(), Hash::sha256(sha256(&nar)));
    info.nar_size = nar.len() as u64;
    info.references = refs.iter().map(|r| (*r).clone()).collect();
    (nar, info)
}

/// A closure of three paths: top → mid → leaf.
fn closure(store: &Store) -> Vec<(StorePath, Vec<u8>)> {
    let leaf = store.add("leaf", "leaf contents", &[]);
    let mid = store.add("mid", "mid contents", &[&leaf.0]);
    let top = store.add("top", &"top contents ".repeat(50_000), &[&mid.0, &leaf.0]);
    vec![leaf, mid, top]
}

fn config(urls: Vec<String>, trusted: &[&SecretKey]) -> SubstituterConfig {
    let mut keys = TrustedKeys::new();
    for k in trusted {
        keys.insert(k.to_public());
    }
    let mut c = SubstituterConfig::new(urls, keys);
    c.jobs = 4;
    c.retry = RetryPolicy {
        attempts: 2,
        base_delay: Duration::from_millis(10),
    };
    c
}

#[derive(Default)]
struct Recorder {
    warnings: Mutex<Vec<String>>,
    started: AtomicUsize,
    finished_ok: AtomicUsize,
    last: Mutex<Vec<(u64, u64)>>,
}

impl Observer for Recorder {
    fn warn(&self, message: &str) {
        self.warnings.lock().unwrap().push(message.to_owned());
    }
    fn download_started(&self, _: &StorePath, cache: &str, url: &str, _: u64) -> u64 {
        assert!(url.starts_with(cache), "{url}");
        assert!(url.contains("nar/"), "{url}");
        self.started.fetch_add(1, Ordering::SeqCst) as u64
    }
    fn download_progress(&self, _: u64, done: u64, expected: u64) {
        self.last.lock().unwrap().push((done, expected));
    }
    fn download_finished(&self, _: u64, ok: bool) {
        if ok {
            self.finished_ok.fetch_add(1, Ordering::SeqCst);
        }
    }
}

fn substituter(urls: Vec<String>, trusted: &[&SecretKey], obs: &dyn Observer) -> Substituter {
    Substituter::new(
        StoreDir::new(STORE_DIR).unwrap(),
        config(urls, trusted),
        None,
        obs,
    )
}

fn set(p: &StorePath) -> BTreeSet<StorePath> {
    BTreeSet::from([p.clone()])
}

#[test]
fn a_closure_is_substituted_from_serve_in_every_compression() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let top = &paths[2].0;
    let k = key("cache-1", 1);
    for c in [
        Compression::None,
        Compression::Xz,
        Compression::Zstd,
        Compression::Bzip2,
    ] {
        let url = a.serve(c, Some(k.clone()));
        let b = Store::new(&[&k]);
        let obs = Recorder::default();
        let s = substituter(vec![url], &[&k], &obs);
        assert_eq!(s.caches().len(), 1, "{:?}", obs.warnings.lock().unwrap());
        let plan = s.plan(&b.store, &set(top), &obs).unwrap();
        assert_eq!(plan.fetch.len(), 3);
        assert!(plan.nar_size() > 600_000);
        let done = s
            .substitute(&b.store, &set(top), &obs)
            .unwrap()
            .into_result()
            .unwrap();
        assert_eq!(done.len(), 3, "{c}");
        assert_eq!(obs.finished_ok.load(Ordering::SeqCst), 3);
        let (done_bytes, expected) = *obs.last.lock().unwrap().last().unwrap();
        assert!(done_bytes > 0 && done_bytes <= expected);
        for (p, nar) in &paths {
            let mine = a.store.query_path_info(p).unwrap().unwrap();
            let theirs = b.store.query_path_info(p).unwrap().unwrap();
            assert_eq!(mine.nar_hash, theirs.nar_hash);
            assert_eq!(mine.references, theirs.references);
            assert!(theirs.sigs.iter().any(|s| s.starts_with("cache-1:")));
            let mut dumped = Vec::new();
            b.store.dump_path(p, &mut dumped).unwrap();
            assert_eq!(&dumped, nar);
        }
        // A second run has nothing to do.
        let again = s.substitute(&b.store, &set(top), &obs).unwrap();
        assert!(again.substituted.is_empty() && again.failed.is_empty());
    }
}

#[test]
fn unsigned_or_wrongly_signed_paths_are_refused() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let top = &paths[2].0;
    let trusted = key("trusted", 1);
    for server_key in [None, Some(key("stranger", 2)), Some(key("trusted", 3))] {
        let url = a.serve(Compression::None, server_key);
        let b = Store::new(&[&trusted]);
        let s = substituter(vec![url], &[&trusted], &unrooted_substitute::Quiet);
        let err = s
            .substitute(&b.store, &set(top), &unrooted_substitute::Quiet)
            .unwrap()
            .into_result()
            .unwrap_err();
        assert!(matches!(err, SubstituteError::Untrusted { .. }), "{err}");
        assert!(err.to_string().contains("lacks a valid signature"), "{err}");
        assert!(b.valid().is_empty());
    }
}

/// Writes a `file://` cache of `paths` (signed by `key`) in `dir`; `mangle` may
/// change a NAR before it is compressed, `cut` the compressed file after.
#[allow(clippy::too_many_arguments)]
fn file_cache(
    dir: &Path,
    a: &Store,
    paths: &[(StorePath, Vec<u8>)],
    compression: Compression,
    key: &SecretKey,
    priority: Option<i32>,
    mangle: impl Fn(&StorePath, &mut Vec<u8>),
    cut: impl Fn(&StorePath, &mut Vec<u8>),
) -> String {
    let sd = StoreDir::new(STORE_DIR).unwrap();
    fs::create_dir_all(dir.join("nar")).unwrap();
    let mut ci = CacheInfo::new(sd.clone());
    ci.priority = priority;
    fs::write(dir.join("nix-cache-info"), ci.to_text()).unwrap();
    for (p, nar) in paths {
        let info = a.store.query_path_info(p).unwrap().unwrap();
        let mut nar = nar.clone();
        mangle(p, &mut nar);
        let mut enc = Encoder::new(compression, Vec::new()).unwrap().unwrap();
        enc.write_all(&nar).unwrap();
        let mut file = enc.finish().unwrap();
        let file_hash = Hash::sha256(sha256(&file));
        let file_size = file.len() as u64;
        cut(p, &mut file);
        let url = compression.nar_url(&file_hash);
        fs::write(dir.join(&url), &file).unwrap();
        let mut ni = NarInfo {
            store_path: p.clone(),
            url,
            compression,
            file_hash: Some(file_hash),
            file_size,
            nar_hash: info.nar_hash,
            nar_size: info.nar_size,
            references: info.references.clone(),
            deriver: None,
            system: None,
            signatures: BTreeSet::new(),
            ca: None,
        };
        ni.sign(&sd, key).unwrap();
        fs::write(
            dir.join(format!("{}.narinfo", p.hash_part())),
            ni.to_text(&sd),
        )
        .unwrap();
    }
    format!("file://{}", dir.display())
}

fn plain_cache(dir: &Path, a: &Store, paths: &[(StorePath, Vec<u8>)], k: &SecretKey) -> String {
    file_cache(
        dir,
        a,
        paths,
        Compression::Xz,
        k,
        None,
        |_, _| {},
        |_, _| {},
    )
}

#[test]
fn a_file_cache_made_here_substitutes() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let tmp = tempfile::tempdir().unwrap();
    let url = plain_cache(tmp.path(), &a, &paths, &k);
    let b = Store::new(&[&k]);
    let s = substituter(vec![url], &[&k], &unrooted_substitute::Quiet);
    let done = s
        .substitute(&b.store, &set(&paths[2].0), &unrooted_substitute::Quiet)
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(done.len(), 3);
}

#[test]
fn a_corrupted_nar_is_a_hash_mismatch_and_registers_nothing_of_it() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let top = paths[2].0.clone();
    let tmp = tempfile::tempdir().unwrap();
    let url = file_cache(
        tmp.path(),
        &a,
        &paths,
        Compression::Zstd,
        &k,
        None,
        |p, nar| {
            if *p == top {
                let n = nar.len() - 100;
                nar[n] ^= 1;
            }
        },
        |_, _| {},
    );
    let b = Store::new(&[&k]);
    let s = substituter(vec![url], &[&k], &unrooted_substitute::Quiet);
    let err = s
        .substitute(&b.store, &set(&top), &unrooted_substitute::Quiet)
        .unwrap()
        .into_result()
        .unwrap_err();
    let text = unrooted_substitute::error_chain(&err);
    assert!(
        matches!(err, SubstituteError::HashMismatch { .. }),
        "{text}"
    );
    assert!(
        text.contains("hash mismatch importing path") && text.contains(&top.to_base_name()),
        "{text}"
    );
    assert!(!b.store.is_valid_path(&top).unwrap());
    // The references were fine and stay.
    assert_eq!(b.valid().len(), 2);
}

#[test]
fn a_truncated_download_fails_and_registers_nothing() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let top = paths[2].0.clone();
    for c in [
        Compression::None,
        Compression::Xz,
        Compression::Bzip2,
        Compression::Zstd,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let url = file_cache(
            tmp.path(),
            &a,
            &paths,
            c,
            &k,
            None,
            |_, _| {},
            |p, file| {
                if *p == top {
                    file.truncate(file.len() / 2);
                }
            },
        );
        let b = Store::new(&[&k]);
        let s = substituter(vec![url], &[&k], &unrooted_substitute::Quiet);
        let err = s
            .substitute(&b.store, &set(&top), &unrooted_substitute::Quiet)
            .unwrap()
            .into_result()
            .unwrap_err();
        let text = unrooted_substitute::error_chain(&err);
        assert!(text.contains(&top.to_base_name()), "{c}: {text}");
        assert!(!b.store.is_valid_path(&top).unwrap(), "{c}");
        // Nothing left in the store directory but the two good paths.
        let entries: Vec<_> = fs::read_dir(b.dir.path().join("store"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| !n.starts_with('.'))
            .collect();
        assert_eq!(entries.len(), 2, "{c}: {entries:?}");
    }
}

#[test]
fn an_unreachable_cache_is_skipped_with_a_warning() {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let obs = Recorder::default();
    let s = substituter(vec![url.clone()], &[], &obs);
    assert!(s.caches().is_empty());
    let w = obs.warnings.lock().unwrap().join("\n");
    assert!(w.contains(&url) && w.contains("cannot download"), "{w}");
    let b = Store::new(&[]);
    let p = StorePath::from_base_name("0123456789abcdfghijklmnpqrsvwxyz-x").unwrap();
    let err = s
        .substitute(&b.store, &set(&p), &obs)
        .unwrap()
        .into_result()
        .unwrap_err();
    assert!(
        matches!(err, SubstituteError::NotSubstitutable { .. }),
        "{err}"
    );
    assert!(b.valid().is_empty());
}

#[test]
fn a_missing_reference_fails_its_referrers() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let tmp = tempfile::tempdir().unwrap();
    // The cache lacks the leaf.
    let url = plain_cache(tmp.path(), &a, &paths[1..], &k);
    let b = Store::new(&[&k]);
    let s = substituter(vec![url], &[&k], &unrooted_substitute::Quiet);
    let report = s
        .substitute(&b.store, &set(&paths[2].0), &unrooted_substitute::Quiet)
        .unwrap();
    assert_eq!(report.failed.len(), 3);
    assert!(matches!(
        report.failed[&paths[2].0],
        SubstituteError::DependencyFailed { .. }
    ));
    let err = report.into_result().unwrap_err();
    assert!(
        matches!(err, SubstituteError::NotSubstitutable { .. }),
        "{err}"
    );
    assert!(b.valid().is_empty());
}

#[test]
fn lower_priority_caches_are_asked_first() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let t1 = tempfile::tempdir().unwrap();
    let t2 = tempfile::tempdir().unwrap();
    let slow = file_cache(
        t1.path(),
        &a,
        &paths,
        Compression::Xz,
        &k,
        Some(60),
        |_, _| {},
        |_, _| {},
    );
    let fast = file_cache(
        t2.path(),
        &a,
        &paths,
        Compression::None,
        &k,
        Some(20),
        |_, _| {},
        |_, _| {},
    );
    let q = unrooted_substitute::Quiet;
    let s = substituter(vec![slow.clone(), fast.clone()], &[&k], &q);
    assert_eq!(s.caches()[0].url(), fast);
    assert_eq!(s.caches()[0].priority(), 20);
    let found = s.query(&paths[0].0, &q).unwrap();
    assert_eq!(found.cache, 0);
    assert_eq!(found.info.compression, Compression::None);
    // `?priority=` in the URL overrides the cache's own.
    let s = substituter(vec![format!("{slow}?priority=10"), fast.clone()], &[&k], &q);
    assert_eq!(s.caches()[0].url(), slow);
    assert_eq!(
        s.query(&paths[0].0, &q).unwrap().info.compression,
        Compression::Xz
    );
    // A cache that lacks a path passes the question on.
    fs::remove_file(
        t2.path()
            .join(format!("{}.narinfo", paths[1].0.hash_part())),
    )
    .unwrap();
    let s = substituter(vec![slow, fast], &[&k], &q);
    assert_eq!(s.query(&paths[1].0, &q).unwrap().cache, 1);
}

#[test]
fn the_lookup_cache_answers_until_its_entries_expire() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let tmp = tempfile::tempdir().unwrap();
    let url = plain_cache(tmp.path(), &a, &paths[..2], &k);
    let disk =
        Arc::new(NarInfoCache::in_memory(DEFAULT_NEGATIVE_TTL, DEFAULT_POSITIVE_TTL).unwrap());
    let q = unrooted_substitute::Quiet;
    let sd = StoreDir::new(STORE_DIR).unwrap();
    let new = || {
        Substituter::new(
            sd.clone(),
            config(vec![url.clone()], &[&k]),
            Some(Arc::clone(&disk)),
            &q,
        )
    };
    let s = new();
    assert!(s.query(&paths[0].0, &q).is_some());
    assert!(s.query(&paths[2].0, &q).is_none());
    // The cache changes: the positive answer is remembered, and so is the negative.
    fs::remove_file(
        tmp.path()
            .join(format!("{}.narinfo", paths[0].0.hash_part())),
    )
    .unwrap();
    plain_cache(tmp.path(), &a, &paths[2..], &k);
    let s = new();
    assert!(s.query(&paths[0].0, &q).is_some());
    assert!(s.query(&paths[2].0, &q).is_none());
    // A file:// cache's nix-cache-info is read afresh at each opening, as Nix's
    // LocalBinaryCacheStore reads it, never from the lookup cache.
    fs::remove_file(tmp.path().join("nix-cache-info")).unwrap();
    let s = new();
    assert_eq!(
        s.caches().len(),
        0,
        "a file:// cache without nix-cache-info is not used"
    );
    // Without the lookup cache the cache itself answers.
    plain_cache(tmp.path(), &a, &paths[..0], &k);
    let s = substituter(vec![url.clone()], &[&k], &q);
    assert!(s.query(&paths[0].0, &q).is_none());
    assert!(s.query(&paths[2].0, &q).is_some());
}

#[test]
fn a_narinfo_for_another_path_or_with_an_escaping_url_is_refused() {
    let a = Store::new(&[]);
    let paths = closure(&a);
    let k = key("k", 1);
    let tmp = tempfile::tempdir().unwrap();
    let url = plain_cache(tmp.path(), &a, &paths, &k);
    let q = unrooted_substitute::Quiet;
    // The leaf's narinfo served under the mid path's name.
    let leaf_ni = tmp
        .path()
        .join(format!("{}.narinfo", paths[0].0.hash_part()));
    let mid_ni = tmp
        .path()
        .join(format!("{}.narinfo", paths[1].0.hash_part()));
    fs::copy(&leaf_ni, &mid_ni).unwrap();
    let obs = Recorder::default();
    let s = substituter(vec![url.clone()], &[&k], &obs);
    assert!(s.query(&paths[1].0, &obs).is_none());
    assert!(obs.warnings.lock().unwrap()[0].contains("instead of"));
    // A NAR URL leading out of the cache.
    let text = fs::read_to_string(&leaf_ni).unwrap();
    let bad: String = text
        .lines()
        .map(|l| {
            if l.starts_with("URL: ") {
                "URL: ../../etc/passwd".to_owned()
            } else {
                l.to_owned()
            }
        })
        .map(|l| l + "\n")
        .collect();
    fs::write(&leaf_ni, bad).unwrap();
    let b = Store::new(&[&k]);
    let err = substituter(vec![url], &[&k], &q)
        .substitute(&b.store, &set(&paths[0].0), &q)
        .unwrap()
        .into_result()
        .unwrap_err();
    assert!(matches!(err, SubstituteError::UnsafeNarUrl { .. }), "{err}");
}

/// Nix's tests/fetchurl.sh: `nix store add-file` into `file://…?store=/fnord/store`,
/// then a fixed-output fetch substituted from it. A cache for another store directory
/// serves a content-addressed path (no references) under the path it has there, and
/// nothing else.
#[test]
fn a_cache_for_another_store_directory_serves_content_addressed_paths() {
    use unrooted_format::{ContentAddress, FileIngestionMethod, HashAlgo};
    let tmp = tempfile::tempdir().unwrap();
    let theirs = StoreDir::new("/fnord/store").unwrap();
    let ours = StoreDir::new(STORE_DIR).unwrap();
    let contents = b"#! /bin/sh\necho fetched\n";
    let ca = ContentAddress::Fixed {
        method: FileIngestionMethod::Flat,
        hash: HashAlgo::Sha256.digest(contents),
    };
    let name = StorePathName::new("fetchurl.sh").unwrap();
    let none = BTreeSet::new();
    let their_path = ca.store_path(&theirs, &name, &none, false).unwrap();
    let our_path = ca.store_path(&ours, &name, &none, false).unwrap();
    assert_ne!(their_path, our_path);
    let file = tmp.path().join("f");
    fs::write(&file, contents).unwrap();
    let mut nar = Vec::new();
    nar::dump_path(&file, &mut nar).unwrap();
    let cache = tmp.path().join("cache");
    fs::create_dir_all(cache.join("nar")).unwrap();
    fs::write(
        cache.join("nix-cache-info"),
        "StoreDir: /fnord/store\nWantMassQuery: 1\nPriority: 30\n",
    )
    .unwrap();
    let nar_hash = Hash::sha256(sha256(&nar));
    fs::write(
        cache.join(format!("nar/{}.nar", nar_hash.to_base32())),
        &nar,
    )
    .unwrap();
    fs::write(
        cache.join(format!("{}.narinfo", their_path.hash_part())),
        format!(
            "StorePath: {}\nURL: nar/{}.nar\nCompression: none\nNarHash: {}\nNarSize: {}\nReferences: \nCA: {ca}\n",
            theirs.display(&their_path),
            nar_hash.to_base32(),
            nar_hash.to_prefixed_base32(),
            nar.len()
        ),
    )
    .unwrap();
    let url = format!("file://{}?store=/fnord/store", cache.display());
    let obs = Recorder::default();
    let b = Store::new(&[]);
    let s = substituter(vec![url], &[], &obs);
    assert!(
        obs.warnings.lock().unwrap().is_empty(),
        "kept, without a warning"
    );
    // Not without its content address: input-addressed paths are not looked for there.
    assert!(s.query(&our_path, &obs).is_none());
    s.hint_content_address(our_path.clone(), ca);
    let done = s
        .substitute(&b.store, &set(&our_path), &obs)
        .unwrap()
        .into_result()
        .unwrap();
    assert_eq!(done, set(&our_path));
    let info = b.store.query_path_info(&our_path).unwrap().unwrap();
    assert_eq!(info.ca, Some(ca));
    assert_eq!(
        fs::read(b.dir.path().join("store").join(our_path.to_base_name())).unwrap(),
        contents
    );
}
