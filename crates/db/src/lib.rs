//! The store database: Nix 2.8's SQLite database (schema 10) with a typed API.
//!
//! A [`Database`] is one SQLite connection configured as Nix configures its own
//! (foreign keys on, WAL, `synchronous = normal`, a one-hour busy timeout,
//! `wal_autocheckpoint = 40000`), so that the real Nix tools and unrooted can use the
//! same `db.sqlite` side by side: a database Nix created is opened unchanged, and one
//! created here has byte-identical schema text. Rows are written exactly as Nix writes
//! them (`sha256:<hex>` hashes, NULL for absent values, one transaction per batch).
//!
//! The API is synchronous: SQLite calls block, the store above is synchronous too (one
//! thread per daemon connection), and statements are short. Prepared statements are
//! cached per connection. Tests use [`Database::open_in_memory`].

mod database;
mod error;
mod path_info;
mod queries;
mod realisations;
pub mod schema;
mod writes;

pub use database::{Database, DbOptions};
pub use error::{CorruptValue, DbError};
pub use path_info::ValidPathInfo;
pub use queries::GraphNode;
pub use realisations::{DrvOutputId, Realisation, MAX_DEPENDENT_REALISATIONS};
pub use writes::Registration;
