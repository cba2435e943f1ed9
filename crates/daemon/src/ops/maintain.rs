//! Maintenance of the store: OptimiseStore and VerifyStore.

use unrooted_protocol::stderr::Verbosity;
use unrooted_protocol::{wire, Request};
use unrooted_store::VerifyMessage;

use super::{client, misrouted, reply, reply_u64, Out, Result};
use crate::session::Session;

/// Performs a maintenance operation.
pub(super) fn perform(s: &mut Session<'_>, request: Request, out: &mut Out) -> Result {
    match request {
        Request::OptimiseStore => optimise(s, out),
        Request::VerifyStore {
            check_contents,
            repair,
        } => verify(s, check_contents, repair, out),
        other => Err(misrouted("maintenance", &other)),
    }
}

/// OptimiseStore: hard-links identical files, then says what that freed.
fn optimise(s: &Session<'_>, out: &mut Out) -> Result {
    let stats = s.state.store.optimise()?;
    out.log(
        Verbosity::Error,
        &format!(
            "{:.2} MiB freed by hard-linking {} files",
            stats.bytes_freed as f64 / (1024.0 * 1024.0),
            stats.files_linked
        ),
    )?;
    reply_u64(out, 1)
}

/// VerifyStore: every message of the check as a log line; the reply says whether
/// errors were found. Repairing is for trusted clients only.
fn verify(s: &Session<'_>, check_contents: bool, repair: bool, out: &mut Out) -> Result {
    if repair && !s.trusted {
        return Err(client("you are not privileged to repair paths"));
    }
    let mut lines = Vec::new();
    let errors = s
        .state
        .store
        .verify(check_contents, repair, &mut |m: VerifyMessage| {
            lines.push(m.to_string())
        })?;
    for line in lines {
        out.log(Verbosity::Error, &line)?;
    }
    reply(out, |w| Ok(wire::write_bool(w, errors)?))
}
