//! Hostile and broken input: refused with the right error, promptly, never a panic.

use crate::common;

use std::collections::BTreeSet;
use std::io::{self, Read};
use std::time::{Duration, Instant};

use common::{cx, vector};
use proptest::prelude::*;
use unrooted_protocol::handshake::{server_handshake, ServerHello, TrustedFlag};
use unrooted_protocol::wire::{FramedReader, Limits};
use unrooted_protocol::{read_request, ProtocolError, ProtocolVersion, Request};

/// A reader that serves `prefix` and then zeros forever, counting what was read.
struct Endless<'a> {
    prefix: &'a [u8],
    served: u64,
}

impl Read for Endless<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = if self.prefix.is_empty() {
            buf.fill(0);
            buf.len()
        } else {
            let n = buf.len().min(self.prefix.len());
            buf[..n].copy_from_slice(&self.prefix[..n]);
            self.prefix = &self.prefix[n..];
            n
        };
        self.served += n as u64;
        Ok(n)
    }
}

#[test]
fn string_of_length_2_pow_63_is_refused_before_allocating() {
    let bytes = vector("neg-string-length-2pow63.hex");
    let mut r = Endless {
        prefix: &bytes[..16],
        served: 0,
    };
    let start = Instant::now();
    let err = read_request(&mut r, &cx(34)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(1));
    assert!(
        matches!(err, ProtocolError::StringTooLong { len, .. } if len == 1 << 63),
        "{err}"
    );
    assert_eq!(r.served, 16, "nothing was read past the length word");
    assert!(!err.is_recoverable());
}

#[test]
fn non_zero_padding_is_refused() {
    let err = read_request(&mut &vector("neg-nonzero-padding.hex")[..], &cx(34)).unwrap_err();
    assert!(matches!(err, ProtocolError::BadPadding { .. }), "{err}");
    assert_eq!(err.to_string(), "non-zero padding after path");
    assert!(!err.is_recoverable());
}

#[test]
fn count_over_the_bound_is_refused() {
    let bytes = vector("neg-count-over-bound.hex");
    let mut r = Endless {
        prefix: &bytes,
        served: 0,
    };
    let err = read_request(&mut r, &cx(34)).unwrap_err();
    assert!(
        matches!(err, ProtocolError::TooManyElements { count, .. } if count == 1 << 40),
        "{err}"
    );
    assert_eq!(r.served, 16);
}

#[test]
fn unknown_opcode_is_refused_with_nix_message() {
    let err = read_request(&mut &vector("neg-unknown-opcode.hex")[..], &cx(34)).unwrap_err();
    assert_eq!(err.to_string(), "invalid operation 99");
    assert!(!err.is_recoverable());
    let mut removed = Vec::new();
    unrooted_protocol::wire::write_u64(&mut removed, 25).unwrap();
    let err = read_request(&mut &removed[..], &cx(34)).unwrap_err();
    assert_eq!(err.to_string(), "invalid operation 25");
}

fn hello() -> ServerHello {
    ServerHello {
        version: ProtocolVersion::RECOMMENDED,
        daemon_version: "unrooted-test".into(),
        trust: TrustedFlag::NotTrusted,
        features: BTreeSet::new(),
    }
}

