//! The worker protocol at the versions the Nix 2.8 client does not speak (1.21 …
//! 1.38), spoken byte by byte by an untrusted peer (`nobody`, injected), and the
//! daemon's robustness against stalled clients and clients hanging up at every byte.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use unrooted_format::{FileIngestionMethod, HashAlgo, StoreDir, StorePathName};
use unrooted_protocol::client::Client;
use unrooted_protocol::handshake::TrustedFlag;
use unrooted_protocol::path_info::{UnkeyedValidPathInfo, ValidPathInfo};
use unrooted_protocol::request::{AddToStoreNar, ClientSettings, ContentAddressMethod};
use unrooted_protocol::stderr::StderrMessage;
use unrooted_protocol::{wire, ProtocolError, ProtocolVersion, Request, WireContext};

use crate::harness::{nobody, Harness, Mode};

fn daemon(conf: &str) -> Option<Harness> {
    let h = Harness::with_conf(Mode::Unsandboxed, conf)?;
    h.nix("nix-store")?;
    h.nix("nix-hash")?;
    Some(h)
}

/// A raw connection from `nobody`: a reader and a writer on the same socket.
fn relay(h: &Harness) -> (UnixStream, UnixStream) {
    let s = h.daemon().connect_as(nobody()).expect("connecting");
    (s.try_clone().unwrap(), s)
}

fn connect(h: &Harness, v: ProtocolVersion) -> (Client<UnixStream, UnixStream>, UnixStream) {
    let (r, w) = relay(h);
    let raw = w.try_clone().unwrap();
    let client = Client::handshake(r, w, h.store_dir(), v).expect("handshake");
    (client, raw)
}

fn nar_of(path: &Path) -> Vec<u8> {
    let mut nar = Vec::new();
    unrooted_format::nar::dump_path(path, &mut nar).unwrap();
    nar
}

/// The path Nix computes for `file` added by `nix-store --add` (recursive) or
/// `--add-fixed sha256` (flat), from hashes `nix-hash` computes.
fn nix_fixed_path(h: &Harness, file: &Path, recursive: bool) -> String {
    let f = file.to_str().unwrap();
    let name = file.file_name().unwrap().to_str().unwrap();
    let hash = if recursive {
        h.local_ok("nix-hash", &["--type", "sha256", "--base32", f])
    } else {
        h.local_ok("nix-hash", &["--type", "sha256", "--flat", "--base32", f])
    };
    let mut args = vec!["--print-fixed-path"];
    if recursive {
        args.push("--recursive");
    }
    args.extend(["sha256", hash.trim(), name]);
    h.local_ok("nix-store", &args).trim().to_owned()
}

const VERSIONS: [u8; 11] = [21, 22, 23, 24, 25, 26, 32, 34, 35, 37, 38];

