//! The connection handshake (`docs/spec/worker-protocol.md` §3), for both ends.
//!
//! Server order: read WORKER_MAGIC_1; send WORKER_MAGIC_2 and our version; read the
//! client's version; V = min; ≥ 1.38 exchange feature sets; read the obsolete CPU
//! affinity (≥ 1.14) and reserveSpace (≥ 1.11) words; send the daemon version string
//! (≥ 1.33) and the trust flag (≥ 1.35). The caller then flushes any queued log
//! messages and sends `STDERR_LAST` ([`crate::stderr::StderrWriter::last`]).

use std::collections::BTreeSet;
use std::io::{Read, Write};

use crate::error::ProtocolError;
use crate::version::ProtocolVersion;
use crate::wire::{self, Limits, MAX_SHORT_LEN};

type Result<T> = std::result::Result<T, ProtocolError>;

/// The first word a client sends ("cxin").
pub const WORKER_MAGIC_1: u64 = 0x6e69_7863;
/// The server's answer ("oixd").
pub const WORKER_MAGIC_2: u64 = 0x6478_696f;

/// The trust flag of the handshake (≥ 1.35).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedFlag {
    /// The server does not know (a proxying store).
    Unknown,
    /// The client is in `trusted-users`.
    Trusted,
    /// The client is not trusted.
    NotTrusted,
}

impl TrustedFlag {
    fn to_wire(self) -> u64 {
        match self {
            Self::Unknown => 0,
            Self::Trusted => 1,
            Self::NotTrusted => 2,
        }
    }

    fn from_wire(v: u64) -> Result<Self> {
        match v {
            0 => Ok(Self::Unknown),
            1 => Ok(Self::Trusted),
            2 => Ok(Self::NotTrusted),
            value => Err(ProtocolError::ValueOutOfRange {
                field: "trust flag",
                value,
            }),
        }
    }
}

/// What the server announces.
#[derive(Debug, Clone)]
pub struct ServerHello {
    /// The version we announce; [`ProtocolVersion::RECOMMENDED`] unless testing.
    pub version: ProtocolVersion,
    /// The daemon version string sent at ≥ 1.33 (shown by `nix store ping`).
    pub daemon_version: String,
    /// Whether this client is trusted, sent at ≥ 1.35.
    pub trust: TrustedFlag,
    /// The features we offer at ≥ 1.38; empty keeps every encoding unchanged.
    pub features: BTreeSet<String>,
}

/// The outcome of a server handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientHello {
    /// The negotiated version V = min(client, server); gate everything on this.
    pub version: ProtocolVersion,
    /// The version the client announced.
    pub client_version: ProtocolVersion,
    /// The features in effect (the intersection), empty below 1.38.
    pub features: BTreeSet<String>,
}

/// Runs the server side of the handshake up to (not including) the final
/// `STDERR_LAST`.
///
/// A bad magic or a client version outside 1.21… (or major ≠ 1) is refused with
/// [`ProtocolError::BadMagic`] / [`ProtocolError::UnsupportedVersion`] right after
/// the offending word, having sent nothing more: the caller just closes the socket.
pub fn server_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    hello: &ServerHello,
    limits: &Limits,
) -> Result<ClientHello> {
    let magic = wire::read_u64(r, "client magic")?;
    if magic != WORKER_MAGIC_1 {
        return Err(ProtocolError::BadMagic { got: magic });
    }
    wire::write_u64(w, WORKER_MAGIC_2)?;
    wire::write_u64(w, hello.version.to_wire())?;
    w.flush()?;
    let client_version = ProtocolVersion::from_wire(wire::read_u64(r, "client version")?);
    if !client_version.is_supported() {
        return Err(ProtocolError::UnsupportedVersion {
            version: client_version,
        });
    }
    let version = client_version.min(hello.version);
    let mut features = BTreeSet::new();
    if version.has_feature_exchange() {
        let theirs = wire::read_string_set(r, limits, MAX_SHORT_LEN, "client features")?;
        wire::write_strings(w, &hello.features)?;
        w.flush()?;
        features = theirs.intersection(&hello.features).cloned().collect();
    }
    if version.has_cpu_affinity() && wire::read_bool(r, "cpu affinity flag")? {
        wire::read_u64(r, "cpu affinity")?;
    }
    if version.has_reserve_space() {
        wire::read_u64(r, "reserve space")?;
    }
    if version.has_daemon_version_string() {
        wire::write_bytes(w, hello.daemon_version.as_bytes())?;
    }
    if version.has_trust_flag() {
        wire::write_u64(w, hello.trust.to_wire())?;
    }
    Ok(ClientHello {
        version,
        client_version,
        features,
    })
}

/// What a client learns from the handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerInfo {
    /// The negotiated version V = min(client, server).
    pub version: ProtocolVersion,
    /// The version the daemon announced.
    pub server_version: ProtocolVersion,
    /// The daemon's version string (≥ 1.33).
    pub daemon_version: Option<String>,
    /// The trust flag (≥ 1.35).
    pub trust: Option<TrustedFlag>,
    /// The features in effect (≥ 1.38).
    pub features: BTreeSet<String>,
}

/// Runs the client side of the handshake, writing as a Nix 2.8 client does (magic
/// alone, then version + affinity 0 + reserveSpace 0), up to the daemon's first log
/// messages; the caller then reads those until `STDERR_LAST`
/// ([`crate::client::Client`] does).
pub fn client_handshake<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    version: ProtocolVersion,
    features: &BTreeSet<String>,
    limits: &Limits,
) -> Result<ServerInfo> {
    wire::write_u64(w, WORKER_MAGIC_1)?;
    w.flush()?;
    let magic = wire::read_u64(r, "server magic")?;
    if magic != WORKER_MAGIC_2 {
        return Err(ProtocolError::BadMagic { got: magic });
    }
    let server_version = ProtocolVersion::from_wire(wire::read_u64(r, "server version")?);
    if !server_version.is_supported() {
        return Err(ProtocolError::UnsupportedVersion {
            version: server_version,
        });
    }
    let v = version.min(server_version);
    wire::write_u64(w, version.to_wire())?;
    let mut in_effect = BTreeSet::new();
    if v.has_feature_exchange() {
        wire::write_strings(w, features)?;
        w.flush()?;
        let theirs = wire::read_string_set(r, limits, MAX_SHORT_LEN, "server features")?;
        in_effect = theirs.intersection(features).cloned().collect();
    }
    if v.has_cpu_affinity() {
        wire::write_u64(w, 0)?;
    }
    if v.has_reserve_space() {
        wire::write_u64(w, 0)?;
    }
    w.flush()?;
    let daemon_version = if v.has_daemon_version_string() {
        Some(wire::read_string(r, MAX_SHORT_LEN, "daemon version")?)
    } else {
        None
    };
    let trust = if v.has_trust_flag() {
        Some(TrustedFlag::from_wire(wire::read_u64(r, "trust flag")?)?)
    } else {
        None
    };
    Ok(ServerInfo {
        version: v,
        server_version,
        daemon_version,
        trust,
        features: in_effect,
    })
}
