//! The helper's answers: [`Report`].

use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use super::codec::{Dec, Enc};
use crate::error::Step;

/// What the helper (or the sandboxed child, before exec) reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The builder runs; `pid` is the sandbox init's pid in the helper's namespace.
    Started {
        /// Host pid.
        pid: u32,
    },
    /// A setup step failed.
    Failed {
        /// Which.
        step: Step,
        /// On what.
        path: Option<PathBuf>,
        /// The errno.
        errno: i32,
    },
    /// `umount("/proc")` did not give EINVAL; `errno` 0 means it succeeded.
    NotLocked {
        /// What it gave instead.
        errno: i32,
    },
    /// The builder exited with this code.
    Exited {
        /// Exit code.
        code: i32,
    },
    /// The builder was killed by this signal.
    Signaled {
        /// Signal number.
        signal: i32,
    },
}

/// The largest report (a failure with a path).
const MAX_REPORT_BYTES: u32 = 8192;

impl Report {
    /// Encodes as `u32` length + body.
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc::default();
        match self {
            Report::Started { pid } => {
                e.u8(b'S');
                e.u32(*pid);
            }
            Report::Failed { step, path, errno } => {
                e.u8(b'F');
                e.u8(step.code());
                match path {
                    Some(p) => {
                        e.bool(true);
                        // A path too long for a report is cut: it only names the place.
                        let b = p.as_os_str().as_bytes();
                        e.bytes(&b[..b.len().min(4096)]);
                    }
                    None => e.bool(false),
                }
                e.u32(*errno as u32);
            }
            Report::NotLocked { errno } => {
                e.u8(b'L');
                e.u32(*errno as u32);
            }
            Report::Exited { code } => {
                e.u8(b'X');
                e.u32(*code as u32);
            }
            Report::Signaled { signal } => {
                e.u8(b'K');
                e.u32(*signal as u32);
            }
        }
        let mut out = (e.0.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&e.0);
        out
    }

    /// Decodes one report body.
    pub fn decode(body: &[u8]) -> Result<Report, &'static str> {
        let mut d = Dec(body);
        let r = match d.u8()? {
            b'S' => Report::Started { pid: d.u32()? },
            b'F' => {
                let step = Step::from_code(d.u8()?).ok_or("unknown step")?;
                let path = if d.bool()? { Some(d.path()?) } else { None };
                Report::Failed {
                    step,
                    path,
                    errno: d.i32()?,
                }
            }
            b'L' => Report::NotLocked { errno: d.i32()? },
            b'X' => Report::Exited { code: d.i32()? },
            b'K' => Report::Signaled { signal: d.i32()? },
            _ => return Err("unknown report"),
        };
        d.end()?;
        Ok(r)
    }

    /// Reads one report; `Ok(None)` at a clean end of stream.
    pub fn read(r: &mut impl Read) -> io::Result<Option<Report>> {
        let mut len = [0u8; 4];
        match r.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e),
        }
        let len = u32::from_le_bytes(len);
        if len > MAX_REPORT_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "report too large",
            ));
        }
        let mut body = vec![0u8; len as usize];
        r.read_exact(&mut body)?;
        Report::decode(&body)
            .map(Some)
            .map_err(|what| io::Error::new(io::ErrorKind::InvalidData, what))
    }
}
