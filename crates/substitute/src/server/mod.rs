//! `unrooted serve`: the store as a binary cache over HTTP, read-only.
//!
//! Routes, as Nix's HTTP binary cache store expects them:
//!
//! ```text
//! GET /nix-cache-info                     StoreDir, WantMassQuery: 1, Priority
//! GET /<hash part>.narinfo                from the database, signed on the fly
//! GET /nar/<hash part>-<NAR hash>.nar<ext>  the NAR, dumped from disk, compressed on the fly
//! ```
//!
//! A NAR URL names the store path's hash part (so it is found through the
//! database's index) and the NAR hash the narinfo promised (so a path deleted and
//! added again with other contents is not served under an old narinfo). Only paths
//! valid in the database are ever read, from the store directory joined with the
//! base name the database holds; nothing in a URL becomes a file name.
//!
//! Concurrency is bounded: `max_connections` worker threads, each with its own
//! database connection, serve one connection at a time; connections beyond those
//! wait in a queue as long, and past that get `503` at once. Idle keep-alive
//! connections are closed after `idle_timeout`.

pub mod http;

use std::io::{self, BufReader, BufWriter, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::Duration;

use unrooted_format::narinfo::{CacheInfo, Compression, NarInfo};
use unrooted_format::signature::{SecretKey, Signature};
use unrooted_format::store_path::HASH_PART_LEN;
use unrooted_format::{base32, nar, StoreDir, StorePath};
use unrooted_store::{StoreReader, ValidPathInfo};

use crate::compression::{can_compress, Encoder};
use crate::error::ServeError;
use http::{read_request, write_head, write_simple, BadRequest, Chunked, Method, Request};

/// What `unrooted serve` serves and how.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The store directory paths are named in.
    pub store_dir: StoreDir,
    /// Where it is on disk.
    pub real_store_dir: PathBuf,
    /// The database directory (`<state>/db`).
    pub db_dir: PathBuf,
    /// The key narinfos are signed with, if any.
    pub secret_key: Option<SecretKey>,
    /// How NARs are compressed on the fly (none, xz, zstd or bzip2).
    pub compression: Compression,
    /// Connections served at once (worker threads); at least 1.
    pub max_connections: usize,
    /// The `Priority` announced in `nix-cache-info`.
    pub priority: i32,
    /// How long an idle keep-alive connection is kept.
    pub idle_timeout: Duration,
}

impl ServeConfig {
    /// Defaults: no key, no compression, 64 connections, priority 30 (as
    /// nix-serve), 5 s idle timeout.
    pub fn new(store_dir: StoreDir, real_store_dir: PathBuf, db_dir: PathBuf) -> Self {
        Self {
            store_dir,
            real_store_dir,
            db_dir,
            secret_key: None,
            compression: Compression::None,
            max_connections: 64,
            priority: 30,
            idle_timeout: Duration::from_secs(5),
        }
    }
}

/// A bound, not yet running, binary cache server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    config: Arc<ServeConfig>,
}

impl Server {
    /// Binds `addr` and checks the store database can be opened.
    pub fn bind(addr: &str, mut config: ServeConfig) -> Result<Self, ServeError> {
        if !can_compress(config.compression) {
            config.compression = Compression::None;
        }
        config.max_connections = config.max_connections.max(1);
        open_db(&config)?;
        let listener = TcpListener::bind(addr).map_err(|source| ServeError::Listen {
            addr: addr.to_owned(),
            source,
        })?;
        Ok(Self {
            listener,
            config: Arc::new(config),
        })
    }

    /// The address bound (useful with port 0).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until the process ends.
    pub fn run(self) -> Result<(), ServeError> {
        let n = self.config.max_connections;
        let (tx, rx): (SyncSender<TcpStream>, Receiver<TcpStream>) = mpsc::sync_channel(n);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = Arc::clone(&rx);
            let config = Arc::clone(&self.config);
            thread::Builder::new()
                .name(format!("serve-{i}"))
                .spawn(move || worker(&config, &rx))
                .map_err(|source| ServeError::Thread { source })?;
        }
        for stream in self.listener.incoming() {
            let stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off rather than spin.
                    tracing::warn!(error = %e, "accepting a connection");
                    thread::sleep(Duration::from_millis(50));
                    continue;
                }
            };
            match tx.try_send(stream) {
                Ok(()) => {}
                Err(TrySendError::Full(mut s)) => {
                    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
                    let _ = write_simple(&mut s, Method::Get, 503, "text/plain", b"busy\n", false);
                }
                Err(TrySendError::Disconnected(_)) => break,
            }
        }
        Ok(())
    }
}

fn open_db(config: &ServeConfig) -> Result<StoreReader, ServeError> {
    StoreReader::open(&config.db_dir, config.store_dir.clone()).map_err(|source| {
        ServeError::Database {
            path: config.db_dir.clone(),
            source: Box::new(source),
        }
    })
}

