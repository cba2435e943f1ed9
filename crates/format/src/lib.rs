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

/// An error and its causes on one line, joined with `: `, leaving out a cause whose
/// text the line already holds (errors that print their source themselves): how
/// clients, logs and warnings show an error. The one copy for the workspace; the
/// sandbox, which depends on no crate of ours, prints its causes itself.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::error_chain;

    #[derive(Debug, thiserror::Error)]
    enum E {
        #[error("opening x")]
        Outer(#[source] std::io::Error),
        #[error("reading y: {0}")]
        Repeats(#[source] std::io::Error),
    }

    #[test]
    fn causes_are_joined_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::NotFound, "gone");
        assert_eq!(error_chain(&E::Outer(io())), "opening x: gone");
        assert_eq!(error_chain(&E::Repeats(io())), "reading y: gone");
    }
}
