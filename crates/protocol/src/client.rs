//! A small synchronous client, for tests, benchmarks and talking to a real
//! `nix-daemon`.
//!
//! It writes a framed body in the calling thread before reading any log message; a
//! daemon that logs more than the socket buffer holds while the body is still being
//! sent would stall it, which no operation used here does for the sizes tests use.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};

use unrooted_format::{StoreDir, StorePath, StorePathName};

use crate::build_result::KeyedBuildResult;
use crate::derived_path::DerivedPath;
use crate::error::ProtocolError;
use crate::handshake::{client_handshake, ServerInfo};
use crate::path_info::{read_query_path_info_reply, UnkeyedValidPathInfo, ValidPathInfo};
use crate::reply::MissingInfo;
use crate::request::{AddToStoreNar, BuildMode, ClientSettings, ContentAddressMethod, Request};
use crate::stderr::StderrMessage;
use crate::version::ProtocolVersion;
use crate::wire::{self, FramedWriter, Limits, WireContext};

type Result<T> = std::result::Result<T, ProtocolError>;

/// One client connection.
pub struct Client<R: Read, W: Write> {
    reader: R,
    writer: W,
    cx: WireContext,
    info: ServerInfo,
    log: Box<dyn FnMut(&StderrMessage) + Send>,
}

impl<R: Read, W: Write> Client<R, W> {
    /// Runs the handshake announcing `version` and no features, and reads the startup
    /// log up to `STDERR_LAST`.
    pub fn handshake(
        reader: R,
        writer: W,
        store_dir: StoreDir,
        version: ProtocolVersion,
    ) -> Result<Self> {
        Self::handshake_with_features(reader, writer, store_dir, version, &BTreeSet::new())
    }

    /// [`Client::handshake`] announcing `features` too (from 1.38, as Nix 2.35 does);
    /// the connection then uses those the server names as well
    /// ([`Client::context`]'s `features`).
    pub fn handshake_with_features(
        mut reader: R,
        mut writer: W,
        store_dir: StoreDir,
        version: ProtocolVersion,
        features: &BTreeSet<String>,
    ) -> Result<Self> {
        let limits = Limits::default();
        let info = client_handshake(&mut reader, &mut writer, version, features, &limits)?;
        let cx = WireContext {
            version: info.version,
            store_dir,
            limits,
            features: crate::Features::from_names(&info.features),
        };
        let mut c = Self {
            reader,
            writer,
            cx,
            info,
            log: Box::new(|_| {}),
        };
        c.process_stderr(None)?;
        Ok(c)
    }

    /// Sets a callback for log messages (NEXT, activities, results).
    pub fn on_log(&mut self, f: impl FnMut(&StderrMessage) + Send + 'static) {
        self.log = Box::new(f);
    }

    /// What the handshake negotiated.
    pub fn server_info(&self) -> &ServerInfo {
        &self.info
    }

    /// The wire context (negotiated version, store directory, limits).
    pub fn context(&self) -> &WireContext {
        &self.cx
    }

    /// The reading half, to read a reply after [`Self::call`].
    pub fn reader(&mut self) -> &mut R {
        &mut self.reader
    }

