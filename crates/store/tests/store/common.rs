//! Shared helpers for the store's integration tests (the store under a temporary
//! directory is `unrooted_testkit::store`'s).
#![allow(dead_code, unused_imports)]

use std::collections::BTreeSet;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use unrooted_format::StorePath;
use unrooted_store::TEMP_PREFIX;

pub use unrooted_testkit::store::{config_at, nar_of, open_at, sha256};

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
