//! The build scheduler shared by all connections, set up from the configuration:
//! the sandbox helper, the id slices, `sandbox-paths`, and the network of
//! fixed-output builds.

use std::path::PathBuf;

use unrooted_builder::{BuilderConfig, Scheduler};
use unrooted_sandbox::{Sandbox, SandboxPath};

use crate::config::{Config, RawSettings, SandboxMode};
use crate::LayerSettings;

/// The hidden verb of the `unrooted` binary that runs the sandbox helper.
const HELPER_VERB: &str = "sandbox-helper";

/// The daemon's own executable, which runs the sandbox helper.
pub(crate) fn daemon_exe() -> PathBuf {
    std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe"))
}

/// The scheduler for this configuration. Builders are sandboxed unless the
/// administrator set `sandbox = false`; the sandbox helper is this executable.
/// `exe` is the daemon's executable ([`daemon_exe`]; the in-process test harness names
/// another, its own being a test binary).
pub(crate) fn scheduler_for(
    config: &Config,
    exe: &std::path::Path,
) -> Result<Scheduler, unrooted_builder::BuildError> {
    let s = &config.settings;
    let mut cfg = with_helpers(exe, s.sandbox != SandboxMode::Disabled);
    cfg.sandbox_paths = sandbox_paths(&s.sandbox_paths);
    cfg.log_dir = Some(config.locations.log_dir.clone());
    cfg.max_jobs = usize::try_from(s.max_jobs).unwrap_or(usize::MAX);
    cfg.cores = u32::try_from(s.cores).unwrap_or(0);
    cfg.impure_derivations = s.experimental_feature("impure-derivations");
    let raw = &config.raw;
    apply_raw_settings(&mut cfg, raw);
    if cfg.sandbox {
        cfg.fixed_output_network = fixed_output_network(
            raw.get("fixed-output-network"),
            raw.get("pasta-path"),
            std::env::var_os("PATH").as_deref(),
        );
        set_up_ids(&mut cfg, config);
    } else {
        tracing::warn!("sandbox = false: builders run unsandboxed as the store owner");
    }
    Scheduler::new(cfg)
}

/// The builders' configuration with its sandbox helpers: `exe`, and
/// `unrooted-sandbox` when it is installed beside it; with `sandbox`, each keeps a
/// spare waiting for the next build.
fn with_helpers(exe: &std::path::Path, sandbox: bool) -> BuilderConfig {
    let exe = exe.to_path_buf();
    let mut cfg = BuilderConfig::new(Sandbox::new(exe.clone(), vec![HELPER_VERB.into()]));
    cfg.exec_helper = Sandbox::beside(&exe);
    match &cfg.exec_helper {
        Some(h) => tracing::info!(
            "builders are started through {} (builtin builders through this executable)",
            h.program().display()
        ),
        None => tracing::info!(
            "builders are started through this executable (install unrooted-sandbox beside it for a faster start)"
        ),
    }
    cfg.sandbox = sandbox;
    if cfg.sandbox {
        // The helper that starts builders keeps a spare waiting for the next build.
        match cfg.exec_helper.take() {
            Some(fast) => cfg.exec_helper = Some(fast.with_spare_helper()),
            None => cfg.helper = cfg.helper.clone().with_spare_helper(),
        }
    }
    cfg
}

/// The valid entries of `sandbox-paths`, with a warning for each other one.
fn sandbox_paths(entries: &[String]) -> Vec<SandboxPath> {
    entries
        .iter()
        .filter_map(|e| match SandboxPath::parse(e.as_ref()) {
            Ok(p) => Some(p),
            Err(err) => {
                tracing::warn!("ignoring sandbox-paths entry '{e}': {err}");
                None
            }
        })
        .collect()
}