#[test]
fn every_protocol_version() {
    let Some(d) = daemon("require-sigs = false") else {
        return;
    };
    let dir = d.store_dir();
    for minor in VERSIONS {
        let (mut c, mut raw) = connect(&d, ProtocolVersion::new(1, minor));
        let info = c.server_info().clone();
        // The daemon announces 1.38, the newest: every client gets its own version.
        assert_eq!(info.server_version, ProtocolVersion::new(1, 38));
        let asked = minor;
        let v = ProtocolVersion::new(1, minor);
        assert_eq!(info.version, v);
        assert_eq!(info.daemon_version.is_some(), minor >= 33, "1.{minor}");
        let want_trust = (minor >= 35).then_some(TrustedFlag::NotTrusted);
        assert_eq!(info.trust, want_trust, "1.{minor}");

        // AddToStore, recursive and flat, in the form of this version.
        let file = d.inputs().join(format!("hello-1.{asked}"));
        fs::write(&file, format!("hello world {asked}\n")).unwrap();
        let nar = nar_of(&file);
        let name = StorePathName::new(file.file_name().unwrap().to_str().unwrap()).unwrap();
        for recursive in [true, false] {
            let method = ContentAddressMethod::Fixed {
                method: if recursive {
                    FileIngestionMethod::Recursive
                } else {
                    FileIngestionMethod::Flat
                },
                algo: HashAlgo::Sha256,
            };
            let got = if v.has_framed_add_to_store() {
                let data = if recursive {
                    nar.clone()
                } else {
                    fs::read(&file).unwrap()
                };
                let info = c
                    .add_to_store(name.clone(), method, BTreeSet::new(), &mut data.as_slice())
                    .unwrap_or_else(|e| panic!("1.{minor}: {e}"));
                info.path
            } else {
                c.send(&Request::AddToStore {
                    name: name.clone(),
                    method,
                    references: BTreeSet::new(),
                    repair: false,
                })
                .unwrap();
                raw.write_all(&nar).unwrap();
                c.process_stderr(None)
                    .unwrap_or_else(|e| panic!("1.{minor}: {e}"));
                let dir = c.context().store_dir.clone();
                wire::read_path(c.reader(), &dir, "path").unwrap()
            };
            assert_eq!(
                dir.display(&got),
                nix_fixed_path(&d, &file, recursive),
                "1.{minor} recursive={recursive}"
            );
            assert!(c.is_valid_path(&got).unwrap());
            let qpi = c.query_path_info(&got).unwrap().expect("valid");
            if recursive {
                assert_eq!(qpi.nar_hash, HashAlgo::Sha256.digest(&nar), "1.{minor}");
                assert_eq!(qpi.nar_size, nar.len() as u64);
            }
        }
        let bogus = dir
            .parse_path(&format!("{}/{}-nothere", dir, "0".repeat(32)))
            .unwrap();
        assert!(!c.is_valid_path(&bogus).unwrap());
        assert_eq!(
            c.query_path_info(&bogus).ok().flatten(),
            None::<UnkeyedValidPathInfo>
        );

        // AddToStoreNar: pulled with STDERR_READ before 1.23, framed after.
        let imported = d.inputs().join(format!("imported-1.{asked}"));
        fs::write(&imported, format!("imported {asked}\n")).unwrap();
        let inar = nar_of(&imported);
        let path = dir
            .parse_path(&format!("{}/{}{asked:02}-imported", dir, "1".repeat(30)))
            .unwrap();
        let mut args = AddToStoreNar {
            info: ValidPathInfo {
                path: path.clone(),
                info: UnkeyedValidPathInfo {
                    deriver: None,
                    nar_hash: HashAlgo::Sha256.digest(b"not the nar"),
                    references: BTreeSet::new(),
                    registration_time: 0,
                    nar_size: inar.len() as u64,
                    ultimate: false,
                    signatures: BTreeSet::new(),
                    ca: None,
                },
            },
            repair: false,
            dont_check_sigs: false,
        };
        match c.add_to_store_nar(&args, &mut inar.as_slice()) {
            Err(ProtocolError::Remote {
                message,
                exit_status,
                ..
            }) => {
                assert!(
                    message.contains("hash mismatch importing path"),
                    "1.{minor}: {message}"
                );
                assert_eq!(exit_status, 1);
            }
            other => panic!("1.{minor}: wrong hash accepted: {other:?}"),
        }
        assert!(!c.is_valid_path(&path).unwrap(), "1.{minor}");
        args.info.info.nar_hash = HashAlgo::Sha256.digest(&inar);
        c.add_to_store_nar(&args, &mut inar.as_slice())
            .unwrap_or_else(|e| panic!("1.{minor}: {e}"));
        assert!(c.is_valid_path(&path).unwrap(), "1.{minor}");

        // A recoverable error (the request was read whole): the session goes on.
        match c.call(&Request::QueryDerivationOutputMap(bogus.clone())) {
            Err(ProtocolError::Remote { message, .. }) => {
                assert!(message.contains("is not valid"), "1.{minor}: {message}")
            }
            other => panic!("1.{minor}: {other:?}"),
        }
        assert!(c.is_valid_path(&path).unwrap());
        if minor >= 36 {
            let root = d
                .root()
                .join("home/perm-root")
                .to_string_lossy()
                .into_owned();
            match c.call(&Request::AddPermRoot {
                path: path.clone(),
                gc_root: root,
            }) {
                Err(ProtocolError::Remote { message, .. }) => {
                    assert!(
                        message.contains("not privileged to create perm roots"),
                        "{message}"
                    )
                }
                other => panic!("1.{minor}: AddPermRoot: {other:?}"),
            }
        }

        // A request whose argument is invalid but was read whole: one error frame in
        // this version's format, and the session goes on (the stream is in step).
        let mut req = Vec::new();
        wire::write_u64(&mut req, 1).unwrap();
        wire::write_bytes(&mut req, b"/etc/passwd").unwrap();
        raw.write_all(&req).unwrap();
        let cx = c.context().clone();
        match StderrMessage::read(c.reader(), &cx).unwrap() {
            StderrMessage::Error(e) => {
                assert!(
                    e.message.contains("/etc/passwd"),
                    "1.{minor}: {}",
                    e.message
                );
                assert_eq!(e.exit_status, 1);
                if minor >= 26 {
                    assert!(!e.message.starts_with("error:"), "{}", e.message);
                }
            }
            other => panic!("1.{minor}: {other:?}"),
        }
        assert!(c.is_valid_path(&path).unwrap(), "1.{minor} after the error");
        drop(raw);
        drop(c);
    }
    d.assert_store_clean();
}

