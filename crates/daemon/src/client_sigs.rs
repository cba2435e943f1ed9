//! Whether the signatures of paths a client adds are checked (AddToStoreNar,
//! AddMultipleToStore).
//!
//! Nix checks them when the client does not waive the check (`dontCheckSigs`, honoured
//! for trusted clients only) and the store's `require-sigs` is on. A trusted client's
//! `--no-require-sigs` (`require-sigs = false` in its SetOptions) turns the second off
//! for its own requests, as it does for a local store and as the daemon already does
//! for its substitutions: it waives nothing a trusted client could not waive with
//! `dontCheckSigs`. Nix 2.8's `nix-daemon` reads `require-sigs` from the store it
//! opened before the client's options arrived, so there the option has no effect; its
//! functional tests `fetchClosure` and `binary-cache` skip themselves in daemon mode
//! for that reason alone ("'--no-require-sigs' can't be used with the daemon").

use unrooted_format::signature::TrustedKeys;
use unrooted_store::{CheckSigs, ValidPathInfo};

use crate::session::Session;

/// The check for a path `s`'s client adds with the request's `dont_check_sigs`.
pub(crate) fn check_sigs(s: &Session<'_>, dont_check_sigs: bool) -> CheckSigs {
    let require_sigs = s.settings.overrides.get("require-sigs").map(String::as_str);
    decide(s.trusted, dont_check_sigs, require_sigs)
}

/// The check for one path `info` a client adds: a trusted client's own
/// `trusted-public-keys` (SetOptions) stand in for the daemon's, as they do for a
/// root `nix-daemon`, whose settings a trusted client's options override; a path
/// signed by one of them needs no other signature.
pub(crate) fn check_for(s: &Session<'_>, check: CheckSigs, info: &ValidPathInfo) -> CheckSigs {
    if check != CheckSigs::Check || !s.trusted {
        return check;
    }
    let Some(keys) = s.settings.overrides.get("trusted-public-keys") else {
        return check;
    };
    match TrustedKeys::parse(keys) {
        Ok(keys) if info.is_trusted(s.state.store.store_dir(), &keys) => CheckSigs::DontCheck,
        _ => check,
    }
}

fn decide(trusted: bool, dont_check_sigs: bool, require_sigs: Option<&str>) -> CheckSigs {
    // Overrides reach the session filtered by trust (SetOptions); `trusted` is
    // checked again so that this stays right whatever that filter keeps.
    if trusted && (dont_check_sigs || require_sigs == Some("false")) {
        CheckSigs::DontCheck
    } else {
        CheckSigs::Check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_trusted_clients_waive_the_check() {
        assert_eq!(decide(true, true, None), CheckSigs::DontCheck);
        assert_eq!(decide(true, false, Some("false")), CheckSigs::DontCheck);
        assert_eq!(decide(true, false, None), CheckSigs::Check);
        assert_eq!(decide(true, false, Some("true")), CheckSigs::Check);
        assert_eq!(decide(false, true, None), CheckSigs::Check);
        assert_eq!(decide(false, true, Some("false")), CheckSigs::Check);
        assert_eq!(decide(false, false, Some("false")), CheckSigs::Check);
    }
}
