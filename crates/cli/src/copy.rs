//! `unrooted copy --to s3://…`: upload closures to an S3-compatible binary cache.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use unrooted_substitute::TransportOptions;

use crate::serve::ServeCompression;

/// Arguments of `copy`.
#[derive(clap::Args)]
pub struct CopyArgs {
    /// The cache: `s3://bucket?endpoint=…&region=…&profile=…&scheme=…`. Credentials
    /// come from this process's environment (AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY) or ~/.aws/credentials.
    #[arg(long, value_name = "URL")]
    to: String,
    /// Sign narinfos with this secret key (`nix-store --generate-binary-cache-key`).
    #[arg(long, value_name = "FILE")]
    secret_key_file: Option<PathBuf>,
    /// Compression of the NARs uploaded.
    #[arg(long, value_enum, default_value = "xz")]
    compression: ServeCompression,
    /// The store paths whose closures are uploaded.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<String>,
}

/// Uploads the closures. The store is found as Nix finds it (`NIX_STORE_DIR`,
/// `NIX_STATE_DIR`) and only read.
pub fn run(args: CopyArgs) -> anyhow::Result<ExitCode> {
    let config = crate::serve::read_only_store_config(
        "warn",
        args.secret_key_file.as_deref(),
        args.compression,
    )?;
    let paths = args
        .paths
        .iter()
        .map(|p| {
            config
                .store_dir
                .parse_path(p.trim_end_matches('/'))
                .with_context(|| format!("'{p}' is not a store path"))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    if !args.to.starts_with("s3://") {
        anyhow::bail!("copy --to writes s3:// caches only (for a file:// cache, use nix copy)");
    }
    let cache = unrooted_substitute::s3::S3Transport::open(&args.to, &TransportOptions::default())
        .context("opening the cache")?;
    let report = unrooted_substitute::upload::upload_closure(&config, &paths, &cache)
        .with_context(|| format!("copying to {}", args.to))?;
    eprintln!(
        "copied {} paths to {} ({} already there)",
        report.uploaded, args.to, report.present
    );
    Ok(ExitCode::SUCCESS)
}
