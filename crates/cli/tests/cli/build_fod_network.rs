//! Issue 15, item 2: a fixed-output build runs in a network namespace of its own,
//! connected to the world by `pasta` (Debian's `passt`), so its builder cannot reach
//! the host's abstract Unix sockets, the host's loopback listeners at `127.0.0.1`, nor
//! see the host's `/proc/net/unix`; it still reaches the host (its loopback, through
//! pasta's gateway address) and the internet. A hostile builder
//! (`data/hostile/hostile.c`, `netprobe`) tries each channel and reports what it got;
//! the host's network, when the administrator asks for it with
//! `fixed-output-network = host`, gives all of them back and is warned about.
//!
//! Without `pasta` these tests are skipped, except with `CI=true`, where that is a
//! failure (`scripts/setup.sh` installs `passt`).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::common::hostile;
use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};
use unrooted_testkit::http::PythonServer;

/// The `pasta` the daemon finds by default, if any, with a `/dev/net/tun` it can use.
fn pasta() -> Option<PathBuf> {
    let found = ["/usr/bin/pasta", "/usr/local/bin/pasta"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.is_file());
    let tun_open =
        fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006);
    match found {
        Some(p) if tun_open => Some(p),
        _ => {
            assert!(
                !unrooted_testkit::in_ci(),
                "pasta (Debian's passt) with a 0666 /dev/net/tun is needed, and CI=true: these tests must run (scripts/setup.sh)"
            );
            eprintln!("skipping: pasta is not installed or /dev/net/tun is not 0666");
            None
        }
    }
}

struct Fixture {
    d: TestDaemon,
    server: PythonServer,
    _listener: std::os::unix::net::UnixListener,
    sock: String,
}

/// A daemon whose fixed-output builds can run `/hostile`, with `extra` settings; an
/// HTTP server on the host's loopback and an abstract socket of the host.
fn prepared(extra: &str) -> Option<Fixture> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    pasta()?;
    let exe = hostile()?;
    let mut d = TestDaemon::new(
        env!("CARGO_BIN_EXE_unrooted").as_ref(),
        &format!(
            "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox /hostile={}\n{extra}",
            exe.display()
        ),
    );
    let served = d.inputs().join("served");
    fs::create_dir(&served).unwrap();
    fs::set_permissions(&served, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(served.join("f"), b"served on the host's loopback\n").unwrap();
    d.start();
    let server = PythonServer::start(&served, Some(&d.root().join("http.log")));
    use std::os::linux::net::SocketAddrExt;
    let sock = format!("unrooted-netprobe-{}-{}", std::process::id(), server.port());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(sock.as_bytes()).unwrap();
    let listener = std::os::unix::net::UnixListener::bind_addr(&addr).unwrap();
    Some(Fixture {
        d,
        server,
        _listener: listener,
        sock,
    })
}

/// Builds the probing fixed-output derivation (it always fails) and returns what the
/// builder reported, one `channel: outcome` line each.
fn probe(f: &Fixture, tag: &str) -> Vec<String> {
    probe_with(f, tag, "")
}

/// [`probe`] with more attributes for the derivation.
fn probe_with(f: &Fixture, tag: &str, attrs: &str) -> Vec<String> {
    let expr = format!(
        r#"derivation {{ name = "netprobe-{tag}"; system = builtins.currentSystem; builder = "/hostile"; {attrs}
             args = [ "netprobe" "{}" "{}" ];
             outputHashMode = "flat"; outputHashAlgo = "sha256";
             outputHash = "0000000000000000000000000000000000000000000000000000000000000000"; }}"#,
        f.sock,
        f.server.port()
    );
    let err = f.d.client_err("nix-build", &["-E", &expr, "--no-out-link"]);
    let lines: Vec<String> = ["abstract", "loopback", "procnet", "gateway"]
        .iter()
        .filter_map(|k| {
            err.lines().find_map(|l| {
                l.trim()
                    .strip_prefix(&format!("{k}: "))
                    .map(|v| format!("{k}: {v}"))
            })
        })
        .collect();
    if lines.len() != 4 {
        // A setup failure names its step; pasta's own words are in the build log.
        let log = std::process::Command::new("sh")
            .arg("-c")
            .arg("find \"$0\" -name '*.bz2' -exec bzip2 -dc {} +")
            .arg(f.d.root())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        panic!("the builder did not report every channel: {err}\nbuild log:\n{log}");
    }
    lines
}

#[test]
#[ignore = "needs root, the test users and pasta; CI runs it with --include-ignored"]
fn fixed_output_builder_on_pasta_reaches_the_host_only_through_the_gateway() {
    let Some(f) = prepared("") else { return };
    assert!(
        f.d.log().contains("connected through"),
        "the daemon did not say it uses pasta: {}",
        f.d.log()
    );
    let got = probe(&f, "pasta");
    assert_eq!(
        got,
        [
            // The host's abstract socket namespace is another network namespace's.
            "abstract: Connection refused",
            // 127.0.0.1 is the sandbox's own loopback, where nothing listens.
            "loopback: Connection refused",
            "procnet: unseen",
            // The host's loopback server, through pasta.
            "gateway: HTTP/1.0 200 OK",
        ]
    );
    assert!(
        f.server.requests().contains("GET /f "),
        "{}",
        f.server.requests()
    );
    // pasta ends with the build.
    let left: Vec<u32> = TestDaemon::descendants(f.d.pid())
        .into_iter()
        .filter(|p| fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.contains("pas")))
        .collect();
    assert!(left.is_empty(), "pasta processes left: {left:?}");
}

