//! Issue 21, item 3: S3-compatible binary caches against a real local S3 server
//! (`moto` in server mode, from PyPI, see scripts/setup.sh). The store owner uploads
//! a closure with `unrooted copy --to s3://…` (signed, xz); the daemon, as an
//! unprivileged user with the owner's credentials in its environment, substitutes it
//! for a client with signatures checked; a tampered narinfo or NAR is refused; an S3
//! server that answers 500 or never answers gives a clear error in bounded time and
//! leaves the store untouched.

use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::chown;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  leaf = mk "s3-leaf" "echo leaf > $out";
  top = mk "s3-top" "echo ${leaf} > $out";
}
"#;

const AWS: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "testing"),
    ("AWS_SECRET_ACCESS_KEY", "testing"),
];

/// `moto_server` on a loopback port, killed on drop.
struct Moto {
    child: Child,
    port: u16,
    /// The Python moto runs in (boto3 comes with it).
    python: PathBuf,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn moto_exe() -> Option<PathBuf> {
    let found = std::env::var_os("UNROOTED_MOTO_SERVER")
        .map(PathBuf::from)
        .or_else(|| {
            let p = PathBuf::from("/opt/unrooted-moto/bin/moto_server");
            p.exists().then_some(p)
        });
    unrooted_testkit::require(
        found.is_some(),
        "moto_server is not installed (scripts/setup.sh puts it in /opt/unrooted-moto)",
    )
    .then_some(())?;
    found
}

impl Moto {
    fn start(exe: &Path, log: &Path) -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(exe)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .expect("starting moto_server");
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        // The bucket (moto checks no signature on this).
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        write!(
            s,
            "PUT /cache HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut reply = String::new();
        s.read_to_string(&mut reply).unwrap();
        assert!(
            reply.starts_with("HTTP/1.1 200"),
            "creating the bucket: {reply}"
        );
        let python = exe.with_file_name("python3");
        Self {
            child,
            port,
            python,
        }
    }

    fn url(&self) -> String {
        format!(
            "s3://cache?endpoint=http://127.0.0.1:{}&region=us-east-1",
            self.port
        )
    }

    /// Runs boto3 (installed with moto) against the server: `op` is `get` (the
    /// object goes to stdout) or `put` (from stdin).
    fn boto(&self, op: &str, key: &str, body: &[u8]) -> Vec<u8> {
        let script = format!(
            "import boto3, sys\n\
             c = boto3.client('s3', endpoint_url='http://127.0.0.1:{}', region_name='us-east-1', \
             aws_access_key_id='testing', aws_secret_access_key='testing')\n\
             if sys.argv[1] == 'get':\n    \
               sys.stdout.buffer.write(c.get_object(Bucket='cache', Key=sys.argv[2])['Body'].read())\n\
             else:\n    \
               c.put_object(Bucket='cache', Key=sys.argv[2], Body=sys.stdin.buffer.read())\n",
            self.port
        );
        let mut child = Command::new(&self.python)
            .args(["-c", &script, op, key])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(body).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "boto3 {op} {key}");
        out.stdout
    }

    fn get(&self, key: &str) -> Vec<u8> {
        self.boto("get", key, b"")
    }

    fn put(&self, key: &str, body: &[u8]) {
        self.boto("put", key, body);
    }
}

fn hash_part(p: &str) -> String {
    Path::new(p).file_name().unwrap().to_str().unwrap()[..32].to_owned()
}

fn owner_dir(d: &TestDaemon, name: &str) -> PathBuf {
    let p = d.root().join(name);
    fs::create_dir(&p).unwrap();
    chown(&p, Some(d.daemon_uid), None).unwrap();
    p
}

