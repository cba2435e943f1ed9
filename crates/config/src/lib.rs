//! Configuration read as Nix reads it: locations from `NIX_*` environment variables,
//! settings from `$NIX_CONF_DIR/nix.conf` (with `include`, `!include` and `extra-`
//! settings) and `NIX_CONFIG`.
//!
//! Unknown settings are kept and reported once at start-up rather than rejected,
//! because a `nix.conf` shared with the Nix clients holds client-only settings.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use thiserror::Error;
use unrooted_format::StoreDir;

/// `unrooted-ids-per-build` unset: a whole 16-bit id range per build, what the
/// sandbox maps (`unrooted_sandbox::UID_RANGE_IDS`; the daemon's tests check the two
/// agree, since this crate depends on no layer it configures).
pub const DEFAULT_IDS_PER_BUILD: u32 = 65536;

/// Deepest `include` nesting followed, so an include cycle ends with an error.
const MAX_INCLUDE_DEPTH: usize = 16;
/// Largest configuration file read.
const MAX_CONF_SIZE: u64 = 1 << 20;

/// Why the configuration could not be loaded.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// A configuration file exists but cannot be read.
    #[error("reading configuration file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A configuration file is larger than 1 MiB.
    #[error("configuration file {path} is larger than {MAX_CONF_SIZE} bytes")]
    TooLarge {
        /// The file.
        path: PathBuf,
    },
    /// A line is neither `name = value` nor an include.
    #[error("{path}:{line}: illegal configuration line '{text}'")]
    Syntax {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The line.
        text: String,
    },
    /// Includes nest deeper than 16 levels (an include cycle).
    #[error("{path}: includes nested more than {MAX_INCLUDE_DEPTH} deep")]
    IncludeDepth {
        /// The file that would be included.
        path: PathBuf,
    },
    /// A setting has a value of the wrong kind.
    #[error("setting '{name}' has invalid value '{value}': {expected}")]
    Value {
        /// The setting.
        name: String,
        /// The value found.
        value: String,
        /// What was expected.
        expected: &'static str,
    },
    /// The store directory is not usable.
    #[error("invalid store directory")]
    StoreDir(#[source] unrooted_format::StorePathError),
}

/// Where things live, from the environment as Nix reads it.
#[derive(Debug, Clone)]
pub struct Locations {
    /// `NIX_STORE_DIR`, default `/nix/store`.
    pub store_dir: StoreDir,
    /// `NIX_STATE_DIR`, default `/nix/var/nix`.
    pub state_dir: PathBuf,
    /// `NIX_LOG_DIR`, default `/nix/var/log/nix`.
    pub log_dir: PathBuf,
    /// `NIX_CONF_DIR`, default `/etc/nix`.
    pub conf_dir: PathBuf,
    /// `NIX_DAEMON_SOCKET_PATH`, default `<state>/daemon-socket/socket`.
    pub socket_path: PathBuf,
}

impl Locations {
    /// Reads the locations from `env` (a lookup, so tests need not touch the process
    /// environment).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &str, d: &str| env(k).filter(|v| !v.is_empty()).unwrap_or_else(|| d.into());
        let store_dir =
            StoreDir::new(&get("NIX_STORE_DIR", "/nix/store")).map_err(ConfigError::StoreDir)?;
        let state_dir = PathBuf::from(get("NIX_STATE_DIR", "/nix/var/nix"));
        let socket_path = env("NIX_DAEMON_SOCKET_PATH")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| state_dir.join("daemon-socket/socket"));
        Ok(Self {
            store_dir,
            log_dir: PathBuf::from(get("NIX_LOG_DIR", "/nix/var/log/nix")),
            conf_dir: PathBuf::from(get("NIX_CONF_DIR", "/etc/nix")),
            state_dir,
            socket_path,
        })
    }
}

/// The raw settings: each name with its value, `extra-` settings already appended.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawSettings(BTreeMap<String, String>);

impl RawSettings {
    /// Parses configuration text (as in a `nix.conf` or `NIX_CONFIG`), resolving
    /// includes relative to `dir`.
    pub fn apply_text(&mut self, text: &str, origin: &Path, dir: &Path) -> Result<(), ConfigError> {
        self.apply(text, origin, dir, 0)
    }

