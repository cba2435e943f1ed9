//! Realisations over the protocol (issue 18, `ca-derivations`): RegisterDrvOutput
//! and QueryRealisation at every version that has them (1.27 on: an id and a path
//! before 1.31, realisation JSON from 1.31, as `nix@2.8.0:src/libstore/daemon.cc`
//! reads and writes them), an untrusted client's realisation refused without a
//! signature by a trusted key, and nothing of it with the feature off.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::net::UnixStream;

use unrooted_format::hash::Hash;
use unrooted_format::signature::SecretKey;
use unrooted_format::StorePath;
use unrooted_protocol::client::Client;
use unrooted_protocol::reply::{read_realisations, RealisationReply};
use unrooted_protocol::{DrvOutput, ProtocolError, ProtocolVersion, Realisation, Request};

use crate::harness::{nobody, Harness, Mode};

const CA: &str = "experimental-features = nix-command ca-derivations";

type Conn = Client<UnixStream, UnixStream>;

/// A client of the store owner (trusted) at version `v`.
fn trusted_at(h: &Harness, v: ProtocolVersion) -> Conn {
    let s = UnixStream::connect(h.socket()).expect("connecting");
    Client::handshake(s.try_clone().unwrap(), s, h.store_dir(), v).expect("handshake")
}

/// A client of `nobody` (untrusted).
fn untrusted(h: &Harness) -> Conn {
    let s = h.daemon().connect_as(nobody()).expect("connecting");
    Client::handshake(
        s.try_clone().unwrap(),
        s,
        h.store_dir(),
        ProtocolVersion::NIX_2_8,
    )
    .expect("handshake")
}

fn id(byte: u8) -> DrvOutput {
    DrvOutput {
        drv_hash: Hash::sha256([byte; 32]),
        output_name: "out".into(),
    }
}

fn realisation(id: DrvOutput, path: &StorePath) -> Realisation {
    Realisation {
        id,
        out_path: path.clone(),
        signatures: BTreeSet::new(),
        dependent_realisations: BTreeMap::new(),
    }
}

/// A valid path of the store to realise things to.
fn some_path(h: &Harness) -> StorePath {
    let file = h.input("realised", "realised\n");
    h.path(&h.nix_ok("nix-store", &["--add", &file]))
}

fn register(c: &mut Conn, r: &Realisation) -> Result<(), ProtocolError> {
    c.call(&Request::RegisterDrvOutput(r.clone()))
}

fn query(c: &mut Conn, id: &DrvOutput) -> RealisationReply {
    c.call(&Request::QueryRealisation(id.clone()))
        .expect("QueryRealisation");
    let cx = c.context().clone();
    read_realisations(c.reader(), &cx).expect("reply")
}

#[test]
fn realisations_round_trip_at_every_protocol_version_that_has_them() {
    let Some(h) = Harness::with_conf(Mode::Unsandboxed, CA) else {
        return;
    };
    if h.nix("nix-store").is_none() {
        return;
    }
    let path = some_path(&h);
    for minor in 27..=ProtocolVersion::LATEST.minor() {
        let v = ProtocolVersion::new(1, minor);
        let mut c = trusted_at(&h, v);
        let r = realisation(id(minor), &path);
        register(&mut c, &r).unwrap_or_else(|e| panic!("1.{minor}: {e}"));
        match query(&mut c, &r.id) {
            RealisationReply::OutPaths(paths) => {
                assert!(minor < 31, "1.{minor}");
                assert_eq!(paths, BTreeSet::from([path.clone()]), "1.{minor}");
            }
            RealisationReply::Realisations(found) => {
                assert!(minor >= 31, "1.{minor}");
                assert_eq!(found, vec![r.clone()], "1.{minor}");
            }
        }
        match query(&mut c, &id(200)) {
            RealisationReply::OutPaths(p) => assert!(p.is_empty()),
            RealisationReply::Realisations(r) => assert!(r.is_empty()),
        }
    }
    // Another path for a recorded output is refused, as Nix refuses it.
    let other = h.path(&h.nix_ok("nix-store", &["--add", &h.input("other", "other\n")]));
    let mut c = trusted_at(&h, ProtocolVersion::NIX_2_8);
    let err = register(&mut c, &realisation(id(31), &other)).unwrap_err();
    assert!(
        err.to_string()
            .contains("but we already have another one locally"),
        "{err}"
    );
}

#[test]
fn untrusted_forged_realisation_is_refused_and_changes_nothing() {
    let key = SecretKey::from_seed("ca-test-1", &[9; 32]);
    let conf = format!("{CA}\ntrusted-public-keys = {}", key.to_public());
    let Some(h) = Harness::with_conf(Mode::Unsandboxed, &conf) else {
        return;
    };
    if h.nix("nix-store").is_none() {
        return;
    }
    let path = some_path(&h);
    let mut c = untrusted(&h);
    let mut forged = realisation(id(1), &path);
    forged.signatures.insert(
        SecretKey::from_seed("ca-test-1", &[8; 32])
            .sign(&forged.fingerprint())
            .to_string(),
    );
    let err = register(&mut c, &forged).unwrap_err();
    assert!(
        err.to_string().contains(&format!(
            "cannot register realisation '{path}' because it lacks a valid signature"
        )),
        "{err}"
    );
    match query(&mut c, &forged.id) {
        RealisationReply::Realisations(r) => assert!(r.is_empty(), "{r:?}"),
        RealisationReply::OutPaths(p) => panic!("{p:?}"),
    }
    let mut signed = realisation(id(2), &path);
    signed
        .signatures
        .insert(key.sign(&signed.fingerprint()).to_string());
    register(&mut c, &signed).expect("a signed realisation");
    match query(&mut c, &signed.id) {
        RealisationReply::Realisations(r) => assert_eq!(r, vec![signed]),
        RealisationReply::OutPaths(p) => panic!("{p:?}"),
    }
}

#[test]
fn without_ca_derivations_realisations_are_refused_and_none_are_found() {
    let Some(h) = Harness::new(Mode::Unsandboxed) else {
        return;
    };
    if h.nix("nix-store").is_none() {
        return;
    }
    let path = some_path(&h);
    let mut c = trusted_at(&h, ProtocolVersion::NIX_2_8);
    let err = register(&mut c, &realisation(id(1), &path)).unwrap_err();
    assert!(
        err.to_string().contains(
            "content-addressed derivations (ca-derivations) are not supported by unrooted yet"
        ),
        "{err}"
    );
    match query(&mut c, &id(1)) {
        RealisationReply::Realisations(r) => assert!(r.is_empty()),
        RealisationReply::OutPaths(p) => panic!("{p:?}"),
    }
    assert!(!h.root().join("state/db/ca-schema").exists());
}