    /// Reads log messages until `STDERR_LAST`; `STDERR_ERROR` becomes
    /// [`ProtocolError::Remote`]. `STDERR_READ` is answered from `source`.
    pub fn process_stderr(&mut self, mut source: Option<&mut dyn Read>) -> Result<()> {
        loop {
            let msg = StderrMessage::read(&mut self.reader, &self.cx)?;
            match msg {
                StderrMessage::Last => return Ok(()),
                StderrMessage::Error(e) => {
                    return Err(ProtocolError::Remote {
                        message: e.message,
                        traces: e.traces,
                        exit_status: e.exit_status,
                    })
                }
                StderrMessage::Read(len) => {
                    let src = source
                        .as_deref_mut()
                        .ok_or(ProtocolError::Unrepresentable {
                            what: "an answer to STDERR_READ without a data source",
                            version: self.cx.version,
                        })?;
                    let mut buf = vec![0u8; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
                    let n = read_some(src, &mut buf)?;
                    wire::write_bytes(&mut self.writer, &buf[..n])?;
                    self.writer.flush()?;
                }
                other => (self.log)(&other),
            }
        }
    }

    /// Sends a request header and flushes.
    pub fn send(&mut self, req: &Request) -> Result<()> {
        req.write(&mut self.writer, &self.cx)?;
        self.writer.flush()?;
        Ok(())
    }

    /// Sends a request without body and reads its log; the reply is then on
    /// [`Self::reader`].
    pub fn call(&mut self, req: &Request) -> Result<()> {
        self.send(req)?;
        self.process_stderr(None)
    }

    /// Sends a request, then `body` as a framed stream, then reads its log.
    pub fn call_framed(&mut self, req: &Request, body: &mut dyn Read) -> Result<()> {
        req.write(&mut self.writer, &self.cx)?;
        let mut fw = io::BufWriter::with_capacity(64 << 10, FramedWriter::new(&mut self.writer));
        io::copy(body, &mut fw)?;
        let fw = fw.into_inner().map_err(|e| e.into_error())?;
        fw.finish()?.flush()?;
        self.process_stderr(None)
    }

    /// SetOptions.
    pub fn set_options(&mut self, s: &ClientSettings) -> Result<()> {
        self.call(&Request::SetOptions(s.clone()))
    }

    /// IsValidPath.
    pub fn is_valid_path(&mut self, p: &StorePath) -> Result<bool> {
        self.call(&Request::IsValidPath(p.clone()))?;
        wire::read_bool(&mut self.reader, "valid")
    }

    /// QueryPathInfo.
    pub fn query_path_info(&mut self, p: &StorePath) -> Result<Option<UnkeyedValidPathInfo>> {
        self.call(&Request::QueryPathInfo(p.clone()))?;
        read_query_path_info_reply(&mut self.reader, &self.cx)
    }

    /// QueryValidPaths.
    pub fn query_valid_paths(
        &mut self,
        paths: BTreeSet<StorePath>,
        substitute: bool,
    ) -> Result<BTreeSet<StorePath>> {
        self.call(&Request::QueryValidPaths { paths, substitute })?;
        wire::read_paths(&mut self.reader, &self.cx, "valid paths")
    }

    /// QueryAllValidPaths.
    pub fn query_all_valid_paths(&mut self) -> Result<BTreeSet<StorePath>> {
        self.call(&Request::QueryAllValidPaths)?;
        wire::read_paths(&mut self.reader, &self.cx, "valid paths")
    }

    /// AddTempRoot.
    pub fn add_temp_root(&mut self, p: &StorePath) -> Result<()> {
        self.call(&Request::AddTempRoot(p.clone()))?;
        wire::read_u64(&mut self.reader, "result").map(drop)
    }

    /// AddToStore in its ≥ 1.25 form; `data` is a NAR, file bytes or text per `method`.
    pub fn add_to_store(
        &mut self,
        name: StorePathName,
        method: ContentAddressMethod,
        references: BTreeSet<StorePath>,
        data: &mut dyn Read,
    ) -> Result<ValidPathInfo> {
        if !self.cx.version.has_framed_add_to_store() {
            return Err(ProtocolError::Unrepresentable {
                what: "AddToStore with a framed body",
                version: self.cx.version,
            });
        }
        let req = Request::AddToStore {
            name,
            method,
            references,
            repair: false,
        };
        self.call_framed(&req, data)?;
        ValidPathInfo::read(&mut self.reader, &self.cx)
    }

    /// AddToStoreNar: framed ≥ 1.23, pulled with `STDERR_READ` at 1.21–1.22.
    pub fn add_to_store_nar(&mut self, args: &AddToStoreNar, nar: &mut dyn Read) -> Result<()> {
        let req = Request::AddToStoreNar(args.clone());
        if self.cx.version.has_framed_add_to_store_nar() {
            self.call_framed(&req, nar)
        } else {
            self.send(&req)?;
            self.process_stderr(Some(nar))
        }
    }

    /// QueryMissing.
    pub fn query_missing(&mut self, paths: Vec<DerivedPath>) -> Result<MissingInfo> {
        self.call(&Request::QueryMissing(paths))?;
        MissingInfo::read(&mut self.reader, &self.cx)
    }

    /// BuildPaths.
    pub fn build_paths(&mut self, paths: Vec<DerivedPath>, mode: BuildMode) -> Result<()> {
        self.call(&Request::BuildPaths { paths, mode })?;
        wire::read_u64(&mut self.reader, "result").map(drop)
    }

    /// BuildPathsWithResults (≥ 1.34).
    pub fn build_paths_with_results(
        &mut self,
        paths: Vec<DerivedPath>,
        mode: BuildMode,
    ) -> Result<Vec<KeyedBuildResult>> {
        self.call(&Request::BuildPathsWithResults { paths, mode })?;
        KeyedBuildResult::read_list(&mut self.reader, &self.cx)
    }
}

/// Reads at least one byte unless at end of input; retries on `Interrupted`.
fn read_some(src: &mut dyn Read, buf: &mut [u8]) -> Result<usize> {
    loop {
        match src.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(ProtocolError::Read {
                    field: "STDERR_READ source",
                    source,
                })
            }
        }
    }
}