    /// Reads a file if it exists (a missing file is no configuration, as in Nix).
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        self.apply_file_at(path, 0, false)
    }

    fn apply_file_at(
        &mut self,
        path: &Path,
        depth: usize,
        must_exist: bool,
    ) -> Result<(), ConfigError> {
        if depth > MAX_INCLUDE_DEPTH {
            return Err(ConfigError::IncludeDepth { path: path.into() });
        }
        let read_err = |source| ConfigError::Read {
            path: path.into(),
            source,
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => return Ok(()),
            Err(e) => return Err(read_err(e)),
        };
        if meta.len() > MAX_CONF_SIZE {
            return Err(ConfigError::TooLarge { path: path.into() });
        }
        let text = fs::read_to_string(path).map_err(read_err)?;
        let dir = path.parent().unwrap_or(Path::new("/")).to_path_buf();
        self.apply(&text, path, &dir, depth)
    }

    fn apply(
        &mut self,
        text: &str,
        origin: &Path,
        dir: &Path,
        depth: usize,
    ) -> Result<(), ConfigError> {
        for (i, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("");
            let tokens: Vec<&str> = line.split_whitespace().collect();
            if tokens.is_empty() {
                continue;
            }
            let syntax = || ConfigError::Syntax {
                path: origin.into(),
                line: i + 1,
                text: line.trim().to_owned(),
            };
            if tokens[0] == "include" || tokens[0] == "!include" {
                if tokens.len() != 2 {
                    return Err(syntax());
                }
                let path = dir.join(tokens[1]);
                self.apply_file_at(&path, depth + 1, tokens[0] == "include")?;
                continue;
            }
            if tokens.len() < 2 || tokens[1] != "=" {
                return Err(syntax());
            }
            let value = tokens[2..].join(" ");
            self.set(tokens[0], &value);
        }
        Ok(())
    }

    /// Sets one setting; `extra-NAME` appends to `NAME` with a space.
    pub fn set(&mut self, name: &str, value: &str) {
        if let Some(base) = name.strip_prefix("extra-") {
            let entry = self.0.entry(base.to_owned()).or_default();
            if !entry.is_empty() && !value.is_empty() {
                entry.push(' ');
            }
            entry.push_str(value);
        } else {
            self.0.insert(name.to_owned(), value.to_owned());
        }
    }

    /// The value of a setting, if set.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }

    /// Every setting with its value, by name.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Every setting name that was set.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// Whether builds are sandboxed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SandboxMode {
    /// Always (`true`, the default on Linux).
    Enabled,
    /// Never (`false`); only an administrator can choose this.
    Disabled,
    /// Derivations may opt out with `__noChroot` (`relaxed`).
    Relaxed,
}

/// The settings the daemon acts on, typed.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `allowed-users`: who may connect (`*`, user names, `@group`).
    pub allowed_users: Vec<String>,
    /// `trusted-users`: who is trusted.
    pub trusted_users: Vec<String>,
    /// `max-jobs`: concurrent builds (`auto` = number of CPUs).
    pub max_jobs: u64,
    /// `cores`: `NIX_BUILD_CORES` for builders (0 = all).
    pub cores: u64,
    /// `sandbox`.
    pub sandbox: SandboxMode,
    /// `sandbox-paths` (with `extra-sandbox-paths` appended).
    pub sandbox_paths: Vec<String>,
    /// `substituters`.
    pub substituters: Vec<String>,
    /// `trusted-substituters`.
    pub trusted_substituters: Vec<String>,
    /// `trusted-public-keys`.
    pub trusted_public_keys: Vec<String>,
    /// `require-sigs`.
    pub require_sigs: bool,
    /// `keep-outputs`.
    pub keep_outputs: bool,
    /// `keep-derivations`.
    pub keep_derivations: bool,
    /// `min-free` in bytes (0 = no automatic GC).
    pub min_free: u64,
    /// `max-free` in bytes.
    pub max_free: u64,
    /// `min-free-check-interval` in seconds: how often free space is checked for
    /// automatic garbage collection (Nix's default 5).
    pub min_free_check_interval: u64,
    /// `use-roots-daemon` (Nix 2.34's name; default true here): ask the privileged
    /// roots helper for the roots the daemon cannot read.
    pub use_roots_daemon: bool,
    /// `roots-helper-socket`: where the helper listens (default
    /// `<state>/gc-roots-socket/socket`, where Nix 2.34's helper listens too).
    pub roots_helper_socket: Option<PathBuf>,
    /// `roots-helper-runtime-only`: the helper is upstream Nix's
    /// `nix store roots-daemon`, which reports runtime roots only.
    pub roots_helper_runtime_only: bool,
    /// `unrooted-gc-without-roots-helper`: the administrator's explicit choice to
    /// collect without any helper (single-user stores).
    pub gc_without_roots_helper: bool,
    /// `build-users-group` (members may not connect; unrooted has no build users).
    pub build_users_group: String,
    /// `auto-allocate-uids` (default true here, unlike Nix): give each build its own
    /// slice of the store owner's subordinate ids when the host has them.
    pub auto_allocate_uids: bool,
    /// `start-id`: the first id of the pool of build ids (default: the start of the
    /// store owner's subordinate ranges).
    pub start_id: Option<u32>,
    /// `id-count`: the most ids in the pool (default: the rest of the range).
    pub id_count: Option<u32>,
    /// `unrooted-ids-per-build`: ids in one build's slice (default 65536, Nix's
    /// `maxIdsPerBuild`; the `uid-range` feature needs 65536).
    pub ids_per_build: u32,
    /// `experimental-features` (with `extra-experimental-features` appended).
    pub experimental_features: Vec<String>,
    /// Settings set but not known to the daemon, reported once at start-up.
    pub unknown: Vec<String>,
}

