//! Issue 19, item 4: protocol 1.38's feature exchange as Nix 2.35 does it
//! (`worker-protocol-connection.cc`, `worker-protocol.cc`), and the one feature
//! unrooted honours, `delete-dead-specific-referrers`: CollectGarbage's paths tagged
//! (`Serialise<GCOptions::GCPaths>`: a number 0 then the path set and the
//! delete-referrers flag, or 1 for the whole store). Byte vectors built field by
//! field from those serialisers; each form at 1.38 with the feature and without.

use crate::common;

use std::collections::BTreeSet;

use common::{cx, hello, STORE};
use unrooted_protocol::request::{GcAction, GcOptions, GcPaths};
use unrooted_protocol::{
    server_handshake, Features, Limits, ProtocolError, ProtocolVersion, Request, ServerHello,
    TrustedFlag, WireContext,
};

fn u64le(v: u64) -> Vec<u8> {
    v.to_le_bytes().to_vec()
}

fn string(s: &str) -> Vec<u8> {
    let mut out = u64le(s.len() as u64);
    out.extend_from_slice(s.as_bytes());
    out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    out
}

fn hello_path() -> String {
    format!("{STORE}/{}", hello())
}

/// `CollectGarbage` (20), the action, then `paths` as given, then ignoreLiveness 0,
/// maxFreed 2^64-1 and the three obsolete zeros.
fn collect_garbage(action: u64, paths: &[u8]) -> Vec<u8> {
    let mut v = u64le(20);
    v.extend(u64le(action));
    v.extend_from_slice(paths);
    v.extend(u64le(0));
    v.extend(u64le(u64::MAX));
    for _ in 0..3 {
        v.extend(u64le(0));
    }
    v
}

fn with_feature() -> WireContext {
    WireContext {
        features: Features {
            delete_dead_specific_referrers: true,
            ..Features::default()
        },
        ..cx(38)
    }
}

fn decode(bytes: &[u8], cx: &WireContext) -> Result<Option<Request>, ProtocolError> {
    unrooted_protocol::read_request(&mut &bytes[..], cx)
}

fn gc(action: GcAction, paths: GcPaths) -> Request {
    Request::CollectGarbage(GcOptions {
        action,
        paths,
        ignore_liveness: false,
        max_freed: u64::MAX,
    })
}

fn encode(req: &Request, cx: &WireContext) -> Result<Vec<u8>, ProtocolError> {
    let mut out = Vec::new();
    req.write(&mut out, cx)?;
    Ok(out)
}

/// `nix store delete --also-referrers P` (2.35): DeleteSpecific, tag 0, {P}, true.
#[test]
fn delete_specific_with_referrers_tagged() {
    let mut paths = u64le(0);
    paths.extend(u64le(1));
    paths.extend(string(&hello_path()));
    paths.extend(u64le(1));
    let bytes = collect_garbage(3, &paths);
    let req = gc(
        GcAction::DeleteSpecific,
        GcPaths::Specific {
            paths: [hello()].into(),
            delete_referrers: true,
        },
    );
    assert_eq!(decode(&bytes, &with_feature()).unwrap(), Some(req.clone()));
    assert_eq!(encode(&req, &with_feature()).unwrap(), bytes);
    // Without the feature it cannot be said at all.
    assert!(matches!(
        encode(&req, &cx(38)),
        Err(ProtocolError::Unrepresentable { .. })
    ));
}

/// `nix store delete --skip-alive P` (2.35): DeleteDead, tag 0, {P}, false.
#[test]
fn delete_dead_within_specific_paths_tagged() {
    let mut paths = u64le(0);
    paths.extend(u64le(1));
    paths.extend(string(&hello_path()));
    paths.extend(u64le(0));
    let bytes = collect_garbage(2, &paths);
    let req = gc(
        GcAction::DeleteDead,
        GcPaths::Specific {
            paths: [hello()].into(),
            delete_referrers: false,
        },
    );
    assert_eq!(decode(&bytes, &with_feature()).unwrap(), Some(req.clone()));
    assert_eq!(encode(&req, &with_feature()).unwrap(), bytes);
}