/// The settings of builds that only the raw configuration holds.
fn apply_raw_settings(cfg: &mut BuilderConfig, raw: &RawSettings) {
    if let Some(v) = raw.get("max-build-log-size").and_then(|v| v.parse().ok()) {
        cfg.max_log_size = v;
    }
    if let Some(v) = raw.get("system").filter(|v| !v.is_empty()) {
        cfg.system = v.to_owned();
    }
    if let Some(v) = raw.get("hashed-mirrors") {
        cfg.hashed_mirrors = v.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(v) = raw.get("system-features") {
        cfg.system_features = v.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(v) = raw.get("extra-platforms") {
        cfg.extra_platforms = v.split_whitespace().map(str::to_owned).collect();
    }
    if let Some(v) = raw.get("sandbox-build-dir").filter(|v| v.starts_with('/')) {
        cfg.sandbox_build_dir = PathBuf::from(v);
    }
}

/// The ids sandboxed builds run as (subordinate id slices, or the single id), and
/// what builds of a killed daemon left owned by its slices given back.
fn set_up_ids(cfg: &mut BuilderConfig, config: &Config) {
    if let Err(e) = unrooted_sandbox::check_user_namespaces() {
        tracing::warn!("builds will fail until this is fixed: {e}");
    }
    cfg.ids = unrooted_builder::IdMode::detect(
        &config.id_settings(),
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw(),
        &config.locations.state_dir,
        &cfg.helper,
    );
    // Before the store's and the build directories' sweeps: what a daemon killed
    // mid-build left owned by its slices is the store owner's again.
    if let unrooted_builder::IdMode::Ranges(pool) = &cfg.ids {
        if (pool.slices() as usize) < cfg.max_jobs {
            tracing::warn!(
                "max-jobs = {} but the id pool holds {} slices: builds past those wait for one (give the store owner more subordinate ids, or see id-count)",
                cfg.max_jobs,
                pool.slices()
            );
        }
        pool.reclaim_leftovers(
            &cfg.helper,
            std::path::Path::new(config.locations.store_dir.as_str()),
            &cfg.tmp_dir,
        );
    }
}

/// `fixed-output-network` (`pasta`, the default, or `host`) and `pasta-path` (a path,
/// or a name looked up in `PATH`; default `pasta`), logged at start: the host's network
/// with a warning, as it must be asked for; a missing pasta (or an unusable
/// `/dev/net/tun`) with a warning saying what fails.
fn fixed_output_network(
    mode: Option<&str>,
    pasta_path: Option<&str>,
    path_var: Option<&std::ffi::OsStr>,
) -> unrooted_builder::FixedOutputNetwork {
    use unrooted_builder::FixedOutputNetwork as Net;
    match mode {
        Some("host") => {
            tracing::warn!(
                "fixed-output-network = host: fixed-output builds share the host's network namespace, so their builders can reach the host's abstract Unix sockets, loopback listeners and /proc/net (use pasta unless you must)"
            );
            return Net::Host;
        }
        None | Some("pasta") | Some("") => {}
        Some(other) => {
            tracing::warn!("fixed-output-network = {other} is not 'pasta' or 'host': using pasta")
        }
    }
    let wanted = pasta_path.filter(|p| !p.is_empty()).unwrap_or("pasta");
    match find_executable(wanted, path_var) {
        Some(p) => {
            // pasta runs as the builder's ids, so the device must be open to all, as
            // Debian's udev rule makes it (0666).
            let tun = std::fs::metadata("/dev/net/tun");
            let usable = tun.as_ref().is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt;
                m.permissions().mode() & 0o006 == 0o006
            });
            if usable {
                tracing::info!(
                    "fixed-output builds get a network namespace of their own, connected through {}",
                    p.display()
                );
            } else {
                tracing::warn!(
                    "fixed-output builds get their network through {}, which needs /dev/net/tun readable and writable by all (mode 0666, as udev makes it on Debian): they will fail until it is",
                    p.display()
                );
            }
            Net::Pasta(p)
        }
        None => {
            tracing::warn!(
                "pasta ({wanted}) is not installed: fixed-output builds that run a program will fail (install Debian's passt, set pasta-path, or set fixed-output-network = host); builtin:fetchurl shares the host's network meanwhile"
            );
            Net::Missing(PathBuf::from(wanted))
        }
    }
}

/// `wanted` when it is an absolute path to an executable file; a name is looked up in
/// `path_var` (`PATH`), then in `/usr/bin` and `/usr/local/bin`.
fn find_executable(wanted: &str, path_var: Option<&std::ffi::OsStr>) -> Option<PathBuf> {
    let executable = |p: &std::path::Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if wanted.contains('/') {
        Some(PathBuf::from(wanted)).filter(|p| p.is_absolute() && executable(p))
    } else {
        path_var
            .into_iter()
            .flat_map(std::env::split_paths)
            .chain(["/usr/bin", "/usr/local/bin"].map(PathBuf::from))
            .map(|d| d.join(wanted))
            .find(|p| executable(p))
    }
}

#[cfg(test)]
mod tests {
    use super::fixed_output_network;
    use std::os::unix::fs::PermissionsExt;
    use unrooted_builder::FixedOutputNetwork as Net;

    #[test]
    fn fixed_output_network_is_pasta_when_found_and_host_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let pasta = dir.path().join("pasta");
        std::fs::write(&pasta, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&pasta, std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().as_os_str();
        // Found in PATH by name (the default), or at the configured path.
        assert_eq!(
            fixed_output_network(None, None, Some(path)),
            Net::Pasta(pasta.clone())
        );
        let p = pasta.to_str().unwrap();
        assert_eq!(
            fixed_output_network(Some("pasta"), Some(p), None),
            Net::Pasta(pasta.clone())
        );
        // Not there: missing, never the host's network on its own.
        assert_eq!(
            fixed_output_network(None, Some("/nonexistent/pasta"), Some(path)),
            Net::Missing("/nonexistent/pasta".into())
        );
        // A relative path is not looked up relative to anything.
        assert!(matches!(
            fixed_output_network(None, Some("bin/pasta"), Some(path)),
            Net::Missing(_)
        ));
        // The host's network only when asked for.
        assert_eq!(
            fixed_output_network(Some("host"), Some(p), Some(path)),
            Net::Host
        );
    }
}
