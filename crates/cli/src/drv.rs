//! `unrooted drv`: read, print and check derivation (`.drv`) files.
//!
//! `show` prints exactly what `nix show-derivation` (Nix 2.8) prints; `outputs`
//! recomputes output paths the way Nix does when it registers a `.drv` file and says
//! which ones the file gets wrong.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use unrooted_format::derivation::{
    json, name_from_drv_path, Derivation, DrvHasher, Limits, DRV_EXTENSION,
};
use unrooted_format::{StoreDir, StorePath};

/// The `drv` verbs.
#[derive(Subcommand)]
pub enum DrvCommand {
    /// Print derivations as JSON, byte for byte as `nix show-derivation` does.
    ///
    /// Each derivation is keyed by its `.drv` store path: the file's own path when it
    /// lies in the store directory, else the path Nix would give its contents.
    Show(ShowArgs),
    /// Recompute a derivation's output paths from its inputs and check the file.
    ///
    /// Prints one line per output, `<output name> <store path>`, with `-` in place of
    /// the path when it cannot be known before building (floating content-addressed,
    /// impure, or depending on such a derivation). Input derivations are read from the
    /// store directory (or `--inputs-dir`). Exits with status 1, naming each wrong output path or output
    /// environment variable on stderr, if the file's own values differ.
    Outputs(OutputsArgs),
}

/// Where the store is.
#[derive(Args)]
pub struct StoreDirArg {
    /// The store directory paths in the files refer to [default: $NIX_STORE_DIR, else
    /// /nix/store].
    #[arg(long, value_name = "DIR")]
    store_dir: Option<String>,
}

impl StoreDirArg {
    fn resolve(&self) -> anyhow::Result<StoreDir> {
        let dir = match &self.store_dir {
            Some(d) => d.clone(),
            None => std::env::var("NIX_STORE_DIR").unwrap_or_else(|_| "/nix/store".to_owned()),
        };
        StoreDir::new(&dir).with_context(|| format!("invalid store directory '{dir}'"))
    }
}

/// Arguments of `unrooted drv show`.
#[derive(Args)]
pub struct ShowArgs {
    #[command(flatten)]
    store: StoreDirArg,
    /// The `.drv` files to print.
    #[arg(required = true, value_name = "FILE.drv")]
    files: Vec<PathBuf>,
}

/// Arguments of `unrooted drv outputs`.
#[derive(Args)]
pub struct OutputsArgs {
    #[command(flatten)]
    store: StoreDirArg,
    /// Read input derivations from this directory instead of the store directory
    /// (a copy of `.drv` files named by their store base names).
    #[arg(long, value_name = "DIR")]
    inputs_dir: Option<PathBuf>,
    /// The `.drv` file to check.
    #[arg(value_name = "FILE.drv")]
    file: PathBuf,
}

/// Runs a `drv` verb.
pub fn run(cmd: DrvCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DrvCommand::Show(args) => show(args),
        DrvCommand::Outputs(args) => outputs(args),
    }
}

fn show(args: ShowArgs) -> anyhow::Result<ExitCode> {
    let dir = args.store.resolve()?;
    let mut drvs = Vec::new();
    for file in &args.files {
        let (drv, in_store) = read_file(&dir, file)?;
        let path = match in_store {
            Some(p) => p,
            None => drv
                .drv_path(&dir)
                .with_context(|| format!("computing the store path of {}", file.display()))?,
        };
        drvs.push((path, drv));
    }
    let out = json::show_derivations(&dir, drvs.iter().map(|(p, d)| (p, d)));
    std::io::stdout()
        .write_all(&out)
        .context("writing to stdout")?;
    Ok(ExitCode::SUCCESS)
}

fn outputs(args: OutputsArgs) -> anyhow::Result<ExitCode> {
    let dir = args.store.resolve()?;
    let (drv, _) = read_file(&dir, &args.file)?;
    let inputs_dir = args
        .inputs_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from(dir.as_str()));
    let load_dir = dir.clone();
    let mut hasher = DrvHasher::new(dir.clone(), move |p: &StorePath| {
        let file = inputs_dir.join(p.to_base_name());
        read_drv(
            &load_dir,
            &file,
            name_from_drv_path(p).unwrap_or(p.name().as_str()),
        )
    });
    let paths = hasher
        .output_paths(&drv)
        .with_context(|| format!("computing the output paths of {}", args.file.display()))?;
    let mut text = String::new();
    for (name, path) in &paths {
        let shown = path.as_ref().map_or("-".to_owned(), |p| dir.display(p));
        text.push_str(&format!("{name} {shown}\n"));
    }
    std::io::stdout()
        .write_all(text.as_bytes())
        .context("writing to stdout")?;
    let mismatches = hasher
        .check_outputs(&drv)
        .with_context(|| format!("checking the outputs of {}", args.file.display()))?;
    for m in &mismatches {
        eprintln!(
            "unrooted: error: {}: {}",
            args.file.display(),
            m.describe(&dir)
        );
    }
    Ok(if mismatches.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Reads and parses a `.drv` file given on the command line, taking the derivation
/// name from its file name; also returns its store path when it lies in `dir`.
fn read_file(dir: &StoreDir, file: &Path) -> anyhow::Result<(Derivation, Option<StorePath>)> {
    let absolute =
        std::path::absolute(file).with_context(|| format!("resolving {}", file.display()))?;
    let in_store = absolute.to_str().and_then(|s| dir.parse_path(s).ok());
    let base = file
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| anyhow!("{}: not a file name", file.display()))?;
    let name = match &in_store {
        Some(p) => name_from_drv_path(p).map(str::to_owned),
        None => StorePath::from_base_name(base)
            .ok()
            .and_then(|p| name_from_drv_path(&p).map(str::to_owned))
            .or_else(|| base.strip_suffix(DRV_EXTENSION).map(str::to_owned)),
    }
    .ok_or_else(|| {
        anyhow!(
            "{}: a derivation file name must end in .drv",
            file.display()
        )
    })?;
    Ok((read_drv(dir, file, &name)?, in_store))
}

fn read_drv(dir: &StoreDir, file: &Path, name: &str) -> anyhow::Result<Derivation> {
    let max = Limits::default().max_size;
    let f = File::open(file).with_context(|| format!("opening {}", file.display()))?;
    let mut bytes = Vec::new();
    // One byte over the limit is enough for the parser to report the size; reading
    // more from a hostile or endless file would only cost memory.
    f.take(max as u64 + 1)
        .read_to_end(&mut bytes)
        .with_context(|| format!("reading {}", file.display()))?;
    Derivation::parse(dir, &bytes, name).with_context(|| format!("parsing {}", file.display()))
}
