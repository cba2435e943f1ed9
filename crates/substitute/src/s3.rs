//! S3-compatible caches: `s3://bucket?region=…&endpoint=…&profile=…&scheme=…`, as
//! Nix names them.
//!
//! Requests are signed (AWS signature v4) by `rust-s3` in its blocking mode (attohttpc
//! with rustls), which suits this crate's threads and builds from crates.io alone; the
//! AWS SDK would bring an async runtime into a synchronous daemon. Credentials are the
//! store owner's: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and
//! `AWS_SESSION_TOKEN`) in the daemon's environment, else the `profile` (default
//! `default`) of `~/.aws/credentials`. Nothing a client sends reaches them.
//!
//! Known gap: on an error status `rust-s3` reads the whole error body into memory
//! before returning (bodies of successful requests are streamed and bounded by the
//! caller); a hostile endpoint could make that large. The endpoint is one the
//! administrator configured.
//!
//! The library's own retries are turned off: the caller's (`binary_cache`)
//! are the bounded ones, and every request has a deadline (the stall time-out).

use std::fmt;
use std::io::{self, Write};
use std::sync::mpsc;

use s3::creds::Credentials;
use s3::error::S3Error;
use s3::{Bucket, Region};

use crate::error::{SubstituteError, TransportError};
use crate::transport::{Body, Transport, TransportOptions};

/// A bucket of an S3-compatible service.
pub struct S3Transport {
    base: String,
    /// For small objects (narinfos, `nix-cache-info`): the whole request within the
    /// stall time-out.
    bucket: Box<Bucket>,
    /// For NARs and uploads, which may rightly take longer than that: no total
    /// deadline, but the HTTP client's own bound on each read and on connecting
    /// (30 s each in attohttpc), so a stalled transfer still ends.
    long: Box<Bucket>,
}

impl fmt::Debug for S3Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Transport")
            .field("base", &self.base)
            .finish()
    }
}

/// The parts of an `s3://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// `region`, default `us-east-1`.
    pub region: String,
    /// `endpoint` with its scheme (`scheme`, default `https`), if not AWS's.
    pub endpoint: Option<String>,
    /// `profile` of the AWS configuration files.
    pub profile: Option<String>,
}

impl S3Url {
    /// Parses `s3://bucket?param=value&…` (unknown parameters are ignored, as Nix's
    /// store settings for other stores may be there too).
    pub fn parse(url: &str) -> Result<Self, SubstituteError> {
        let invalid = |reason| SubstituteError::InvalidUrl {
            url: url.to_owned(),
            reason,
        };
        let rest = url
            .strip_prefix("s3://")
            .ok_or(invalid("not an s3:// URL"))?;
        let (bucket, query) = rest.split_once('?').unwrap_or((rest, ""));
        let bucket = bucket.trim_end_matches('/');
        if bucket.is_empty()
            || bucket.len() > 63
            || !bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        {
            return Err(invalid("the bucket name is not a valid S3 bucket name"));
        }
        let mut region = "us-east-1".to_owned();
        let mut endpoint = None;
        let mut profile = None;
        let mut scheme = "https".to_owned();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v).ok_or(invalid("a parameter is badly percent-encoded"))?;
            match k {
                "region" => region = v,
                "endpoint" => endpoint = Some(v),
                "profile" => profile = Some(v),
                "scheme" => scheme = v,
                _ => {}
            }
        }
        if scheme != "http" && scheme != "https" {
            return Err(invalid("scheme must be http or https"));
        }
        let endpoint = endpoint.map(|e| {
            if e.contains("://") {
                e
            } else {
                format!("{scheme}://{e}")
            }
        });
        Ok(Self {
            bucket: bucket.to_owned(),
            region,
            endpoint,
            profile: profile.filter(|p| !p.is_empty()),
        })
    }
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl S3Transport {
    /// Opens the bucket `url` names with the store owner's credentials.
    pub fn open(url: &str, options: &TransportOptions) -> Result<Self, SubstituteError> {
        let parsed = S3Url::parse(url)?;
        let credentials = Credentials::new(None, None, None, None, parsed.profile.as_deref())
            .map_err(|e| SubstituteError::S3Setup {
                url: url.to_owned(),
                source: Box::new(e),
            })?;
        let region = match &parsed.endpoint {
            Some(endpoint) => Region::Custom {
                region: parsed.region.clone(),
                endpoint: endpoint.clone(),
            },
            None => parsed
                .region
                .parse()
                .map_err(|e| SubstituteError::S3Setup {
                    url: url.to_owned(),
                    source: Box::new(e),
                })?,
        };
        let bucket = Bucket::new(&parsed.bucket, region, credentials).map_err(|e| {
            SubstituteError::S3Setup {
                url: url.to_owned(),
                source: Box::new(e),
            }
        })?;
        // Other services than AWS's rarely have per-bucket host names.
        let mut bucket = if parsed.endpoint.is_some() {
            bucket.with_path_style()
        } else {
            bucket
        };
        let mut long = bucket.clone();
        long.set_request_timeout(None);
        bucket.set_request_timeout(Some(options.stall_timeout));
        // The caller retries, a bounded number of times.
        s3::set_retries(0);
        Ok(Self {
            base: format!("s3://{}", parsed.bucket),
            bucket,
            long,
        })
    }

    /// Uploads `data` as `rel` (with its content type).
    pub fn put(&self, rel: &str, data: &[u8], content_type: &str) -> Result<(), TransportError> {
        self.bucket
            .put_object_with_content_type(rel, data, content_type)
            .map(|_| ())
            .map_err(s3_error)
    }

    /// Uploads what `reader` holds as `rel`, in parts when large.
    pub fn put_stream(
        &self,
        rel: &str,
        reader: &mut impl io::Read,
        content_type: &str,
    ) -> Result<(), TransportError> {
        self.long
            .put_object_stream_with_content_type(reader, rel, content_type)
            .map(|_| ())
            .map_err(s3_error)
    }

    /// Whether `rel` exists.
    pub fn exists(&self, rel: &str) -> Result<bool, TransportError> {
        match self.bucket.head_object(rel) {
            Ok(_) => Ok(true),
            Err(S3Error::HttpFailWithBody(404 | 403, _)) => Ok(false),
            Err(e) => Err(s3_error(e)),
        }
    }
}

