//! `unrooted serve`: the store as an HTTP binary cache (`nix copy --from http://…`,
//! or a substituter of another machine).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use unrooted_daemon::config::Locations;
use unrooted_format::narinfo::Compression;
use unrooted_format::signature::SecretKey;
use unrooted_substitute::server::{ServeConfig, Server};

/// How NARs are compressed on the fly.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ServeCompression {
    /// Send NARs as they are (fastest on a fast network).
    None,
    /// xz, fast preset.
    Xz,
    /// Zstandard, level 3.
    Zstd,
    /// bzip2.
    Bzip2,
}

/// Arguments of `serve`.
#[derive(clap::Args)]
pub struct ServeArgs {
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:5000", value_name = "ADDR:PORT")]
    listen: String,
    /// Sign narinfos with this secret key (`nix-store --generate-binary-cache-key`).
    #[arg(long, value_name = "FILE")]
    secret_key_file: Option<PathBuf>,
    /// Compression of the NARs served.
    #[arg(long, value_enum, default_value = "none")]
    compression: ServeCompression,
    /// Connections served at once; more wait briefly, then get 503.
    #[arg(long, default_value_t = 64, value_name = "N")]
    max_connections: usize,
    /// The priority announced in nix-cache-info (lower is preferred by clients).
    #[arg(long, default_value_t = 30, value_name = "N")]
    priority: i32,
}

/// Starts logging at `default_level` and describes the store found as Nix finds it
/// (`NIX_STORE_DIR`, `NIX_STATE_DIR`), to be read only, with the narinfo signing key
/// and NAR compression: what `serve` and `copy` share.
pub(crate) fn read_only_store_config(
    default_level: &str,
    secret_key_file: Option<&std::path::Path>,
    compression: ServeCompression,
) -> anyhow::Result<ServeConfig> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .init();
    let locations =
        Locations::from_env(|k| std::env::var(k).ok()).context("reading the environment")?;
    let mut config = ServeConfig::new(
        locations.store_dir.clone(),
        PathBuf::from(locations.store_dir.as_str()),
        locations.state_dir.join("db"),
    );
    if let Some(file) = secret_key_file {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("reading the secret key file '{}'", file.display()))?;
        let key = SecretKey::parse(text.trim())
            .with_context(|| format!("parsing the secret key in '{}'", file.display()))?;
        config.secret_key = Some(key);
    }
    config.compression = match compression {
        ServeCompression::None => Compression::None,
        ServeCompression::Xz => Compression::Xz,
        ServeCompression::Zstd => Compression::Zstd,
        ServeCompression::Bzip2 => Compression::Bzip2,
    };
    Ok(config)
}

/// Serves until killed. The store is found as Nix finds it (`NIX_STORE_DIR`,
/// `NIX_STATE_DIR`) and only read.
pub fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    let mut config =
        read_only_store_config("info", args.secret_key_file.as_deref(), args.compression)?;
    config.max_connections = args.max_connections.max(1);
    config.priority = args.priority;
    let server = Server::bind(&args.listen, config).context("starting the binary cache server")?;
    let addr = server.local_addr().context("reading the bound address")?;
    // Tests and scripts read this line to learn the port when given port 0.
    println!("listening on http://{addr}");
    server.run().context("serving")?;
    Ok(ExitCode::SUCCESS)
}