/// `nix store gc` with the feature: DeleteDead, tag 1 (whole store), nothing else.
#[test]
fn whole_store_tagged() {
    let bytes = collect_garbage(2, &u64le(1));
    let req = gc(GcAction::DeleteDead, GcPaths::WholeStore);
    assert_eq!(decode(&bytes, &with_feature()).unwrap(), Some(req.clone()));
    assert_eq!(encode(&req, &with_feature()).unwrap(), bytes);
}

/// An indicator other than 0 or 1 is refused, as Nix refuses it.
#[test]
fn unknown_whole_store_indicator_is_refused() {
    let bytes = collect_garbage(2, &u64le(2));
    let err = decode(&bytes, &with_feature()).unwrap_err();
    assert!(
        matches!(
            err,
            ProtocolError::ValueOutOfRange {
                field: "whole store indicator",
                value: 2
            }
        ),
        "{err:?}"
    );
}

/// Without the feature (a 2.26 client at 1.38, or anything older): the plain set, read
/// as Nix 2.35 reads it.
#[test]
fn untagged_forms_without_the_feature() {
    // nix store gc: DeleteDead with no paths is the whole store.
    let bytes = collect_garbage(2, &u64le(0));
    let req = gc(GcAction::DeleteDead, GcPaths::WholeStore);
    assert_eq!(decode(&bytes, &cx(38)).unwrap(), Some(req.clone()));
    assert_eq!(encode(&req, &cx(38)).unwrap(), bytes);
    // nix store delete P: DeleteSpecific with {P}, no referrers.
    let mut paths = u64le(1);
    paths.extend(string(&hello_path()));
    let bytes = collect_garbage(3, &paths);
    let req = gc(
        GcAction::DeleteSpecific,
        GcPaths::Specific {
            paths: [hello()].into(),
            delete_referrers: false,
        },
    );
    for minor in [34, 37, 38] {
        assert_eq!(decode(&bytes, &cx(minor)).unwrap(), Some(req.clone()));
        assert_eq!(encode(&req, &cx(minor)).unwrap(), bytes);
    }
}

/// The client's handshake bytes up to its features (≥ 1.38), then the obsolete CPU
/// affinity and reserve-space words.
fn client_handshake(features: &[&str]) -> Vec<u8> {
    let mut v = u64le(0x6e69_7863);
    v.extend(u64le(0x126));
    v.extend(u64le(features.len() as u64));
    for f in features {
        v.extend(string(f));
    }
    v.extend(u64le(0));
    v.extend(u64le(0));
    v
}

fn served_hello() -> ServerHello {
    ServerHello {
        version: ProtocolVersion::new(1, 38),
        daemon_version: "unrooted".into(),
        trust: TrustedFlag::NotTrusted,
        features: Features::SERVED.names(),
    }
}

/// The daemon sends what it supports; the connection uses the intersection: a 2.35
/// client's two features give one, a client with none (2.26) gets none, unknown
/// names are ignored.
#[test]
fn feature_exchange_answers_the_intersection() {
    for (theirs, expected) in [
        (
            &[
                "delete-dead-specific-referrers",
                "realisation-with-path-not-hash",
            ][..],
            &["delete-dead-specific-referrers"][..],
        ),
        (&[][..], &[][..]),
        (&["some-future-feature"][..], &[][..]),
    ] {
        let input = client_handshake(theirs);
        let mut sent = Vec::new();
        let hello = server_handshake(
            &mut &input[..],
            &mut sent,
            &served_hello(),
            &Limits::default(),
        )
        .unwrap();
        let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
        assert_eq!(hello.features, expected);
        assert_eq!(
            Features::from_names(&hello.features).delete_dead_specific_referrers,
            !expected.is_empty()
        );
        // What the server sent after its magic and version: exactly its own list.
        let mut own = u64le(1);
        own.extend(string("delete-dead-specific-referrers"));
        assert_eq!(&sent[16..16 + own.len()], &own[..]);
    }
}
