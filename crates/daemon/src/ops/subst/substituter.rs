//! The substituters a request may use, with the settings it sees: the client's
//! (filtered by trust in SetOptions) over the daemon's.

use std::time::Duration;

use unrooted_format::signature::TrustedKeys;
use unrooted_substitute::{RetryPolicy, Substituter, SubstituterConfig};

use super::progress::ClientObserver;
use crate::ops::Out;
use crate::session::Session;

/// A setting as this request sees it: the client's `--option` (already filtered by
/// trust in SetOptions), else the daemon's configuration.
pub(super) fn setting<'s>(s: &'s Session<'_>, name: &str) -> Option<&'s str> {
    s.settings
        .overrides
        .get(name)
        .map(String::as_str)
        .or_else(|| s.state.config.raw.get(name))
}

/// A boolean setting as this request sees it (see [`setting`]).
pub(super) fn flag(s: &Session<'_>, name: &str, default: bool) -> bool {
    match setting(s, name) {
        Some("true") => true,
        Some("false") => false,
        _ => default,
    }
}

/// The substituters this request may use, or `None` when substitution is off
/// (`substitute = false`, or the client's `--no-substitute`) or none is configured.
/// Caches that cannot be reached are reported as warnings to the client.
pub(super) fn substituter(s: &Session<'_>, out: &mut Out) -> Option<Substituter> {
    if !s.settings.use_substitutes || !flag(s, "substitute", true) {
        return None;
    }
    let settings = &s.state.config.settings;
    let mut urls: Vec<String> = match s.settings.overrides.get("substituters") {
        Some(v) => v.split_whitespace().map(str::to_owned).collect(),
        None => settings.substituters.clone(),
    };
    if let Some(v) = s.settings.overrides.get("extra-substituters") {
        urls.extend(v.split_whitespace().map(str::to_owned));
    }
    if urls.is_empty() {
        return None;
    }
    let keys = trusted_keys(s);
    let number = |name: &str, default: u64| {
        setting(s, name)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(default)
    };
    let mut config = SubstituterConfig::new(urls, keys);
    config.require_sigs = if s.trusted {
        flag(s, "require-sigs", settings.require_sigs)
    } else {
        settings.require_sigs
    };
    let connections = match number("http-connections", 25) {
        0 => usize::MAX,
        n => usize::try_from(n).unwrap_or(usize::MAX),
    };
    config.jobs = jobs(s).min(connections).max(1);
    config.transport.connections = connections.min(1024);
    config.transport.connect_timeout = Duration::from_secs(number("connect-timeout", 10));
    config.transport.stall_timeout = Duration::from_secs(number("stalled-download-timeout", 300));
    config.retry = RetryPolicy {
        attempts: u32::try_from(number("download-attempts", 5)).unwrap_or(5),
        ..RetryPolicy::default()
    };
    let observer = ClientObserver::new(s, out);
    let sub = Substituter::new(
        s.cx.store_dir.clone(),
        config,
        s.state.narinfo_cache(),
        &observer,
    );
    observer.flush();
    (!sub.caches().is_empty()).then_some(sub)
}

/// The keys substitutes must be signed with: the daemon's `trusted-public-keys`, or
/// a trusted client's.
fn trusted_keys(s: &Session<'_>) -> TrustedKeys {
    let settings = &s.state.config.settings;
    let mut keys_text = settings.trusted_public_keys.join(" ");
    if s.trusted {
        for name in ["trusted-public-keys", "extra-trusted-public-keys"] {
            if let Some(v) = s.settings.overrides.get(name) {
                if name == "trusted-public-keys" {
                    keys_text.clear();
                }
                keys_text.push(' ');
                keys_text.push_str(v);
            }
        }
    }
    TrustedKeys::parse(&keys_text).unwrap_or_else(|e| {
        tracing::warn!("ignoring trusted-public-keys: {e}");
        TrustedKeys::new()
    })
}

/// How many substitutions run at once (before the limit of connections).
fn jobs(s: &Session<'_>) -> usize {
    let settings = &s.state.config.settings;
    // Nix 2.8 ran substitutions as jobs under `max-jobs`; `max-substitution-jobs`
    // (later Nix) sets their number directly. By default: max-jobs or twice the
    // number of CPUs, whichever is larger, at most 16. Lookups and imports are
    // partly CPU work and partly waiting for the server, so two per CPU keep both
    // busy (2,000 paths from a loopback nginx on 2 CPUs: 1.21 s with 2 jobs, 1.01 s
    // with 4); more mostly contend: 16 at once against a loopback
    // `python3 -m http.server` overflow its accept backlog (5), and dropped SYNs
    // cost 1 s each (2,000 paths: 12 s with 16 jobs, 4 s with 2).
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let max_jobs = match setting(s, "max-jobs") {
        Some("auto") => cpus,
        Some(v) => v.parse().unwrap_or(1),
        None => usize::try_from(settings.max_jobs).unwrap_or(usize::MAX),
    };
    let default_jobs = max_jobs.max(cpus * 2).min(16);
    setting(s, "max-substitution-jobs")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(default_jobs)
}
