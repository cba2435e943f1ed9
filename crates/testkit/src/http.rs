//! A static HTTP server on loopback for tests that fetch: Python's `http.server`, an
//! independent implementation (a binary cache made by `nix copy --to file://`, a file
//! for `builtin:fetchurl`), never unrooted's own code.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// `python3 -m http.server` serving a directory on a free loopback port; killed when
/// dropped.
pub struct PythonServer {
    child: Child,
    port: u16,
    log: Option<PathBuf>,
}

impl PythonServer {
    /// Serves `dir`; the server's request log goes to `log` when given.
    pub fn start(dir: &Path, log: Option<&Path>) -> Self {
        let stderr = match log {
            Some(p) => Stdio::from(fs::File::create(p).expect("creating the server's log")),
            None => Stdio::null(),
        };
        let mut child = Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1"])
            .arg("--directory")
            .arg(dir)
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("starting python3 -m http.server");
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped stdout"))
            .read_line(&mut line)
            .expect("reading the server's first line");
        let port = line
            .split_whitespace()
            .skip_while(|w| *w != "port")
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        Self {
            child,
            port,
            log: log.map(Path::to_path_buf),
        }
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`, without a trailing slash.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The request lines logged so far (empty without a log).
    pub fn requests(&self) -> String {
        self.log
            .as_ref()
            .and_then(|p| fs::read_to_string(p).ok())
            .unwrap_or_default()
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
