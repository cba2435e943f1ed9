//! How files are fetched from a cache: a small [`Transport`] trait with an HTTP(S)
//! implementation (`unrooted-fetch`'s blocking client, with a connection pool), a `file://` one, and the
//! S3 one in [`crate::s3`].

use std::fmt;
use std::fs::File;
use std::io;
use std::path::PathBuf;
use std::time::Duration;

pub use unrooted_fetch::Body;
use unrooted_fetch::{FetchError, HttpClient, HttpOptions};

use crate::error::{SubstituteError, TransportError};

/// Fetches files of one cache by their path relative to the cache's root.
///
/// `rel` is always checked by [`check_relative`] before it reaches an implementation.
pub trait Transport: Send + Sync + fmt::Debug {
    /// The cache's base URL, for messages (without a trailing `/`).
    fn base_url(&self) -> &str;

    /// Opens `rel`; `Ok(None)` when the cache does not have it (404, 403, 410 or a
    /// missing file), so that absence is not mistaken for failure.
    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError>;

    /// The full URL of `rel`, for messages.
    fn url_of(&self, rel: &str) -> String {
        format!("{}/{}", self.base_url(), rel)
    }
}

/// Whether `rel` is a safe relative location inside a cache: not empty, not absolute,
/// no `.`/`..`/empty segments, and only the bytes Nix's caches use in file names
/// (letters, digits and `._+-=?&%`). A narinfo's `URL` comes from the network and
/// must never reach outside the cache (a `file://` cache would otherwise read any file).
pub fn check_relative(rel: &str) -> bool {
    !rel.is_empty()
        && rel.len() <= 1024
        && rel
            .split('/')
            .all(|seg| !seg.is_empty() && seg != "." && seg != "..")
        && rel
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+-=?&%/".contains(&b))
}

/// Settings for network transports.
#[derive(Debug, Clone)]
pub struct TransportOptions {
    /// Connection timeout (Nix's `connect-timeout`; 0 = the library's default).
    pub connect_timeout: Duration,
    /// How long a read may stall before the transfer is abandoned (Nix's
    /// `stalled-download-timeout`, 300 s).
    pub stall_timeout: Duration,
    /// Idle connections kept per host (`http-connections`).
    pub connections: usize,
}

impl Default for TransportOptions {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(10),
            stall_timeout: Duration::from_secs(300),
            connections: 25,
        }
    }
}

/// Opens the transport for a cache URL: `http://`, `https://`, `file://` or `s3://`.
pub fn open_transport(
    url: &str,
    options: &TransportOptions,
) -> Result<Box<dyn Transport>, SubstituteError> {
    let base = url.trim_end_matches('/');
    if let Some(path) = base.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(SubstituteError::InvalidUrl {
                url: url.to_owned(),
                reason: "a file:// cache needs an absolute path",
            });
        }
        Ok(Box::new(FileTransport {
            base: base.to_owned(),
            root: PathBuf::from(path),
        }))
    } else if base.starts_with("s3://") {
        Ok(Box::new(crate::s3::S3Transport::open(url, options)?))
    } else if base.starts_with("http://") || base.starts_with("https://") {
        Ok(Box::new(HttpTransport::new(base, options)))
    } else {
        Err(SubstituteError::InvalidUrl {
            url: url.to_owned(),
            reason: "only http://, https://, file:// and s3:// caches are supported",
        })
    }
}

/// A cache over HTTP or HTTPS, through the shared [`HttpClient`].
pub struct HttpTransport {
    base: String,
    client: HttpClient,
}

impl fmt::Debug for HttpTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpTransport")
            .field("base", &self.base)
            .finish()
    }
}

impl HttpTransport {
    /// A transport for the cache at `base` (no trailing `/`).
    pub fn new(base: &str, options: &TransportOptions) -> Self {
        let options = HttpOptions {
            connect_timeout: Some(options.connect_timeout).filter(|t| !t.is_zero()),
            stall_timeout: options.stall_timeout,
            idle_connections_per_host: options.connections,
            proxy: None,
        };
        Self {
            base: base.to_owned(),
            client: HttpClient::new(&options).expect("no proxy, so nothing to refuse"),
        }
    }
}

impl Transport for HttpTransport {
    fn base_url(&self) -> &str {
        &self.base
    }

    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError> {
        match self.client.get(&self.url_of(rel)) {
            Ok(body) => Ok(Some(body)),
            Err(FetchError::Status {
                status: 404 | 403 | 410,
                ..
            }) => Ok(None),
            Err(FetchError::Status { status, .. }) => Err(TransportError::Status { status }),
            Err(e) => Err(TransportError::Network {
                source: Box::new(e),
            }),
        }
    }
}

/// A cache in a local directory (`file:///path`), as `nix copy --to file://` makes.
#[derive(Debug)]
pub struct FileTransport {
    base: String,
    root: PathBuf,
}

impl Transport for FileTransport {
    fn base_url(&self) -> &str {
        &self.base
    }

    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError> {
        let path = self.root.join(rel);
        match File::open(&path) {
            Ok(file) => {
                let length = file.metadata().ok().map(|m| m.len());
                Ok(Some(Body {
                    reader: Box::new(file),
                    length,
                }))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TransportError::Io { source }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_locations() {
        for ok in [
            "nix-cache-info",
            "nar/0abc.nar.xz",
            "nar/abc.nar?hash=xyz",
            "abc.narinfo",
        ] {
            assert!(check_relative(ok), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "nar/../../x",
            "nar//x",
            "nar/./x",
            "nar/x y",
            "nar/x\n",
            "http://evil/x",
        ] {
            assert!(!check_relative(bad), "{bad:?}");
        }
    }

    #[test]
    fn unsupported_scheme() {
        let err = open_transport("ftp://host/c", &TransportOptions::default()).unwrap_err();
        assert!(err.to_string().contains("ftp://host/c"), "{err}");
    }
}