/// The `uid-range` layout (the builder is root with 65,536 ids in its nested user
/// namespace): pasta still runs as uid 1000 there and attaches the same way.
#[test]
#[ignore = "needs root, the test users and pasta; CI runs it with --include-ignored"]
fn uid_range_fixed_output_builder_on_pasta_is_confined_the_same_way() {
    let Some(f) = prepared("") else { return };
    if unrooted_testkit::daemon::ensure_subids(unrooted_testkit::daemon::DAEMON_USER).is_none() {
        assert!(
            !unrooted_testkit::in_ci(),
            "subordinate ids are needed, and CI=true"
        );
        eprintln!("skipping: no subordinate ids for the daemon user");
        return;
    }
    let got = probe_with(
        &f,
        "uid-range",
        r#"requiredSystemFeatures = [ "uid-range" ];"#,
    );
    assert_eq!(
        got,
        [
            "abstract: Connection refused",
            "loopback: Connection refused",
            "procnet: unseen",
            "gateway: HTTP/1.0 200 OK",
        ]
    );
}

#[test]
#[ignore = "needs root, the test users and pasta; CI runs it with --include-ignored"]
fn fetchurl_on_pasta_fetches_from_the_hosts_loopback_through_the_gateway() {
    let Some(f) = prepared("") else { return };
    let body = b"served on the host's loopback\n";
    let hash = unrooted_format::Hash::sha256(unrooted_format::hash::sha256(body)).to_base16();
    let url = format!(
        "http://{}:{}/f",
        unrooted_sandbox::PASTA_GATEWAY,
        f.server.port()
    );
    let out = f.d.client_ok(
        "nix-build",
        &[
            "-E",
            &format!(r#"import <nix/fetchurl.nix> {{ url = "{url}"; sha256 = "{hash}"; }}"#),
            "--no-out-link",
        ],
    );
    assert_eq!(fs::read(out.trim()).unwrap(), body);
    // 127.0.0.1 is the sandbox's own loopback: the same server is not there.
    let err = f.d.client_err(
        "nix-build",
        &[
            "-E",
            &format!(
                r#"import <nix/fetchurl.nix> {{ url = "http://127.0.0.1:{}/f"; sha256 = "{hash}"; name = "direct"; }}"#,
                f.server.port()
            ),
            "--no-out-link",
        ],
    );
    assert!(err.contains("unable to download"), "{err}");
}

#[test]
#[ignore = "needs root, the test users and pasta; CI runs it with --include-ignored"]
fn host_network_must_be_asked_for_and_is_warned_about() {
    let Some(f) = prepared("fixed-output-network = host\n") else {
        return;
    };
    assert!(
        f.d.log().contains(
            "fixed-output-network = host: fixed-output builds share the host's network namespace"
        ),
        "no warning at start: {}",
        f.d.log()
    );
    let got = probe(&f, "host");
    // Landlock's scope (kernel >= 6.12) still refuses the abstract socket.
    assert!(
        got[0] == "abstract: ok" || got[0] == "abstract: Operation not permitted",
        "{got:?}"
    );
    assert_eq!(got[1], "loopback: ok", "{got:?}");
    assert_eq!(got[2], "procnet: seen", "{got:?}");
}

#[test]
#[ignore = "needs root, the test users and pasta; CI runs it with --include-ignored"]
fn missing_pasta_fails_fixed_output_builders_by_name() {
    let Some(f) = prepared("pasta-path = /nonexistent/pasta\n") else {
        return;
    };
    assert!(
        f.d.log()
            .contains("pasta (/nonexistent/pasta) is not installed"),
        "{}",
        f.d.log()
    );
    let expr = r#"derivation { name = "needs-net"; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "echo good > $out" ]; outputHashMode = "flat"; outputHashAlgo = "sha256";
        outputHash = "0000000000000000000000000000000000000000000000000000000000000000"; }"#;
    let err = f.d.client_err("nix-build", &["-E", expr, "--no-out-link"]);
    assert!(
        err.contains("fixed-output builds get their network through pasta, and /nonexistent/pasta is not there"),
        "{err}"
    );
}

/// Under the installed unit's capability bounding set (the daemon holds no
/// capability; only `CAP_SETUID`/`CAP_SETGID` are bounded in for `newuidmap`), pasta
/// still attaches: the capabilities it keeps are the builder's nested namespace's.
#[test]
#[ignore = "needs root, the test users and pasta; CI runs it with --include-ignored"]
fn pasta_works_under_the_units_bounding_set() {
    let Some(mut f) = prepared("") else { return };
    f.d.kill();
    f.d.start_with_the_units_bounding_set();
    let got = probe(&f, "bounded");
    assert_eq!(got[3], "gateway: HTTP/1.0 200 OK", "{got:?}");
    assert_eq!(got[1], "loopback: Connection refused", "{got:?}");
}
