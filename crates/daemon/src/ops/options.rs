//! SetOptions: the client's settings for its session, filtered by trust as Nix 2.8
//! filters them.

use std::collections::{BTreeMap, BTreeSet};

use unrooted_protocol::request::ClientSettings;
use unrooted_protocol::stderr::Verbosity;
use unrooted_protocol::Request;

use super::{misrouted, Out, Result};
use crate::session::Session;

/// Settings an untrusted client may set.
const UNTRUSTED_ALLOWED: &[&str] = &[
    "timeout",
    "connect-timeout",
    "max-silent-time",
    "poll-interval",
    "repeat",
];

/// Performs SetOptions.
pub(super) fn perform(s: &mut Session<'_>, request: Request, out: &mut Out) -> Result {
    match request {
        Request::SetOptions(settings) => {
            set_options(s, settings, out)?;
            out.last()?;
            Ok(())
        }
        other => Err(misrouted("options", &other)),
    }
}

/// Applies SetOptions: everything for trusted clients; for others only what Nix 2.8
/// lets an untrusted client set, with a warning for each untrusted substituter.
fn set_options(s: &mut Session<'_>, mut settings: ClientSettings, out: &mut Out) -> Result {
    let mut kept = BTreeMap::new();
    for (name, value) in std::mem::take(&mut settings.overrides) {
        if matches!(
            name.as_str(),
            "ssh-auth-sock" | "experimental-features" | "plugin-files"
        ) {
            continue;
        }
        if s.trusted
            || UNTRUSTED_ALLOWED.contains(&name.as_str())
            || (name == "builders" && value.is_empty())
        {
            kept.insert(name, value);
        } else if name == "substituters" || name == "extra-substituters" {
            let trusted = trusted_substituters(s, &value, out)?;
            kept.insert(name, trusted);
        } else {
            tracing::debug!(user = %s.peer.user, "ignoring the untrusted setting '{name}'");
        }
    }
    settings.overrides = kept;
    out.set_verbosity(settings.verbosity);
    s.settings = settings;
    Ok(())
}

/// Of the substituters `urls` an untrusted client asked for, those the daemon's
/// `substituters` or `trusted-substituters` name; a warning for each other one.
fn trusted_substituters(s: &Session<'_>, urls: &str, out: &mut Out) -> Result<String> {
    let settings = &s.state.config.settings;
    let trusted_subs: BTreeSet<&str> = settings
        .substituters
        .iter()
        .chain(&settings.trusted_substituters)
        .map(String::as_str)
        .collect();
    let mut ok = Vec::new();
    for url in urls.split_whitespace() {
        if trusted_subs.contains(url) {
            ok.push(url);
        } else {
            out.log(
                Verbosity::Warn,
                &format!("warning: ignoring untrusted substituter '{url}'"),
            )?;
        }
    }
    Ok(ok.join(" "))
}
