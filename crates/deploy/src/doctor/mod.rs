//! `unrooted doctor`: every precondition for builds and garbage collection, each as a
//! one-line verdict and, when it is not fine, the command or change that fixes it.
//!
//! Checks read the host through [`Host`], so a test can stand a directory tree in for
//! `/` (a fake `/proc/sys` with user namespaces off, a store with the wrong owner).
//! Everything read from `/proc` or a socket is bounded.

mod daemon;
mod ids;
mod kernel;
mod store;
#[cfg(test)]
mod tests;

use std::fmt;
use std::fs;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use crate::accounts;
use crate::host::Layout;
use crate::Host;

use daemon::{daemon, roots_helper};
use ids::{build_ids, id_mappers, subids};
use kernel::{landlock, userns};
pub use store::mount_read_only;
use store::{free_space, ownership, store_mount};

/// Below this much free space in the store, builds fail.
const MIN_USABLE_FREE: u64 = 64 << 20;
/// Largest answer read from the roots helper.
const MAX_ROOTS_ANSWER: u64 = 64 << 20;
/// Largest `/proc` text file read.
const MAX_PROC_READ: u64 = 1 << 20;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Fine.
    Ok,
    /// Works, but weaker or degraded (e.g. garbage collection refuses to run).
    Warn,
    /// Builds cannot work until this is fixed.
    Fail,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Ok => "ok  ",
            Verdict::Warn => "warn",
            Verdict::Fail => "FAIL",
        })
    }
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// What was checked (stable, short: tests match on it).
    pub check: &'static str,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found.
    pub detail: String,
    /// How to fix it, when not fine.
    pub fix: Option<String>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}] {}: {}", self.verdict, self.check, self.detail)?;
        if let Some(fix) = &self.fix {
            write!(f, "\n       fix: {fix}")?;
        }
        Ok(())
    }
}

/// What the doctor examines.
#[derive(Debug, Clone)]
pub struct DoctorOptions {
    /// The host (or tree).
    pub host: Host,
    /// The paths.
    pub layout: Layout,
    /// The store owner; `None` = the `User=` of the installed daemon unit, else `unrooted`.
    pub owner: Option<String>,
    /// How long to wait for the daemon and the helper.
    pub timeout: Duration,
}

fn finding(check: &'static str, verdict: Verdict, detail: String, fix: Option<&str>) -> Finding {
    Finding {
        check,
        verdict,
        detail,
        fix: fix.map(str::to_owned),
    }
}

fn read_bounded(path: &Path, max: u64) -> Option<String> {
    let mut s = String::new();
    fs::File::open(path)
        .ok()?
        .take(max)
        .read_to_string(&mut s)
        .ok()?;
    Some(s)
}

/// The `User=` of the installed daemon unit.
pub fn installed_owner(host: &Host, layout: &Layout) -> Option<String> {
    let unit = host.path(&layout.unit_dir.join("unrooted-daemon.service"));
    read_bounded(&unit, MAX_PROC_READ)?
        .lines()
        .find_map(|l| l.strip_prefix("User=").map(|u| u.trim().to_owned()))
}

/// Runs every check, in order.
pub fn run(opts: &DoctorOptions) -> Vec<Finding> {
    let host = &opts.host;
    let l = &opts.layout;
    let owner_name = opts
        .owner
        .clone()
        .or_else(|| installed_owner(host, l))
        .unwrap_or_else(|| "unrooted".into());
    let mut out = Vec::new();
    userns(host, l, &mut out);
    out.push(landlock(unrooted_sandbox::landlock_abi()));
    let owner = match accounts::lookup_user(host, &owner_name) {
        Ok(Some(a)) => Some(a),
        Ok(None) => {
            out.push(finding(
                "store owner",
                Verdict::Fail,
                format!("no user named {owner_name}"),
                Some("unrooted install (creates it), or pass --store-owner NAME"),
            ));
            None
        }
        Err(e) => {
            out.push(finding("store owner", Verdict::Fail, e.to_string(), None));
            None
        }
    };
    subids(host, l, &owner_name, owner.as_ref(), &mut out);
    build_ids(host, l, &owner_name, owner.as_ref(), &mut out);
    let id_ranges = out
        .last()
        .is_some_and(|f| f.check == "build ids" && f.detail.starts_with("id-range mode"));
    if id_ranges {
        id_mappers(host, l, &mut out);
    }
    if let Some(a) = &owner {
        ownership(host, l, a, &mut out);
    }
    store_mount(host, l, &mut out);
    daemon(host, l, opts.timeout, &mut out);
    roots_helper(host, l, owner.as_ref(), opts.timeout, &mut out);
    free_space(host, l, &mut out);
    out
}
