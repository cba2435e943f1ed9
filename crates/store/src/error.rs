//! Errors of the local store.

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use unrooted_db::DbError;
use unrooted_format::derivation::hash_modulo::{HashModuloError, OutputMismatch};
use unrooted_format::derivation::ParseError;
use unrooted_format::export::ExportError;
use unrooted_format::nar::NarError;
use unrooted_format::{Hash, StorePathError};

/// Why a store operation failed. Variants name the operation; store paths are full
/// paths as Nix prints them, files on disk are [`PathBuf`]s.
#[derive(Debug, Error)]
pub enum StoreError {
    /// Creating a directory, file or link of the store or state layout.
    #[error("creating {path}")]
    CreateLayout {
        /// What was being created.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Taking a lock (`db/big-lock`, a path's `.lock` file, the temporary area).
    #[error("locking {path}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Removing a leftover temporary entry of an earlier crash.
    #[error("removing temporary leftover {path}")]
    RemoveTemporary {
        /// The leftover.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// The database failed; the error names the operation.
    #[error(transparent)]
    Database(#[from] DbError),
    /// A store opened only to read it has no database at all.
    #[error("no store database in '{path}' (is NIX_STATE_DIR right?)")]
    NoDatabase {
        /// The database directory.
        path: PathBuf,
    },
    /// A name is not a valid store path name.
    #[error("invalid store path name '{name}'")]
    InvalidName {
        /// The name (truncated to 256 bytes).
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
    /// A content address and references do not give a store path (references on a
    /// kind of path that cannot have them).
    #[error("computing the store path of '{name}'")]
    ComputePath {
        /// The name.
        name: String,
        /// Why.
        #[source]
        source: StorePathError,
    },
    /// A text path (such as a `.drv`) cannot refer to itself.
    #[error("text path '{name}' cannot refer to itself")]
    TextSelfReference {
        /// The name.
        name: String,
    },
    /// Reading or unpacking the NAR of a path being added.
    #[error("unpacking the NAR of '{path}'")]
    Restore {
        /// The store path being added.
        path: String,
        /// The NAR failure.
        #[source]
        source: Box<NarError>,
    },
    /// Reading the contents of a path being added.
    #[error("receiving the contents of '{name}'")]
    Receive {
        /// The store path (or name, before the path is known).
        name: String,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Serialising a path on disk as a NAR (to hash or export it).
    #[error("serialising {path} as a NAR")]
    Dump {
        /// The file on disk.
        path: PathBuf,
        /// The NAR failure.
        #[source]
        source: Box<NarError>,
    },
    /// The NAR received does not hash to the NAR hash claimed.
    #[error(
        "hash mismatch importing path '{path}';\n  specified: {}\n  got:       {}",
        .expected.to_prefixed_base32(),
        .actual.to_prefixed_base32()
    )]
    HashMismatch {
        /// The path.
        path: String,
        /// The claimed NAR hash.
        expected: Box<Hash>,
        /// The NAR hash of what arrived.
        actual: Box<Hash>,
    },
    /// The NAR received is not as long as claimed.
    #[error(
        "size mismatch importing path '{path}';\n  specified: {expected}\n  got:       {actual}"
    )]
    SizeMismatch {
        /// The path.
        path: String,
        /// The claimed NAR size.
        expected: u64,
        /// The size of what arrived.
        actual: u64,
    },
    /// The contents do not have the content hash the path's `ca` claims.
    #[error(
        "ca hash mismatch importing path '{path}';\n  specified: {}\n  got:       {}",
        .expected.to_prefixed_base32(),
        .actual.to_prefixed_base32()
    )]
    CaHashMismatch {
        /// The path.
        path: String,
        /// The claimed content hash.
        expected: Box<Hash>,
        /// The content hash of what arrived.
        actual: Box<Hash>,
    },
    /// A `ca` claim that does not give the path's own name.
    #[error("cannot add path '{path}' to the Nix store because it claims to be content-addressed but isn't")]
    NotContentAddressed {
        /// The path.
        path: String,
    },
    /// Signature checking was asked for and the path has no trusted signature.
    #[error("cannot add path '{path}' because it lacks a signature by a trusted key")]
    Untrusted {
        /// The path.
        path: String,
    },
    /// A file type a store path cannot hold (device, fifo, socket).
    #[error("file {path} has an unsupported type")]
    UnsupportedFileType {
        /// The file.
        path: PathBuf,
    },
    /// Resetting metadata (mode, mtime, extended attributes) of a file being added.
    #[error("canonicalising the metadata of {path}")]
    Canonicalise {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Flushing a new path to disk.
    #[error("syncing {path} to disk")]
    Sync {
        /// What was flushed.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Moving a finished path into place (or an invalid leftover out of the way).
    #[error("moving {from} to {to}")]
    Move {
        /// Source.
        from: PathBuf,
        /// Destination.
        to: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Deleting a file tree (a replaced invalid path or a temporary).
    #[error("deleting {path}")]
    Delete {
        /// The tree.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// A `.drv` being added does not parse.
    #[error("parsing derivation '{path}'")]
    ParseDerivation {
        /// The `.drv` path.
        path: String,
        /// Why.
        #[source]
        source: Box<ParseError>,
    },
    /// Reading a `.drv` from the store (an input of one being added).
    #[error("reading derivation '{path}'")]
    ReadDerivation {
        /// The `.drv` path.
        path: String,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Computing a `.drv`'s output paths failed.
    #[error("computing the output paths of derivation '{path}'")]
    HashDerivation {
        /// The `.drv` path.
        path: String,
        /// Why.
        #[source]
        source: Box<HashModuloError>,
    },
    /// A `.drv` names output paths that do not follow from its contents.
    #[error("derivation '{path}' has incorrect outputs: {mismatch}")]
    IncorrectDerivationOutputs {
        /// The `.drv` path.
        path: String,
        /// The first difference.
        mismatch: Box<OutputMismatch>,
    },
    /// Reading an export stream (`nix-store --export`).
    #[error("importing paths from an export stream")]
    Import {
        /// Why.
        #[source]
        source: Box<ExportError>,
    },
    /// A path that must be valid is not.
    #[error("path '{path}' is not valid")]
    NotValid {
        /// The path.
        path: String,
    },
    /// Reading the store directory or a path in it.
    #[error("reading {path}")]
    Read {
        /// What was read.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// Hard-linking a file to its copy in `.links`.
    #[error("optimising {path}")]
    Optimise {
        /// The file being replaced by a link.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: io::Error,
    },
    /// A hash part is not 32 base32 characters.
    #[error("invalid hash part '{hash_part}'")]
    InvalidHashPart {
        /// The text (truncated).
        hash_part: String,
    },
}
