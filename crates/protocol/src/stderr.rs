//! The log ("stderr") channel (`docs/spec/worker-protocol.md` §4): messages the server
//! sends while a request runs, the terminators `STDERR_LAST` / `STDERR_ERROR`, and the error frame.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::error::ProtocolError;
use crate::version::ProtocolVersion;
use crate::wire::{self, WireContext, MAX_SHORT_LEN};

type Result<T> = std::result::Result<T, ProtocolError>;

/// Log text for the client (`str`).
pub const STDERR_NEXT: u64 = 0x6f6c_6d67;
/// The server asks the client for up to `u64` bytes of its source.
pub const STDERR_READ: u64 = 0x6461_7461;
/// Data for the client's sink (ExportPath).
pub const STDERR_WRITE: u64 = 0x6461_7416;
/// End of log; the reply follows.
pub const STDERR_LAST: u64 = 0x616c_7473;
/// The request failed; no reply follows.
pub const STDERR_ERROR: u64 = 0x6378_7470;
/// An activity starts.
pub const STDERR_START_ACTIVITY: u64 = 0x5354_5254;
/// An activity ends.
pub const STDERR_STOP_ACTIVITY: u64 = 0x5354_4f50;
/// A result of an activity (progress, a build log line...).
pub const STDERR_RESULT: u64 = 0x5253_4c54;

/// Log levels, as in SetOptions and activities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[allow(missing_docs)]
pub enum Verbosity {
    Error = 0,
    Warn = 1,
    Notice = 2,
    Info = 3,
    Talkative = 4,
    Chatty = 5,
    Debug = 6,
    Vomit = 7,
}

impl Verbosity {
    /// The wire value.
    pub fn to_wire(self) -> u64 {
        self as u64
    }

    /// From a wire value; values above 7 mean "everything", as Nix treats them.
    pub fn from_wire(v: u64) -> Self {
        match v {
            0 => Self::Error,
            1 => Self::Warn,
            2 => Self::Notice,
            3 => Self::Info,
            4 => Self::Talkative,
            5 => Self::Chatty,
            6 => Self::Debug,
            _ => Self::Vomit,
        }
    }
}

/// An activity type (`docs/spec/worker-protocol.md` §4); unknown values are kept as
/// they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActivityType(pub u64);

#[allow(missing_docs)]
impl ActivityType {
    pub const UNKNOWN: Self = Self(0);
    pub const COPY_PATH: Self = Self(100);
    pub const FILE_TRANSFER: Self = Self(101);
    pub const REALISE: Self = Self(102);
    pub const COPY_PATHS: Self = Self(103);
    pub const BUILDS: Self = Self(104);
    pub const BUILD: Self = Self(105);
    pub const OPTIMISE_STORE: Self = Self(106);
    pub const VERIFY_PATHS: Self = Self(107);
    pub const SUBSTITUTE: Self = Self(108);
    pub const QUERY_PATH_INFO: Self = Self(109);
    pub const POST_BUILD_HOOK: Self = Self(110);
    pub const BUILD_WAITING: Self = Self(111);
}

/// A result type (`docs/spec/worker-protocol.md` §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ResultType(pub u64);

#[allow(missing_docs)]
impl ResultType {
    pub const FILE_LINKED: Self = Self(100);
    pub const BUILD_LOG_LINE: Self = Self(101);
    pub const UNTRUSTED_PATH: Self = Self(102);
    pub const CORRUPTED_PATH: Self = Self(103);
    pub const SET_PHASE: Self = Self(104);
    pub const PROGRESS: Self = Self(105);
    pub const SET_EXPECTED: Self = Self(106);
    pub const POST_BUILD_LOG_LINE: Self = Self(107);
}

/// A field of an activity or result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// Kind 0.
    Int(u64),
    /// Kind 1.
    String(Vec<u8>),
}

/// An activity id; 0 means "no parent".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ActivityId(pub u64);

static ACTIVITY_COUNTER: AtomicU32 = AtomicU32::new(0);

