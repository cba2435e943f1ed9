//! Shared helpers for the protocol tests.
#![allow(dead_code)]

use std::path::PathBuf;

use unrooted_format::{StoreDir, StorePath};
use unrooted_protocol::{ProtocolVersion, WireContext};

/// The store directory of every Appendix A vector.
pub const STORE: &str = "/tmp/nixproto/store";

/// Reads a `.hex` vector file.
pub fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| l.split_whitespace())
        .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
        .collect()
}

pub fn store_dir() -> StoreDir {
    StoreDir::new(STORE).unwrap()
}

pub fn cx(minor: u8) -> WireContext {
    WireContext::new(ProtocolVersion::new(1, minor), store_dir())
}

pub fn path(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

/// The valid path of A.3/A.4.
pub fn hello() -> StorePath {
    path("79mr059vryxmkssnrikjr8v8ic6mmk57-hello.txt")
}
