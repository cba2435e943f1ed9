//! Why a fetch failed.

/// Why an HTTP(S) request failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The server answered with an error status (4xx, 5xx).
    #[error("HTTP error {status} from '{url}'")]
    Status {
        /// The URL asked for.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The request failed before a status came (connection, TLS, proxy, redirects,
    /// a time-out).
    #[error("fetching '{url}'")]
    Network {
        /// The URL asked for.
        url: String,
        /// Why.
        #[source]
        source: ureq::Error,
    },
    /// The proxy's URL is not one the client can use.
    #[error("unusable proxy '{proxy}'")]
    Proxy {
        /// The proxy's URL as given.
        proxy: String,
        /// Why.
        #[source]
        source: ureq::Error,
    },
}