impl ActivityId {
    /// A fresh id, unique within this daemon: `pid << 32 | counter`, as Nix makes
    /// them. The counter is process-wide because all connections share the client's
    /// view of ids only through their own stream, yet ids must not collide when the
    /// daemon relays a builder's activities. It wraps after 2³² activities.
    pub fn next() -> Self {
        let n = ACTIVITY_COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_add(1);
        Self((u64::from(std::process::id()) << 32) | u64::from(n))
    }
}

/// An error as the client will show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonError {
    /// The message, without an `error: ` prefix.
    pub message: String,
    /// Trace lines, outermost last (≥ 1.26 only).
    pub traces: Vec<String>,
    /// The exit status old clients (< 1.26) exit with: 1, or 100+ for build failures.
    pub exit_status: u32,
}

impl DaemonError {
    /// An error with exit status 1 and no traces.
    pub fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            traces: Vec::new(),
            exit_status: 1,
        }
    }
}

impl From<&ProtocolError> for DaemonError {
    fn from(e: &ProtocolError) -> Self {
        match e {
            ProtocolError::Remote {
                message,
                traces,
                exit_status,
            } => Self {
                message: message.clone(),
                traces: traces.clone(),
                exit_status: *exit_status,
            },
            other => Self::new(other.client_message()),
        }
    }
}

/// The prefix Nix 2.8 puts before messages in the pre-1.26 error form.
const OLD_ERROR_PREFIX: &str = "\x1b[31;1merror:\x1b[0m ";

/// Writes the one `STDERR_ERROR` frame for `err` at version `v`.
///
/// ≥ 1.26: `"Error"`, level 0, `"Error"`, message, 0 (no position), traces (each
/// `0` + text). < 1.26: the message as Nix 2.8 prints it (with the coloured
/// `error: ` prefix, byte-identical to the 2.8 daemon) and the exit status; traces
/// are dropped because old clients have nowhere to show them.
pub fn write_error<W: Write + ?Sized>(
    w: &mut W,
    v: ProtocolVersion,
    err: &DaemonError,
) -> Result<()> {
    wire::write_u64(w, STDERR_ERROR)?;
    if v.has_structured_errors() {
        wire::write_bytes(w, b"Error")?;
        wire::write_u64(w, 0)?;
        wire::write_bytes(w, b"Error")?;
        wire::write_bytes(w, err.message.as_bytes())?;
        wire::write_u64(w, 0)?;
        wire::write_u64(w, err.traces.len() as u64)?;
        for t in &err.traces {
            wire::write_u64(w, 0)?;
            wire::write_bytes(w, t.as_bytes())?;
        }
    } else {
        let text = format!("{OLD_ERROR_PREFIX}{}", err.message);
        wire::write_bytes(w, text.as_bytes())?;
        wire::write_u64(w, u64::from(err.exit_status))?;
    }
    Ok(())
}

/// One message on the log channel, for writing (server) or reading (client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StderrMessage {
    /// `STDERR_NEXT`: text as sent (Nix appends `\n`).
    Next(Vec<u8>),
    /// `STDERR_READ`: the server wants up to this many bytes.
    Read(u64),
    /// `STDERR_WRITE`: data for the client's sink.
    Write(Vec<u8>),
    /// `STDERR_LAST`.
    Last,
    /// `STDERR_ERROR`.
    Error(DaemonError),
    /// `STDERR_START_ACTIVITY`.
    StartActivity {
        /// Its id.
        id: ActivityId,
        /// Its level.
        level: Verbosity,
        /// Its type.
        kind: ActivityType,
        /// Its text.
        text: Vec<u8>,
        /// Its fields.
        fields: Vec<Field>,
        /// The parent activity, or 0.
        parent: ActivityId,
    },
    /// `STDERR_STOP_ACTIVITY`.
    StopActivity(ActivityId),
    /// `STDERR_RESULT`.
    Result {
        /// The activity.
        id: ActivityId,
        /// The result type.
        kind: ResultType,
        /// Its fields.
        fields: Vec<Field>,
    },
}

fn write_fields<W: Write + ?Sized>(w: &mut W, fields: &[Field]) -> Result<()> {
    wire::write_u64(w, fields.len() as u64)?;
    for f in fields {
        match f {
            Field::Int(i) => {
                wire::write_u64(w, 0)?;
                wire::write_u64(w, *i)?;
            }
            Field::String(s) => {
                wire::write_u64(w, 1)?;
                wire::write_bytes(w, s)?;
            }
        }
    }
    Ok(())
}

