//! Where a store lives and how strict it is.

use std::path::PathBuf;

use unrooted_db::DbOptions;
use unrooted_format::signature::TrustedKeys;
use unrooted_format::StoreDir;

/// Nix's default `gc-reserved-space`: 8 MiB.
pub const DEFAULT_RESERVED_SPACE: u64 = 8 * 1024 * 1024;

/// The configuration of a [`LocalStore`](crate::LocalStore). Nothing in the store
/// is a constant: the logical store directory, where it really is on disk, the state
/// and log directories all come from here.
#[derive(Debug, Clone)]
pub struct LocalStoreConfig {
    /// The store directory paths are named in (`/nix/store`; `NIX_STORE_DIR`).
    pub store_dir: StoreDir,
    /// Where that directory is on disk; usually the same path, different when the
    /// store is mounted elsewhere (Nix's `real` store setting).
    pub real_store_dir: PathBuf,
    /// The state directory (`/nix/var/nix`; `NIX_STATE_DIR`).
    pub state_dir: PathBuf,
    /// The log directory (`/nix/var/log/nix`; `NIX_LOG_DIR`).
    pub log_dir: PathBuf,
    /// Keys whose signatures make a path trusted (`trusted-public-keys`).
    pub trusted_public_keys: TrustedKeys,
    /// Whether paths added with signature checking need a trusted signature or a
    /// valid content address (`require-sigs`, default true).
    pub require_sigs: bool,
    /// Whether added files are flushed to disk before they are registered, so that a
    /// power failure cannot leave a valid path with lost contents (default true;
    /// Nix itself never does this).
    pub fsync_paths: bool,
    /// Size of `db/reserved`, the file the collector deletes to make room on a full
    /// disk (`gc-reserved-space`); 0 creates none.
    pub reserved_space: u64,
    /// SQLite settings (`fsync-metadata`, `use-sqlite-wal`).
    pub db: DbOptions,
}

impl LocalStoreConfig {
    /// A configuration with Nix's defaults for everything but the four locations.
    pub fn new(
        store_dir: StoreDir,
        real_store_dir: PathBuf,
        state_dir: PathBuf,
        log_dir: PathBuf,
    ) -> Self {
        Self {
            store_dir,
            real_store_dir,
            state_dir,
            log_dir,
            trusted_public_keys: TrustedKeys::new(),
            require_sigs: true,
            fsync_paths: true,
            reserved_space: DEFAULT_RESERVED_SPACE,
            db: DbOptions::default(),
        }
    }
}