/// Settings whose names the daemon knows but which only the clients act on.
const CLIENT_SIDE: &[&str] = &[
    "store",
    "builders",
    "builders-use-substitutes",
    "keep-failed",
    "keep-going",
    "fallback",
    "connect-timeout",
    "narinfo-cache-negative-ttl",
    "narinfo-cache-positive-ttl",
    "warn-dirty",
    "show-trace",
    "system",
    "extra-platforms",
    "system-features",
    "secret-key-files",
    "post-build-upload",
    "timeout",
    "max-silent-time",
    "auto-optimise-store",
    "compress-build-log",
    "log-lines",
    "filter-syscalls",
    "sandbox-fallback",
    "sandbox-build-dir",
    "sandbox-dev-shm-size",
    "allow-new-privileges",
    "ignored-acls",
    "impersonate-linux-26",
    "gc-reserved-space",
    "fsync-metadata",
    "fsync-store-paths",
    "use-sqlite-wal",
    "http-connections",
    "max-substitution-jobs",
    "access-tokens",
    "nix-path",
    "flake-registry",
    "accept-flake-config",
    "keep-env-derivations",
    "build-poll-interval",
    "pre-build-hook",
    "post-build-hook",
    "repeat",
    "enforce-determinism",
    "preallocate-contents",
    "tarball-ttl",
    "substitute",
];

fn words(v: Option<&str>, default: &str) -> Vec<String> {
    v.unwrap_or(default)
        .split_whitespace()
        .map(str::to_owned)
        .collect()
}

fn boolean(raw: &RawSettings, name: &str, default: bool) -> Result<bool, ConfigError> {
    match raw.get(name) {
        None => Ok(default),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(v) => Err(ConfigError::Value {
            name: name.into(),
            value: v.into(),
            expected: "'true' or 'false'",
        }),
    }
}

fn integer(raw: &RawSettings, name: &str, default: u64) -> Result<u64, ConfigError> {
    match raw.get(name) {
        None => Ok(default),
        Some(v) => parse_size(v).ok_or_else(|| ConfigError::Value {
            name: name.into(),
            value: v.into(),
            expected: "an integer (optionally with a K, M, G or T suffix)",
        }),
    }
}

/// An optional id or id count (a 32-bit integer).
fn id_setting(raw: &RawSettings, name: &str) -> Result<Option<u32>, ConfigError> {
    raw.get(name)
        .map(|v| {
            parse_size(v)
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| ConfigError::Value {
                    name: name.into(),
                    value: v.into(),
                    expected: "an integer below 2^32",
                })
        })
        .transpose()
}

/// Parses an integer with Nix's optional binary suffixes (`K`, `M`, `G`, `T`).
fn parse_size(v: &str) -> Option<u64> {
    let (digits, shift) = match v.as_bytes().last()? {
        b'K' => (&v[..v.len() - 1], 10),
        b'M' => (&v[..v.len() - 1], 20),
        b'G' => (&v[..v.len() - 1], 30),
        b'T' => (&v[..v.len() - 1], 40),
        _ => (v, 0),
    };
    digits.parse::<u64>().ok()?.checked_mul(1u64 << shift)
}