fn read_fields<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Vec<Field>> {
    let n = wire::read_count(r, cx.limits.max_count, "activity fields")?;
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        out.push(match wire::read_u64(r, "field kind")? {
            0 => Field::Int(wire::read_u64(r, "int field")?),
            1 => Field::String(wire::read_bytes(r, cx.limits.max_text, "string field")?),
            value => {
                return Err(ProtocolError::ValueOutOfRange {
                    field: "field kind",
                    value,
                })
            }
        });
    }
    Ok(out)
}

impl StderrMessage {
    /// Writes the message for version `v`. Activities and results require ≥ 1.20,
    /// which every version we accept has.
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, v: ProtocolVersion) -> Result<()> {
        match self {
            Self::Next(text) => {
                wire::write_u64(w, STDERR_NEXT)?;
                wire::write_bytes(w, text)?;
            }
            Self::Read(len) => {
                wire::write_u64(w, STDERR_READ)?;
                wire::write_u64(w, *len)?;
            }
            Self::Write(data) => {
                wire::write_u64(w, STDERR_WRITE)?;
                wire::write_bytes(w, data)?;
            }
            Self::Last => wire::write_u64(w, STDERR_LAST)?,
            Self::Error(e) => write_error(w, v, e)?,
            Self::StartActivity {
                id,
                level,
                kind,
                text,
                fields,
                parent,
            } => {
                wire::write_u64(w, STDERR_START_ACTIVITY)?;
                wire::write_u64(w, id.0)?;
                wire::write_u64(w, level.to_wire())?;
                wire::write_u64(w, kind.0)?;
                wire::write_bytes(w, text)?;
                write_fields(w, fields)?;
                wire::write_u64(w, parent.0)?;
            }
            Self::StopActivity(id) => {
                wire::write_u64(w, STDERR_STOP_ACTIVITY)?;
                wire::write_u64(w, id.0)?;
            }
            Self::Result { id, kind, fields } => {
                wire::write_u64(w, STDERR_RESULT)?;
                wire::write_u64(w, id.0)?;
                wire::write_u64(w, kind.0)?;
                write_fields(w, fields)?;
            }
        }
        Ok(())
    }

    /// Reads one message (client side).
    pub fn read<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        let max = cx.limits.max_text;
        Ok(match wire::read_u64(r, "log message tag")? {
            STDERR_NEXT => Self::Next(wire::read_bytes(r, max, "log text")?),
            STDERR_READ => Self::Read(wire::read_u64(r, "read length")?),
            STDERR_WRITE => Self::Write(wire::read_bytes(r, max, "write data")?),
            STDERR_LAST => Self::Last,
            STDERR_ERROR => Self::Error(read_error(r, cx)?),
            STDERR_START_ACTIVITY => Self::StartActivity {
                id: ActivityId(wire::read_u64(r, "activity id")?),
                level: Verbosity::from_wire(wire::read_u64(r, "activity level")?),
                kind: ActivityType(wire::read_u64(r, "activity type")?),
                text: wire::read_bytes(r, max, "activity text")?,
                fields: read_fields(r, cx)?,
                parent: ActivityId(wire::read_u64(r, "parent activity")?),
            },
            STDERR_STOP_ACTIVITY => {
                Self::StopActivity(ActivityId(wire::read_u64(r, "activity id")?))
            }
            STDERR_RESULT => Self::Result {
                id: ActivityId(wire::read_u64(r, "activity id")?),
                kind: ResultType(wire::read_u64(r, "result type")?),
                fields: read_fields(r, cx)?,
            },
            tag => return Err(ProtocolError::UnknownStderrTag { tag }),
        })
    }
}

