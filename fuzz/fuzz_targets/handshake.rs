//! The server side of the handshake: hostile magic, versions, feature sets and the
//! obsolete fields, against a server announcing the version the first byte picks.
//! It must end in an error or a negotiated version the crate supports.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use unrooted_protocol::handshake::{server_handshake, ServerHello, TrustedFlag};
use unrooted_protocol::{Limits, ProtocolVersion};

fuzz_target!(|data: &[u8]| {
    let mut input = unrooted_fuzz::Bytes::new(data);
    let minor = 21 + input.byte() % 18;
    let hello = ServerHello {
        version: ProtocolVersion::new(1, minor),
        daemon_version: "fuzz".into(),
        trust: TrustedFlag::NotTrusted,
        features: BTreeSet::from(["fuzz-feature".to_owned()]),
    };
    let mut r: &[u8] = input.rest();
    let mut w = Vec::new();
    if let Ok(client) = server_handshake(&mut r, &mut w, &hello, &Limits::default()) {
        assert!(client.version.is_supported());
        assert!(client.version <= hello.version);
        assert!(client.features.is_subset(&hello.features));
    }
});
