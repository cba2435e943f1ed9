//! Helpers shared by the collector's tests.
#![allow(dead_code, unused_imports)]

use std::collections::BTreeSet;
use std::path::Path;

use unrooted_format::{nar, HashAlgo, Hasher, StorePath};
use unrooted_gc::{
    Collector, GcAction, GcConfig, GcError, GcOptions, GcResult, RootsHelper, TempRoots,
};
use unrooted_store::{CheckSigs, LocalStore, LocalStoreConfig, ValidPathInfo};

pub use unrooted_format::error_chain as chain;

/// The store of `unrooted_testkit::store`, with some space reserved as Nix keeps it.
pub fn config_at(root: &Path) -> LocalStoreConfig {
    let mut config = unrooted_testkit::store::config_at(root);
    config.reserved_space = 4096;
    config
}

pub fn open_at(root: &Path) -> LocalStore {
    LocalStore::open(config_at(root)).unwrap()
}

/// Adds a text path with `references`.
pub fn text(store: &LocalStore, name: &str, body: &str, refs: &[&StorePath]) -> StorePath {
    let refs: BTreeSet<StorePath> = refs.iter().map(|p| (*p).clone()).collect();
    store
        .add_text(name, body.as_bytes(), &refs, false)
        .unwrap()
        .path
}

/// Adds an input-addressed single-file path with an arbitrary hash and `deriver`.
pub fn file_path(
    store: &LocalStore,
    hash_char: char,
    name: &str,
    bytes: &[u8],
    deriver: Option<&StorePath>,
) -> StorePath {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("f");
    std::fs::write(&f, bytes).unwrap();
    let mut data = Vec::new();
    nar::dump_path(&f, &mut data).unwrap();
    let mut h = Hasher::new(HashAlgo::Sha256);
    h.update(&data);
    let base = format!("{}-{name}", hash_char.to_string().repeat(32));
    let path = StorePath::from_base_name(&base).unwrap();
    let mut info = ValidPathInfo::new(path.clone(), h.finish());
    info.nar_size = data.len() as u64;
    info.deriver = deriver.cloned();
    store
        .add_to_store_nar(&info, &mut &data[..], false, CheckSigs::DontCheck)
        .unwrap();
    path
}

pub fn collect(
    store: &LocalStore,
    config: GcConfig,
    temp: &TempRoots,
    action: GcAction,
    max_freed: u64,
) -> (Result<GcResult, GcError>, Vec<String>) {
    let mut log = Vec::new();
    let opts = GcOptions {
        action,
        ignore_liveness: false,
        max_freed,
    };
    let r = Collector::new(store, config, temp).collect(&opts, &mut |m| log.push(m.to_owned()));
    (r, log)
}

/// The explicit single-user opt-in, for tests that do not involve other users.
pub fn no_helper() -> GcConfig {
    GcConfig::new(RootsHelper::None)
}

/// Fills `dir` with `n` entries cheaply: hard links to a few empty files (ext4
/// allows 65,000 links to one file), named `f<i>`, none of them a root.
pub fn fill_with_entries(dir: &Path, n: usize) {
    const PER_FILE: usize = 60_000;
    let sources = dir.join(".sources");
    std::fs::create_dir(&sources).unwrap();
    for i in 0..n {
        let source = sources.join(format!("s{}", i / PER_FILE));
        if i % PER_FILE == 0 {
            std::fs::write(&source, b"").unwrap();
        }
        std::fs::hard_link(&source, dir.join(format!("f{i}"))).unwrap();
    }
}