fn read_error<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<DaemonError> {
    let max = cx.limits.max_text;
    if !cx.version.has_structured_errors() {
        let message = wire::read_string(r, max, "error message")?;
        let exit_status = wire::read_u32(r, "exit status")?;
        return Ok(DaemonError {
            message,
            traces: Vec::new(),
            exit_status,
        });
    }
    wire::read_bytes(r, MAX_SHORT_LEN, "error type")?;
    wire::read_u64(r, "error level")?;
    wire::read_bytes(r, MAX_SHORT_LEN, "error name")?;
    let message = wire::read_string(r, max, "error message")?;
    let pos = wire::read_u64(r, "error position")?;
    if pos != 0 {
        return Err(ProtocolError::ValueOutOfRange {
            field: "error position",
            value: pos,
        });
    }
    let n = wire::read_count(r, cx.limits.max_count, "error traces")?;
    let mut traces = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let pos = wire::read_u64(r, "trace position")?;
        if pos != 0 {
            return Err(ProtocolError::ValueOutOfRange {
                field: "trace position",
                value: pos,
            });
        }
        traces.push(wire::read_string(r, max, "trace")?);
    }
    Ok(DaemonError {
        message,
        traces,
        exit_status: 1,
    })
}

/// The server's writer for one connection's log channel.
///
/// Filters `STDERR_NEXT` by the client's SetOptions verbosity, but, like Nix 2.8,
/// sends activities and results at every level (clients filter those themselves).
#[derive(Debug)]
pub struct StderrWriter<W: Write> {
    inner: W,
    version: ProtocolVersion,
    verbosity: Verbosity,
}

impl<W: Write> StderrWriter<W> {
    /// A writer for version `v`; verbosity starts at Info, the clients' default.
    pub fn new(inner: W, version: ProtocolVersion) -> Self {
        Self {
            inner,
            version,
            verbosity: Verbosity::Info,
        }
    }

    /// Applies the verbosity from SetOptions.
    pub fn set_verbosity(&mut self, v: Verbosity) {
        self.verbosity = v;
    }

    /// The negotiated version.
    pub fn version(&self) -> ProtocolVersion {
        self.version
    }

    /// The underlying writer, for the reply after [`Self::last`].
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// Consumes the writer.
    pub fn into_inner(self) -> W {
        self.inner
    }

    /// Sends a log line at `level` (a `\n` is appended), unless the client asked for
    /// less. Returns whether it was sent.
    pub fn log(&mut self, level: Verbosity, line: &str) -> Result<bool> {
        if level > self.verbosity {
            return Ok(false);
        }
        let mut text = Vec::with_capacity(line.len() + 1);
        text.extend_from_slice(line.as_bytes());
        text.push(b'\n');
        self.send(&StderrMessage::Next(text))?;
        Ok(true)
    }

    /// Starts an activity with a fresh id and returns the id.
    pub fn start_activity(
        &mut self,
        level: Verbosity,
        kind: ActivityType,
        text: &str,
        fields: Vec<Field>,
        parent: Option<ActivityId>,
    ) -> Result<ActivityId> {
        let id = ActivityId::next();
        self.send(&StderrMessage::StartActivity {
            id,
            level,
            kind,
            text: text.as_bytes().to_vec(),
            fields,
            parent: parent.unwrap_or(ActivityId(0)),
        })?;
        Ok(id)
    }

    /// Stops an activity.
    pub fn stop_activity(&mut self, id: ActivityId) -> Result<()> {
        self.send(&StderrMessage::StopActivity(id))
    }

    /// Sends a result of an activity.
    pub fn result(&mut self, id: ActivityId, kind: ResultType, fields: Vec<Field>) -> Result<()> {
        self.send(&StderrMessage::Result { id, kind, fields })
    }

    /// Ends the log with `STDERR_LAST` (the caller writes the reply and flushes).
    pub fn last(&mut self) -> Result<()> {
        self.send(&StderrMessage::Last)
    }

    /// Ends the request with one `STDERR_ERROR` and flushes.
    pub fn error(&mut self, err: &DaemonError) -> Result<()> {
        write_error(&mut self.inner, self.version, err)?;
        self.inner.flush()?;
        Ok(())
    }

    /// Sends any message.
    pub fn send(&mut self, msg: &StderrMessage) -> Result<()> {
        msg.write(&mut self.inner, self.version)
    }

    /// Flushes the underlying writer.
    pub fn flush(&mut self) -> Result<()> {
        self.inner.flush()?;
        Ok(())
    }
}
