//! Nix's formats, byte for byte as Nix 2.8 writes them: hashes and their text forms,
//! store paths, content addresses, NAR archives, the export format, derivations,
//! narinfo files, signatures and reference scanning.
//!
//! This crate is the bottom layer of unrooted and holds no policy: it never decides
//! where a store lives, never talks to a database or a socket, and is synchronous
//! throughout (everything here is CPU work over byte streams, which callers on async
//! runtimes can run on a blocking thread). The one place it touches the filesystem is
//! NAR dumping and restoring, which resolve every entry relative to a directory handle
//! and never follow a symlink. Every length read from untrusted input is bounded.

pub mod base32;
pub mod content_address;
pub mod derivation;
pub mod export;
pub mod hash;
pub mod nar;
pub mod narinfo;
pub mod refscan;
pub mod signature;
pub mod store_path;

pub use content_address::{ContentAddress, FileIngestionMethod};
pub use hash::{Hash, HashAlgo, Hasher};
pub use store_path::{StoreDir, StorePath, StorePathError, StorePathName};
