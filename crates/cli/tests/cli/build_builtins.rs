//! The builtin builders (`builtin:fetchurl` through Nix 2.8's own `<nix/fetchurl.nix>`,
//! `builtin:unpack-channel`) built with the real Nix 2.8 client, as an unprivileged
//! user, against `unrooted daemon` run as another unprivileged user with
//! `sandbox = true`; and what a fixed-output build sees of the host's network
//! configuration. The builtins run inside the build's sandbox: a `file://` URL is
//! fetched only when it is visible there (a `sandbox-paths` entry), although the
//! daemon itself could read it. HTTP is served by Python's `http.server` on loopback.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use unrooted_format::{hash::sha256, nar, Hash, HashAlgo, Hasher};
use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};
use unrooted_testkit::http::PythonServer;

struct Fixture {
    d: TestDaemon,
    /// Served over HTTP and visible in the sandbox (a sandbox path).
    served: PathBuf,
    /// Readable by the daemon, but not in the sandbox.
    hidden: PathBuf,
    server: PythonServer,
    port: u16,
}

fn prepared() -> Option<Fixture> {
    if !can_run_sandboxed_builds() {
        return None;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let served = d.inputs().join("served");
    let hidden = d.inputs().join("hidden");
    for dir in [&served, &hidden] {
        fs::create_dir(dir).unwrap();
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
    }
    fs::write(served.join("f"), b"fetched by builtin:fetchurl\n").unwrap();
    fs::write(hidden.join("secret"), b"not for the sandbox\n").unwrap();
    d.set_conf(&format!(
        "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nextra-sandbox-paths = {}\n",
        served.display()
    ));
    d.start();
    let server = PythonServer::start(&served, Some(&d.root().join("http.log")));
    let port = server.port();
    Some(Fixture {
        d,
        served,
        hidden,
        server,
        port,
    })
}

/// Whether the daemon's fixed-output builds run on pasta's network (pasta installed
/// where the daemon finds it, with a usable `/dev/net/tun`); otherwise they share the
/// host's (builtin:fetchurl falls back to it when pasta is missing).
fn on_pasta() -> bool {
    use std::os::unix::fs::PermissionsExt;
    ["/usr/bin/pasta", "/usr/local/bin/pasta"]
        .iter()
        .any(|p| Path::new(p).is_file())
        && fs::metadata("/dev/net/tun").is_ok_and(|m| m.permissions().mode() & 0o006 == 0o006)
}

/// Where a fixed-output build reaches the test's HTTP server on the host's loopback:
/// pasta's gateway, or 127.0.0.1 on the host's network.
fn host() -> &'static str {
    if on_pasta() {
        unrooted_sandbox::PASTA_GATEWAY
    } else {
        "127.0.0.1"
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    Hash::sha256(sha256(bytes)).to_base16()
}

/// `nix-build -E EXPR --no-out-link` as the client.
fn build_expr(d: &TestDaemon, expr: &str) -> String {
    d.client_ok("nix-build", &["-E", expr, "--no-out-link"])
        .trim()
        .to_owned()
}

fn fetchurl(url: &str, hash: &str, extra: &str) -> String {
    format!(r#"import <nix/fetchurl.nix> {{ url = "{url}"; sha256 = "{hash}"; {extra} }}"#)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// `hashed-mirrors`, as in Nix 2.8: a flat-hashed fetch asks each mirror in order for
/// `<mirror>/sha256/<base16 hash>` before its own URL, skips a mirror that fails (and
/// says so in the log), and does not ask the URL once a mirror had it; an executable
/// (recursive) fetch goes to its URL.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn hashed_mirrors_are_asked_first_for_a_flat_hash() {
    let Some(mut f) = prepared() else { return };
    let body = b"served by a hashed mirror\n";
    let hex = sha256_hex(body);
    let dir = f.served.join("mirror/sha256");
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&hex), body).unwrap();
    for d in [f.served.join("mirror"), dir.clone()] {
        fs::set_permissions(&d, fs::Permissions::from_mode(0o755)).unwrap();
    }
    let base = format!("http://{}:{}", host(), f.port);
    f.d.kill();
    f.d.set_conf(&format!(
        "sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nextra-sandbox-paths = {}\nhashed-mirrors = {base}/nowhere {base}/mirror/\n",
        f.served.display()
    ));
    f.d.start();
    let url = format!("{base}/not-served");
    let out = build_expr(&f.d, &fetchurl(&url, &hex, r#"name = "mirrored";"#));
    assert_eq!(fs::read(&out).unwrap(), body);
    let requests = f.server.requests();
    let first = requests.find(&format!("GET /nowhere/sha256/{hex} "));
    let second = requests.find(&format!("GET /mirror/sha256/{hex} "));
    assert!(
        first.is_some() && second.is_some() && first < second,
        "{requests}"
    );
    assert!(!requests.contains("GET /not-served "), "{requests}");
    let log = f.d.client_ok("nix-store", &["-l", &out]);
    assert!(
        log.contains(&format!(
            "hashed mirror '{base}/nowhere/sha256/{hex}' failed"
        )),
        "{log}"
    );

    // Recursive: the mirrors are not asked, the URL is.
    let exe = f.served.join("tool2");
    fs::write(&exe, b"#!/bin/sh\necho tool2\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut bytes = Vec::new();
    nar::dump_path(&exe, &mut bytes).unwrap();
    h.update(&bytes);
    let rec = h.finish().to_base16();
    let url = format!("{base}/tool2");
    let out = build_expr(&f.d, &fetchurl(&url, &rec, "executable = true;"));
    assert_eq!(fs::read(&out).unwrap(), fs::read(&exe).unwrap());
    let requests = f.server.requests();
    assert!(requests.contains("GET /tool2 "), "{requests}");
    assert!(!requests.contains(&format!("/sha256/{rec}")), "{requests}");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fetchurl_downloads_over_http_from_inside_the_sandbox() {
    let Some(f) = prepared() else { return };
    let body = fs::read(f.served.join("f")).unwrap();
    let url = format!("http://{}:{}/f", host(), f.port);
    let out = build_expr(&f.d, &fetchurl(&url, &sha256_hex(&body), ""));
    assert_eq!(fs::read(&out).unwrap(), body);
    assert_eq!(mode(Path::new(&out)), 0o444);
    assert!(
        f.server.requests().contains("GET /f "),
        "{}",
        f.server.requests()
    );
    // Registered as a fixed-output path with its deriver, no references.
    let refs = f.d.client_ok("nix-store", &["-q", "--references", &out]);
    assert_eq!(refs.trim(), "");
    let deriver = f.d.client_ok("nix-store", &["-q", "--deriver", &out]);
    assert!(deriver.trim().ends_with("-f.drv"), "{deriver}");
    // The build log says what was fetched.
    let log = f.d.client_ok("nix-store", &["-l", &out]);
    assert!(log.contains(&format!("downloading '{url}'")), "{log}");

    // A host name is resolved inside the sandbox, through the host's /etc/hosts
    // bound there (another name, so another output path, which must be built). On
    // pasta's network `localhost` is the sandbox's own loopback: the name resolves,
    // and nothing answers there.
    let by_name = format!("http://localhost:{}/f", f.port);
    if on_pasta() {
        let err = f.d.client_err(
            "nix-build",
            &[
                "-E",
                &fetchurl(&by_name, &sha256_hex(&body), r#"name = "by-name";"#),
                "--no-out-link",
            ],
        );
        assert!(err.contains("Connection refused"), "{err}");
        return;
    }
    let again = build_expr(
        &f.d,
        &fetchurl(&by_name, &sha256_hex(&body), r#"name = "by-name";"#),
    );
    assert_ne!(again, out);
    assert_eq!(fs::read(&again).unwrap(), body);
    let log = f.d.client_ok("nix-store", &["-l", &again]);
    assert!(log.contains(&format!("downloading '{by_name}'")), "{log}");
    assert_eq!(f.server.requests().matches("GET /f ").count(), 2);

    // `executable = true` makes it 0555 once canonicalised (recursive hash of the
    // executable file's NAR).
    let exe = f.served.join("tool");
    fs::write(&exe, b"#!/bin/sh\necho tool\n").unwrap();
    fs::set_permissions(&exe, fs::Permissions::from_mode(0o755)).unwrap();
    let mut h = Hasher::new(HashAlgo::Sha256);
    let mut bytes = Vec::new();
    nar::dump_path(&exe, &mut bytes).unwrap();
    h.update(&bytes);
    let url = format!("http://{}:{}/tool", host(), f.port);
    let out = build_expr(
        &f.d,
        &fetchurl(&url, &h.finish().to_base16(), "executable = true;"),
    );
    assert_eq!(mode(Path::new(&out)), 0o555);
    assert_eq!(fs::read(&out).unwrap(), fs::read(&exe).unwrap());
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fetchurl_unpacks_a_nar_plain_or_xz_compressed() {
    let Some(f) = prepared() else { return };
    let tree = f.d.inputs().join("tree");
    fs::create_dir_all(tree.join("bin")).unwrap();
    fs::write(tree.join("README"), b"a tree fetched as a NAR\n").unwrap();
    fs::write(tree.join("bin/run"), b"#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("bin/run"), fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::symlink("bin/run", tree.join("run")).unwrap();
    let mut bytes = Vec::new();
    nar::dump_path(&tree, &mut bytes).unwrap();
    fs::write(f.served.join("tree.nar"), &bytes).unwrap();
    let hash = Hash::sha256(sha256(&bytes)).to_base16();
    let mut urls = vec![format!("http://{}:{}/tree.nar", host(), f.port)];
    // `.xz` at the end of the URL means the NAR is xz-compressed (Nix's rule).
    let xz = Command::new("xz")
        .args(["-k", "-z"])
        .arg(f.served.join("tree.nar"))
        .status();
    match xz {
        Ok(s) if s.success() => urls.push(format!("http://{}:{}/tree.nar.xz", host(), f.port)),
        _ => eprintln!("xz is not installed: only the plain NAR is fetched"),
    }
    for (i, url) in urls.iter().enumerate() {
        let out = PathBuf::from(build_expr(
            &f.d,
            &fetchurl(url, &hash, &format!(r#"unpack = true; name = "tree-{i}";"#)),
        ));
        assert_eq!(
            fs::read(out.join("README")).unwrap(),
            b"a tree fetched as a NAR\n"
        );
        assert_eq!(mode(&out.join("bin/run")), 0o555);
        assert_eq!(mode(&out.join("README")), 0o444);
        assert_eq!(
            fs::read_link(out.join("run")).unwrap(),
            Path::new("bin/run")
        );
    }
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fetchurl_reads_file_urls_only_where_the_sandbox_sees_them() {
    let Some(f) = prepared() else { return };
    let body = fs::read(f.served.join("f")).unwrap();
    let url = format!("file://{}", f.served.join("f").display());
    let out = build_expr(&f.d, &fetchurl(&url, &sha256_hex(&body), ""));
    assert_eq!(fs::read(&out).unwrap(), body);

    // The daemon could read this file, but the builtin runs in the sandbox, where it
    // does not exist.
    let secret = fs::read(f.hidden.join("secret")).unwrap();
    let url = format!("file://{}", f.hidden.join("secret").display());
    let err = f.d.client_err(
        "nix-build",
        &[
            "-E",
            &fetchurl(&url, &sha256_hex(&secret), ""),
            "--no-out-link",
        ],
    );
    assert!(
        err.contains(&format!("unable to download '{url}'")),
        "{err}"
    );
    assert!(err.contains("No such file or directory"), "{err}");

    // With `sandbox = false` (the administrator's choice) the builtin runs in a
    // process of its own on the host, as the store owner, and finds the file.
    let mut d = f.d;
    d.kill();
    d.set_conf("sandbox = false\n");
    d.start();
    let out = build_expr(&d, &fetchurl(&url, &sha256_hex(&secret), ""));
    assert_eq!(fs::read(&out).unwrap(), secret);
    assert!(!d.log().contains("panicked"), "{}", d.log());
}

/// A mismatch fails the build with both hashes; nothing is registered under the path
/// of the specified hash (Nix 2.8 registers the download under the path of the hash
/// it got, which matches its content).
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fetchurl_hash_mismatch_reports_both_hashes_and_never_registers_the_specified_path() {
    let Some(f) = prepared() else { return };
    let body = fs::read(f.served.join("f")).unwrap();
    let url = format!("http://{}:{}/f", host(), f.port);
    let wrong = sha256_hex(b"something else");
    let expr = fetchurl(&url, &wrong, "");
    let out_path =
        f.d.client_ok(
            "nix-instantiate",
            &["--eval", "-E", &format!("({expr}).outPath")],
        )
        .trim()
        .trim_matches('"')
        .to_owned();
    let err = f.d.client_err("nix-build", &["-E", &expr, "--no-out-link"]);
    let specified = Hash::sha256(sha256(b"something else")).to_sri();
    let got = Hash::sha256(sha256(&body)).to_sri();
    assert!(err.contains("hash mismatch"), "{err}");
    assert!(err.contains(&format!("specified: {specified}")), "{err}");
    assert!(err.contains(&format!("got:    {got}")), "{err}");
    assert!(
        !Path::new(&out_path).exists(),
        "{out_path} left in the store"
    );
    f.d.client_err("nix-store", &["--check-validity", &out_path]);
    f.d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fetchurl_without_a_fixed_output_is_refused_before_any_fetch() {
    let Some(f) = prepared() else { return };
    let expr = format!(
        r#"derivation {{ name = "not-fixed"; system = "builtin"; builder = "builtin:fetchurl"; url = "http://127.0.0.1:{}/f"; }}"#,
        f.port
    );
    let err = f.d.client_err("nix-build", &["-E", &expr, "--no-out-link"]);
    assert!(
        err.contains("'builtin:fetchurl' must be a fixed-output derivation"),
        "{err}"
    );
    assert!(
        !f.server.requests().contains("GET /f "),
        "{}",
        f.server.requests()
    );
    // An unknown builtin is refused by name.
    let err = f.d.client_err(
        "nix-build",
        &[
            "-E",
            r#"derivation { name = "nope"; system = "builtin"; builder = "builtin:nope"; }"#,
            "--no-out-link",
        ],
    );
    assert!(err.contains("unsupported builtin builder 'nope'"), "{err}");
}

/// Writes a tarball with Python's `tarfile` (which writes names as given, `..` and
/// all): `spec` is Python code adding members to `t`.
fn python_tar(path: &Path, mode: &str, spec: &str) {
    let script = format!(
        "import tarfile, io\n\
         def add(t, name, data=b'', kind=tarfile.REGTYPE, link=''):\n\
         \x20   i = tarfile.TarInfo(name); i.type = kind; i.linkname = link; i.size = len(data); i.mode = 0o644\n\
         \x20   t.addfile(i, io.BytesIO(data))\n\
         with tarfile.open({path:?}, {mode:?}) as t:\n{spec}\n",
        path = path.to_str().unwrap(),
    );
    let status = Command::new("python3")
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success(), "{script}");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn unpack_channel_unpacks_into_the_channel_name_and_refuses_hostile_tarballs() {
    let Some(f) = prepared() else { return };
    let good = f.d.inputs().join("nixexprs.tar.xz");
    python_tar(
        &good,
        "w:xz",
        "    add(t, 'nixexprs-22.05/', kind=tarfile.DIRTYPE)\n\
         \x20   add(t, 'nixexprs-22.05/default.nix', b'{ }: \"channel\"\\n')\n\
         \x20   add(t, 'nixexprs-22.05/lib/x.nix', b'1\\n')\n\
         \x20   add(t, 'nixexprs-22.05/link', kind=tarfile.SYMTYPE, link='lib/x.nix')",
    );
    let src =
        f.d.client_ok("nix-store", &["--add", good.to_str().unwrap()]);
    let expr = |src: &str| {
        format!(
            r#"derivation {{ name = "channel"; system = builtins.currentSystem; builder = "builtin:unpack-channel"; src = builtins.storePath "{}"; channelName = "nixpkgs"; }}"#,
            src.trim()
        )
    };
    let out = PathBuf::from(build_expr(&f.d, &expr(&src)));
    assert_eq!(
        fs::read(out.join("nixpkgs/default.nix")).unwrap(),
        b"{ }: \"channel\"\n"
    );
    assert_eq!(
        fs::read_link(out.join("nixpkgs/link")).unwrap(),
        Path::new("lib/x.nix")
    );
    assert_eq!(mode(&out.join("nixpkgs/lib/x.nix")), 0o444);
    assert_eq!(mode(&out.join("nixpkgs")), 0o555);
    // The tarball is a reference of the channel only if named in it: it is not.
    let refs =
        f.d.client_ok("nix-store", &["-q", "--references", out.to_str().unwrap()]);
    assert_eq!(refs.trim(), "");

    for (name, spec, why) in [
        (
            "dotdot.tar.gz",
            "    add(t, 'c/', kind=tarfile.DIRTYPE)\n    add(t, 'c/../../escape', b'x')",
            "a '..' component",
        ),
        (
            "abs.tar.gz",
            "    add(t, '/etc/evil', b'x')",
            "an absolute path",
        ),
        (
            "link.tar.gz",
            "    add(t, 'c/', kind=tarfile.DIRTYPE)\n    add(t, 'c/l', kind=tarfile.SYMTYPE, link='../../../etc/passwd')",
            "a symlink pointing out of the tree",
        ),
        (
            "dev.tar.gz",
            "    add(t, 'c/', kind=tarfile.DIRTYPE)\n    add(t, 'c/null', kind=tarfile.CHRTYPE)",
            "a device, FIFO or other special file",
        ),
    ] {
        let bad = f.d.inputs().join(name);
        python_tar(&bad, "w:gz", spec);
        let src = f.d.client_ok("nix-store", &["--add", bad.to_str().unwrap()]);
        let err = f.d.client_err("nix-build", &["-E", &expr(&src), "--no-out-link"]);
        assert!(err.contains("refusing entry"), "{name}: {err}");
        assert!(err.contains(why), "{name}: {err}");
    }
    f.d.assert_store_clean();
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn fixed_output_builds_see_the_hosts_resolver_files_and_others_do_not() {
    let Some(f) = prepared() else { return };
    let Ok(resolv) = fs::read("/etc/resolv.conf") else {
        unrooted_testkit::skip("this host has no /etc/resolv.conf");
        return;
    };
    // On pasta's network, the host's file with pasta's gateway as the only resolver.
    let mut want = if on_pasta() {
        unrooted_sandbox::pasta_resolv_conf(&resolv)
    } else {
        resolv.clone()
    };
    want.extend_from_slice(b"hosts: files dns\nservices: files\n");
    let fod = format!(
        r#"derivation {{ name = "sees-resolv"; system = builtins.currentSystem; builder = "/bin/sh";
             args = [ "-c" "cat /etc/resolv.conf /etc/nsswitch.conf > $out" ];
             outputHashMode = "flat"; outputHashAlgo = "sha256"; outputHash = "{}"; }}"#,
        sha256_hex(&want)
    );
    // The hash is checked: the output is exactly the host's bytes and Nix's nsswitch.
    let out = build_expr(&f.d, &fod);
    assert_eq!(fs::read(out).unwrap(), want);

    let sandboxed = r#"derivation { name = "no-resolv"; system = builtins.currentSystem; builder = "/bin/sh";
        args = [ "-c" "for f in resolv.conf services nsswitch.conf; do if [ -e /etc/$f ]; then echo $f present; else echo $f absent; fi; done > $out; cat /etc/hosts >> $out" ]; }"#;
    let out = build_expr(&f.d, sandboxed);
    assert_eq!(
        fs::read_to_string(out).unwrap(),
        "resolv.conf absent\nservices absent\nnsswitch.conf absent\n127.0.0.1 localhost\n::1 localhost\n"
    );
}

/// `Key:\tvalue` of `/proc/<pid>/status`.
fn status_field(pid: u32, key: &str) -> Option<String> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// The descriptors `pid` has open.
fn open_fds(pid: u32) -> Vec<u32> {
    let mut fds: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    fds.sort_unstable();
    fds
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn a_builtin_runs_as_the_sandboxed_init_with_every_lock_in_place() {
    let Some(f) = prepared() else { return };
    // The builtin blocks opening this FIFO (in a sandbox path) until the test writes
    // to it, so the process can be looked at while it runs.
    let fifo = f.served.join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    fs::set_permissions(&fifo, fs::Permissions::from_mode(0o644)).unwrap();
    let body = b"through a fifo\n";
    let url = format!("file://{}", fifo.display());
    let client =
        f.d.client("nix-build")
            .args([
                "-E",
                &fetchurl(&url, &sha256_hex(body), ""),
                "--no-out-link",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();

    // The sandbox's init: PID 1 of its namespace, a descendant of the daemon. Once
    // it has closed every inherited descriptor, it is calling the builtin.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let init = loop {
        let found = TestDaemon::descendants(f.d.pid()).into_iter().find(|&p| {
            status_field(p, "NSpid").is_some_and(|ns| ns.split_whitespace().last() == Some("1"))
                && open_fds(p) == [0, 1, 2]
        });
        if let Some(p) = found {
            break p;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no sandbox init calling the builtin appeared: {}",
            f.d.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let uid = status_field(init, "Uid").unwrap();
    let uids: Vec<&str> = uid.split_whitespace().collect();
    assert!(
        uids.iter().all(|u| *u == uids[0] && *u != "0"),
        "Uid: {uid}"
    );
    // In the id-range mode (subordinate ids are set up for the test daemon), the
    // builtin is not even the store owner.
    let daemon_uid = f.d.daemon_uid.to_string();
    assert_ne!(uids[0], daemon_uid, "the builtin runs as the store owner");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        assert_eq!(
            status_field(init, cap).as_deref(),
            Some("0000000000000000"),
            "{cap}"
        );
    }
    assert_eq!(status_field(init, "NoNewPrivs").as_deref(), Some("1"));
    assert_eq!(status_field(init, "Seccomp").as_deref(), Some("2"));
    // Its own user namespace (the nested one that locks the mounts), not the daemon's.
    assert_ne!(
        fs::read_link(format!("/proc/{init}/ns/user")).unwrap(),
        fs::read_link(format!("/proc/{}/ns/user", f.d.pid())).unwrap()
    );
    assert_ne!(
        fs::read_link(format!("/proc/{init}/ns/mnt")).unwrap(),
        fs::read_link(format!("/proc/{}/ns/mnt", f.d.pid())).unwrap()
    );

    fs::OpenOptions::new()
        .write(true)
        .open(&fifo)
        .and_then(|mut w| std::io::Write::write_all(&mut w, body))
        .unwrap();
    let out = client.wait_with_output().unwrap();
    let path = f.d.expect_ok("nix-build through the fifo", &out);
    assert_eq!(fs::read(path.trim()).unwrap(), body);
}
