//! A store under a temporary directory for the tests of the store and the layers on
//! it (feature `store`).

use std::path::Path;

use unrooted_format::{nar, Hash, HashAlgo, Hasher, StoreDir};
use unrooted_store::{LocalStore, LocalStoreConfig};

/// A store under `root` in the layout [`crate::NixEnv`] uses (`store`, `state`,
/// `log`), so the real Nix tools see the same store; nothing is flushed to disk.
pub fn config_at(root: &Path) -> LocalStoreConfig {
    let store = root.join("store");
    let mut config = LocalStoreConfig::new(
        StoreDir::new(store.to_str().expect("a UTF-8 path")).expect("a store directory"),
        store,
        root.join("state"),
        root.join("log"),
    );
    config.reserved_space = 0;
    config.fsync_paths = false;
    config
}

/// Opens the store [`config_at`] describes.
pub fn open_at(root: &Path) -> LocalStore {
    LocalStore::open(config_at(root)).expect("opening the store")
}

/// The NAR of a tree on disk.
pub fn nar_of(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    nar::dump_path(path, &mut out).expect("dumping a tree");
    out
}

/// The SHA-256 of `data`.
pub fn sha256(data: &[u8]) -> Hash {
    let mut h = Hasher::new(HashAlgo::Sha256);
    h.update(data);
    h.finish()
}
