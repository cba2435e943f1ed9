//! `builtin:fetchurl`, what `<nix/fetchurl.nix>` builds, as Nix 2.8's
//! `builtins/fetchurl.cc`: download `url` to `$out`, or, with `unpack = "1"`, read the
//! download as a NAR (xz-compressed when the URL ends in `.xz`) and restore it at
//! `$out`; `executable = "1"` makes the file 0755. Only fixed-output derivations may
//! use it (the daemon refuses others before any sandbox exists; this checks again),
//! so the hash the daemon verifies afterwards is what makes the network access safe,
//! which is also why nothing here trusts the content.
//!
//! HTTP(S) goes through `unrooted-fetch`'s client (the substituter's), with the derivation's
//! `http_proxy`/`https_proxy`/`all_proxy`/`no_proxy` (its `impureEnvVars`); `file://`
//! reads a file the sandbox can see (a `sandbox-paths` entry). Unlike Nix 2.8, TLS
//! certificates are verified (against the built-in web PKI roots).
//!
//! For a flat-hashed output the daemon's `hashed-mirrors` are tried first, in order,
//! as `<mirror>/<algo>/<base16 hash>` (Nix 2.8's order and form); a mirror that fails
//! is skipped, with a log line, and what it left of `$out` removed.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::time::Duration;

use super::{BuiltinError, Env};
use unrooted_fetch::{is_over_limit, Bounded, FetchError, HttpClient, HttpOptions};
use unrooted_format::narinfo::Compression;
use unrooted_sandbox::remove_tree;

/// The most bytes one download (or the NAR it decompresses to) may have.
pub(crate) const MAX_FETCH_BYTES: u64 = 64 << 30;

/// How long a connection may stay silent (Nix's `stalled-download-timeout`).
const STALL_TIMEOUT: Duration = Duration::from_secs(300);

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

/// How often a running download says how far it got: the log lines keep a long
/// download from looking silent to `max-silent-time`, as Nix's progress messages do.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Counts what comes through and logs it every [`PROGRESS_EVERY`].
struct Progress<'a, R> {
    inner: R,
    url: &'a str,
    bytes: u64,
    last: std::time::Instant,
}

impl<R: Read> Read for Progress<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        if self.last.elapsed() >= PROGRESS_EVERY {
            self.last = std::time::Instant::now();
            eprintln!(
                "downloaded {:.1} MiB from '{}'",
                self.bytes as f64 / f64::from(1 << 20),
                self.url
            );
        }
        Ok(n)
    }
}

/// The builtin.
pub(crate) fn run(env: &[(OsString, OsString)]) -> Result<(), Box<dyn std::error::Error>> {
    fetch(Env(env), MAX_FETCH_BYTES).map_err(Into::into)
}

fn fetch(env: Env<'_>, max: u64) -> Result<(), BuiltinError> {
    if env.get("outputHash").is_none_or(|h| h.is_empty()) {
        return Err(BuiltinError::NotFixedOutput);
    }
    let out = PathBuf::from(env.require("out")?);
    let url = env.text("url")?;
    for mirror in hashed_mirror_urls(env) {
        match download(&mirror, env, &out, max) {
            Ok(()) => return Ok(()),
            Err(e) => {
                eprintln!("hashed mirror '{mirror}' failed: {e}");
                if let Err(e) = remove_tree(&out) {
                    return Err(BuiltinError::Io {
                        action: "removing what a hashed mirror left at",
                        path: out.clone(),
                        source: io::Error::other(e),
                    });
                }
            }
        }
    }
    download(url, env, &out, max)
}

/// The URLs of the output on the daemon's hashed mirrors (none unless the output is
/// flat-hashed and its hash parses).
fn hashed_mirror_urls(env: Env<'_>) -> Vec<String> {
    let Some(mirrors) = env.get(super::HASHED_MIRRORS_VAR).and_then(|m| m.to_str()) else {
        return Vec::new();
    };
    if env.get("outputHashMode") != Some(std::ffi::OsStr::new("flat")) {
        return Vec::new();
    }
    let algo = env
        .get("outputHashAlgo")
        .and_then(|a| a.to_str())
        .filter(|a| !a.is_empty())
        .map(str::parse::<unrooted_format::HashAlgo>);
    let algo = match algo {
        Some(Ok(a)) => Some(a),
        Some(Err(_)) => return Vec::new(),
        None => None,
    };
    let Some(hash) = env
        .get("outputHash")
        .and_then(|h| h.to_str())
        .and_then(|h| unrooted_format::Hash::parse_any(h, algo).ok())
    else {
        return Vec::new();
    };
    mirrors
        .split_whitespace()
        .map(|m| {
            let sep = if m.ends_with('/') { "" } else { "/" };
            format!("{m}{sep}{}/{}", hash.algo().name(), hash.to_base16())
        })
        .collect()
}

