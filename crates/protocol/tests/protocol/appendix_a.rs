//! Appendix A vectors: decoding yields the right typed values and encoding reproduces
//! the captured bytes exactly.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use common::{cx, hello, path, store_dir, vector, STORE};
use unrooted_format::hash::{Hash, HashAlgo};
use unrooted_format::{ContentAddress, FileIngestionMethod, StorePathName};
use unrooted_protocol::handshake::{client_handshake, server_handshake, ServerHello, TrustedFlag};
use unrooted_protocol::path_info::{read_query_path_info_reply, write_query_path_info_reply};
use unrooted_protocol::request::{ClientSettings, ContentAddressMethod};
use unrooted_protocol::stderr::{
    write_error, ActivityId, ActivityType, DaemonError, Field, ResultType, StderrMessage, Verbosity,
};
use unrooted_protocol::wire::{self, FramedReader, FramedWriter, Limits};
use unrooted_protocol::{
    read_request, BodyKind, ProtocolError, ProtocolVersion, Request, StderrWriter,
    UnkeyedValidPathInfo, ValidPathInfo,
};

const NAR_HASH: &str = "34ca3ac63094d1d5751f741101692a78f95eedf10744b088129fc324dfd0f603";

fn hello_info() -> UnkeyedValidPathInfo {
    let nar_hash = Hash::parse_bare(NAR_HASH, HashAlgo::Sha256).unwrap();
    UnkeyedValidPathInfo {
        deriver: None,
        nar_hash,
        references: BTreeSet::new(),
        registration_time: 0x6b03b145,
        nar_size: 0x80,
        ultimate: false,
        signatures: BTreeSet::new(),
        ca: Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash: nar_hash,
        }),
    }
}

fn server_hello(minor: u8) -> ServerHello {
    ServerHello {
        version: ProtocolVersion::new(1, minor),
        daemon_version: "2.8.0".into(),
        trust: TrustedFlag::Trusted,
        features: BTreeSet::new(),
    }
}