#[test]
fn bad_magic_is_refused_without_answering() {
    let mut out = Vec::new();
    let err = server_handshake(
        &mut &vector("neg-bad-magic.hex")[..],
        &mut out,
        &hello(),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(
        matches!(err, ProtocolError::BadMagic { got: 0x6e697864 }),
        "{err}"
    );
    assert!(out.is_empty());
}

#[test]
fn old_client_is_refused_right_after_its_version() {
    let bytes = vector("neg-old-version-handshake.hex");
    let mut r = &bytes[..];
    let mut out = Vec::new();
    let err = server_handshake(&mut r, &mut out, &hello(), &Limits::default()).unwrap_err();
    assert!(
        matches!(err, ProtocolError::UnsupportedVersion { version } if version == ProtocolVersion::new(1, 9)),
        "{err}"
    );
    // Only magic2 + our version were sent; the affinity/reserve words were not read.
    assert_eq!(out.len(), 16);
    assert_eq!(r.len(), 16);
    // Major 2 is refused whatever the minor; 1.37 is accepted.
    assert!(!ProtocolVersion::from_wire(0x222).is_supported());
    assert!(ProtocolVersion::from_wire(0x125).is_supported());
}

#[test]
fn feature_exchange_at_1_38() {
    let mut client = Vec::new();
    let w = |b: &mut Vec<u8>, v| unrooted_protocol::wire::write_u64(b, v).unwrap();
    w(&mut client, 0x6e697863);
    w(&mut client, 0x126);
    unrooted_protocol::wire::write_strings(&mut client, ["a", "b"]).unwrap();
    w(&mut client, 1);
    w(&mut client, 7); // affinity flag set: one more word
    w(&mut client, 0);
    let mut h = hello();
    h.version = ProtocolVersion::LATEST;
    h.features = ["b".to_owned(), "c".to_owned()].into();
    let mut out = Vec::new();
    let mut r = &client[..];
    let got = server_handshake(&mut r, &mut out, &h, &Limits::default()).unwrap();
    assert!(r.is_empty());
    assert_eq!(got.features, ["b".to_owned()].into());
    // magic2, version, our features (2 strings), version string, trust flag 2.
    assert_eq!(out.len(), 16 + 8 + 16 + 16 + 8 + 16 + 8);
    assert_eq!(&out[out.len() - 8..], &2u64.to_le_bytes());
}

/// Every proper prefix of a valid request fails (or is a clean EOF when empty).
fn assert_every_prefix_fails(bytes: &[u8], minor: u8) {
    let cx = cx(minor);
    assert!(read_request(&mut &bytes[..0], &cx).unwrap().is_none());
    for len in 1..bytes.len() {
        match read_request(&mut &bytes[..len], &cx) {
            Err(_) => {}
            Ok(r) => panic!("prefix of {len}/{} bytes decoded as {r:?}", bytes.len()),
        }
    }
}

#[test]
fn truncated_appendix_requests_fail_at_every_offset() {
    for f in [
        "a2-set-options-request.hex",
        "a4-is-valid-path-valid-request.hex",
        "a4-is-valid-path-invalid-request.hex",
        "neg-is-valid-path-etc-passwd.hex",
    ] {
        assert_every_prefix_fails(&vector(f), 34);
    }
    // AddToStore: the header alone decodes; every cut inside the framed body fails
    // when the body is read.
    let bytes = vector("a3-add-to-store-request.hex");
    let cx = cx(34);
    let header_len = {
        let mut r = &bytes[..];
        read_request(&mut r, &cx).unwrap().unwrap();
        bytes.len() - r.len()
    };
    assert_every_prefix_fails(&bytes[..header_len], 34);
    for len in header_len..bytes.len() {
        let mut r = &bytes[..len];
        read_request(&mut r, &cx).unwrap().unwrap();
        let err = FramedReader::new(&mut r, cx.limits.max_frame)
            .drain()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "cut at {len}");
    }
}

#[test]
fn truncated_handshakes_fail_at_every_offset() {
    let client = vector("a1-handshake-client.hex");
    for len in 0..client.len() {
        let mut out = Vec::new();
        assert!(
            server_handshake(&mut &client[..len], &mut out, &hello(), &Limits::default()).is_err()
        );
    }
    let server = vector("a1-handshake-server.hex");
    for len in 0..server.len() - 8 {
        let mut out = Vec::new();
        let res = unrooted_protocol::handshake::client_handshake(
            &mut &server[..len],
            &mut out,
            ProtocolVersion::NIX_2_8,
            &BTreeSet::new(),
            &Limits::default(),
        );
        assert!(res.is_err(), "cut at {len}");
    }
}

