//! The client against our own server functions over a socket pair, and against a
//! real `nix-daemon --stdio` (Nix 2.8) with a private store.

use crate::common;

use std::collections::BTreeSet;
use std::io::{BufReader, BufWriter};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};

use common::vector;
use unrooted_format::hash::{sha256, Hash, HashAlgo};
use unrooted_format::{ContentAddress, FileIngestionMethod, StoreDir, StorePathName};
use unrooted_protocol::client::Client;
use unrooted_protocol::handshake::{ServerHello, TrustedFlag};
use unrooted_protocol::request::{BuildMode, ClientSettings, ContentAddressMethod};
use unrooted_protocol::stderr::{ActivityType, DaemonError, Verbosity};
use unrooted_protocol::wire::{self, FramedReader, Limits};
use unrooted_protocol::{
    read_request, server_handshake, DerivedPath, ProtocolError, ProtocolVersion, Request,
    StderrWriter, WireContext,
};

/// The 128-byte NAR of a file `hello world\n` (`docs/spec/worker-protocol.md` A.3).
fn hello_nar() -> Vec<u8> {
    vector("a3-add-to-store-request.hex")[0x50..0xd0].to_vec()
}

/// A toy server: answers IsValidPath with true for one path, fails everything else
/// with a recoverable error, and drains framed bodies.
fn serve(stream: UnixStream, store_dir: StoreDir, valid: unrooted_format::StorePath) {
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = BufWriter::new(stream);
    let hello = ServerHello {
        version: ProtocolVersion::RECOMMENDED,
        daemon_version: "unrooted-test".into(),
        trust: TrustedFlag::Trusted,
        features: BTreeSet::new(),
    };
    let client = server_handshake(&mut r, &mut w, &hello, &Limits::default()).unwrap();
    let cx = WireContext::new(client.version, store_dir);
    let mut log = StderrWriter::new(w, client.version);
    log.last().unwrap();
    log.flush().unwrap();
    loop {
        let req = match read_request(&mut r, &cx) {
            Ok(Some(req)) => req,
            Ok(None) => return,
            Err(e) => {
                if let Some(body) = e.body_to_drain() {
                    assert_eq!(body, unrooted_protocol::BodyKind::Framed);
                    FramedReader::new(&mut r, cx.limits.max_frame)
                        .drain()
                        .unwrap();
                }
                log.error(&DaemonError::from(&e)).unwrap();
                if e.is_recoverable() {
                    continue;
                }
                return;
            }
        };
        if req.body(cx.version) == Some(unrooted_protocol::BodyKind::Framed) {
            FramedReader::new(&mut r, cx.limits.max_frame)
                .drain()
                .unwrap();
        }
        match req {
            Request::SetOptions(s) => {
                log.set_verbosity(s.verbosity);
                log.log(Verbosity::Info, "options set").unwrap();
                log.last().unwrap();
            }
            Request::IsValidPath(p) => {
                let id = log
                    .start_activity(
                        Verbosity::Debug,
                        ActivityType::QUERY_PATH_INFO,
                        "checking",
                        vec![],
                        None,
                    )
                    .unwrap();
                log.stop_activity(id).unwrap();
                log.last().unwrap();
                wire::write_bool(log.get_mut(), p == valid).unwrap();
            }
            other => log
                .error(&DaemonError::new(format!(
                    "{:?} not supported",
                    other.opcode()
                )))
                .unwrap(),
        }
        log.flush().unwrap();
    }
}

#[test]
fn client_against_our_server_functions() {
    let dir = StoreDir::new("/tmp/nixproto/store").unwrap();
    let (a, b) = UnixStream::pair().unwrap();
    let valid = common::hello();
    let (d, v) = (dir.clone(), valid.clone());
    let server = std::thread::spawn(move || serve(b, d, v));

    let mut c = Client::handshake(
        BufReader::new(a.try_clone().unwrap()),
        BufWriter::new(a),
        dir.clone(),
        ProtocolVersion::LATEST,
    )
    .unwrap();
    assert_eq!(c.context().version, ProtocolVersion::RECOMMENDED);
    assert_eq!(
        c.server_info().daemon_version.as_deref(),
        Some("unrooted-test")
    );
    assert_eq!(c.server_info().trust, Some(TrustedFlag::Trusted));
    let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = logs.clone();
    c.on_log(move |m| sink.lock().unwrap().push(m.clone()));
    c.set_options(&ClientSettings::default()).unwrap();
    assert!(c.is_valid_path(&valid).unwrap());
    assert!(!c
        .is_valid_path(&common::path("00000000000000000000000000000000-nothere"))
        .unwrap());
    assert_eq!(logs.lock().unwrap().len(), 1 + 2 * 2);

    // A framed request the server refuses: it drains the body, errs, and goes on.
    let err = c
        .add_to_store(
            StorePathName::new("hello.txt").unwrap(),
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"text"[..],
        )
        .unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Remote { message, .. } if message.contains("AddToStore")),
        "{err}"
    );
    assert!(c.is_valid_path(&valid).unwrap(), "connection still usable");
    drop(c);
    server.join().unwrap();
}