/// Downloads `url` to `out` as the derivation asks (`unpack`, `executable`).
fn download(url: &str, env: Env<'_>, out: &std::path::Path, max: u64) -> Result<(), BuiltinError> {
    let out = out.to_path_buf();
    let unpack = env.flag("unpack");
    let executable = env.flag("executable");

    eprintln!("downloading '{url}'...");
    let body = Progress {
        inner: open(url, env)?,
        url,
        bytes: 0,
        last: std::time::Instant::now(),
    };
    // Nix 2.8 decompresses only an unpacked `.xz`, whatever else the name says.
    let compression = if unpack && url.ends_with(".xz") {
        Compression::Xz
    } else {
        Compression::None
    };
    let body = unrooted_fetch::decompressor(compression, Box::new(body))
        .expect("none and xz are always supported");
    let mut body = Bounded::new(body, max, "the download");
    let too_large = || BuiltinError::TooLarge {
        what: format!("the download from '{url}'"),
        max,
        builtin: "fetchurl",
    };
    if unpack {
        unrooted_format::nar::restore(&mut body, &out).map_err(|source| {
            let over = matches!(&source, unrooted_format::nar::NarError::Read { source: e, .. } if is_over_limit(e));
            if over {
                too_large()
            } else {
                BuiltinError::Nar {
                    url: url.to_owned(),
                    source,
                }
            }
        })?;
    } else {
        let io_err = |action: &'static str| {
            let path = out.clone();
            move |source| BuiltinError::Io {
                action,
                path,
                source,
            }
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .custom_flags(libc_nofollow())
            .open(&out)
            .map_err(io_err("creating"))?;
        // Read and write errors apart: one is the download's, the other the disk's.
        let mut buf = vec![0u8; 64 << 10];
        loop {
            let n = match body.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if is_over_limit(&e) => return Err(too_large()),
                Err(e) => {
                    return Err(BuiltinError::Download {
                        url: url.to_owned(),
                        source: Box::new(e),
                    })
                }
            };
            file.write_all(&buf[..n]).map_err(io_err("writing"))?;
        }
        file.flush().map_err(io_err("writing"))?;
    }
    if executable {
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).map_err(|source| {
            BuiltinError::Io {
                action: "making executable",
                path: out.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

fn libc_nofollow() -> i32 {
    rustix::fs::OFlags::NOFOLLOW.bits() as i32
}

/// The body of `url`.
fn open(url: &str, env: Env<'_>) -> Result<Box<dyn Read + Send>, BuiltinError> {
    if let Some(rest) = url.strip_prefix("file://") {
        let path = file_url_path(rest).ok_or_else(|| BuiltinError::UnsupportedUrl {
            url: url.to_owned(),
        })?;
        let file = fs::File::open(&path).map_err(|source| BuiltinError::Download {
            url: url.to_owned(),
            source: Box::new(source),
        })?;
        return Ok(Box::new(file));
    }
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(BuiltinError::UnsupportedUrl {
            url: url.to_owned(),
        });
    }
    let options = HttpOptions {
        connect_timeout: Some(CONNECT_TIMEOUT),
        stall_timeout: STALL_TIMEOUT,
        idle_connections_per_host: 1,
        proxy: proxy_for(url, env),
    };
    let download = |source: Box<dyn std::error::Error + Send + Sync>| BuiltinError::Download {
        url: url.to_owned(),
        source,
    };
    let response = HttpClient::new(&options).and_then(|client| client.get(url));
    match response {
        Ok(resp) => Ok(resp.reader),
        Err(FetchError::Status { status, .. }) => Err(BuiltinError::HttpStatus {
            url: url.to_owned(),
            status,
        }),
        Err(FetchError::Network { source, .. } | FetchError::Proxy { source, .. }) => {
            Err(download(Box::new(source)))
        }
        Err(e) => Err(download(Box::new(e))),
    }
}

/// The path of a `file://` URL's remainder (`/abs/path`, or `localhost/abs/path`),
/// percent-escapes decoded; `None` for another host or a relative path.
fn file_url_path(rest: &str) -> Option<PathBuf> {
    let rest = rest.strip_prefix("localhost").unwrap_or(rest);
    if !rest.starts_with('/') {
        return None;
    }
    let bytes = rest.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    use std::os::unix::ffi::OsStringExt;
    Some(PathBuf::from(OsString::from_vec(out)))
}

/// The proxy for `url` from the derivation's impure variables, as curl picks it:
/// `https_proxy` or `http_proxy` by scheme, else `all_proxy`, unless `no_proxy` is
/// `*` or names the host (or a domain suffix of it).
fn proxy_for(url: &str, env: Env<'_>) -> Option<String> {
    let var = |k: &str| {
        env.get(k)
            .and_then(|v| v.to_str())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit('@').next().unwrap_or("");
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        host_port.split(':').next().unwrap_or("")
    }
    .to_ascii_lowercase();
    if let Some(no) = var("no_proxy") {
        for entry in no.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            if entry == "*" || host == entry || host.ends_with(&format!(".{entry}")) {
                return None;
            }
        }
    }
    let by_scheme = if scheme == "https" {
        var("https_proxy")
    } else {
        var("http_proxy")
    };
    by_scheme.or_else(|| var("all_proxy"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn exists(path: &Path) -> bool {
        fs::symlink_metadata(path).is_ok()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn file_urls() {
        assert_eq!(file_url_path("/a/b%20c"), Some(PathBuf::from("/a/b c")));
        assert_eq!(file_url_path("localhost/x"), Some(PathBuf::from("/x")));
        assert_eq!(file_url_path("/x%2"), Some(PathBuf::from("/x%2")));
        assert_eq!(file_url_path("/x%zz"), Some(PathBuf::from("/x%zz")));
        assert_eq!(file_url_path("other.host/x"), None);
        assert_eq!(file_url_path("relative"), None);
    }

    #[test]
    fn proxies_by_scheme_and_no_proxy() {
        let vars = env(&[
            ("http_proxy", "http://p:3128"),
            ("https_proxy", ""),
            ("all_proxy", "http://all:1"),
            ("no_proxy", "internal.example, .corp"),
        ]);
        let e = Env(&vars);
        assert_eq!(
            proxy_for("http://a.b/x", e).as_deref(),
            Some("http://p:3128")
        );
        assert_eq!(
            proxy_for("https://a.b/x", e).as_deref(),
            Some("http://all:1")
        );
        assert_eq!(proxy_for("http://internal.example/x", e), None);
        assert_eq!(proxy_for("http://u:p@x.corp:8080/x", e), None);
        let none = env(&[("http_proxy", "")]);
        assert_eq!(proxy_for("http://a/", Env(&none)), None);
    }

    #[test]
    fn refuses_what_nix_refuses() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("out");
        let src = dir.path().join("src");
        fs::write(&src, b"data").unwrap();
        let url = format!("file://{}", src.display());
        let mut vars = env(&[("url", &url), ("out", out.to_str().unwrap())]);
        // Not fixed-output: nothing is fetched.
        let err = fetch(Env(&vars), 100).unwrap_err();
        assert!(matches!(err, BuiltinError::NotFixedOutput), "{err}");
        assert!(!exists(&out));
        vars.push(("outputHash".into(), "x".into()));
        vars.push(("executable".into(), "1".into()));
        fetch(Env(&vars), 100).unwrap();
        assert_eq!(fs::read(&out).unwrap(), b"data");
        assert_eq!(
            fs::metadata(&out).unwrap().permissions().mode() & 0o777,
            0o755
        );
        // Over the bound.
        fs::remove_file(&out).unwrap();
        let err = fetch(Env(&vars), 3).unwrap_err();
        assert!(matches!(err, BuiltinError::TooLarge { .. }), "{err}");
        // Unknown schemes.
        let ftp = env(&[
            ("url", "ftp://x/y"),
            ("out", "/nonexistent"),
            ("outputHash", "x"),
        ]);
        let err = fetch(Env(&ftp), 100).unwrap_err();
        assert!(matches!(err, BuiltinError::UnsupportedUrl { .. }), "{err}");
    }

    #[test]
    fn unpacks_a_nar() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        fs::create_dir(&tree).unwrap();
        fs::write(tree.join("f"), b"hi").unwrap();
        let nar_file = dir.path().join("t.nar");
        let mut nar = Vec::new();
        unrooted_format::nar::dump_path(&tree, &mut nar).unwrap();
        fs::write(&nar_file, &nar).unwrap();
        let out = dir.path().join("out");
        let url = format!("file://{}", nar_file.display());
        let vars = env(&[
            ("url", &url),
            ("out", out.to_str().unwrap()),
            ("outputHash", "x"),
            ("unpack", "1"),
        ]);
        fetch(Env(&vars), 1 << 20).unwrap();
        assert_eq!(fs::read(out.join("f")).unwrap(), b"hi");
        // A NAR larger than the bound is refused as such.
        fs::remove_dir_all(&out).unwrap();
        let err = fetch(Env(&vars), 10).unwrap_err();
        assert!(matches!(err, BuiltinError::TooLarge { .. }), "{err}");
    }
}
