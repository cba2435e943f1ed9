//! The local store on disk: adding, registering, querying, verifying and optimising
//! store paths, in a layout and database the real Nix 2.8 tools can share.
//!
//! [`LocalStore`] owns every filesystem effect on the store directory and its state
//! directory: it creates the layout on first open, receives new paths into a private
//! temporary area, checks them (NAR hash and size, content address, signatures),
//! resets their metadata, moves them into place and registers them (through
//! `unrooted-db`), with per-path locks compatible with Nix's. It never needs root.
//!
//! The API is synchronous: the daemon runs one thread per client connection, and
//! everything here is blocking file and SQLite I/O that an async runtime would only
//! wrap in `spawn_blocking`; a `LocalStore` is `Sync` and shared by those threads.

pub mod acl;
mod add;
pub mod canonicalise;
mod config;
mod delete;
mod error;
mod gc;
mod layout;
mod lock;
mod optimise;
mod reader;
mod realisations;
mod store;
mod tmp;
pub mod unix_socket;
mod verify;

pub use add::CheckSigs;
pub use config::{LocalStoreConfig, DEFAULT_RESERVED_SPACE};
pub use error::StoreError;
pub use gc::{DeleteOutcome, DeletionLock, LinksStats};
pub use lock::OutputLocks;
pub use optimise::OptimiseStats;
pub use reader::StoreReader;
pub use store::{LocalStore, StoreUse, MAX_READER_CONNECTIONS};
pub use tmp::TEMP_PREFIX;
pub use unrooted_db::{DbOptions, DrvOutputId, GraphNode, Realisation, ValidPathInfo};
pub use verify::VerifyMessage;
