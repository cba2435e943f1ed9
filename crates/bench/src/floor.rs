//! The socket floor served from another process: an echo server that does nothing
//! but answer 8 bytes with the same 8 bytes, a thread per connection (unrooted's
//! shape), in a process of its own as each daemon is. A daemon's round trip crosses
//! processes (an address-space switch on every wake-up, which a virtual machine makes
//! dear); the in-process floor of [`crate::daemon`] does not, so both are shown. The
//! server's CPU time per round trip is the least any daemon can spend per query.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context};

use crate::mem;

/// The variable that makes `unrooted-bench` the echo server on the socket it names.
const ECHO_SOCKET: &str = "UNROOTED_BENCH_ECHO_SOCKET";

/// Serves echo connections for ever when this process was started as the echo
/// server; returns at once otherwise.
pub fn serve_if_asked() {
    let Some(path) = std::env::var_os(ECHO_SOCKET) else {
        return;
    };
    let listener = match UnixListener::bind(&path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("echo server: binding {}: {e}", Path::new(&path).display());
            std::process::exit(1);
        }
    };
    for stream in listener.incoming() {
        let Ok(mut s) = stream else { continue };
        std::thread::spawn(move || {
            let mut buf = [0u8; 8];
            while s.read_exact(&mut buf).is_ok() {
                if s.write_all(&buf).is_err() {
                    break;
                }
            }
        });
    }
    std::process::exit(0);
}

/// The echo server process, killed when dropped.
struct Echo(Child);

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The cross-process floor over `conns` connections: round trips per second (median
/// of `trials` trials of `dur`) and the server's CPU microseconds per round trip.
pub fn cross_process(conns: usize, dur: Duration, trials: usize) -> anyhow::Result<(f64, f64)> {
    let dir = tempfile::tempdir()?;
    let socket = dir.path().join("echo");
    let exe = std::env::current_exe()?;
    let echo = Echo(
        Command::new(&exe)
            .env(ECHO_SOCKET, &socket)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} as the echo server", exe.display()))?,
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        ensure!(Instant::now() < deadline, "the echo server did not listen");
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = echo.0.id();
    let mut rates = Vec::new();
    let (mut cpu, mut ops_total) = (0.0, 0u64);
    for _ in 0..trials {
        let clients = (0..conns)
            .map(|_| UnixStream::connect(&socket))
            .collect::<std::io::Result<Vec<_>>>()?;
        // One round trip each, so every server thread exists before the reading.
        let mut clients = clients
            .into_iter()
            .map(|mut c| {
                let mut buf = [0u8; 8];
                c.write_all(&buf)?;
                c.read_exact(&mut buf)?;
                Ok(c)
            })
            .collect::<std::io::Result<Vec<_>>>()?;
        let before = mem::cpu_secs(pid).unwrap_or(0.0);
        let barrier = Barrier::new(conns);
        let results = std::thread::scope(|s| {
            let handles: Vec<_> = clients
                .iter_mut()
                .map(|client| {
                    let barrier = &barrier;
                    s.spawn(move || ping_pong(client, barrier, dur))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("echo client thread panicked"))
                .collect::<std::io::Result<Vec<_>>>()
        })?;
        cpu += mem::cpu_secs(pid).unwrap_or(0.0) - before;
        let ops: u64 = results.iter().map(|r| r.0).sum();
        ops_total += ops;
        let secs = results.iter().map(|r| r.1).max().unwrap_or_default();
        rates.push(ops as f64 / secs.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    Ok((rates[rates.len() / 2], cpu * 1e6 / ops_total.max(1) as f64))
}

/// 8-byte round trips on `client` for `dur`, started when every client of `barrier`
/// is ready: the round trips made and the time they took.
pub fn ping_pong(
    client: &mut UnixStream,
    barrier: &Barrier,
    dur: Duration,
) -> std::io::Result<(u64, Duration)> {
    barrier.wait();
    let start = Instant::now();
    let mut ops = 0u64;
    let mut buf = [0u8; 8];
    while start.elapsed() < dur {
        for _ in 0..16 {
            client.write_all(&buf)?;
            client.read_exact(&mut buf)?;
        }
        ops += 16;
    }
    Ok((ops, start.elapsed()))
}
