//! The substitution workloads (issue 7).
//!
//! A source store (served by `nix-daemon`) gets a closure of `paths` text paths of
//! `size_mib` MiB in all (incompressible-ish printable bytes; each path refers to up
//! to three earlier ones, and a top path to every path nothing else refers to), and a
//! big path for the throughput measurement. Then:
//! - `unrooted serve` on the source store: narinfo latency (sequential GETs on one
//!   keep-alive connection) and the NAR throughput of the big path on one connection,
//!   against harmonia's published 194 µs and 580 MiB/s;
//! - `nix copy --to file://CACHE?compression=none` of the closure, served by
//!   `python3 -m http.server` on loopback (the same server for both daemons);
//! - each daemon in turn, on an empty store at the same store directory (store paths
//!   depend on it), runs `nix-store -r TOP` with that cache as its substituter
//!   (`require-sigs = false`): wall time, and every path checked valid afterwards.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context};
use unrooted_format::{StorePath, StorePathName};
use unrooted_protocol::request::ContentAddressMethod;
use unrooted_testkit::daemon::DAEMON_USER;

use crate::build::{met, time_row};
use crate::daemon::{daemon_owner, header, nix_version, Daemon, Daemons};

/// What the substitution workloads need from the command line.
pub struct Options {
    /// The `unrooted` binary.
    pub unrooted: PathBuf,
    /// The `nix-daemon` binary.
    pub nix_daemon: PathBuf,
    /// Where the daemons' logs are kept after the run.
    pub logs: PathBuf,
    /// Paths in the closure.
    pub paths: usize,
    /// Total size of the closure, in MiB.
    pub size_mib: u64,
    /// Size of the big path `unrooted serve` sends in the throughput measurement.
    pub serve_nar_mib: u64,
    /// `max-jobs` of both daemons.
    pub max_jobs: usize,
}

/// The goals the issue sets, and harmonia's published figures.
const GOAL_SUBST: f64 = 2.0;
const HARMONIA_NARINFO_US: f64 = 194.0;
const HARMONIA_NAR_MIBS: f64 = 580.0;

/// A process killed (by its pid) when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM first: nginx's master then stops its workers, which SIGKILL would
        // leave running on the port.
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A deterministic stream of printable bytes (xorshift64*).
struct Bytes(u64);

impl Bytes {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, n: usize) -> Vec<u8> {
        const ALPHABET: &[u8; 64] =
            b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = Vec::with_capacity(n + 8);
        while out.len() < n {
            let mut x = self.next();
            for _ in 0..10 {
                out.push(ALPHABET[(x & 63) as usize]);
                x >>= 6;
            }
        }
        out.truncate(n);
        out
    }
}

