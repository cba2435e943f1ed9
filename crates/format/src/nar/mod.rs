//! NAR, the Nix ARchive: the one serialisation of a file tree that store paths, NAR
//! hashes, the export format and the worker protocol are built on.
//!
//! # Framing
//!
//! Every token is a *string*: its length as a `u64` little-endian, its bytes, then zero
//! bytes up to the next multiple of 8. There are no other integers in a NAR.
//!
//! # Grammar
//!
//! ```text
//! nar   = str("nix-archive-1") node
//! node  = str("(") str("type") body str(")")
//! body  = str("regular") [ str("executable") str("") ] str("contents") str(<bytes>)
//!       | str("symlink") str("target") str(<target>)
//!       | str("directory") { str("entry") str("(") str("name") str(<name>)
//!                            str("node") node str(")") }
//! ```
//!
//! The only metadata is the executable flag (the owner-execute bit). Entries of a
//! directory appear in strictly increasing byte order of their names.
//!
//! # Strictness
//!
//! Nix 2.8 accepts unsorted and duplicate entries and several malformed shapes; newer
//! Nix (2.25 and later) does not, and neither do we: a NAR is accepted only if it is
//! exactly what [`dump_path`] would write for some tree. Every length is checked against
//! a bound ([`MAX_NAME_LEN`], [`MAX_TARGET_LEN`], [`MAX_CONTENTS_LEN`], the longest tag)
//! *before* anything is allocated or read, so a hostile `2^63` length costs nothing.
//!
//! # Modules
//!
//! The byte tokens below are the only place the grammar's strings are spelled out;
//! [`reader`] and [`writer`] are the one parser and the one serialiser, and everything
//! else ([`dump`](mod@dump), [`restore`](mod@restore), [`copy`](mod@copy), [`listing`], the
//! export format) is built on them.

pub mod copy;
pub mod dump;
pub mod listing;
pub mod reader;
pub mod restore;
pub mod writer;

mod error;
mod path;

pub use copy::copy_tree;
pub use dump::dump_path;
pub use error::NarError;
pub use listing::{list, ListOptions};
pub use path::{DisplayBytes, NarPath};
pub use reader::{copy_nar, read_nar, validate, Contents, NarVisitor};
pub use restore::restore;
pub use writer::NarWriter;

/// Longest entry name, in bytes (`NAME_MAX` on Linux; newer Nix enforces it too).
pub const MAX_NAME_LEN: usize = 255;

/// Longest symlink target, in bytes (`PATH_MAX - 1` on Linux).
pub const MAX_TARGET_LEN: usize = 4095;

/// Largest file a NAR may hold: what `off_t` can describe. Refusing larger lengths up
/// front turns a hostile `2^63` length into an error instead of a very long read.
pub const MAX_CONTENTS_LEN: u64 = i64::MAX as u64;

/// Deepest directory nesting accepted (the root is depth 0).
///
/// Newer Nix bounds nesting to keep its recursive parser's stack small. Real trees
/// (`node_modules` chains included) stay well below this; every level costs the restorer
/// and the dumper one open directory handle, so the bound also keeps those far from
/// the file descriptor limit.
pub const MAX_DEPTH: usize = 256;

/// Longest tag the grammar uses (`nix-archive-1`), rounded up to the padding unit. Any
/// longer string where a tag belongs is rejected without reading it.
pub(crate) const MAX_TAG_LEN: usize = 16;

/// The byte tokens of the grammar, each already framed (length, bytes, padding).
///
/// Readers compare against these and writers emit them, so the wire spelling of the
/// grammar lives in exactly one place; the unit test below rebuilds each from its
/// text.
pub mod token {
    /// `str("nix-archive-1")`, the magic that starts every NAR.
    pub const MAGIC: &[u8] = b"\x0d\0\0\0\0\0\0\0nix-archive-1\0\0\0";
    /// `str("(")`, opening a node or an entry.
    pub const OPEN: &[u8] = b"\x01\0\0\0\0\0\0\0(\0\0\0\0\0\0\0";
    /// `str(")")`, closing a node or an entry.
    pub const CLOSE: &[u8] = b"\x01\0\0\0\0\0\0\0)\0\0\0\0\0\0\0";
    /// `str("type")`, the first tag of every node.
    pub const TYPE: &[u8] = b"\x04\0\0\0\0\0\0\0type\0\0\0\0";
    /// `str("regular")`, a file node.
    pub const REGULAR: &[u8] = b"\x07\0\0\0\0\0\0\0regular\0";
    /// `str("executable")`, the executable marker; its value is [`EMPTY`].
    pub const EXECUTABLE: &[u8] = b"\x0a\0\0\0\0\0\0\0executable\0\0\0\0\0\0";
    /// `str("")`, the value of the executable marker.
    pub const EMPTY: &[u8] = b"\0\0\0\0\0\0\0\0";
    /// `str("contents")`, followed by the file's length and bytes.
    pub const CONTENTS: &[u8] = b"\x08\0\0\0\0\0\0\0contents";
    /// `str("symlink")`, a symlink node.
    pub const SYMLINK: &[u8] = b"\x07\0\0\0\0\0\0\0symlink\0";
    /// `str("target")`, followed by the link target.
    pub const TARGET: &[u8] = b"\x06\0\0\0\0\0\0\0target\0\0";
    /// `str("directory")`, a directory node.
    pub const DIRECTORY: &[u8] = b"\x09\0\0\0\0\0\0\0directory\0\0\0\0\0\0\0";
    /// `str("entry")`, starting a directory entry.
    pub const ENTRY: &[u8] = b"\x05\0\0\0\0\0\0\0entry\0\0\0";
    /// `str("name")`, followed by an entry's name.
    pub const NAME: &[u8] = b"\x04\0\0\0\0\0\0\0name\0\0\0\0";
    /// `str("node")`, between an entry's name and its node.
    pub const NODE: &[u8] = b"\x04\0\0\0\0\0\0\0node\0\0\0\0";
}

/// Bytes of zero padding after a string of `len` bytes.
pub(crate) const fn padding(len: u64) -> usize {
    ((8 - (len % 8)) % 8) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(s: &[u8]) -> Vec<u8> {
        let mut out = (s.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(s);
        out.resize(out.len() + padding(s.len() as u64), 0);
        out
    }

    #[test]
    fn tokens_are_framed_strings() {
        assert_eq!(token::MAGIC, framed(b"nix-archive-1"));
        assert_eq!(token::OPEN, framed(b"("));
        assert_eq!(token::CLOSE, framed(b")"));
        assert_eq!(token::TYPE, framed(b"type"));
        assert_eq!(token::REGULAR, framed(b"regular"));
        assert_eq!(token::EXECUTABLE, framed(b"executable"));
        assert_eq!(token::EMPTY, framed(b""));
        assert_eq!(token::CONTENTS, framed(b"contents"));
        assert_eq!(token::SYMLINK, framed(b"symlink"));
        assert_eq!(token::TARGET, framed(b"target"));
        assert_eq!(token::DIRECTORY, framed(b"directory"));
        assert_eq!(token::ENTRY, framed(b"entry"));
        assert_eq!(token::NAME, framed(b"name"));
        assert_eq!(token::NODE, framed(b"node"));
    }

    #[test]
    fn padding_rounds_up_to_eight() {
        assert_eq!([0, 1, 7, 8, 9, 13].map(padding), [0, 7, 1, 0, 7, 3]);
    }
}