/// A server on loopback that answers every request with 500, or (`stall`) accepts
/// and never answers.
fn bad_server(stall: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in listener.incoming() {
            let Ok(mut s) = s else { continue };
            if stall {
                held.push(s);
                continue;
            }
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = s.write_all(
                b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
    });
    port
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn upload_to_s3_then_substitute_with_signatures_checked() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-build").is_none() {
        return;
    }
    let Some(exe) = moto_exe() else { return };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let moto = Moto::start(&exe, &d.root().join("moto.log"));
    let url = moto.url();

    // The store owner builds the closure and uploads it, signed.
    let expr = d.inputs().join("s3.nix");
    fs::write(&expr, EXPR).unwrap();
    let expr = expr.to_str().unwrap().to_owned();
    let keys = owner_dir(&d, "keys");
    let (sk, pk) = (keys.join("secret"), keys.join("public"));
    d.owner_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-s3-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let top = d
        .owner_ok("nix-build", &[&expr, "-A", "top", "--no-out-link"])
        .trim()
        .to_owned();
    let leaf = d
        .owner_ok("nix-store", &["-q", "--references", &top])
        .trim()
        .to_owned();
    let upload = |d: &TestDaemon| {
        let mut cmd = d.owner_local(env!("CARGO_BIN_EXE_unrooted"));
        cmd.envs(AWS)
            .args(["copy", "--to", &url, "--secret-key-file"])
            .arg(&sk)
            .arg(&top);
        let out = cmd.output().unwrap();
        d.expect_ok("unrooted copy --to s3://", &out);
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let said = upload(&d);
    assert!(said.contains("copied 2 paths"), "{said}");
    let said = upload(&d);
    assert!(
        said.contains("copied 0 paths") && said.contains("2 already there"),
        "{said}"
    );
    let narinfo = String::from_utf8(moto.get(&format!("{}.narinfo", hash_part(&top)))).unwrap();
    assert!(
        narinfo.contains("Compression: xz") && narinfo.contains("Sig: test-s3-1:"),
        "{narinfo}"
    );
    assert!(String::from_utf8(moto.get("nix-cache-info"))
        .unwrap()
        .contains(&format!("StoreDir: {}", d.store_dir().display())));
    d.owner_ok("nix-store", &["--delete", &top, &leaf]);

    // The daemon substitutes the closure from it, with the owner's credentials.
    let public_key = fs::read_to_string(&pk).unwrap().trim().to_owned();
    let start = |d: &mut TestDaemon, url: &str, extra: &str| {
        d.kill();
        d.set_conf(&format!(
            "substituters = {url}\ntrusted-public-keys = {public_key}\nnarinfo-cache-negative-ttl = 0\nnarinfo-cache-positive-ttl = 0\n{extra}"
        ));
        d.set_daemon_env(&AWS);
        d.start();
    };
    let valid = |d: &TestDaemon, p: &str| d.valid_paths_local().iter().any(|v| v == p);

    // Tampered: a narinfo whose signed fields changed (a reference dropped) is
    // refused.
    let ni_key = format!("{}.narinfo", hash_part(&leaf));
    let text = String::from_utf8(moto.get(&ni_key)).unwrap();
    let top_key = format!("{}.narinfo", hash_part(&top));
    let good_top = moto.get(&top_key);
    let bad = String::from_utf8(good_top.clone())
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("References:") {
                "References: "
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    moto.put(&top_key, bad.as_bytes());
    start(&mut d, &url, "");
    let err = d.client_err("nix-store", &["-r", &top]);
    assert!(err.contains("lacks a valid signature"), "{err}");
    assert!(!valid(&d, &top));
    moto.put(&top_key, &good_top);

    // Tampered: a NAR swapped for another valid one (longer: refused by its size
    // before its hash is known).
    let nar_key = text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap()
        .to_owned();
    let good_nar = moto.get(&nar_key);
    let top_text = String::from_utf8(moto.get(&format!("{}.narinfo", hash_part(&top)))).unwrap();
    let top_nar = top_text
        .lines()
        .find_map(|l| l.strip_prefix("URL: "))
        .unwrap();
    moto.put(&nar_key, &moto.get(top_nar));
    start(&mut d, &url, "");
    let err = d.client_err("nix-store", &["-r", &leaf]);
    assert!(
        err.contains(&format!("importing path '{leaf}'")) && err.contains("NAR is longer"),
        "{err}"
    );
    assert!(!valid(&d, &leaf));
    moto.put(&nar_key, &good_nar);

    // Intact: substituted, with the cache's signature, nothing built.
    start(&mut d, &url, "");
    let out = d.client("nix-store").args(["-r", &top]).output().unwrap();
    let stdout = d.expect_ok("nix-store -r top", &out);
    assert_eq!(stdout.trim(), top);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("copying path"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let info = d.client_ok("nix", &["path-info", "--sigs", &top]);
    assert!(info.contains("test-s3-1:"), "{info}");
    assert_eq!(fs::read_to_string(&top).unwrap().trim(), leaf);
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn s3_servers_that_fail_or_stall_give_a_clear_error_in_bounded_time() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    // Any path name: the cache is asked for its narinfo.
    let wanted = format!(
        "{}/0123456789abcdfghijklmnpqrsvwxyz-wanted",
        d.store_dir().display()
    );
    for (stall, what) in [(false, "HTTP status 500"), (true, "timed out")] {
        let port = bad_server(stall);
        let url = format!("s3://cache?endpoint=http://127.0.0.1:{port}&region=us-east-1");
        d.kill();
        d.set_conf(&format!(
            "substituters = {url}\nstalled-download-timeout = 2\ndownload-attempts = 2\nconnect-timeout = 2\n"
        ));
        d.set_daemon_env(&AWS);
        d.start();
        let t = Instant::now();
        let err = d.client_err("nix-store", &["-r", &wanted]);
        let took = t.elapsed();
        assert!(took < Duration::from_secs(30), "took {took:?}: {err}");
        assert!(
            err.contains(&format!("127.0.0.1:{port}")) || err.contains("s3://cache"),
            "{err}"
        );
        assert!(err.contains(what), "{err}");
        assert!(d.valid_paths_local().is_empty());
        eprintln!("stall={stall}: {took:?}: {err}");
    }
    d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn outputs_built_here_are_uploaded_after_the_build_and_failures_lose_nothing() {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-build").is_none() {
        return;
    }
    let Some(exe) = moto_exe() else { return };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let moto = Moto::start(&exe, &d.root().join("moto.log"));
    let url = format!("{}&compression=zstd", moto.url());
    let expr = d.inputs().join("s3.nix");
    fs::write(&expr, EXPR).unwrap();
    let expr = expr.to_str().unwrap().to_owned();
    let keys = owner_dir(&d, "keys");
    let (sk, pk) = (keys.join("secret"), keys.join("public"));
    d.owner_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-s3-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    let public_key = fs::read_to_string(&pk).unwrap().trim().to_owned();

    // An S3 server that fails every request: the build's result is unaffected.
    let port = bad_server(false);
    d.set_conf(&format!(
        "post-build-upload = s3://cache?endpoint=http://127.0.0.1:{port}\nsecret-key-files = {}\n",
        sk.display()
    ));
    d.set_daemon_env(&AWS);
    d.start();
    let t = Instant::now();
    let leaf = d.client_ok("nix-build", &[&expr, "-A", "leaf", "--no-out-link"]);
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(fs::read_to_string(leaf.trim()).unwrap(), "leaf\n");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !d.log().contains("post-build-upload: uploading to") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(d.valid_paths_local().iter().any(|p| p == leaf.trim()));

    // A working one: the closure lands there, signed, after the build.
    d.kill();
    d.reset_store();
    d.set_conf(&format!(
        "post-build-upload = {url}\nsecret-key-files = {}\n",
        sk.display()
    ));
    d.start();
    let top = d
        .client_ok("nix-build", &[&expr, "-A", "top", "--no-out-link"])
        .trim()
        .to_owned();
    let key = format!("{}.narinfo", hash_part(&top));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("post-build-upload: ") || !d.log().contains("uploaded to") {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    let narinfo = String::from_utf8(moto.get(&key)).unwrap();
    assert!(
        narinfo.contains("Compression: zstd") && narinfo.contains("Sig: test-s3-1:"),
        "{narinfo}"
    );

    // A second store substitutes the closure from it, signatures checked.
    d.kill();
    d.reset_store();
    d.set_conf(&format!(
        "substituters = {url}\ntrusted-public-keys = {public_key}\n"
    ));
    d.start();
    let out = d.client_ok("nix-store", &["-r", &top]);
    assert_eq!(out.trim(), top);
    let info = d.client_ok("nix", &["path-info", "--sigs", "-r", &top]);
    assert_eq!(info.matches("test-s3-1:").count(), 2, "{info}");
    d.assert_store_clean();
}
