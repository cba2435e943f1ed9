//! Errors of the store database.

use std::path::PathBuf;

use thiserror::Error;
use unrooted_format::content_address::ContentAddressError;
use unrooted_format::hash::HashError;
use unrooted_format::StorePathError;

/// Why a database operation failed. Each variant names the operation; paths are full
/// store paths as Nix prints them.
#[derive(Debug, Error)]
pub enum DbError {
    /// Reading `db/schema`.
    #[error("reading the database schema version from {path}")]
    ReadSchemaVersion {
        /// The `schema` file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// `db/schema` holds something other than a number.
    #[error("the database schema version in {path} is not a number: {text:?}")]
    ParseSchemaVersion {
        /// The `schema` file.
        path: PathBuf,
        /// What it holds.
        text: String,
    },
    /// The database has a schema version we cannot use without migrating it.
    #[error(
        "the Nix store database in {path} has schema version {found}, but only version {expected} is supported"
    )]
    UnsupportedSchema {
        /// The `schema` file.
        path: PathBuf,
        /// Its version.
        found: u32,
        /// The version we support.
        expected: u32,
    },
    /// Writing `db/schema` after creating the database.
    #[error("writing the database schema version to {path}")]
    WriteSchemaVersion {
        /// The `schema` file.
        path: PathBuf,
        /// The I/O failure.
        #[source]
        source: std::io::Error,
    },
    /// Opening `db.sqlite` (or the in-memory database).
    #[error("opening the store database {path}")]
    Open {
        /// The database file (`:memory:` for an in-memory one).
        path: PathBuf,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Applying a connection setting (a pragma or the busy timeout).
    #[error("setting '{setting}' on the store database")]
    Configure {
        /// The setting.
        setting: &'static str,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating the tables of a new database.
    #[error("creating the store database schema")]
    CreateSchema {
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Starting or committing a transaction.
    #[error("{action} a store database transaction")]
    Transaction {
        /// `beginning` or `committing`.
        action: &'static str,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Writing a path's rows during registration.
    #[error("registering path '{path}' in the store database")]
    RegisterPath {
        /// The path being registered.
        path: String,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// A registered path refers to a path that is neither valid nor registered with it.
    #[error("cannot register path '{path}': its reference '{reference}' is not valid")]
    RegisterInvalidReference {
        /// The path being registered.
        path: String,
        /// The missing reference.
        reference: String,
    },
    /// Registration would create a reference cycle between different paths.
    #[error("cycle detected in the references of '{path}' while registering paths")]
    RegisterCycle {
        /// A path on the cycle.
        path: String,
    },
    /// A query failed.
    #[error("{query} of '{path}' in the store database")]
    Query {
        /// What was queried (`querying path info`, `querying referrers`, …).
        query: &'static str,
        /// The path (or hash part) asked about.
        path: String,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Listing every valid path failed.
    #[error("listing the valid paths in the store database")]
    QueryAllValidPaths {
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// A hash part is not 32 characters of Nix base32.
    #[error("invalid hash part '{hash_part}'")]
    InvalidHashPart {
        /// The offending text (truncated to 64 bytes).
        hash_part: String,
    },
    /// A row holds something that does not parse; the database was changed by
    /// something else or is corrupt.
    #[error("the store database row of '{path}' has a bad {column} value {value:?}")]
    CorruptRow {
        /// The row's path (or its raw text if the path itself is bad).
        path: String,
        /// The column.
        column: &'static str,
        /// The value found.
        value: String,
        /// Why it does not parse.
        #[source]
        source: Box<CorruptValue>,
    },
    /// Invalidating paths (deleting their rows) failed, e.g. because a valid path
    /// still refers to one of them.
    #[error("invalidating path '{path}' in the store database")]
    Invalidate {
        /// The path.
        path: String,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Updating a path's signatures failed.
    #[error("adding signatures to path '{path}' in the store database")]
    AddSignatures {
        /// The path.
        path: String,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Recording a realisation needs the realisation tables, which only exist with
    /// the experimental feature `ca-derivations`.
    #[error("cannot record the realisation '{id}': the experimental feature 'ca-derivations' is not enabled")]
    NoRealisations {
        /// The realisation's id.
        id: String,
    },
    /// A realisation of the same derivation output with another path is recorded.
    #[error("Trying to register a realisation of '{id}', but we already have another one locally.\nLocal:  {old}\nRemote: {new}")]
    IncompatibleRealisation {
        /// The realisation's id.
        id: String,
        /// The path recorded.
        old: String,
        /// The path offered.
        new: String,
    },
    /// A realisation depends on one that is not recorded.
    #[error(
        "unable to register the derivation '{id}' as it depends on the non existent '{dependency}'"
    )]
    MissingDependentRealisation {
        /// The realisation's id.
        id: String,
        /// The missing dependency's id.
        dependency: String,
    },
    /// A realisation depends on one recorded with another path.
    #[error("unable to register the derivation '{id}' as it depends on a realisation of '{dependency}' that doesn’tmatch what we have locally")]
    MismatchedDependentRealisation {
        /// The realisation's id.
        id: String,
        /// The dependency's id.
        dependency: String,
    },
    /// Writing a realisation's rows failed.
    #[error("recording the realisation '{id}' in the store database")]
    RegisterRealisation {
        /// The realisation's id.
        id: String,
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// Creating or upgrading the realisation tables failed.
    #[error("creating the content-addressed derivations schema of the store database")]
    CreateCaSchema {
        /// The SQLite failure.
        #[source]
        source: rusqlite::Error,
    },
    /// `db/ca-schema` names a version newer than Nix 2.8's.
    #[error("current Nix store ca-schema is version {found}, but I only support {supported}")]
    UnsupportedCaSchema {
        /// Its version.
        found: u32,
        /// The version supported.
        supported: u32,
    },
    /// An operation that needs a valid path was given an invalid one.
    #[error("path '{path}' is not valid")]
    NotValid {
        /// The path.
        path: String,
    },
}

/// Why a value read from the database does not parse.
#[derive(Debug, Error)]
pub enum CorruptValue {
    /// Not a store path in this store.
    #[error(transparent)]
    StorePath(#[from] StorePathError),
    /// Not a hash.
    #[error(transparent)]
    Hash(#[from] HashError),
    /// Not a content address.
    #[error(transparent)]
    ContentAddress(#[from] ContentAddressError),
    /// A negative size or time.
    #[error("negative number")]
    Negative,
}
