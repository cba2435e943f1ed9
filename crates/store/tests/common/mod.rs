//! Shared helpers for the store's integration tests.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use unrooted_format::{nar, Hash, HashAlgo, StoreDir, StorePath};
use unrooted_store::{LocalStore, LocalStoreConfig, TEMP_PREFIX};

/// A store under `root` (`store`, `state`, `log`), the layout `NixEnv` uses.
pub fn config_at(root: &Path) -> LocalStoreConfig {
    let store = root.join("store");
    let mut config = LocalStoreConfig::new(
        StoreDir::new(store.to_str().unwrap()).unwrap(),
        store,
        root.join("state"),
        root.join("log"),
    );
    config.reserved_space = 0;
    config.fsync_paths = false;
    config
}

pub fn open_at(root: &Path) -> LocalStore {
    LocalStore::open(config_at(root)).unwrap()
}

/// The NAR of a tree on disk.
pub fn nar_of(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    nar::dump_path(path, &mut out).unwrap();
    out
}

pub fn sha256(data: &[u8]) -> Hash {
    let mut h = unrooted_format::Hasher::new(HashAlgo::Sha256);
    h.update(data);
    h.finish()
}

/// The NAR of a single file with these bytes.
pub fn file_nar(dir: &Path, bytes: &[u8]) -> Vec<u8> {
    let f = dir.join(format!("f-{}", sha256(bytes).to_base32()));
    std::fs::write(&f, bytes).unwrap();
    nar_of(&f)
}

/// Entries of the store directory with our temporary prefix.
pub fn temp_entries(store: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(store)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().as_bytes().starts_with(TEMP_PREFIX.as_bytes()))
        .map(|e| e.path())
        .collect()
}

/// Everything inside our temporary areas (should be empty between operations).
pub fn temp_contents(store: &Path) -> Vec<PathBuf> {
    temp_entries(store)
        .into_iter()
        .flat_map(|area| {
            std::fs::read_dir(area)
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn set(paths: &[&StorePath]) -> BTreeSet<StorePath> {
    paths.iter().map(|p| (*p).clone()).collect()
}