fn s3_error(e: S3Error) -> TransportError {
    match e {
        S3Error::HttpFailWithBody(status, _) => TransportError::Status { status },
        S3Error::Io(source) => TransportError::Io { source },
        other => TransportError::Network {
            source: Box::new(other),
        },
    }
}

/// The writer the download thread fills: it says the body has begun before the
/// first byte, then passes the bytes on through a pipe.
struct Relay {
    started: Option<mpsc::SyncSender<Result<(), TransportError>>>,
    pipe: io::PipeWriter,
}

impl Write for Relay {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(tx) = self.started.take() {
            let _ = tx.send(Ok(()));
        }
        self.pipe.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.pipe.flush()
    }
}

impl Transport for S3Transport {
    fn base_url(&self) -> &str {
        &self.base
    }

    /// Streams the object through a pipe from a thread of its own, so that nothing
    /// is held in memory: the reader's bounds (the narinfo's sizes) stop it, and
    /// dropping the reader ends the download.
    fn get(&self, rel: &str) -> Result<Option<Body>, TransportError> {
        let (reader, pipe) = io::pipe().map_err(|source| TransportError::Io { source })?;
        let (tx, rx) = mpsc::sync_channel(1);
        let bucket = if rel.starts_with("nar/") {
            self.long.clone()
        } else {
            self.bucket.clone()
        };
        let key = rel.to_owned();
        let done = tx.clone();
        std::thread::Builder::new()
            .name("s3-get".into())
            .spawn(move || {
                let mut relay = Relay {
                    started: Some(tx),
                    pipe,
                };
                let result = bucket.get_object_to_writer(&key, &mut relay);
                let started = relay.started.is_none();
                // An empty object writes nothing: it has begun (and ended) all the same.
                match result {
                    Ok(_) if !started => {
                        let _ = done.send(Ok(()));
                    }
                    Ok(_) => {}
                    Err(e) if !started => {
                        let _ = done.send(Err(s3_error(e)));
                    }
                    // A failure mid-body: the reader sees the pipe end early (and the
                    // NAR's size and hash checks refuse it).
                    Err(e) => tracing::debug!("downloading s3 object {key}: {e}"),
                }
            })
            .map_err(|source| TransportError::Io { source })?;
        match rx.recv() {
            Ok(Ok(())) => Ok(Some(Body {
                reader: Box::new(reader),
                length: None,
            })),
            Ok(Err(TransportError::Status {
                status: 404 | 403 | 410,
            })) => Ok(None),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(TransportError::Io {
                source: io::Error::other("the S3 download thread ended without a word"),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = S3Url::parse(
            "s3://my-cache?endpoint=127.0.0.1:9000&scheme=http&region=eu-west-1&profile=ci",
        )
        .unwrap();
        assert_eq!(u.bucket, "my-cache");
        assert_eq!(u.region, "eu-west-1");
        assert_eq!(u.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(u.profile.as_deref(), Some("ci"));
        let u = S3Url::parse("s3://b?endpoint=http%3A%2F%2Fh%3A1").unwrap();
        assert_eq!(u.endpoint.as_deref(), Some("http://h:1"));
        assert_eq!(u.region, "us-east-1");
        assert!(S3Url::parse("s3://").is_err());
        assert!(S3Url::parse("s3://Bad_Name").is_err());
        assert!(S3Url::parse("s3://b?scheme=ftp").is_err());
    }
}
