//! `unrooted hash`: hash a tree (its NAR) or a file's bytes, as `nix-hash` prints it.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use unrooted_format::hash::{Encoding, Hash, HashAlgo, Hasher};
use unrooted_format::nar;
use unrooted_format::store_path::compress_hash;

/// The `hash` verbs.
#[derive(Subcommand)]
pub enum HashCommand {
    /// Hash the NAR serialisation of each PATH (a file, directory or symlink, which is
    /// not followed), as `nix-hash --type T PATH` does. This is the hash that names
    /// store paths and fills the `NarHash` of narinfo files.
    Path(HashArgs),
    /// Hash the bytes of each FILE (symlinks are followed), as `nix-hash --flat --type T
    /// FILE` does. This is the hash of a flat fixed-output derivation.
    File(HashArgs),
}

/// Options shared by both verbs.
#[derive(Args)]
pub struct HashArgs {
    /// Hash algorithm: md5, sha1, sha256 or sha512. Unlike `nix-hash`, whose default is
    /// md5, the default is sha256, the algorithm Nix uses everywhere today.
    #[arg(long = "type", value_name = "ALGO", default_value = "sha256", value_parser = parse_algo)]
    algo: HashAlgo,
    /// Print lowercase hexadecimal (the default, as `nix-hash`).
    #[arg(long, group = "encoding")]
    base16: bool,
    /// Print Nix's base32, as `nix-hash --base32`.
    #[arg(long, group = "encoding")]
    base32: bool,
    /// Print standard base64.
    #[arg(long, group = "encoding")]
    base64: bool,
    /// Print a subresource-integrity string `ALGO-BASE64`, as `nix hash path --sri`.
    #[arg(long, group = "encoding")]
    sri: bool,
    /// XOR-fold the digest to 20 bytes first, as `nix-hash --truncate` (base16 or
    /// base32 only: the folded value is no longer a hash of its algorithm).
    #[arg(long, conflicts_with_all = ["base64", "sri"])]
    truncate: bool,
    /// Files or directories to hash; one line is printed for each.
    #[arg(required = true, value_name = "PATH")]
    paths: Vec<PathBuf>,
}

fn parse_algo(text: &str) -> Result<HashAlgo, String> {
    text.parse()
        .map_err(|e: unrooted_format::hash::HashError| e.to_string())
}

impl HashArgs {
    fn encoding(&self) -> Encoding {
        if self.base32 {
            Encoding::Base32
        } else if self.base64 {
            Encoding::Base64
        } else if self.sri {
            Encoding::Sri
        } else {
            Encoding::Base16
        }
    }

    fn print(&self, hash: Hash) -> String {
        if self.truncate && hash.algo().size() > 20 {
            let folded = compress_hash(hash.digest(), 20);
            return if self.base32 {
                unrooted_format::base32::encode(&folded)
            } else {
                folded.iter().map(|b| format!("{b:02x}")).collect()
            };
        }
        hash.encode(self.encoding(), false)
    }
}

/// Runs a `hash` verb.
pub fn run(cmd: HashCommand) -> anyhow::Result<ExitCode> {
    let (args, flat) = match &cmd {
        HashCommand::Path(a) => (a, false),
        HashCommand::File(a) => (a, true),
    };
    for path in &args.paths {
        let hash = if flat {
            hash_file(path, args.algo)?
        } else {
            hash_path(path, args.algo)?
        };
        println!("{}", args.print(hash));
    }
    Ok(ExitCode::SUCCESS)
}

/// The NAR hash of `path`.
pub fn hash_path(path: &Path, algo: HashAlgo) -> anyhow::Result<Hash> {
    let mut hasher = Hasher::new(algo);
    nar::dump_path(path, &mut hasher)
        .with_context(|| format!("serialising '{}'", path.display()))?;
    Ok(hasher.finish())
}

/// The hash of the bytes of the file at `path`.
pub fn hash_file(path: &Path, algo: HashAlgo) -> anyhow::Result<Hash> {
    let mut file =
        File::open(path).with_context(|| format!("opening file '{}'", path.display()))?;
    let mut hasher = Hasher::new(algo);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e).with_context(|| format!("reading '{}'", path.display())),
        };
        hasher.update(&buf[..n]);
    }
    Ok(hasher.finish())
}