#[test]
fn truncated_replies_and_log_messages_fail_at_every_offset() {
    let cx = cx(34);
    for f in [
        "a5-error-structured.hex",
        "a6-start-activity.hex",
        "a6-result-build-log-line.hex",
    ] {
        let bytes = vector(f);
        for len in 0..bytes.len() {
            assert!(
                unrooted_protocol::stderr::StderrMessage::read(&mut &bytes[..len], &cx).is_err()
            );
        }
    }
    let bytes = vector("a3-add-to-store-reply.hex");
    for len in 8..bytes.len() {
        assert!(unrooted_protocol::ValidPathInfo::read(&mut &bytes[8..len], &cx).is_err());
    }
}

#[test]
fn semantic_errors_inside_framed_requests_say_to_drain() {
    // AddToStore whose method is garbage: the header is read completely, the body is
    // still on the wire and must be drained before the error is sent.
    let mut bytes = vector("a3-add-to-store-request.hex");
    bytes[0x28..0x36].copy_from_slice(b"fixed:r:sha999");
    let cx = cx(34);
    let mut r = &bytes[..];
    let err = read_request(&mut r, &cx).unwrap_err();
    assert!(err.is_recoverable());
    assert_eq!(
        err.body_to_drain(),
        Some(unrooted_protocol::BodyKind::Framed)
    );
    FramedReader::new(&mut r, cx.limits.max_frame)
        .drain()
        .unwrap();
    assert!(r.is_empty());

    // The same request before 1.25 is unframed: position unknown after an error.
    let mut legacy = Vec::new();
    unrooted_protocol::wire::write_u64(&mut legacy, 7).unwrap();
    unrooted_protocol::wire::write_bytes(&mut legacy, b"bad/name").unwrap();
    for w in [1u64, 1] {
        unrooted_protocol::wire::write_u64(&mut legacy, w).unwrap();
    }
    unrooted_protocol::wire::write_bytes(&mut legacy, b"sha256").unwrap();
    let err = read_request(&mut &legacy[..], &common::cx(24)).unwrap_err();
    assert!(!err.is_recoverable(), "{err}");
}

#[test]
fn every_opcode_with_garbage_arguments_never_panics() {
    for op in unrooted_protocol::Opcode::ALL {
        for minor in [21u8, 25, 30, 34, 38] {
            let mut bytes = op.code().to_le_bytes().to_vec();
            bytes.extend_from_slice(&[0xff; 64]);
            let _ = read_request(&mut &bytes[..], &cx(minor));
            let mut zeros = op.code().to_le_bytes().to_vec();
            zeros.extend_from_slice(&[0; 256]);
            let _ = read_request(&mut &zeros[..], &cx(minor));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), minor in 21u8..=38) {
        let _ = read_request(&mut &bytes[..], &cx(minor));
    }

    #[test]
    fn random_arguments_after_a_valid_opcode_never_panic(
        op in 0usize..44,
        words in proptest::collection::vec(0u64..80, 0..40),
        minor in 21u8..=38,
    ) {
        // Small words make plausible lengths and counts, reaching deep into decoders.
        let mut bytes = unrooted_protocol::Opcode::ALL[op].code().to_le_bytes().to_vec();
        for w in words {
            bytes.extend_from_slice(&w.to_le_bytes());
        }
        let _ = read_request(&mut &bytes[..], &cx(minor));
    }

    #[test]
    fn random_log_messages_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut msg = 0x6378_7470u64.to_le_bytes().to_vec();
        msg.extend_from_slice(&bytes);
        let _ = unrooted_protocol::stderr::StderrMessage::read(&mut &msg[..], &cx(34));
    }
}

#[test]
fn decoded_requests_are_equal_to_a_reencoding() {
    // A sanity check that the proptest inputs exercise real decoders: a valid request
    // decoded from the appendix survives re-encoding byte for byte.
    let bytes = vector("a2-set-options-request.hex");
    let req: Request = read_request(&mut &bytes[..], &cx(34)).unwrap().unwrap();
    let mut out = Vec::new();
    req.write(&mut out, &cx(34)).unwrap();
    assert_eq!(out, bytes);
}