/// `sandbox`: `true` (the default), `false` or `relaxed`.
fn sandbox_mode(raw: &RawSettings) -> Result<SandboxMode, ConfigError> {
    Ok(match raw.get("sandbox") {
        None | Some("true") => SandboxMode::Enabled,
        Some("false") => SandboxMode::Disabled,
        Some("relaxed") => SandboxMode::Relaxed,
        Some(v) => {
            return Err(ConfigError::Value {
                name: "sandbox".into(),
                value: v.into(),
                expected: "'true', 'false' or 'relaxed'",
            })
        }
    })
}

/// The settings [`Settings::from_raw`] reads (the others are unknown to the daemon,
/// unless they are the client's).
const KNOWN: &[&str] = &[
    "allowed-users",
    "trusted-users",
    "max-jobs",
    "cores",
    "sandbox",
    "sandbox-paths",
    "substituters",
    "trusted-substituters",
    "trusted-public-keys",
    "require-sigs",
    "keep-outputs",
    "keep-derivations",
    "min-free",
    "max-free",
    "min-free-check-interval",
    "use-roots-daemon",
    "roots-helper-socket",
    "roots-helper-runtime-only",
    "unrooted-gc-without-roots-helper",
    "build-users-group",
    "auto-allocate-uids",
    "start-id",
    "id-count",
    "unrooted-ids-per-build",
    "experimental-features",
    // Read by the builds' configuration (the daemon's `scheduler`).
    "hashed-mirrors",
    "fixed-output-network",
    "pasta-path",
];

impl Settings {
    /// Types the raw settings, with Nix 2.8's defaults.
    pub fn from_raw(raw: &RawSettings) -> Result<Self, ConfigError> {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get() as u64);
        let max_jobs = match raw.get("max-jobs") {
            Some("auto") => cpus,
            _ => integer(raw, "max-jobs", 1)?,
        };
        let sandbox = sandbox_mode(raw)?;
        let unknown = raw
            .names()
            .filter(|n| !KNOWN.contains(n) && !CLIENT_SIDE.contains(n))
            .map(str::to_owned)
            .collect();
        Ok(Self {
            allowed_users: words(raw.get("allowed-users"), "*"),
            trusted_users: words(raw.get("trusted-users"), "root"),
            max_jobs,
            cores: integer(raw, "cores", 0)?,
            sandbox,
            sandbox_paths: words(raw.get("sandbox-paths"), ""),
            substituters: words(raw.get("substituters"), "https://cache.nixos.org/"),
            trusted_substituters: words(raw.get("trusted-substituters"), ""),
            trusted_public_keys: words(
                raw.get("trusted-public-keys"),
                "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=",
            ),
            require_sigs: boolean(raw, "require-sigs", true)?,
            keep_outputs: boolean(raw, "keep-outputs", false)?,
            keep_derivations: boolean(raw, "keep-derivations", true)?,
            min_free: integer(raw, "min-free", 0)?,
            max_free: integer(raw, "max-free", u64::MAX)?,
            min_free_check_interval: integer(raw, "min-free-check-interval", 5)?,
            use_roots_daemon: boolean(raw, "use-roots-daemon", true)?,
            roots_helper_socket: raw
                .get("roots-helper-socket")
                .filter(|v| !v.is_empty())
                .map(PathBuf::from),
            roots_helper_runtime_only: boolean(raw, "roots-helper-runtime-only", false)?,
            gc_without_roots_helper: boolean(raw, "unrooted-gc-without-roots-helper", false)?,
            build_users_group: raw.get("build-users-group").unwrap_or("").to_owned(),
            auto_allocate_uids: boolean(raw, "auto-allocate-uids", true)?,
            start_id: id_setting(raw, "start-id")?,
            id_count: id_setting(raw, "id-count")?,
            ids_per_build: id_setting(raw, "unrooted-ids-per-build")?
                .unwrap_or(DEFAULT_IDS_PER_BUILD),
            experimental_features: words(raw.get("experimental-features"), ""),
            unknown,
        })
    }

    /// Whether the experimental feature `name` (`ca-derivations`, …) is turned on.
    pub fn experimental_feature(&self, name: &str) -> bool {
        self.experimental_features.iter().any(|f| f == name)
    }
}

