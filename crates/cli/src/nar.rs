//! `unrooted nar`: pack a file tree into a NAR, unpack one, list one.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use unrooted_format::nar::{self, ListOptions};

/// The `nar` verbs. A NAR (Nix ARchive) is Nix's serialisation of a file, symlink or
/// directory tree: contents, symlink targets and the executable bit, nothing else.
/// Its SHA-256 is the "NAR hash" that store paths and binary caches are built on.
#[derive(Subcommand)]
pub enum NarCommand {
    /// Write the NAR of PATH to standard output, byte for byte what
    /// `nix-store --dump PATH` writes. PATH is not followed if it is a symlink;
    /// devices, fifos and sockets are refused.
    Pack {
        /// The file, directory or symlink to serialise.
        path: PathBuf,
    },
    /// Read a NAR from standard input and recreate its tree at DIR, as
    /// `nix-store --restore DIR` does (files 0644, executables and directories 0755).
    /// DIR must not exist. Malformed or non-canonical archives are refused.
    Unpack {
        /// Where to create the tree; must not exist yet.
        dir: PathBuf,
    },
    /// List the contents of a NAR, printing exactly what
    /// `nix nar ls [-l] [-R] [--json] FILE /` prints.
    Ls(LsArgs),
}

/// Options of `nar ls`.
#[derive(Args)]
pub struct LsArgs {
    /// Show file type, permissions (as Nix presents store files) and size.
    #[arg(short, long)]
    long: bool,
    /// List subdirectories too, not only the top level.
    #[arg(short = 'R', long)]
    recursive: bool,
    /// Print one JSON object (with each file's size and offset in the NAR).
    #[arg(long)]
    json: bool,
    /// The NAR file to list; standard input if omitted.
    file: Option<PathBuf>,
}

/// Runs a `nar` verb.
pub fn run(cmd: NarCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        NarCommand::Pack { path } => {
            let stdout = io::stdout();
            let mut out = BufWriter::with_capacity(1 << 20, stdout.lock());
            nar::dump_path(&path, &mut out)
                .with_context(|| format!("packing '{}'", path.display()))?;
            out.flush().context("writing the NAR to standard output")?;
        }
        NarCommand::Unpack { dir } => {
            let mut input = BufReader::with_capacity(1 << 20, io::stdin().lock());
            nar::restore(&mut input, &dir)
                .with_context(|| format!("unpacking into '{}'", dir.display()))?;
        }
        NarCommand::Ls(args) => {
            let options = ListOptions {
                long: args.long,
                recursive: args.recursive,
                json: args.json,
            };
            let listing = match &args.file {
                Some(file) => {
                    let f = File::open(file)
                        .with_context(|| format!("opening '{}'", file.display()))?;
                    list(BufReader::new(f), options)
                        .with_context(|| format!("listing '{}'", file.display()))?
                }
                None => list(BufReader::new(io::stdin().lock()), options)
                    .context("listing the NAR on standard input")?,
            };
            let mut stdout = io::stdout().lock();
            stdout
                .write_all(&listing)
                .and_then(|()| stdout.flush())
                .context("writing the listing")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn list(reader: impl Read, options: ListOptions) -> Result<Vec<u8>, nar::NarError> {
    nar::list(reader, options)
}
