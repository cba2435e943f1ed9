//! The unrooted daemon: it serves the Nix worker protocol on a Unix socket, as an
//! ordinary user, for every user of the machine.
//!
//! It composes the lower layers and reimplements none of them: the configuration is
//! parsed in `unrooted-config`, trust lives here, the wire format in `unrooted-protocol`, every effect on the store
//! in `unrooted-store`. Connections are served by one thread each (see [`server`]),
//! so this crate is synchronous like the layers it composes.

mod auto_collect;
mod auto_gc;
mod client_sigs;
mod connection;
mod gc_barrier;
mod layer_settings;
mod ops;
pub mod payer;
mod post_build;
mod roots_helper;
mod scheduler;
pub mod server;
mod session;
mod state;
pub mod stdio;
#[cfg(feature = "test-support")]
pub mod testing;
pub mod trust;
mod userdirs;

use std::sync::Arc;

use thiserror::Error;

pub use unrooted_config as config;

pub use config::Config;
pub use layer_settings::LayerSettings;

/// Why the daemon could not start.
#[derive(Debug, Error)]
pub enum DaemonError {
    /// Started as root without `--allow-root`.
    #[error("refusing to run as root: unrooted is meant to run as an unprivileged store owner (pass --allow-root to override)")]
    Root,
    /// The configuration is invalid.
    #[error("loading the configuration")]
    Config(#[from] config::ConfigError),
    /// The store could not be opened.
    #[error("opening the store {store_dir}")]
    Store {
        /// The store directory.
        store_dir: String,
        /// The cause (boxed: store errors are large and this one happens once).
        #[source]
        source: Box<unrooted_store::StoreError>,
    },
    /// The build scheduler could not be set up.
    #[error("setting up builds")]
    Build(#[source] unrooted_builder::BuildError),
    /// The socket could not be set up.
    #[error("setting up the daemon socket")]
    Server(#[from] server::ServerError),
    /// Accepting connections failed for good.
    #[error("serving connections")]
    Serve(#[source] std::io::Error),
}

/// How the daemon was asked to run.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// Run even when the effective uid is 0.
    pub allow_root: bool,
    /// The most connections served at once.
    pub max_connections: usize,
    /// The most connections one user may have open at once (a user's subordinate
    /// ids count as that user).
    pub max_connections_per_user: usize,
    /// Of `max_connections`, how many only users holding fewer than
    /// [`server::FEW`] connections may take (at most a quarter).
    pub reserved_connections: usize,
}

impl Default for DaemonOptions {
    fn default() -> Self {
        Self {
            allow_root: false,
            max_connections: 1024,
            max_connections_per_user: 128,
            reserved_connections: 128,
        }
    }
}

/// Loads the configuration from the environment, opens the store and serves until
/// killed.
pub fn run(options: &DaemonOptions) -> Result<(), DaemonError> {
    let own_uid = rustix::process::geteuid().as_raw();
    if own_uid == 0 && !options.allow_root {
        return Err(DaemonError::Root);
    }
    // Before anything starts a program (opening the state starts the spare sandbox
    // helper and tries newuidmap): systemd's socket, made close-on-exec.
    let activated = server::take_activated()?;
    let config = Config::load(|k| std::env::var(k).ok())?;
    for name in &config.settings.unknown {
        tracing::warn!("unknown setting '{name}' in the configuration is ignored");
    }
    let state = state::DaemonState::open(config, own_uid)?;
    userdirs::repair_parents(&state.config.locations.state_dir, own_uid);
    // Everything the start-up log says comes before the socket appears, so whoever
    // waits for the socket (systemd, tests) finds the whole log.
    log_start(&state, own_uid);
    let listener = match activated {
        Some(l) => l,
        None => server::bind(&state.config.locations.socket_path)?,
    };
    let state = Arc::new(state);
    auto_collect::spawn_auto_gc(Arc::clone(&state));
    let active = std::sync::atomic::AtomicUsize::new(0);
    let limits = server::Limits::new(
        options.max_connections,
        options.max_connections_per_user,
        options.reserved_connections,
    );
    let owners = payer::SubUidOwners::load(std::path::Path::new(payer::SUBUID_FILE));
    server::serve(listener, limits, owners, move |stream, charge| {
        use std::sync::atomic::Ordering;
        active.fetch_add(1, Ordering::SeqCst);
        connection::handle(&state, stream, &charge);
        // The last client gone: an idle daemon keeps no spare database
        // connections (nor their descriptors) open.
        if active.fetch_sub(1, Ordering::SeqCst) == 1 {
            state.store.release_idle_readers();
        }
    })
    .map_err(DaemonError::Serve)
}

/// The start-up log: where roots come from, the ids builds run as, automatic
/// collection, and what is served.
fn log_start(state: &state::DaemonState, own_uid: u32) {
    tracing::info!(
        "{}",
        roots_helper::describe_mode(&state.gc_config.roots_helper)
    );
    let build_cfg = state.scheduler.config();
    if build_cfg.sandbox {
        // Said once: the single-id mode is the weaker one.
        match &build_cfg.ids {
            ids @ unrooted_builder::IdMode::Ranges(_) => tracing::info!("{}", ids.describe()),
            ids @ unrooted_builder::IdMode::Single { .. } => tracing::warn!("{}", ids.describe()),
        }
    }
    let s = &state.config.settings;
    if s.min_free > 0 {
        tracing::info!(
            "automatic garbage collection below min-free = {} bytes, up to max-free = {} bytes",
            s.min_free,
            s.max_free
        );
    }
    tracing::info!(
        "serving the store {} on {} as uid {own_uid}",
        state.config.locations.store_dir,
        state.config.locations.socket_path.display()
    );
}
