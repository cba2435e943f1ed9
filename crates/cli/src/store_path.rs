//! `unrooted store-path`: the path `nix-store --add` or `--add-fixed` would give.
//!
//! Nothing is written: the path is computed from the content and the store
//! directory, which is why the store directory must be named (or taken from
//! `NIX_STORE_DIR`) rather than assumed.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use unrooted_format::content_address::FileIngestionMethod;
use unrooted_format::hash::HashAlgo;
use unrooted_format::store_path::{StoreDir, StorePathName};

use crate::hash::{hash_file, hash_path};

/// Arguments of `store-path`.
#[derive(clap::Args)]
pub struct StorePathArgs {
    /// The store directory the path would be added to (default: $NIX_STORE_DIR, else
    /// /nix/store). The same content gets a different path in each store.
    #[arg(
        long,
        value_name = "DIR",
        env = "NIX_STORE_DIR",
        default_value = "/nix/store"
    )]
    store_dir: String,
    /// Compute the path of `nix-store --add-fixed ALGO PATH`: a fixed-output path
    /// hashed with ALGO over the file's bytes (or its NAR with --recursive).
    #[arg(long, value_name = "ALGO", value_parser = parse_algo)]
    fixed: Option<HashAlgo>,
    /// With --fixed, hash the NAR of PATH instead of the file's bytes.
    #[arg(long, requires = "fixed")]
    recursive: bool,
    /// Files or directories; one store path is printed for each. The name of the store
    /// path is the last component of PATH.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

fn parse_algo(text: &str) -> Result<HashAlgo, String> {
    text.parse()
        .map_err(|e: unrooted_format::hash::HashError| e.to_string())
}

/// Runs `store-path`.
pub fn run(args: StorePathArgs) -> anyhow::Result<ExitCode> {
    let dir = StoreDir::new(&args.store_dir)?;
    for path in &args.paths {
        let base = path
            .file_name()
            .and_then(|n| n.to_str())
            .with_context(|| format!("'{}' has no usable file name", path.display()))?;
        let name = StorePathName::new(base)
            .with_context(|| format!("'{}' cannot be a store path name", path.display()))?;
        let (method, hash) = match args.fixed {
            None => (
                FileIngestionMethod::Recursive,
                hash_path(path, HashAlgo::Sha256)?,
            ),
            Some(algo) if args.recursive => {
                (FileIngestionMethod::Recursive, hash_path(path, algo)?)
            }
            Some(algo) => (FileIngestionMethod::Flat, hash_file(path, algo)?),
        };
        let store_path =
            dir.make_fixed_output_path(method, &hash, &name, &BTreeSet::new(), false)?;
        println!("{}", dir.display(&store_path));
    }
    Ok(ExitCode::SUCCESS)
}
