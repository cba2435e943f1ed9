//! What the daemon says about the roots helper: the start-up line naming where roots
//! it cannot read come from, and what a client is told when a collection failed for
//! want of them.

use unrooted_format::error_chain as chain;
use unrooted_gc::{GcError, RootsHelper};

/// The client's error for a failed collection, with what to do about the helper.
pub(crate) fn gc_error_message(e: &GcError, helper: &RootsHelper) -> String {
    let text = chain(e);
    match (e, helper) {
        (GcError::AskHelper { .. } | GcError::HelperIncomplete { .. }, _) => format!(
            "{text}; nothing was deleted (start the roots helper unrooted-find-roots as root, \
             or, for a single-user store only, set unrooted-gc-without-roots-helper = true)"
        ),
        (GcError::UnresolvedRoot { .. }, RootsHelper::None) => format!(
            "{text}; nothing was deleted (the daemon runs without the roots helper: \
             make the root readable by the store owner or start unrooted-find-roots)"
        ),
        (GcError::UnresolvedRoot { .. }, _) => format!("{text}; nothing was deleted"),
        _ => text,
    }
}

/// The start-up log line saying where roots the daemon cannot read come from.
pub(crate) fn describe_mode(helper: &RootsHelper) -> String {
    match helper {
        RootsHelper::Socket(p) => format!(
            "garbage collection: roots the daemon cannot read come from the roots helper \
             (unrooted-find-roots) at {}; without it nothing is deleted",
            p.display()
        ),
        RootsHelper::RuntimeOnlySocket(p) => format!(
            "garbage collection: runtime roots come from Nix's roots daemon at {}; \
             an unreadable root or an unreachable helper refuses deletion",
            p.display()
        ),
        RootsHelper::None => "garbage collection WITHOUT the roots helper \
             (unrooted-gc-without-roots-helper = true): other users' runtime roots are not \
             seen; an unreadable root still refuses deletion"
            .to_owned(),
    }
}