fn worker(config: &ServeConfig, rx: &Mutex<Receiver<TcpStream>>) {
    let mut db: Option<StoreReader> = None;
    loop {
        let stream = {
            let rx = rx.lock().unwrap_or_else(PoisonError::into_inner);
            match rx.recv() {
                Ok(s) => s,
                Err(_) => return,
            }
        };
        if let Err(e) = serve_connection(config, &mut db, stream) {
            tracing::debug!(error = %e, "connection ended");
        }
    }
}

fn serve_connection(
    config: &ServeConfig,
    db: &mut Option<StoreReader>,
    stream: TcpStream,
) -> io::Result<()> {
    stream.set_read_timeout(Some(config.idle_timeout))?;
    stream.set_write_timeout(Some(Duration::from_secs(60)))?;
    let _ = stream.set_nodelay(true);
    let mut reader = BufReader::with_capacity(16 * 1024, &stream);
    loop {
        let request = match read_request(&mut reader) {
            Ok(None) => return Ok(()),
            Ok(Some(Ok(r))) => r,
            Ok(Some(Err(BadRequest::Status(status)))) => {
                let mut w = &stream;
                return write_simple(
                    &mut w,
                    Method::Get,
                    status,
                    "text/plain",
                    b"bad request\n",
                    false,
                );
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        let keep_alive = respond(config, db, &stream, &request)? && request.keep_alive;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// What a request names.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    CacheInfo,
    NarInfo(&'a str),
    Nar {
        hash_part: &'a str,
        nar_hash: &'a str,
        compression: Compression,
    },
    NotFound,
}

fn is_hash_part(s: &str) -> bool {
    s.len() == HASH_PART_LEN && s.bytes().all(base32::is_base32_char)
}

fn route(path: &str) -> Route<'_> {
    if path == "nix-cache-info" {
        return Route::CacheInfo;
    }
    if let Some(hp) = path.strip_suffix(".narinfo") {
        return if is_hash_part(hp) {
            Route::NarInfo(hp)
        } else {
            Route::NotFound
        };
    }
    let Some(file) = path.strip_prefix("nar/") else {
        return Route::NotFound;
    };
    let Some((hash_part, rest)) = file.split_once('-') else {
        return Route::NotFound;
    };
    let Some((nar_hash, ext)) = rest.split_once(".nar") else {
        return Route::NotFound;
    };
    let compression = Compression::ALL
        .into_iter()
        .find(|c| c.extension() == ext && can_compress(*c));
    match compression {
        Some(compression)
            if is_hash_part(hash_part)
                && nar_hash.len() == 52
                && nar_hash.bytes().all(base32::is_base32_char) =>
        {
            Route::Nar {
                hash_part,
                nar_hash,
                compression,
            }
        }
        _ => Route::NotFound,
    }
}

/// Looks a path up by hash part; `None` if not valid.
fn lookup(
    config: &ServeConfig,
    db: &mut Option<StoreReader>,
    hash_part: &str,
) -> Result<Option<ValidPathInfo>, String> {
    if db.is_none() {
        *db = Some(open_db(config).map_err(|e| crate::error_chain(&e))?);
    }
    let conn = db.as_ref().ok_or_else(|| "no database".to_owned())?;
    conn.path_info_by_hash_part(hash_part).map_err(|e| {
        // Reopen on the next request: the connection may be what is broken.
        *db = None;
        crate::error_chain(&e)
    })
}

/// The narinfo served for a valid path.
pub fn narinfo_for(config: &ServeConfig, info: &ValidPathInfo, nar_size: u64) -> NarInfo {
    let compression = config.compression;
    let url = format!(
        "nar/{}-{}.nar{}",
        info.path.hash_part(),
        info.nar_hash.to_base32(),
        compression.extension()
    );
    let uncompressed = compression == Compression::None;
    let mut narinfo = NarInfo {
        store_path: info.path.clone(),
        url,
        compression,
        file_hash: uncompressed.then_some(info.nar_hash),
        file_size: if uncompressed { nar_size } else { 0 },
        nar_hash: info.nar_hash,
        nar_size,
        references: info.references.clone(),
        deriver: info.deriver.clone(),
        system: None,
        signatures: info
            .sigs
            .iter()
            .filter_map(|s| s.parse::<Signature>().ok())
            .collect(),
        ca: info.ca,
    };
    if let Some(key) = &config.secret_key {
        if let Err(e) = narinfo.sign(&config.store_dir, key) {
            tracing::warn!(error = %e, "signing a narinfo");
        }
    }
    narinfo
}

/// Answers one request; returns whether the connection may stay open.
fn respond(
    config: &ServeConfig,
    db: &mut Option<StoreReader>,
    stream: &TcpStream,
    req: &Request,
) -> io::Result<bool> {
    let mut w = stream;
    let m = req.method;
    let ka = req.keep_alive;
    let not_found = |w: &mut &TcpStream| {
        write_simple(w, m, 404, "text/plain", b"not found\n", ka).map(|()| true)
    };
    let failed = |w: &mut &TcpStream, e: String| {
        tracing::warn!(error = %e, "serving a request");
        write_simple(w, m, 500, "text/plain", b"internal error\n", false).map(|()| false)
    };
    match route(&req.path) {
        Route::CacheInfo => {
            let mut info = CacheInfo::new(config.store_dir.clone());
            info.want_mass_query = true;
            info.priority = Some(config.priority);
            write_simple(
                &mut w,
                m,
                200,
                "text/x-nix-cache-info",
                info.to_text().as_bytes(),
                ka,
            )?;
            Ok(true)
        }
        Route::NotFound => not_found(&mut w),
        Route::NarInfo(hp) => match lookup(config, db, hp) {
            Err(e) => failed(&mut w, e),
            Ok(None) => not_found(&mut w),
            Ok(Some(info)) => {
                let nar_size = match info.nar_size {
                    0 => match nar::dump_path(&real_path(config, &info.path), &mut io::sink()) {
                        Ok(n) => n,
                        Err(e) => return failed(&mut w, e.to_string()),
                    },
                    n => n,
                };
                let text = narinfo_for(config, &info, nar_size).to_text(&config.store_dir);
                write_simple(&mut w, m, 200, "text/x-nix-narinfo", text.as_bytes(), ka)?;
                Ok(true)
            }
        },
        Route::Nar {
            hash_part,
            nar_hash,
            compression,
        } => match lookup(config, db, hash_part) {
            Err(e) => failed(&mut w, e),
            Ok(Some(info)) if info.nar_hash.to_base32() == nar_hash => send_nar(
                stream,
                m,
                ka,
                &real_path(config, &info.path),
                &info,
                compression,
            ),
            Ok(_) => not_found(&mut w),
        },
    }
}

fn real_path(config: &ServeConfig, path: &StorePath) -> PathBuf {
    config.real_store_dir.join(path.to_base_name())
}

/// Streams a NAR: with `Content-Length` when uncompressed and the size is known,
/// else chunked. A NAR that changes size under us ends the connection, so the
/// client sees a broken transfer rather than a wrong file.
fn send_nar(
    stream: &TcpStream,
    method: Method,
    keep_alive: bool,
    real: &std::path::Path,
    info: &ValidPathInfo,
    compression: Compression,
) -> io::Result<bool> {
    let content_type = "application/x-nix-nar";
    let mut w = stream;
    if compression == Compression::None && info.nar_size != 0 {
        write_head(&mut w, 200, content_type, Some(info.nar_size), keep_alive)?;
        if method == Method::Head {
            w.flush()?;
            return Ok(true);
        }
        let mut out = BufWriter::with_capacity(256 * 1024, stream);
        let n = nar::dump_path(real, &mut out).map_err(io::Error::other)?;
        out.flush()?;
        return Ok(n == info.nar_size);
    }
    write_head(&mut w, 200, content_type, None, keep_alive)?;
    if method == Method::Head {
        w.flush()?;
        return Ok(true);
    }
    let chunked = Chunked::new(BufWriter::with_capacity(64 * 1024, stream));
    let buffered = BufWriter::with_capacity(256 * 1024, chunked);
    let mut enc = match Encoder::new(compression, buffered) {
        Some(r) => r?,
        None => return Ok(false),
    };
    nar::dump_path(real, &mut enc).map_err(io::Error::other)?;
    let buffered = enc.finish()?;
    let chunked = buffered.into_inner().map_err(|e| e.into_error())?;
    chunked.finish()?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HP: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn routes() {
        assert_eq!(route("nix-cache-info"), Route::CacheInfo);
        assert_eq!(route(&format!("{HP}.narinfo")), Route::NarInfo(HP));
        let nh = "1".repeat(52);
        assert_eq!(
            route(&format!("nar/{HP}-{nh}.nar.xz")),
            Route::Nar {
                hash_part: HP,
                nar_hash: &nh,
                compression: Compression::Xz
            }
        );
        assert_eq!(
            route(&format!("nar/{HP}-{nh}.nar")),
            Route::Nar {
                hash_part: HP,
                nar_hash: &nh,
                compression: Compression::None
            }
        );
        for bad in [
            "",
            "x.narinfo",
            "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee.narinfo",
            "nar/../../etc/passwd",
            &format!("nar/{HP}-{nh}.nar.lz4"),
            &format!("nar/{HP}-{nh}.nar.gz"),
            &format!("nar/{HP}-short.nar"),
            &format!("nar/../{HP}.narinfo"),
        ] {
            assert_eq!(route(bad), Route::NotFound, "{bad}");
        }
    }
}
