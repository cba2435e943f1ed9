//! Fetching over HTTP(S) and decompressing what comes, for the layers that download:
//! the substituter (`unrooted-substitute`) and the builtin builders `fetchurl` and
//! `unpack-channel` (`unrooted-builder`). One [`HttpClient`] (ureq, blocking,
//! rustls with the web PKI roots) with the bounds both used, one decompressor
//! dispatch by [`Compression`](unrooted_format::narinfo::Compression) (a narinfo's
//! `Compression:`, a file suffix or an archive's first bytes, as the caller knows
//! it), and one [`Bounded`] reader for every length read from the network.
//!
//! This crate decides nothing about stores or caches: it depends on `format` only,
//! so that `builder` may use it without depending on `substitute`.

mod bounded;
pub mod decompress;
mod error;
mod http;

pub use bounded::{is_over_limit, Bounded, OverLimit};
pub use decompress::{can_decompress, decompressor};
pub use error::FetchError;
pub use http::{Body, HttpClient, HttpOptions, MAX_IDLE_CONNECTIONS, MAX_REDIRECTS, USER_AGENT};
