//! Narinfo latency and NAR throughput of `unrooted serve` (docs/architecture.md,
//! "`unrooted serve`'s HTTP"): a private store of `N` text paths of 1 KiB and one
//! path of `MIB` MiB, sequential narinfo GETs on one keep-alive connection, then the
//! big NAR five times. `cargo run --release -p unrooted-substitute --example
//! serve_measure -- [N] [MIB]` (defaults 2000 and 512).
use std::collections::BTreeSet;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};
use unrooted_format::content_address::FileIngestionMethod;
use unrooted_format::{HashAlgo, StoreDir, StorePath};
use unrooted_store::{LocalStore, LocalStoreConfig};
use unrooted_substitute::server::{ServeConfig, Server};

const STORE_DIR: &str = "/nix/store";

struct Http {
    port: u16,
    r: BufReader<TcpStream>,
    w: TcpStream,
}
impl Http {
    fn connect(port: u16) -> anyhow::Result<Self> {
        let s = TcpStream::connect(("127.0.0.1", port))?;
        s.set_nodelay(true)?;
        Ok(Self {
            port,
            r: BufReader::with_capacity(1 << 20, s.try_clone()?),
            w: s,
        })
    }
    fn get(&mut self, path: &str, sink: &mut dyn Write) -> anyhow::Result<u16> {
        write!(
            self.w,
            "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: keep-alive\r\n\r\n",
            self.port
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status {line:?}"))?;
        let (mut length, mut chunked, mut close) = (None, false, false);
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').unwrap_or((l, ""));
            let (k, v) = (k.to_ascii_lowercase(), v.trim().to_ascii_lowercase());
            match k.as_str() {
                "content-length" => length = v.parse::<u64>().ok(),
                "transfer-encoding" => chunked = v.contains("chunked"),
                "connection" => close = v == "close",
                _ => {}
            }
        }
        if chunked {
            loop {
                line.clear();
                self.r.read_line(&mut line)?;
                let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)?;
                if size == 0 {
                    line.clear();
                    self.r.read_line(&mut line)?;
                    break;
                }
                io::copy(&mut (&mut self.r).take(size), sink)?;
                line.clear();
                self.r.read_line(&mut line)?;
            }
        } else if let Some(n) = length {
            let copied = io::copy(&mut (&mut self.r).take(n), sink)?;
            ensure!(copied == n, "short body");
        } else {
            io::copy(&mut self.r, sink)?;
            close = true;
        }
        if close {
            *self = Self::connect(self.port)?;
        }
        Ok(status)
    }
}

struct Counter(u64);
impl Write for Counter {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        self.0 += b.len() as u64;
        Ok(b.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn serve_config(root: &std::path::Path) -> ServeConfig {
    let mut c = ServeConfig::new(
        StoreDir::new(STORE_DIR).unwrap(),
        root.join("store"),
        root.join("state/db"),
    );
    c.max_connections = 4;
    c
}

fn measure(
    name: &str,
    port: u16,
    paths: &[StorePath],
    big: &StorePath,
    nar_size: u64,
) -> anyhow::Result<()> {
    let mut http = Http::connect(port)?;
    for p in paths.iter().take(200) {
        http.get(&format!("/{}.narinfo", p.hash_part()), &mut io::sink())?;
    }
    let mut times = Vec::new();
    for _ in 0..3 {
        for p in paths {
            let t = Instant::now();
            let s = http.get(&format!("/{}.narinfo", p.hash_part()), &mut io::sink())?;
            times.push(t.elapsed());
            ensure!(s == 200);
        }
    }
    let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e6 / times.len() as f64;
    times.sort();
    let median = times[times.len() / 2].as_secs_f64() * 1e6;
    let mut text = Vec::new();
    http.get(&format!("/{}.narinfo", big.hash_part()), &mut text)?;
    let text = String::from_utf8(text)?;
    let url = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .context("URL")?
        .to_owned();
    let mut mibs = Vec::new();
    for _ in 0..5 {
        let mut c = Counter(0);
        let t = Instant::now();
        let s = http.get(&format!("/{url}"), &mut c)?;
        ensure!(s == 200 && c.0 == nar_size, "NAR {s} {}", c.0);
        mibs.push(nar_size as f64 / (1 << 20) as f64 / t.elapsed().as_secs_f64());
    }
    mibs.sort_by(f64::total_cmp);
    println!("{name:12} narinfo median {median:7.1} us  mean {mean:7.1} us  ({} requests)   NAR best {:7.0} MiB/s  median {:7.0} MiB/s", times.len(), mibs[4], mibs[2]);
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(2000);
    let big_mib: u64 = std::env::args()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(512);
    let dir = tempfile::tempdir_in("/var/tmp")?;
    let mut config = LocalStoreConfig::new(
        StoreDir::new(STORE_DIR).unwrap(),
        dir.path().join("store"),
        dir.path().join("state"),
        dir.path().join("log"),
    );
    config.fsync_paths = false;
    config.reserved_space = 0;
    let store = LocalStore::open(config)?;
    let mut paths = Vec::new();
    let mut refs = BTreeSet::new();
    for i in 0..n {
        let text = format!("path {i} {}", "x".repeat(1000));
        let p = store
            .add_text(&format!("p{i}"), text.as_bytes(), &refs, false)?
            .path;
        if refs.len() < 3 {
            refs.insert(p.clone());
        } else {
            refs = BTreeSet::from([p.clone()]);
        }
        paths.push(p);
    }
    let mut state = 0x1234_5678u64;
    let mut data = (0..big_mib << 20)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            b'a' + (state % 26) as u8
        })
        .collect::<Vec<u8>>();
    let info = store.add_ca(
        "big",
        FileIngestionMethod::Flat,
        HashAlgo::Sha256,
        &mut &data[..],
        &BTreeSet::new(),
        false,
    )?;
    data.clear();
    drop(store);
    let server = Server::bind("127.0.0.1:0", serve_config(dir.path()))?;
    let port = server.local_addr()?.port();
    std::thread::spawn(move || server.run());
    std::thread::sleep(Duration::from_millis(200));
    for round in 0..2 {
        println!("round {round}");
        measure("serve", port, &paths, &info.path, info.nar_size)?;
    }
    Ok(())
}