/// The bytes a Nix 2.8 client sends for a handshake, SetOptions and an AddToStore of
/// `nar`, as one buffer.
fn session_bytes(dir: &StoreDir, nar: &[u8]) -> Vec<u8> {
    let v = ProtocolVersion::NIX_2_8;
    let cx = WireContext::new(v, dir.clone());
    let mut b = Vec::new();
    for word in [0x6e69_7863, v.to_wire(), 0, 0] {
        wire::write_u64(&mut b, word).unwrap();
    }
    Request::SetOptions(ClientSettings::default())
        .write(&mut b, &cx)
        .unwrap();
    Request::AddToStore {
        name: StorePathName::new("cut").unwrap(),
        method: ContentAddressMethod::Fixed {
            method: FileIngestionMethod::Recursive,
            algo: HashAlgo::Sha256,
        },
        references: BTreeSet::new(),
        repair: false,
    }
    .write(&mut b, &cx)
    .unwrap();
    wire::write_u64(&mut b, nar.len() as u64).unwrap();
    b.extend_from_slice(nar);
    wire::write_u64(&mut b, 0).unwrap();
    b
}

#[test]
fn stalled_and_vanishing_clients() {
    let Some(d) = daemon("") else { return };
    let dir = d.store_dir();
    let cut = d.inputs().join("cut");
    fs::write(&cut, "cut short\n").unwrap();
    let session = session_bytes(&dir, &nar_of(&cut));

    // One client stalls mid-request (inside a frame), another after the magic.
    let (_r1, mut w1) = relay(&d);
    w1.write_all(&session[..session.len() - 20]).unwrap();
    let (_r2, mut w2) = relay(&d);
    w2.write_all(&session[..8]).unwrap();
    // Meanwhile others come and go.
    let files: Vec<_> = (0..8)
        .map(|i| {
            let f = d.inputs().join(format!("busy-{i}"));
            fs::write(&f, format!("busy {i}\n")).unwrap();
            f
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|s| {
        for f in &files {
            let d = &d;
            s.spawn(move || {
                for _ in 0..3 {
                    let p = d.nix_ok("nix-store", &["--add", f.to_str().unwrap()]);
                    assert_eq!(p.trim(), nix_fixed_path(d, f, true));
                }
            });
        }
    });
    assert!(
        start.elapsed() < Duration::from_secs(60),
        "{:?}",
        start.elapsed()
    );
    drop((w1, w2));

    // A client hanging up after every prefix of a whole session.
    for n in 0..session.len() {
        let (mut r, mut w) = relay(&d);
        w.write_all(&session[..n]).unwrap();
        w.shutdown(std::net::Shutdown::Write).unwrap();
        drop(w);
        let mut sink = Vec::new();
        // The daemon closes its end: the connection is over.
        std::io::Read::read_to_end(&mut r, &mut sink).unwrap();
    }
    // Still serving.
    let p = d.nix_ok("nix-store", &["--add", cut.to_str().unwrap()]);
    assert_eq!(p.trim(), nix_fixed_path(&d, &cut, true));
    let mut want: Vec<String> = files.iter().map(|f| nix_fixed_path(&d, f, true)).collect();
    want.push(p.trim().to_owned());
    want.sort();
    assert_eq!(d.valid_paths_local(), want);
    d.assert_store_clean();
}
