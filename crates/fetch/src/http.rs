//! The HTTP(S) client: ureq's blocking agent with the bounds every download here has.

use std::fmt;
use std::io::Read;
use std::time::Duration;

use crate::error::FetchError;

/// How many redirects one request follows (ureq 2's default, which the substituter
/// and `builtin:fetchurl` used before they shared this client).
pub const MAX_REDIRECTS: u32 = 5;

/// How many idle connections the pool keeps in all (ureq 2's default).
pub const MAX_IDLE_CONNECTIONS: usize = 100;

/// The `User-Agent` of every request.
pub const USER_AGENT: &str = concat!("unrooted/", env!("CARGO_PKG_VERSION"));

/// The settings of one [`HttpClient`].
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// How long connecting (with the TLS handshake) may take; `None` for no bound.
    pub connect_timeout: Option<Duration>,
    /// How long one read may wait for data, for the headers and the body alike (Nix's
    /// `stalled-download-timeout`): a stalled transfer fails, a long one does not.
    pub stall_timeout: Duration,
    /// Idle connections kept per host for later requests (at least 1).
    pub idle_connections_per_host: usize,
    /// The proxy every request goes through (`http://host:port`), if any. The
    /// environment's proxy variables are never read here: callers decide.
    pub proxy: Option<String>,
}

/// A body being read (of a response whose status was a success, or of a file), with
/// its length when it is known.
pub struct Body {
    /// The bytes.
    pub reader: Box<dyn Read + Send>,
    /// `Content-Length` (or the file's size), when known.
    pub length: Option<u64>,
}

impl fmt::Debug for Body {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Body")
            .field("length", &self.length)
            .finish()
    }
}

/// A blocking HTTP(S) client with a connection pool; cheap to share between threads.
#[derive(Clone)]
pub struct HttpClient {
    agent: ureq::Agent,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    /// A client with `options`; fails only for a proxy URL that cannot be used.
    pub fn new(options: &HttpOptions) -> Result<Self, FetchError> {
        let proxy = match &options.proxy {
            Some(proxy) => Some(ureq::Proxy::new(proxy).map_err(|source| FetchError::Proxy {
                proxy: proxy.clone(),
                source,
            })?),
            None => None,
        };
        let config = ureq::Agent::config_builder()
            .timeout_connect(options.connect_timeout)
            .timeout_per_read(Some(options.stall_timeout))
            .max_redirects(MAX_REDIRECTS)
            .max_idle_connections(MAX_IDLE_CONNECTIONS)
            .max_idle_connections_per_host(options.idle_connections_per_host.max(1))
            .user_agent(USER_AGENT)
            .proxy(proxy)
            .build();
        Ok(Self {
            agent: ureq::Agent::new_with_config(config),
        })
    }

    /// `GET url`, following redirects; an error status (4xx, 5xx) is
    /// [`FetchError::Status`].
    pub fn get(&self, url: &str) -> Result<Body, FetchError> {
        match self.agent.get(url).call() {
            Ok(resp) => {
                let length = resp
                    .headers()
                    .get("content-length")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse().ok());
                Ok(Body {
                    reader: Box::new(resp.into_body().into_reader()),
                    length,
                })
            }
            Err(ureq::Error::StatusCode(status)) => Err(FetchError::Status {
                url: url.to_owned(),
                status,
            }),
            Err(source) => Err(FetchError::Network {
                url: url.to_owned(),
                source,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;

    /// A one-connection server answering every request on it with `reply`.
    fn serve_once(reply: &'static [u8]) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            (&stream).write_all(reply).unwrap();
        });
        format!("http://{addr}/x")
    }

    fn options() -> HttpOptions {
        HttpOptions {
            connect_timeout: Some(Duration::from_secs(5)),
            stall_timeout: Duration::from_secs(5),
            idle_connections_per_host: 1,
            proxy: None,
        }
    }

    #[test]
    fn a_body_and_its_length() {
        let url = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        let mut resp = HttpClient::new(&options()).unwrap().get(&url).unwrap();
        assert_eq!(resp.length, Some(5));
        let mut body = String::new();
        resp.reader.read_to_string(&mut body).unwrap();
        assert_eq!(body, "hello");
    }

    #[test]
    fn error_statuses_are_errors() {
        let url = serve_once(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        let err = HttpClient::new(&options()).unwrap().get(&url).unwrap_err();
        assert!(
            matches!(err, FetchError::Status { status: 404, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_stalled_body_fails_after_the_stall_timeout() {
        let url = serve_once(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhel");
        let mut opts = options();
        opts.stall_timeout = Duration::from_millis(300);
        let mut resp = HttpClient::new(&opts).unwrap().get(&url).unwrap();
        let started = std::time::Instant::now();
        assert!(resp.reader.read_to_end(&mut Vec::new()).is_err());
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn an_unusable_proxy_is_refused() {
        let mut opts = options();
        opts.proxy = Some("not a url at all".into());
        assert!(matches!(
            HttpClient::new(&opts),
            Err(FetchError::Proxy { .. })
        ));
    }
}
