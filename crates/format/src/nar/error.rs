//! What can go wrong reading, writing, dumping or restoring a NAR.

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::path::{DisplayBytes, NarPath};

/// A NAR could not be read, written, dumped or restored.
///
/// Parse errors name the node inside the archive (`path`, `/` for the root) where the
/// input stopped making sense; filesystem errors name the file on disk.
#[derive(Debug, Error)]
pub enum NarError {
    /// Reading the archive failed.
    #[error("reading NAR at byte {offset}")]
    Read {
        /// Bytes of the archive consumed before the failure.
        offset: u64,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The archive ended in the middle of a node.
    #[error("NAR ends early at byte {offset}, inside '{path}'")]
    Truncated {
        /// The node being read.
        path: NarPath,
        /// Bytes of the archive consumed before its end.
        offset: u64,
    },
    /// The archive does not start with `nix-archive-1`.
    #[error("input is not a NAR archive (bad magic)")]
    BadMagic,
    /// A tag is not one the grammar allows at this point (unknown, misplaced or
    /// repeated).
    #[error("NAR node '{path}': expected {expected}, found '{found}'")]
    UnexpectedTag {
        /// The node being read.
        path: NarPath,
        /// What the grammar allows here.
        expected: &'static str,
        /// The tag found.
        found: DisplayBytes,
    },
    /// A string where a tag belongs is longer than any tag.
    #[error("NAR node '{path}': {len}-byte string where {expected} belongs")]
    TagTooLong {
        /// The node being read.
        path: NarPath,
        /// What the grammar allows here.
        expected: &'static str,
        /// The announced length.
        len: u64,
    },
    /// A string's padding holds non-zero bytes.
    #[error("NAR node '{path}': non-zero padding at byte {offset}")]
    NonZeroPadding {
        /// The node being read.
        path: NarPath,
        /// Offset of the padding.
        offset: u64,
    },
    /// The `executable` marker has a non-empty value.
    #[error("NAR node '{path}': the executable marker has a non-empty value")]
    ExecutableValue {
        /// The file's node.
        path: NarPath,
    },
    /// A file's contents are longer than [`super::MAX_CONTENTS_LEN`].
    #[error("NAR node '{path}': file of {len} bytes is larger than any file can be")]
    ContentsTooLong {
        /// The file's node.
        path: NarPath,
        /// The announced length.
        len: u64,
    },
    /// An entry name is empty, `.`, `..`, or contains `/` or NUL.
    #[error("NAR directory '{path}' contains the invalid file name '{name}'")]
    InvalidName {
        /// The directory.
        path: NarPath,
        /// The name.
        name: DisplayBytes,
    },
    /// An entry name is longer than [`super::MAX_NAME_LEN`].
    #[error("NAR directory '{path}' contains a {len}-byte name, longer than {max}", max = super::MAX_NAME_LEN)]
    NameTooLong {
        /// The directory.
        path: NarPath,
        /// The announced length.
        len: u64,
    },
    /// Entries are not in strictly increasing byte order.
    #[error(
        "NAR directory '{path}': entry '{name}' comes after '{previous}' (entries must be sorted)"
    )]
    UnsortedEntries {
        /// The directory.
        path: NarPath,
        /// The entry before.
        previous: DisplayBytes,
        /// The entry out of order.
        name: DisplayBytes,
    },
    /// A name occurs twice in one directory.
    #[error("NAR directory '{path}' contains '{name}' twice")]
    DuplicateEntry {
        /// The directory.
        path: NarPath,
        /// The repeated name.
        name: DisplayBytes,
    },
    /// A symlink target is empty or contains NUL.
    #[error("NAR symlink '{path}' has the invalid target '{target}'")]
    InvalidTarget {
        /// The symlink's node.
        path: NarPath,
        /// The target.
        target: DisplayBytes,
    },
    /// A symlink target is longer than [`super::MAX_TARGET_LEN`].
    #[error("NAR symlink '{path}' has a {len}-byte target, longer than {max}", max = super::MAX_TARGET_LEN)]
    TargetTooLong {
        /// The symlink's node.
        path: NarPath,
        /// The announced length.
        len: u64,
    },
    /// Directories are nested deeper than [`super::MAX_DEPTH`].
    #[error("NAR directory '{path}' is nested more than {max} levels deep", max = super::MAX_DEPTH)]
    TooDeep {
        /// The directory that goes too deep.
        path: NarPath,
    },
    /// The writer was driven out of grammar order (a caller bug, not bad input).
    #[error("NAR writer at '{path}': {operation} is not allowed here")]
    WriterState {
        /// The node being written.
        path: NarPath,
        /// The call made out of order.
        operation: &'static str,
    },
    /// A file's contents differ in length from the size announced for it.
    #[error("NAR node '{path}': {written} bytes of contents written, {announced} announced")]
    ContentsLength {
        /// The file's node.
        path: NarPath,
        /// The size announced.
        announced: u64,
        /// The bytes actually given.
        written: u64,
    },
    /// Writing the archive failed.
    #[error("writing NAR at '{path}'")]
    Write {
        /// The node being written.
        path: NarPath,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Reading a file, directory or symlink to dump it failed.
    #[error("reading '{path}'")]
    Dump {
        /// The file on disk.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// A file to dump is not a regular file, directory or symlink.
    #[error("file '{path}' has an unsupported type ({kind})")]
    UnsupportedFileType {
        /// The file on disk.
        path: PathBuf,
        /// What it is (`fifo`, `socket`, ...).
        kind: &'static str,
    },
    /// A file changed size while it was being dumped.
    #[error("file '{path}' changed size while being read")]
    FileChanged {
        /// The file on disk.
        path: PathBuf,
    },
    /// Creating a file, directory or symlink while restoring failed.
    #[error("restoring '{path}'")]
    Restore {
        /// The file on disk.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}
