//! The builtin builders of Nix 2.8 (`builtin:fetchurl`, `builtin:buildenv`,
//! `builtin:unpack-channel`): functions, not programs, yet run where a builder runs.
//!
//! The daemon never calls them. A derivation whose builder is `builtin:NAME` gets the
//! same sandbox as any other (for `fetchurl`, a fixed-output derivation, with the
//! host's network and resolver files), and the sandbox's init, after the whole setup
//! (uid 1000 / gid 100, locked read-only inputs, no capabilities, no_new_privs,
//! seccomp, every other descriptor closed), calls the function named in the plan from
//! [`BUILTINS`], which the `unrooted` binary hands to the sandbox helper. Each one
//! reads the build's environment (`out`, the derivation's attributes), makes `$out`
//! as a builder would and returns; its error goes to the build log and fails the
//! build, whose outputs the daemon then checks, scans and registers as for any
//! builder. With `sandbox = false` the same functions run in a child process of their
//! own (`unrooted sandbox-helper --builtin NAME`), never in the daemon.
//!
//! Everything read from the network or an input is bounded (download size, unpacked
//! size, entry count, name lengths), and unpacking refuses entries that would land
//! outside `$out`.

mod buildenv;
mod fetchurl;
mod unpack_channel;

use std::ffi::{OsStr, OsString};
use std::io;
use std::path::PathBuf;

use unrooted_sandbox::Builtin;

/// Every builtin builder, by the name after `builtin:`.
pub const BUILTINS: &[Builtin] = &[
    ("buildenv", buildenv::run),
    ("fetchurl", fetchurl::run),
    ("unpack-channel", unpack_channel::run),
];

/// The name of the builtin a derivation's builder names (`builtin:fetchurl` →
/// `fetchurl`), if it is one this crate has.
pub fn builtin_name(builder: &[u8]) -> Option<&'static str> {
    let name = builder.strip_prefix(b"builtin:")?;
    BUILTINS
        .iter()
        .map(|(n, _)| *n)
        .find(|n| n.as_bytes() == name)
}

/// Why a builtin builder failed; the text is what the build log shows.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BuiltinError {
    /// The derivation lacks an attribute the builtin needs.
    #[error("attribute '{name}' missing")]
    MissingAttribute {
        /// The attribute.
        name: String,
    },
    /// An attribute that must be text is not UTF-8.
    #[error("attribute '{name}' is not valid UTF-8")]
    NotUtf8 {
        /// The attribute.
        name: String,
    },
    /// `builtin:fetchurl` without a fixed output hash (Nix refuses it too: only a
    /// checked hash makes the network access harmless).
    #[error("'builtin:fetchurl' must be a fixed-output derivation")]
    NotFixedOutput,
    /// A URL scheme fetchurl does not speak.
    #[error(
        "unsupported URL '{url}': builtin:fetchurl fetches http://, https:// and file:// URLs"
    )]
    UnsupportedUrl {
        /// The URL.
        url: String,
    },
    /// The server answered with an error status.
    #[error("unable to download '{url}': HTTP error {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The download failed (connection, TLS, proxy, an interrupted body).
    #[error("unable to download '{url}'")]
    Download {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// More data than the builtin accepts.
    #[error("{what} is larger than the {max} bytes builtin:{builtin} accepts")]
    TooLarge {
        /// What was too large.
        what: String,
        /// The limit.
        max: u64,
        /// Which builtin.
        builtin: &'static str,
    },
    /// A file operation failed.
    #[error("{action} '{}'", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// On what.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The fetched NAR (`unpack = true`) could not be unpacked.
    #[error("unpacking the NAR fetched from '{url}'")]
    Nar {
        /// The URL.
        url: String,
        /// Why.
        #[source]
        source: unrooted_format::nar::NarError,
    },
    /// A tar entry that would escape the output or is not a plain file, directory
    /// or link.
    #[error("refusing entry '{entry}' of '{}': {reason}", tarball.display())]
    HostileEntry {
        /// The tarball.
        tarball: PathBuf,
        /// The entry's name as written.
        entry: String,
        /// Why it is refused.
        reason: &'static str,
    },
    /// The tarball is not a well-formed tar archive.
    #[error("'{}' is not a valid tar archive: {reason}", tarball.display())]
    BadTar {
        /// The tarball.
        tarball: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// `channelName` names something other than one directory entry.
    #[error("channelName is not allowed to contain filesystem separators, got '{name}'")]
    ChannelName {
        /// The name.
        name: String,
    },
    /// The channel tarball must hold exactly one top-level entry.
    #[error("channel tarball '{}' contains more than one file", tarball.display())]
    ChannelEntries {
        /// The tarball.
        tarball: PathBuf,
    },
    /// `builtin:buildenv` could not make the profile (collisions, unreadable
    /// packages); the message is Nix's.
    #[error("{message}")]
    Profile {
        /// What went wrong.
        message: String,
    },
}

/// The variable through which the daemon's `hashed-mirrors` reach `builtin:fetchurl`
/// (space-separated base URLs); the daemon removes it from a derivation's own
/// environment.
pub(crate) const HASHED_MIRRORS_VAR: &str = "__unrooted_hashed_mirrors";

/// The build's environment as a builtin reads it.
#[derive(Clone, Copy)]
pub(crate) struct Env<'a>(pub &'a [(OsString, OsString)]);

impl<'a> Env<'a> {
    /// The value of `name` (the last one, should it appear twice).
    pub(crate) fn get(&self, name: &str) -> Option<&'a OsStr> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_os_str())
    }

    /// The value of `name`, which must be set.
    pub(crate) fn require(&self, name: &str) -> Result<&'a OsStr, BuiltinError> {
        self.get(name)
            .ok_or_else(|| BuiltinError::MissingAttribute {
                name: name.to_owned(),
            })
    }

    /// The value of `name` as text; it must be set and UTF-8.
    pub(crate) fn text(&self, name: &str) -> Result<&'a str, BuiltinError> {
        self.require(name)?
            .to_str()
            .ok_or_else(|| BuiltinError::NotUtf8 {
                name: name.to_owned(),
            })
    }

    /// Whether `name` is `1` (how Nix passes `true`).
    pub(crate) fn flag(&self, name: &str) -> bool {
        self.get(name) == Some(OsStr::new("1"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_env() {
        assert_eq!(builtin_name(b"builtin:fetchurl"), Some("fetchurl"));
        assert_eq!(
            builtin_name(b"builtin:unpack-channel"),
            Some("unpack-channel")
        );
        assert_eq!(builtin_name(b"builtin:buildenv"), Some("buildenv"));
        assert_eq!(builtin_name(b"builtin:nope"), None);
        assert_eq!(builtin_name(b"/bin/sh"), None);
        let vars = vec![
            (OsString::from("a"), OsString::from("1")),
            (OsString::from("b"), OsString::from("x")),
            (OsString::from("a"), OsString::from("2")),
        ];
        let env = Env(&vars);
        assert_eq!(env.get("a"), Some(OsStr::new("2")));
        assert!(!env.flag("a"));
        assert_eq!(env.text("b").unwrap(), "x");
        assert_eq!(
            env.require("c").unwrap_err().to_string(),
            "attribute 'c' missing"
        );
    }
}