#[test]
fn a1_server_handshake_reproduces_the_daemon() {
    let client = vector("a1-handshake-client.hex");
    let mut out = Vec::new();
    let hello = server_handshake(
        &mut &client[..],
        &mut out,
        &server_hello(34),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(hello.version, ProtocolVersion::NIX_2_8);
    assert_eq!(hello.client_version, ProtocolVersion::NIX_2_8);
    assert!(hello.features.is_empty());
    let mut log = StderrWriter::new(&mut out, hello.version);
    log.last().unwrap();
    assert_eq!(out, vector("a1-handshake-server.hex"));
}

#[test]
fn a1_server_announcing_1_37_negotiates_down_to_the_client() {
    let client = vector("a1-handshake-client.hex");
    let mut out = Vec::new();
    let hello = server_handshake(
        &mut &client[..],
        &mut out,
        &server_hello(37),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(hello.version, ProtocolVersion::new(1, 34));
    // Same bytes except our version word; no trust flag at 1.34.
    let mut expected = vector("a1-handshake-server.hex");
    expected.truncate(expected.len() - 8);
    expected[8] = 0x25;
    assert_eq!(out, expected);
}

#[test]
fn a1_client_handshake_reproduces_the_client() {
    let server = vector("a1-handshake-server.hex");
    let mut out = Vec::new();
    let mut r = &server[..];
    let info = client_handshake(
        &mut r,
        &mut out,
        ProtocolVersion::NIX_2_8,
        &BTreeSet::new(),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(out, vector("a1-handshake-client.hex"));
    assert_eq!(info.daemon_version.as_deref(), Some("2.8.0"));
    assert_eq!(info.trust, None);
    assert_eq!(
        StderrMessage::read(&mut r, &cx(34)).unwrap(),
        StderrMessage::Last
    );
    assert!(r.is_empty());
}

#[test]
fn a2_set_options() {
    let bytes = vector("a2-set-options-request.hex");
    let mut r = &bytes[..];
    let req = read_request(&mut r, &cx(34)).unwrap().unwrap();
    let expected = ClientSettings {
        keep_failed: false,
        keep_going: false,
        try_fallback: false,
        verbosity: Verbosity::Info,
        max_build_jobs: 1,
        max_silent_time: 0,
        use_build_hook: true,
        verbose_build: Verbosity::Error,
        log_type: 0,
        print_build_trace: 0,
        build_cores: 2,
        use_substitutes: true,
        overrides: BTreeMap::new(),
    };
    assert_eq!(req, Request::SetOptions(expected.clone()));
    assert_eq!(expected, ClientSettings::default());
    assert!(r.is_empty());
    let mut out = Vec::new();
    req.write(&mut out, &cx(34)).unwrap();
    assert_eq!(out, bytes);
    let mut reply = Vec::new();
    StderrWriter::new(&mut reply, ProtocolVersion::NIX_2_8)
        .last()
        .unwrap();
    assert_eq!(reply, vector("a2-set-options-reply.hex"));
}

#[test]
fn a3_add_to_store_with_framed_body() {
    let bytes = vector("a3-add-to-store-request.hex");
    let cx = cx(34);
    let mut r = &bytes[..];
    let req = read_request(&mut r, &cx).unwrap().unwrap();
    let method = ContentAddressMethod::Fixed {
        method: FileIngestionMethod::Recursive,
        algo: HashAlgo::Sha256,
    };
    assert_eq!(
        req,
        Request::AddToStore {
            name: StorePathName::new("hello.txt").unwrap(),
            method,
            references: BTreeSet::new(),
            repair: false,
        }
    );
    assert_eq!(req.body(cx.version), Some(BodyKind::Framed));
    let mut body = FramedReader::new(&mut r, cx.limits.max_frame);
    let mut nar = Vec::new();
    body.read_to_end(&mut nar).unwrap();
    assert!(body.is_finished());
    assert_eq!(nar.len(), 0x80);
    assert!(nar[8..].starts_with(b"nix-archive-1"));
    let digest = unrooted_format::hash::sha256(&nar);
    let nar_hash = Hash::sha256(digest);
    assert_eq!(nar_hash.to_base16(), NAR_HASH);
    assert!(r.is_empty(), "the terminator was consumed");

    // The store path follows from the CA (`docs/spec/store-formats.md` §2.3).
    let ca = ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: nar_hash,
    };
    let name = StorePathName::new("hello.txt").unwrap();
    assert_eq!(
        ca.store_path(&store_dir(), &name, &BTreeSet::new(), false)
            .unwrap(),
        hello()
    );

    // Encoding: header + one frame + terminator.
    let mut out = Vec::new();
    req.write(&mut out, &cx).unwrap();
    let mut fw = FramedWriter::new(&mut out);
    std::io::Write::write_all(&mut fw, &nar).unwrap();
    fw.finish().unwrap();
    assert_eq!(out, bytes);

    // Reply.
    let info = ValidPathInfo {
        path: hello(),
        info: hello_info(),
    };
    let mut reply = Vec::new();
    StderrWriter::new(&mut reply, cx.version).last().unwrap();
    info.write(&mut reply, &cx, cx.version).unwrap();
    let expected = vector("a3-add-to-store-reply.hex");
    assert_eq!(reply, expected);
    let mut rr = &expected[8..];
    assert_eq!(ValidPathInfo::read(&mut rr, &cx).unwrap(), info);
    assert!(rr.is_empty());
}

#[test]
fn a4_is_valid_path_and_query_path_info() {
    let cx = cx(34);
    for (req_file, reply_file, p, valid) in [
        (
            "a4-is-valid-path-valid-request.hex",
            "a4-is-valid-path-valid-reply.hex",
            hello(),
            true,
        ),
        (
            "a4-is-valid-path-invalid-request.hex",
            "a4-is-valid-path-invalid-reply.hex",
            path("00000000000000000000000000000000-nothere"),
            false,
        ),
    ] {
        let bytes = vector(req_file);
        let req = read_request(&mut &bytes[..], &cx).unwrap().unwrap();
        assert_eq!(req, Request::IsValidPath(p.clone()));
        let mut out = Vec::new();
        req.write(&mut out, &cx).unwrap();
        assert_eq!(out, bytes);
        let mut reply = Vec::new();
        StderrWriter::new(&mut reply, cx.version).last().unwrap();
        wire::write_bool(&mut reply, valid).unwrap();
        assert_eq!(reply, vector(reply_file));

        // QueryPathInfo differs only in the opcode.
        let mut qpi = bytes.clone();
        qpi[0] = 0x1a;
        let req = read_request(&mut &qpi[..], &cx).unwrap().unwrap();
        assert_eq!(req, Request::QueryPathInfo(p));
    }

    let mut info = hello_info();
    info.signatures.insert(
        "test1:IDK6mu5A/6GnhMOZJdHbBOnekh/zp5skqcxidAg0IFYy2AHPp5hfgreKfyMYkjiWj92gdsZnBWJbmkmZdgmDDA==".into(),
    );
    for (file, info) in [
        ("a4-query-path-info-valid-reply.hex", Some(&info)),
        ("a4-query-path-info-invalid-reply.hex", None),
    ] {
        let mut reply = Vec::new();
        StderrWriter::new(&mut reply, cx.version).last().unwrap();
        write_query_path_info_reply(&mut reply, &cx, info).unwrap();
        let expected = vector(file);
        assert_eq!(reply, expected, "{file}");
        let mut r = &expected[8..];
        assert_eq!(
            read_query_path_info_reply(&mut r, &cx).unwrap().as_ref(),
            info
        );
        assert!(r.is_empty());
    }
}

fn etc_passwd_error() -> DaemonError {
    DaemonError::new("path '\x1b[35;1m/etc/passwd\x1b[0m' is not in the Nix store")
}

#[test]
fn a5_error_frames_in_both_forms() {
    let mut out = Vec::new();
    write_error(&mut out, ProtocolVersion::NIX_2_8, &etc_passwd_error()).unwrap();
    let structured = vector("a5-error-structured.hex");
    assert_eq!(out, structured);
    let mut out = Vec::new();
    write_error(&mut out, ProtocolVersion::new(1, 21), &etc_passwd_error()).unwrap();
    let old = vector("a5-error-old.hex");
    assert_eq!(out, old);

    // Client side reads both back.
    let msg = StderrMessage::read(&mut &structured[..], &cx(34)).unwrap();
    assert_eq!(msg, StderrMessage::Error(etc_passwd_error()));
    let StderrMessage::Error(e) = StderrMessage::read(&mut &old[..], &cx(21)).unwrap() else {
        panic!("not an error");
    };
    assert_eq!(e.exit_status, 1);
    assert!(e.message.starts_with("\x1b[31;1merror:\x1b[0m path '"));
}

#[test]
fn a5_traces_are_sent_at_1_26_and_dropped_before() {
    let mut err = DaemonError::new("boom");
    err.traces = vec!["while doing x".into()];
    err.exit_status = 100;
    let mut new = Vec::new();
    write_error(&mut new, ProtocolVersion::new(1, 26), &err).unwrap();
    let back = StderrMessage::read(&mut &new[..], &cx(26)).unwrap();
    assert_eq!(
        back,
        StderrMessage::Error(DaemonError {
            exit_status: 1,
            ..err.clone()
        })
    );
    let mut old = Vec::new();
    write_error(&mut old, ProtocolVersion::new(1, 25), &err).unwrap();
    let StderrMessage::Error(e) = StderrMessage::read(&mut &old[..], &cx(25)).unwrap() else {
        panic!("not an error");
    };
    assert_eq!(e.exit_status, 100);
    assert!(e.traces.is_empty());
}

#[test]
fn a5_old_client_gets_no_version_string() {
    let mut client = Vec::new();
    for w in [0x6e697863u64, 0x115, 0, 0] {
        wire::write_u64(&mut client, w).unwrap();
    }
    let mut out = Vec::new();
    let hello = server_handshake(
        &mut &client[..],
        &mut out,
        &server_hello(34),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(hello.version, ProtocolVersion::new(1, 21));
    StderrWriter::new(&mut out, hello.version).last().unwrap();
    assert_eq!(out[16..], vector("a5-error-old-handshake-tail.hex")[..]);
}

#[test]
fn a5_non_store_path_is_a_recoverable_invalid_argument() {
    let bytes = vector("neg-is-valid-path-etc-passwd.hex");
    let mut r = &bytes[..];
    let err = read_request(&mut r, &cx(34)).unwrap_err();
    assert!(r.is_empty(), "the whole request was consumed");
    assert!(err.is_recoverable());
    assert_eq!(
        err.client_message(),
        "path '/etc/passwd' is not in the Nix store"
    );
    assert!(matches!(&err, ProtocolError::InvalidArgument { source, .. }
        if matches!(**source, ProtocolError::NotInStore { .. })));
    let mut out = Vec::new();
    write_error(&mut out, ProtocolVersion::NIX_2_8, &DaemonError::from(&err)).unwrap();
    let back = StderrMessage::read(&mut &out[..], &cx(34)).unwrap();
    assert_eq!(
        back,
        StderrMessage::Error(DaemonError::new(
            "path '/etc/passwd' is not in the Nix store"
        ))
    );
}

#[test]
fn a6_activity_messages() {
    let drv = format!("{STORE}/6f7sr28xsakyb8bk7d4fkq7wh9mwrir2-trivial.drv");
    let id = ActivityId(0x0000_79c2_0000_0005);
    let start = StderrMessage::StartActivity {
        id,
        level: Verbosity::Info,
        kind: ActivityType::BUILD,
        text: format!("building '{drv}'").into_bytes(),
        fields: vec![
            Field::String(drv.clone().into_bytes()),
            Field::String(Vec::new()),
            Field::Int(1),
            Field::Int(1),
        ],
        parent: ActivityId(0),
    };
    let result = StderrMessage::Result {
        id,
        kind: ResultType::BUILD_LOG_LINE,
        fields: vec![Field::String(b"building trivial".to_vec())],
    };
    for (msg, file) in [
        (start, "a6-start-activity.hex"),
        (result, "a6-result-build-log-line.hex"),
    ] {
        let mut out = Vec::new();
        msg.write(&mut out, ProtocolVersion::NIX_2_8).unwrap();
        let expected = vector(file);
        assert_eq!(out, expected, "{file}");
        assert_eq!(
            StderrMessage::read(&mut &expected[..], &cx(34)).unwrap(),
            msg
        );
    }
}

#[test]
fn activity_ids_carry_the_pid_and_are_unique() {
    let a = ActivityId::next();
    let b = ActivityId::next();
    assert_ne!(a, b);
    assert_eq!(a.0 >> 32, u64::from(std::process::id()));
}

#[test]
fn log_lines_are_filtered_by_verbosity_but_activities_are_not() {
    let mut out = Vec::new();
    let mut log = StderrWriter::new(&mut out, ProtocolVersion::NIX_2_8);
    log.set_verbosity(Verbosity::Error);
    assert!(!log.log(Verbosity::Info, "hidden").unwrap());
    assert!(log.log(Verbosity::Error, "shown").unwrap());
    let id = log
        .start_activity(Verbosity::Debug, ActivityType::UNKNOWN, "q", vec![], None)
        .unwrap();
    log.stop_activity(id).unwrap();
    let cx = cx(34);
    let mut r = &out[..];
    assert_eq!(
        StderrMessage::read(&mut r, &cx).unwrap(),
        StderrMessage::Next(b"shown\n".to_vec())
    );
    assert!(matches!(
        StderrMessage::read(&mut r, &cx).unwrap(),
        StderrMessage::StartActivity { .. }
    ));
    assert_eq!(
        StderrMessage::read(&mut r, &cx).unwrap(),
        StderrMessage::StopActivity(id)
    );
    assert!(r.is_empty());
}
