//! What every connection of the daemon shares: the configuration, the store, the
//! build scheduler, the collector's settings and the registry of temporary roots.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use unrooted_format::signature::TrustedKeys;
use unrooted_gc::{GcConfig, TempRoots};
use unrooted_store::{LocalStore, LocalStoreConfig};
use unrooted_substitute::{error_chain, NarInfoCache};

use crate::config::Config;
use crate::DaemonError;
use crate::LayerSettings;

/// What all connections share.
pub(crate) struct DaemonState {
    /// The configuration.
    pub config: Config,
    /// The store.
    pub store: LocalStore,
    /// The daemon's own uid (the store owner).
    pub own_uid: u32,
    /// Builds for every connection.
    pub scheduler: unrooted_builder::Scheduler,
    /// Temporary roots of open connections (by connection id) and of adds and builds
    /// in progress: paths in use, which the collector must keep.
    pub temp_roots: TempRoots,
    /// The collector's settings.
    pub gc_config: GcConfig,
    /// Keeps deleting collections apart from adds of paths not known in advance.
    pub gc_barrier: crate::gc_barrier::GcBarrier,
    /// Automatic collection from `min-free`/`max-free`.
    pub auto_gc: crate::auto_gc::AutoGc,
    /// What binary caches answered lately (shared by all connections): opened at
    /// the first substitution (see [`DaemonState::narinfo_cache`]).
    narinfo_cache: OnceLock<Option<Arc<NarInfoCache>>>,
    /// `post-build-upload`: outputs built here go to these caches afterwards.
    pub uploader: Option<crate::post_build::Uploader>,
    /// The id the next connection gets.
    next_connection: AtomicU64,
}

impl DaemonState {
    /// Opens the store the configuration names.
    pub fn open(config: Config, own_uid: u32) -> Result<Self, DaemonError> {
        Self::open_for(config, own_uid, &crate::scheduler::daemon_exe())
    }

    /// [`DaemonState::open`] with `exe` standing for the daemon's executable (see
    /// [`crate::scheduler::scheduler_for`]).
    pub fn open_for(
        config: Config,
        own_uid: u32,
        exe: &std::path::Path,
    ) -> Result<Self, DaemonError> {
        let l = &config.locations;
        let mut store_config = LocalStoreConfig::new(
            l.store_dir.clone(),
            l.store_dir.as_str().into(),
            l.state_dir.clone(),
            l.log_dir.clone(),
        );
        let keys = config.settings.trusted_public_keys.join(" ");
        store_config.trusted_public_keys = TrustedKeys::parse(&keys).unwrap_or_else(|e| {
            tracing::warn!("ignoring trusted-public-keys: {e}");
            TrustedKeys::new()
        });
        store_config.require_sigs = config.settings.require_sigs;
        // Durability against a system crash (power loss), beyond what a killed
        // process needs: Nix's `fsync-metadata` (default true) governs the database;
        // `fsync-store-paths` (default false, as Nix, which never flushes added
        // files) flushes each added path before it is registered. A killed daemon
        // loses nothing either way: the page cache outlives the process.
        if config.raw.get("fsync-metadata") == Some("false") {
            store_config.db.fsync_metadata = false;
        }
        store_config.db.ca_derivations = config.settings.experimental_feature("ca-derivations");
        store_config.fsync_paths = config.raw.get("fsync-store-paths") == Some("true");
        // The scheduler first: it gives back what builds of a killed daemon left, which
        // the store's sweep of old temporary areas could not remove otherwise.
        let scheduler =
            crate::scheduler::scheduler_for(&config, exe).map_err(DaemonError::Build)?;
        let store = LocalStore::open(store_config).map_err(|source| DaemonError::Store {
            store_dir: l.store_dir.to_string(),
            source: Box::new(source),
        })?;
        // Nothing of the daemon's stays in the store directory until a connection
        // needs it, as with nix-daemon, which opens the store for each connection:
        // the temporary area the open made goes now (it is made again at the first
        // new name), so the store directory is as its administrator left it.
        drop(store.in_use());
        let gc_config = config.gc_config()?;
        let s = &config.settings;
        let auto_gc =
            crate::auto_gc::AutoGc::new(s.min_free, s.max_free, s.min_free_check_interval);
        let uploader = crate::post_build::Uploader::start(&config);
        Ok(Self {
            uploader,
            narinfo_cache: OnceLock::new(),
            config,
            store,
            own_uid,
            scheduler,
            temp_roots: TempRoots::new(),
            gc_config,
            gc_barrier: crate::gc_barrier::GcBarrier::default(),
            auto_gc,
            next_connection: AtomicU64::new(1),
        })
    }
}

impl DaemonState {
    /// A new connection's id in [`DaemonState::temp_roots`].
    pub fn next_connection_id(&self) -> u64 {
        self.next_connection.fetch_add(1, Ordering::Relaxed)
    }

    /// The lookup cache of narinfos, opened (made, the first time) when a
    /// substitution first needs it: a daemon that never substitutes makes nothing in
    /// the state directory for it, as nix-daemon makes its cache only when used.
    pub fn narinfo_cache(&self) -> Option<Arc<NarInfoCache>> {
        self.narinfo_cache
            .get_or_init(|| open_narinfo_cache(&self.config))
            .clone()
    }
}

/// Opens the lookup cache of narinfos, `<state>/binary-cache/narinfo-cache-v1.sqlite`
/// (in memory when that fails: it is only a cache).
fn open_narinfo_cache(config: &Config) -> Option<Arc<NarInfoCache>> {
    let raw = &config.raw;
    let ttl = |name: &str, default: Duration| {
        raw.get(name)
            .and_then(|v| v.parse().ok())
            .map_or(default, Duration::from_secs)
    };
    let neg = ttl(
        "narinfo-cache-negative-ttl",
        unrooted_substitute::DEFAULT_NEGATIVE_TTL,
    );
    let pos = ttl(
        "narinfo-cache-positive-ttl",
        unrooted_substitute::DEFAULT_POSITIVE_TTL,
    );
    let path = config
        .locations
        .state_dir
        .join("binary-cache/narinfo-cache-v1.sqlite");
    match NarInfoCache::open(&path, neg, pos) {
        Ok(c) => Some(Arc::new(c)),
        Err(e) => {
            tracing::warn!("narinfo lookup cache: {}", error_chain(&e));
            NarInfoCache::in_memory(neg, pos).ok().map(Arc::new)
        }
    }
}