#[test]
fn client_against_real_nix_daemon() {
    let has_daemon = Command::new("nix-daemon").arg("--version").output().is_ok();
    if !unrooted_testkit::require(has_daemon, "nix-daemon is not installed") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = root.join("store");
    let mut child = Command::new("nix-daemon")
        .arg("--stdio")
        .env("NIX_STORE_DIR", &store)
        .env("NIX_STATE_DIR", root.join("var"))
        .env("NIX_LOG_DIR", root.join("log"))
        .env("NIX_CONF_DIR", root.join("etc"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let dir = StoreDir::new(store.to_str().unwrap()).unwrap();
    let stdout = child.stdout.take().unwrap();
    let stdin = child.stdin.take().unwrap();
    let mut c = Client::handshake(
        BufReader::new(stdout),
        BufWriter::new(stdin),
        dir.clone(),
        ProtocolVersion::LATEST,
    )
    .unwrap();
    assert_eq!(
        c.context().version,
        ProtocolVersion::NIX_2_8,
        "2.8 announces 1.34"
    );
    assert_eq!(c.server_info().daemon_version.as_deref(), Some("2.8.0"));
    c.set_options(&ClientSettings::default()).unwrap();

    let nar = hello_nar();
    let nar_hash = Hash::sha256(sha256(&nar));
    let name = StorePathName::new("hello.txt").unwrap();
    let expected = ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: nar_hash,
    }
    .store_path(&dir, &name, &BTreeSet::new(), false)
    .unwrap();
    let method = ContentAddressMethod::Fixed {
        method: FileIngestionMethod::Recursive,
        algo: HashAlgo::Sha256,
    };
    let info = c
        .add_to_store(name, method, BTreeSet::new(), &mut &nar[..])
        .unwrap();
    assert_eq!(info.path, expected);
    assert_eq!(info.info.nar_hash, nar_hash);
    assert_eq!(info.info.nar_size, 0x80);

    assert!(c.is_valid_path(&expected).unwrap());
    let qpi = c.query_path_info(&expected).unwrap().unwrap();
    assert_eq!(qpi.nar_hash, nar_hash);
    assert_eq!(qpi.ca, info.info.ca);
    let missing = common::path("00000000000000000000000000000000-nothere");
    assert!(c.query_path_info(&missing).unwrap().is_none());
    assert_eq!(
        c.query_valid_paths([expected.clone(), missing.clone()].into(), false)
            .unwrap(),
        [expected.clone()].into()
    );
    let m = c
        .query_missing(vec![DerivedPath::Opaque(missing.clone())])
        .unwrap();
    assert_eq!(m.unknown, [missing].into());
    let res = c
        .build_paths_with_results(
            vec![DerivedPath::Opaque(expected.clone())],
            BuildMode::Normal,
        )
        .unwrap();
    assert_eq!(
        res[0].result.status,
        unrooted_protocol::BuildStatus::AlreadyValid
    );
    assert!(c.query_all_valid_paths().unwrap().contains(&expected));

    // A request the real daemon rejects after parsing arrives as a typed error.
    let drv = common::path("00000000000000000000000000000000-x.drv");
    let err = c.call(&Request::QueryDerivationOutputMap(drv)).unwrap_err();
    assert!(
        matches!(&err, ProtocolError::Remote { message, .. } if message.contains("is not valid")),
        "{err}"
    );
    assert!(
        c.is_valid_path(&expected).unwrap(),
        "connection still usable"
    );

    drop(c);
    child.wait().unwrap();
}