/// Everything the daemon is configured with.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where things live.
    pub locations: Locations,
    /// The typed settings.
    pub settings: Settings,
    /// The raw settings, for passing on and for `unrooted doctor`.
    pub raw: RawSettings,
}

impl Config {
    /// Loads the configuration as Nix does: `$NIX_CONF_DIR/nix.conf`, then `NIX_CONFIG`.
    pub fn load(env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let locations = Locations::from_env(&env)?;
        let mut raw = RawSettings::default();
        raw.apply_file(&locations.conf_dir.join("nix.conf"))?;
        if let Some(text) = env("NIX_CONFIG") {
            raw.apply_text(&text, Path::new("NIX_CONFIG"), Path::new("/"))?;
        }
        let settings = Settings::from_raw(&raw)?;
        Ok(Self {
            locations,
            settings,
            raw,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_like_nix() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            dir.path().join("more.conf"),
            "trusted-users = alice @wheel\n",
        )
        .unwrap();
        let text = "# comment\nsandbox = false  # trailing\nextra-sandbox-paths = /bin/sh=/x\n\
                    sandbox-paths = /a\nextra-sandbox-paths = /b\ninclude more.conf\n\
                    !include missing.conf\nmin-free = 1G\nmax-jobs = auto\n";
        let mut raw = RawSettings::default();
        raw.apply_text(text, Path::new("t"), dir.path()).unwrap();
        let s = Settings::from_raw(&raw).unwrap();
        assert_eq!(s.sandbox, SandboxMode::Disabled);
        assert_eq!(s.sandbox_paths, ["/a", "/b"]);
        assert_eq!(s.trusted_users, ["alice", "@wheel"]);
        assert_eq!(s.min_free, 1 << 30);
        assert!(s.max_jobs >= 1);
        assert_eq!(s.allowed_users, ["*"]);
        assert!(s.require_sigs && s.keep_derivations && !s.keep_outputs);
    }

    #[test]
    fn id_allocation_settings_keep_nix_names() {
        let mut raw = RawSettings::default();
        let s = Settings::from_raw(&raw).unwrap();
        assert!(s.auto_allocate_uids);
        assert_eq!(
            (s.start_id, s.id_count, s.ids_per_build),
            (None, None, 65536)
        );
        raw.apply_text(
            "auto-allocate-uids = false\nstart-id = 872415232\nid-count = 8M\nunrooted-ids-per-build = 4096\n",
            Path::new("t"),
            Path::new("/"),
        )
        .unwrap();
        let s = Settings::from_raw(&raw).unwrap();
        assert!(!s.auto_allocate_uids && s.unknown.is_empty());
        assert_eq!(
            (s.start_id, s.id_count, s.ids_per_build),
            (Some(872415232), Some(8 << 20), 4096)
        );
        raw.set("start-id", "5000000000");
        assert!(Settings::from_raw(&raw).is_err());
    }

    #[test]
    fn refuses_bad_lines_and_values() {
        let mut raw = RawSettings::default();
        let err = raw
            .apply_text("sandbox false\n", Path::new("t"), Path::new("/"))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 1, .. }), "{err}");
        let err = raw
            .apply_text("include /nonexistent/x\n", Path::new("t"), Path::new("/"))
            .unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
        let mut raw = RawSettings::default();
        raw.set("require-sigs", "yes");
        assert!(matches!(
            Settings::from_raw(&raw),
            Err(ConfigError::Value { .. })
        ));
    }

    #[test]
    fn include_cycle_ends() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.conf"), "include a.conf\n").unwrap();
        let mut raw = RawSettings::default();
        let err = raw.apply_file(&dir.path().join("a.conf")).unwrap_err();
        assert!(matches!(err, ConfigError::IncludeDepth { .. }), "{err}");
    }

    #[test]
    fn locations_follow_the_environment() {
        let env = |k: &str| match k {
            "NIX_STORE_DIR" => Some("/tmp/s".to_owned()),
            "NIX_STATE_DIR" => Some("/tmp/st".to_owned()),
            _ => None,
        };
        let l = Locations::from_env(env).unwrap();
        assert_eq!(l.store_dir.as_str(), "/tmp/s");
        assert_eq!(l.socket_path, Path::new("/tmp/st/daemon-socket/socket"));
        assert_eq!(l.conf_dir, Path::new("/etc/nix"));
        assert!(Locations::from_env(|k| (k == "NIX_STORE_DIR").then(|| "rel".to_owned())).is_err());
    }
}
