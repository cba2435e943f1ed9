//! The crate's error type and the rule deciding whether a connection survives it.

use std::io;

use thiserror::Error;
use unrooted_format::content_address::ContentAddressError;
use unrooted_format::hash::HashError;
use unrooted_format::StorePathError;

use crate::request::{BodyKind, Opcode};
use crate::version::ProtocolVersion;

/// Everything that can go wrong while speaking the worker protocol.
///
/// Variants are named after what failed. [`ProtocolError::is_recoverable`] says whether
/// the byte position in the client's stream is still known
/// (`docs/spec/worker-protocol.md` §4 rule 3): if it is, the
/// server sends one `STDERR_ERROR` and keeps serving; if not, it sends one error frame
/// and closes.
#[derive(Debug, Error)]
pub enum ProtocolError {
    /// Reading a field failed at the transport level (including a truncated stream).
    #[error("reading {field} from the peer")]
    Read {
        /// The field being read.
        field: &'static str,
        /// The transport error; `UnexpectedEof` for truncated input.
        #[source]
        source: io::Error,
    },
    /// Writing to the peer failed.
    #[error("writing {field} to the peer")]
    Write {
        /// What was being written.
        field: &'static str,
        /// The transport error.
        #[source]
        source: io::Error,
    },
    /// A length prefix exceeds the bound for its field; nothing was allocated.
    #[error("{field} is {len} bytes long, more than the limit of {max}")]
    StringTooLong {
        /// The field.
        field: &'static str,
        /// The announced length.
        len: u64,
        /// The limit for this field.
        max: u64,
    },
    /// A collection count exceeds the bound for its field.
    #[error("{field} has {count} elements, more than the limit of {max}")]
    TooManyElements {
        /// The field.
        field: &'static str,
        /// The announced count.
        count: u64,
        /// The limit for this field.
        max: u64,
    },
    /// The 0–7 padding bytes after a string were not zero.
    #[error("non-zero padding after {field}")]
    BadPadding {
        /// The field.
        field: &'static str,
    },
    /// An integer field is outside the values the protocol allows.
    #[error("{field} has the invalid value {value}")]
    ValueOutOfRange {
        /// The field.
        field: &'static str,
        /// The value read.
        value: u64,
    },
    /// A field that must be text is not UTF-8.
    #[error("{field} is not valid UTF-8")]
    NotUtf8 {
        /// The field.
        field: &'static str,
    },
    /// A path argument does not lie directly inside the store directory.
    #[error("path '{path}' is not in the Nix store")]
    NotInStore {
        /// The path as sent.
        path: String,
    },
    /// A store path or name is malformed (bad hash part, illegal character...).
    #[error("invalid store path '{path}'")]
    InvalidStorePath {
        /// The text as sent.
        path: String,
        /// Why it is invalid.
        #[source]
        source: StorePathError,
    },
    /// A hash argument could not be parsed.
    #[error("invalid hash in {field}")]
    InvalidHash {
        /// The field.
        field: &'static str,
        /// The parse failure.
        #[source]
        source: HashError,
    },
    /// A content address or content-address method could not be parsed.
    #[error("invalid content address '{text}'")]
    InvalidContentAddress {
        /// The text as sent.
        text: String,
        /// The parse failure, when it came from the hash inside.
        #[source]
        source: Option<ContentAddressError>,
    },
    /// A derived path (`drv!out`) is malformed.
    #[error("invalid derived path '{text}': {reason}")]
    InvalidDerivedPath {
        /// The text as sent.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A DrvOutput id (`sha256:<hex>!out`) or a Realisation is malformed.
    #[error("invalid realisation data '{text}': {reason}")]
    InvalidRealisation {
        /// The text as sent.
        text: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The opcode word names no operation this server knows.
    #[error("invalid operation {op}")]
    UnknownOpcode {
        /// The value read.
        op: u64,
    },
    /// The operation existed once but no daemon serves it any more.
    #[error("invalid operation {}", .op.code())]
    RemovedOperation {
        /// The operation.
        op: Opcode,
    },
    /// The arguments of a request were read completely but one of them is invalid.
    ///
    /// The request's header was consumed; whether its body still has to be drained is
    /// in `body` (see [`ProtocolError::is_recoverable`]).
    #[error("invalid argument to {op:?}")]
    InvalidArgument {
        /// The operation.
        op: Opcode,
        /// The request's data stream, not yet read.
        body: Option<BodyKind>,
        /// The first invalid argument.
        #[source]
        source: Box<ProtocolError>,
    },
    /// The first word was not WORKER_MAGIC_1 (or WORKER_MAGIC_2 for a client).
    #[error("protocol mismatch: bad magic {got:#x}")]
    BadMagic {
        /// The value read.
        got: u64,
    },
    /// The peer speaks a protocol version we refuse.
    #[error("unsupported protocol version {version}")]
    UnsupportedVersion {
        /// The peer's version.
        version: ProtocolVersion,
    },
    /// A frame of a framed stream is larger than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// The announced frame length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The peer answered a `STDERR_READ` with more bytes than were asked for.
    #[error("STDERR_READ answered with {got} bytes, {wanted} were asked for")]
    OversizedReadAnswer {
        /// Bytes requested.
        wanted: u64,
        /// Bytes sent.
        got: u64,
    },
    /// A log-channel message started with a tag we do not know (client side).
    #[error("unknown log message tag {tag:#x}")]
    UnknownStderrTag {
        /// The tag read.
        tag: u64,
    },
    /// The daemon ended a request with `STDERR_ERROR` (client side).
    #[error("daemon error: {message}")]
    Remote {
        /// The message (older daemons include an `error: ` prefix).
        message: String,
        /// Trace lines (≥ 1.26).
        traces: Vec<String>,
        /// The exit status (< 1.26; 1 for structured errors).
        exit_status: u32,
    },
    /// A value cannot be expressed at the negotiated version (encoder side).
    #[error("{what} cannot be sent at protocol version {version}")]
    Unrepresentable {
        /// What could not be encoded.
        what: &'static str,
        /// The negotiated version.
        version: ProtocolVersion,
    },
}

impl ProtocolError {
    /// Whether the connection can continue after sending this error to the client.
    ///
    /// Only [`ProtocolError::InvalidArgument`] leaves the stream position known: the
    /// request header was read to its end and only its meaning was wrong. Its body, if
    /// any, must first be consumed: a framed body is drained with
    /// [`crate::wire::FramedReader::drain`]; a pulled body was never sent; an unframed
    /// NAR has no length, so that case is not recoverable. Every other error happened
    /// mid-request or on the transport, so the server sends one error frame and closes.
    pub fn is_recoverable(&self) -> bool {
        match self {
            Self::InvalidArgument { body, .. } => !matches!(body, Some(BodyKind::UnframedNar)),
            _ => false,
        }
    }

    /// The body that must be drained before the error is sent, for a recoverable error.
    pub fn body_to_drain(&self) -> Option<BodyKind> {
        match self {
            Self::InvalidArgument {
                body: Some(BodyKind::Framed),
                ..
            } => Some(BodyKind::Framed),
            _ => None,
        }
    }

    /// Whether the peer closed the stream cleanly before this read began.
    pub fn is_eof(&self) -> bool {
        matches!(self, Self::Read { source, .. } if source.kind() == io::ErrorKind::UnexpectedEof)
    }

    /// The message to show the client in a `STDERR_ERROR`: the innermost cause for
    /// invalid arguments, so a non-store path reads "path '…' is not in the Nix store".
    pub fn client_message(&self) -> String {
        match self {
            Self::InvalidArgument { source, .. } => source.client_message(),
            Self::InvalidStorePath { source, .. } => source.to_string(),
            Self::InvalidHash { field, source } => format!("{field}: {source}"),
            other => other.to_string(),
        }
    }
}

/// Wraps a protocol error as an I/O error, for `Read`/`Write` implementations; the
/// original is recoverable with `io::Error::get_ref` + `downcast_ref`.
pub(crate) fn to_io(e: ProtocolError) -> io::Error {
    let kind = match &e {
        ProtocolError::Read { source, .. } => source.kind(),
        _ => io::ErrorKind::InvalidData,
    };
    io::Error::new(kind, e)
}

impl From<io::Error> for ProtocolError {
    /// Bare I/O errors in this crate only come from writing to the peer: reads always
    /// name their field.
    fn from(source: io::Error) -> Self {
        Self::Write {
            field: "message",
            source,
        }
    }
}
