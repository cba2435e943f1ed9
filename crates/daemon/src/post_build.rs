//! `post-build-upload = s3://… …`: every output built here is uploaded, with its
//! closure, to the listed caches after its build, by a thread of its own, so a build's
//! result never waits for a cache. (Nix has no such setting; its `post-build-hook`
//! runs a script, which is how Nix users upload. The name says what it does.)
//!
//! Narinfos are signed with the first key of `secret-key-files`; NARs are compressed
//! with the URL's `compression` parameter (Nix's name; `xz` by default). A failed
//! upload is logged and tried again [`UPLOAD_ATTEMPTS`] times in all, then given up
//! with an error in the log: the build and its outputs stay as they are.

use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use unrooted_format::narinfo::Compression;
use unrooted_format::signature::SecretKey;
use unrooted_format::store_path::StorePath;
use unrooted_substitute::server::ServeConfig;
use unrooted_substitute::TransportOptions;

use crate::config::Config;

/// The setting.
pub const SETTING: &str = "post-build-upload";

/// How many times the upload of one build's outputs to one cache is tried.
pub const UPLOAD_ATTEMPTS: u32 = 3;

/// Queues built outputs for the upload thread.
pub(crate) struct Uploader {
    tx: mpsc::Sender<Vec<StorePath>>,
}

impl Uploader {
    /// Starts the upload thread when the setting lists caches.
    pub(crate) fn start(config: &Config) -> Option<Self> {
        let caches: Vec<String> = config
            .raw
            .get(SETTING)
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        if caches.is_empty() {
            return None;
        }
        for c in caches.iter().filter(|c| !c.starts_with("s3://")) {
            tracing::warn!("{SETTING}: '{c}' is ignored: only s3:// caches can be written");
        }
        let caches: Vec<String> = caches
            .into_iter()
            .filter(|c| c.starts_with("s3://"))
            .collect();
        let l = &config.locations;
        let mut serve = ServeConfig::new(
            l.store_dir.clone(),
            PathBuf::from(l.store_dir.as_str()),
            l.state_dir.join("db"),
        );
        serve.secret_key = first_secret_key(config);
        let (tx, rx) = mpsc::channel::<Vec<StorePath>>();
        let spawned = std::thread::Builder::new()
            .name("post-build-upload".into())
            .spawn(move || {
                while let Ok(paths) = rx.recv() {
                    for cache in &caches {
                        upload(&serve, cache, &paths);
                    }
                }
            });
        match spawned {
            Ok(_) => {
                tracing::info!("{SETTING}: outputs built here are uploaded after each build");
                Some(Self { tx })
            }
            Err(e) => {
                tracing::error!("{SETTING}: cannot start the upload thread: {e}");
                None
            }
        }
    }

    /// Queues `paths` (outputs just built); returns at once.
    pub(crate) fn enqueue(&self, paths: Vec<StorePath>) {
        if !paths.is_empty() && self.tx.send(paths).is_err() {
            tracing::error!("{SETTING}: the upload thread has ended; outputs not uploaded");
        }
    }
}

fn first_secret_key(config: &Config) -> Option<SecretKey> {
    let files = config.raw.get("secret-key-files")?;
    let file = files.split_whitespace().next()?;
    match std::fs::read_to_string(file) {
        Ok(text) => match SecretKey::parse(text.trim()) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("{SETTING}: the secret key in {file} does not parse ({e}); uploads are unsigned");
                None
            }
        },
        Err(e) => {
            tracing::warn!("{SETTING}: reading the secret key {file}: {e}; uploads are unsigned");
            None
        }
    }
}

fn compression_of(url: &str) -> Compression {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("compression="))
        .and_then(|v| v.parse().ok())
        .unwrap_or(Compression::Xz)
}

fn upload(serve: &ServeConfig, cache: &str, paths: &[StorePath]) {
    let mut serve = serve.clone();
    serve.compression = compression_of(cache);
    for attempt in 1..=UPLOAD_ATTEMPTS {
        let result =
            unrooted_substitute::s3::S3Transport::open(cache, &TransportOptions::default())
                .map_err(|e| unrooted_format::error_chain(&e))
                .and_then(|t| {
                    unrooted_substitute::upload::upload_closure(&serve, paths, &t)
                        .map_err(|e| unrooted_format::error_chain(&e))
                });
        match result {
            Ok(r) => {
                tracing::info!(
                    "{SETTING}: {} paths uploaded to {cache} ({} already there)",
                    r.uploaded,
                    r.present
                );
                return;
            }
            Err(e) if attempt < UPLOAD_ATTEMPTS => {
                tracing::warn!("{SETTING}: uploading to {cache} (attempt {attempt} of {UPLOAD_ATTEMPTS}): {e}");
                std::thread::sleep(Duration::from_secs(2u64 << attempt));
            }
            Err(e) => tracing::error!(
                "{SETTING}: giving up uploading {} to {cache} after {UPLOAD_ATTEMPTS} attempts: {e}",
                paths
                    .iter()
                    .map(|p| serve.store_dir.display(p))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compression_from_the_url() {
        assert_eq!(compression_of("s3://b"), Compression::Xz);
        assert_eq!(
            compression_of("s3://b?region=x&compression=zstd"),
            Compression::Zstd
        );
        assert_eq!(compression_of("s3://b?compression=none"), Compression::None);
        assert_eq!(
            compression_of("s3://b?compression=lzip-ish"),
            Compression::Xz
        );
    }
}
