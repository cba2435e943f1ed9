//! The Nix worker protocol, server and client side: protocol versions and their
//! feature predicates, bounded reads of the wire primitives, framed streams, the
//! handshake, the log channel with its error frame, and typed requests and replies for
//! every operation clients 1.21–1.38 send. The crate is synchronous over
//! `std::io::Read`/`Write` because the daemon serves each connection on its own thread
//! (requests on a connection are strictly sequential, and bodies such as NARs are
//! parsed by the sync reader of `unrooted-format`), so async would buy nothing but a
//! second copy of every reader. Every length and count from the peer is bounded before
//! anything is allocated, nothing panics on untrusted input, and every error says
//! whether the connection can continue ([`ProtocolError::is_recoverable`]).

pub mod body;
pub mod build_result;
pub mod client;
pub mod derived_path;
pub mod error;
pub mod features;
pub mod handshake;
pub mod json_log;
pub mod path_info;
pub mod reply;
pub mod request;
pub mod stderr;
pub mod version;
pub mod wire;

pub use build_result::{BuildResult, BuildStatus, DrvOutput, KeyedBuildResult, Realisation};
pub use derived_path::{DerivedPath, OutputsSpec};
pub use error::ProtocolError;
pub use features::{Feature, Features};
pub use handshake::{server_handshake, ClientHello, ServerHello, TrustedFlag};
pub use path_info::{UnkeyedValidPathInfo, ValidPathInfo};
pub use request::{read_request, BodyKind, Opcode, Request};
pub use stderr::{DaemonError, StderrWriter};
pub use version::ProtocolVersion;
pub use wire::{FramedReader, FramedWriter, Limits, WireContext};