/// Removes a daemon's store, state, log and conf under `root`, so the next daemon
/// starts empty at the same store directory.
fn wipe(root: &Path) -> anyhow::Result<()> {
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(root).status();
    for dir in ["store", "state", "log", "conf"] {
        let p = root.join(dir);
        if p.exists() {
            fs::remove_dir_all(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    Ok(())
}

/// A free loopback port (there is a small race until the server binds it).
fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(port: u16, child: &mut Child, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = child.try_wait()? {
            bail!("{what} exited with {status}");
        }
        ensure!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Runs the substitution workloads and prints their table.
pub fn run(opts: &Options) -> anyhow::Result<()> {
    let owner = daemon_owner()?;
    let mut daemons = Daemons::new("unrooted-bench-subst-")?;
    let tmp = daemons.tmp.path().to_path_buf();
    let root = tmp.join("s");
    let cache = tmp.join("cache");

    println!(
        "## Substitution: unrooted daemon vs {}, same machine, same run",
        nix_version(&opts.nix_daemon)
    );
    // The source store.
    let source = Daemon::start(
        "source",
        root.clone(),
        &[&opts.nix_daemon],
        None,
        "build-users-group =\n",
        &[],
    )?;
    daemons.list.push(source);
    let t = Instant::now();
    let (top, all, big) = populate(&daemons.list[0], opts)?;
    println!(
        "closure: {} paths, {} MiB (made in {:.1} s through nix-daemon), plus a {} MiB path for the NAR throughput",
        all.len(),
        opts.size_mib,
        t.elapsed().as_secs_f64(),
        opts.serve_nar_mib
    );
    let src = &daemons.list[0];
    let top_s = src.store_dir.display(&top);

    let serve = serve_figures(opts, src, &all, &big);

    fill_cache(src, &cache, &top_s)?;
    daemons.list[0].kill();
    daemons.list.clear();
    wipe(&root)?;

    let port = free_port()?;
    let (mut http, server) = start_cache_server(&cache, &tmp, port)?;
    wait_for_port(port, &mut http.0, server)?;
    println!("cache server: {server} on 127.0.0.1:{port} (the same server for both daemons)");
    let conf = format!(
        "substituters = http://127.0.0.1:{port}\nrequire-sigs = false\nmax-jobs = {}\n",
        opts.max_jobs
    );
    print_setup(&conf, owner);

    let mut secs = Vec::new();
    for (label, program, who, extra) in [
        (
            "unrooted",
            vec![opts.unrooted.as_path(), Path::new("daemon")],
            owner,
            "",
        ),
        (
            "nix-daemon",
            vec![opts.nix_daemon.as_path()],
            None,
            "build-users-group =\n",
        ),
    ] {
        let d = Daemon::start(
            label,
            root.clone(),
            &program,
            who,
            &format!("{conf}{extra}"),
            &[],
        )?;
        daemons.list.push(d);
        let d = &daemons.list[daemons.list.len() - 1];
        let elapsed = match time_substitution(d, label, &top_s, &all) {
            Ok(t) => t,
            Err(e) => {
                daemons.print_log_tails();
                return Err(e);
            }
        };
        fs::create_dir_all(&opts.logs)?;
        let _ = fs::copy(
            root.join("daemon.log"),
            opts.logs.join(format!("{label}.log")),
        );
        secs.push(elapsed);
        let mut d = daemons.list.pop().context("daemon list")?;
        d.kill();
        wipe(&root)?;
    }

    print_results(opts, &secs, all.len(), serve);
    Ok(())
}

/// What both daemons are given, and as which users they run.
fn print_setup(conf: &str, owner: Option<(u32, u32)>) {
    println!(
        "both daemons: {}; unrooted as {}, nix-daemon as root; client: nix-store -r (root, NIX_REMOTE=daemon)",
        conf.trim().replace('\n', ", "),
        if owner.is_some() {
            DAEMON_USER
        } else {
            "the current user"
        }
    );
    println!();
}

/// Fills the cache at `cache` from the source store with `nix copy --to file://`.
fn fill_cache(src: &Daemon, cache: &Path, top_s: &str) -> anyhow::Result<()> {
    let t = Instant::now();
    let out = src
        .nix_client("nix")
        .args([
            "--extra-experimental-features",
            "nix-command",
            "copy",
            "--to",
        ])
        .arg(format!("file://{}?compression=none", cache.display()))
        .arg(top_s)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    ensure!(
        out.status.success(),
        "nix copy --to file:// failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "cache: nix copy --to file://…?compression=none in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Times `nix-store -r` of the closure through `d` and checks every path arrived;
/// seconds.
fn time_substitution(
    d: &Daemon,
    label: &str,
    top_s: &str,
    all: &[StorePath],
) -> anyhow::Result<f64> {
    let t = Instant::now();
    let out = d
        .nix_client("nix-store")
        .arg("-r")
        .arg(top_s)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()?;
    let elapsed = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "nix-store -r through {label} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let valid = d
        .connect()?
        .query_valid_paths(all.iter().cloned().collect(), false)?;
    ensure!(
        valid.len() == all.len(),
        "{label} has {} of the {} paths after nix-store -r",
        valid.len(),
        all.len()
    );
    Ok(elapsed)
}

/// The substitution row and `unrooted serve`'s figures.
fn print_results(opts: &Options, secs: &[f64], paths: usize, serve: anyhow::Result<ServeFigures>) {
    header();
    time_row(
        &format!("nix-store -r, {} paths, {} MiB", paths, opts.size_mib),
        secs[0],
        secs[1],
        Some(format!(
            "speed-up {:.2}x, goal >= {GOAL_SUBST}x  {}",
            secs[1] / secs[0],
            met(secs[1] / secs[0] >= GOAL_SUBST)
        )),
    );
    println!(
        "{:<38} {:<8} {:>11.0} {:>11.0}",
        "  throughput",
        "MiB/s",
        opts.size_mib as f64 / secs[0],
        opts.size_mib as f64 / secs[1]
    );
    println!("daemon logs kept in {}", opts.logs.display());
    println!();
    match serve {
        Ok(s) => {
            println!("unrooted serve (compression none), one keep-alive connection:");
            println!(
                "  narinfo latency: median {:.0} us, mean {:.0} us over {} requests (harmonia: {HARMONIA_NARINFO_US} us; {})",
                s.narinfo_median_us,
                s.narinfo_mean_us,
                s.requests,
                met(s.narinfo_median_us < HARMONIA_NARINFO_US)
            );
            println!(
                "  NAR throughput: {:.0} MiB/s, best of 3 GETs of a {} MiB NAR (harmonia: {HARMONIA_NAR_MIBS} MiB/s; {})",
                s.nar_mibs,
                opts.serve_nar_mib,
                met(s.nar_mibs > HARMONIA_NAR_MIBS)
            );
        }
        Err(e) => println!("unrooted serve: FAILED: {e:#}"),
    }
}

/// Serves `cache` on loopback `port` with nginx when it is installed (a static server
/// as a real binary cache would use, so that the figure measures the daemons rather
/// than the server), else with `python3 -m http.server`, which answers one request per
/// connection and holds the GIL, and so dominates the wall time of both daemons.
fn start_cache_server(
    cache: &Path,
    tmp: &Path,
    port: u16,
) -> anyhow::Result<(Guard, &'static str)> {
    let nginx = Path::new("/usr/sbin/nginx");
    if nginx.exists() {
        let dir = tmp.join("nginx");
        fs::create_dir_all(&dir)?;
        let conf = format!(
            "daemon off;\nmaster_process on;\nuser root;\nworker_processes 2;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log;\nevents {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  sendfile on;\n  keepalive_requests 100000;\n\
             client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
             fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
             types {{ text/x-nix-narinfo narinfo; }}\n  default_type application/octet-stream;\n\
             server {{ listen 127.0.0.1:{port}; root {c}; }}\n}}\n",
            d = dir.display(),
            c = cache.display(),
        );
        let conf_path = dir.join("nginx.conf");
        fs::write(&conf_path, conf)?;
        let child = Command::new(nginx)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx")?;
        return Ok((Guard(child), "nginx"));
    }
    let child = Command::new("python3")
        .args(["-m", "http.server", "--bind", "127.0.0.1"])
        .arg(port.to_string())
        .arg("--directory")
        .arg(cache)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting python3 -m http.server")?;
    Ok((Guard(child), "python3 -m http.server"))
}

/// Adds the closure and the big path; the top path, every path of the closure, and
/// the big path.
fn populate(d: &Daemon, opts: &Options) -> anyhow::Result<(StorePath, Vec<StorePath>, StorePath)> {
    let mut c = d.connect()?;
    let mut bytes = Bytes(0x9E37_79B9_7F4A_7C15);
    let n = opts.paths - 1;
    let each = (opts.size_mib * 1024 * 1024 / opts.paths as u64) as usize;
    let mut paths: Vec<StorePath> = Vec::with_capacity(opts.paths);
    let mut referenced = vec![false; n];
    for i in 0..n {
        let mut refs = BTreeSet::new();
        if i > 0 {
            for _ in 0..3 {
                let j = (bytes.next() % i as u64) as usize;
                referenced[j] = true;
                refs.insert(paths[j].clone());
            }
        }
        let text = bytes.fill(each);
        let info = c
            .add_to_store(
                StorePathName::new(&format!("subst-{i}"))?,
                ContentAddressMethod::Text,
                refs,
                &mut text.as_slice(),
            )
            .with_context(|| format!("adding subst-{i}"))?;
        paths.push(info.path);
    }
    let refs: BTreeSet<StorePath> = paths
        .iter()
        .zip(&referenced)
        .filter(|(_, r)| !**r)
        .map(|(p, _)| p.clone())
        .collect();
    let text = bytes.fill(each);
    let top = c
        .add_to_store(
            StorePathName::new("subst-top")?,
            ContentAddressMethod::Text,
            refs,
            &mut text.as_slice(),
        )?
        .path;
    paths.push(top.clone());
    let text = bytes.fill((opts.serve_nar_mib * 1024 * 1024) as usize);
    let big = c
        .add_to_store(
            StorePathName::new("serve-big")?,
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut text.as_slice(),
        )?
        .path;
    Ok((top, paths, big))
}

/// `unrooted serve`'s figures.
struct ServeFigures {
    narinfo_median_us: f64,
    narinfo_mean_us: f64,
    requests: usize,
    nar_mibs: f64,
}

/// Starts `unrooted serve` on the source store (as the bench's user, who owns it) and
/// measures it on one connection.
fn serve_figures(
    opts: &Options,
    src: &Daemon,
    all: &[StorePath],
    big: &StorePath,
) -> anyhow::Result<ServeFigures> {
    let port = free_port()?;
    let mut cmd = Command::new(&opts.unrooted);
    cmd.args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("NIX_STORE_DIR", src.root.join("store"))
        .env("NIX_STATE_DIR", src.root.join("state"))
        .env("NIX_CONF_DIR", src.root.join("conf"))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(src.root.with_file_name("serve.log"))?);
    let mut server = Guard(cmd.spawn().context("starting unrooted serve")?);
    wait_for_port(port, &mut server.0, "unrooted serve")?;
    let mut http = Http::connect(port)?;
    let hash = |p: &StorePath| p.to_base_name().split('-').next().unwrap_or("").to_owned();
    // Warm up (the database pages, the connection), then time every narinfo.
    for p in all.iter().take(100) {
        http.get(&format!("/{}.narinfo", hash(p)), &mut io::sink())?;
    }
    let mut times = Vec::with_capacity(all.len());
    for p in all {
        let t = Instant::now();
        let status = http.get(&format!("/{}.narinfo", hash(p)), &mut io::sink())?;
        times.push(t.elapsed());
        ensure!(status == 200, "narinfo of {p:?}: HTTP {status}");
    }
    let mean = times.iter().sum::<Duration>().as_secs_f64() * 1e6 / times.len() as f64;
    times.sort();
    let median = times[times.len() / 2].as_secs_f64() * 1e6;

    let mut narinfo = Vec::new();
    let status = http.get(&format!("/{}.narinfo", hash(big)), &mut narinfo)?;
    ensure!(status == 200, "narinfo of the big path: HTTP {status}");
    let narinfo = String::from_utf8_lossy(&narinfo).into_owned();
    let url = narinfo
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .context("no URL in the narinfo")?
        .to_owned();
    let mut best = f64::MAX;
    for _ in 0..3 {
        let mut counter = Counter(0);
        let t = Instant::now();
        let status = http.get(&format!("/{url}"), &mut counter)?;
        let secs = t.elapsed().as_secs_f64();
        ensure!(status == 200, "{url}: HTTP {status}");
        ensure!(
            counter.0 >= opts.serve_nar_mib * 1024 * 1024,
            "{url}: only {} bytes",
            counter.0
        );
        best = best.min(secs);
    }
    Ok(ServeFigures {
        narinfo_median_us: median,
        narinfo_mean_us: mean,
        requests: all.len(),
        nar_mibs: opts.serve_nar_mib as f64 / best,
    })
}

/// Counts the bytes written to it.
struct Counter(u64);

impl Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A minimal HTTP/1.1 client on one keep-alive connection (reconnecting when the
/// server closes it).
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

    /// GETs `path`, copying the body to `sink`; the status.
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
            .with_context(|| format!("bad status line {line:?}"))?;
        let mut length = None;
        let mut chunked = false;
        let mut close = false;
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
                let size = u64::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
                    .with_context(|| format!("bad chunk size {line:?}"))?;
                if size == 0 {
                    // Trailers, then the empty line.
                    loop {
                        line.clear();
                        self.r.read_line(&mut line)?;
                        if line.trim_end().is_empty() {
                            break;
                        }
                    }
                    break;
                }
                io::copy(&mut (&mut self.r).take(size), sink)?;
                line.clear();
                self.r.read_line(&mut line)?;
            }
        } else if let Some(n) = length {
            let copied = io::copy(&mut (&mut self.r).take(n), sink)?;
            ensure!(copied == n, "short body: {copied} of {n} bytes");
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
