//! Writing to a binary cache: `unrooted copy --to s3://…`. Each path of the closure
//! becomes `nar/<hash>-<narhash>.nar<ext>` and `<hash>.narinfo`, with the narinfo
//! [`narinfo_for`] makes for `unrooted serve` (signed with its key, compressed as
//! configured) and the NAR through the same [`Encoder`]: one copy of each mechanism.
//! The NAR is uploaded before its narinfo, and references before referrers, so a
//! reader never finds a narinfo whose NAR or references are missing.

use std::collections::{BTreeSet, VecDeque};
use std::fs::{self, File};
use std::io::{self, BufWriter, Seek};
use std::path::PathBuf;

use thiserror::Error;
use unrooted_format::nar;
use unrooted_format::narinfo::CacheInfo;
use unrooted_format::store_path::StorePath;
use unrooted_store::{StoreError, StoreReader, ValidPathInfo};

use crate::compression::Encoder;
use crate::error::TransportError;
use crate::s3::S3Transport;
use crate::server::{narinfo_for, ServeConfig};

/// Why an upload failed.
#[derive(Debug, Error)]
pub enum UploadError {
    /// The store database could not be read.
    #[error("reading the store database")]
    Database(#[source] Box<StoreError>),
    /// A path to upload is not valid in the store.
    #[error("'{0}' is not valid in the store")]
    NotValid(String),
    /// Making a NAR (reading the store, compressing, the spool file) failed.
    #[error("making the NAR of '{path}'")]
    Nar {
        /// The store path.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The compression method cannot be written.
    #[error("compression '{0}' is not supported for uploads")]
    Compression(String),
    /// The cache refused or failed a request, after the retries.
    #[error("uploading '{key}' to {cache}")]
    Put {
        /// The cache.
        cache: String,
        /// The object.
        key: String,
        /// Why.
        #[source]
        source: TransportError,
    },
}

/// What an upload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct UploadReport {
    /// Paths uploaded.
    pub uploaded: usize,
    /// Paths the cache already had.
    pub present: usize,
}

/// How many times one request is tried.
pub const PUT_ATTEMPTS: u32 = 3;

/// Uploads the closure of `paths` from the store `config` describes to `cache`.
pub fn upload_closure(
    config: &ServeConfig,
    paths: &[StorePath],
    cache: &S3Transport,
) -> Result<UploadReport, UploadError> {
    let db = StoreReader::open(&config.db_dir, config.store_dir.clone())
        .map_err(|e| UploadError::Database(Box::new(e)))?;
    let closure = closure_in_order(&db, paths)?;
    let mut info = CacheInfo::new(config.store_dir.clone());
    info.want_mass_query = true;
    put_retrying(
        cache,
        "nix-cache-info",
        info.to_text().as_bytes(),
        "text/x-nix-cache-info",
    )?;
    let mut report = UploadReport::default();
    for info in &closure {
        let narinfo_key = format!("{}.narinfo", info.path.hash_part());
        if cache.exists(&narinfo_key).unwrap_or(false) {
            report.present += 1;
            continue;
        }
        upload_one(config, info, cache, &narinfo_key)?;
        report.uploaded += 1;
    }
    Ok(report)
}

fn upload_one(
    config: &ServeConfig,
    info: &ValidPathInfo,
    cache: &S3Transport,
    narinfo_key: &str,
) -> Result<(), UploadError> {
    let path_name = config.store_dir.display(&info.path);
    let nar_err = |source| UploadError::Nar {
        path: path_name.clone(),
        source,
    };
    let real = config.real_store_dir.join(info.path.to_base_name());
    // Spooled to an unlinked file, so memory stays small whatever the NAR's size.
    let spool_path = spool_name();
    let spool = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&spool_path)
        .map_err(nar_err)?;
    let _ = fs::remove_file(&spool_path);
    let mut enc = Encoder::new(config.compression, BufWriter::new(spool))
        .ok_or_else(|| UploadError::Compression(config.compression.to_string()))?
        .map_err(nar_err)?;
    let nar_size = nar::dump_path(&real, &mut enc).map_err(|e| nar_err(io::Error::other(e)))?;
    let mut spool = enc
        .finish()
        .and_then(|w| w.into_inner().map_err(|e| e.into_error()))
        .map_err(nar_err)?;
    let narinfo = narinfo_for(config, info, nar_size);
    let mut last = None;
    for attempt in 0..PUT_ATTEMPTS {
        spool.rewind().map_err(nar_err)?;
        match cache.put_stream(&narinfo.url, &mut spool, "application/x-nix-nar") {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) if e.is_transient() && attempt + 1 < PUT_ATTEMPTS => {
                tracing::warn!("uploading {} (attempt {}): {e}", narinfo.url, attempt + 1);
                std::thread::sleep(std::time::Duration::from_millis(250 << attempt));
            }
            Err(e) => {
                last = Some(e);
                break;
            }
        }
    }
    if let Some(source) = last {
        return Err(UploadError::Put {
            cache: cache_name(cache),
            key: narinfo.url.clone(),
            source,
        });
    }
    put_retrying(
        cache,
        narinfo_key,
        narinfo.to_text(&config.store_dir).as_bytes(),
        "text/x-nix-narinfo",
    )
}

fn cache_name(cache: &S3Transport) -> String {
    use crate::transport::Transport;
    cache.base_url().to_owned()
}

fn put_retrying(
    cache: &S3Transport,
    key: &str,
    data: &[u8],
    content_type: &str,
) -> Result<(), UploadError> {
    let mut attempt = 0;
    loop {
        match cache.put(key, data, content_type) {
            Ok(()) => return Ok(()),
            Err(e) if e.is_transient() && attempt + 1 < PUT_ATTEMPTS => {
                tracing::warn!("uploading {key} (attempt {}): {e}", attempt + 1);
                std::thread::sleep(std::time::Duration::from_millis(250 << attempt));
                attempt += 1;
            }
            Err(source) => {
                return Err(UploadError::Put {
                    cache: cache_name(cache),
                    key: key.to_owned(),
                    source,
                })
            }
        }
    }
}

fn spool_name() -> PathBuf {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    std::env::temp_dir().join(format!(
        "unrooted-upload-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

/// The closure of `roots`, references before referrers.
fn closure_in_order(
    db: &StoreReader,
    roots: &[StorePath],
) -> Result<Vec<ValidPathInfo>, UploadError> {
    let mut infos = std::collections::BTreeMap::new();
    let mut queue: VecDeque<StorePath> = roots.iter().cloned().collect();
    while let Some(p) = queue.pop_front() {
        if infos.contains_key(&p) {
            continue;
        }
        let info = db
            .path_info(&p)
            .map_err(|e| UploadError::Database(Box::new(e)))?
            .ok_or_else(|| UploadError::NotValid(p.to_string()))?;
        queue.extend(info.references.iter().filter(|r| **r != p).cloned());
        infos.insert(p, info);
    }
    // Depth-first post-order: each path after everything it refers to.
    let mut done = BTreeSet::new();
    let mut order = Vec::with_capacity(infos.len());
    for start in infos.keys() {
        let mut stack = vec![(start.clone(), false)];
        while let Some((p, expanded)) = stack.pop() {
            if done.contains(&p) {
                continue;
            }
            if expanded {
                done.insert(p.clone());
                order.push(infos[&p].clone());
                continue;
            }
            stack.push((p.clone(), true));
            for r in &infos[&p].references {
                if *r != p && !done.contains(r) {
                    stack.push((r.clone(), false));
                }
            }
        }
    }
    Ok(order)
}
