//! The worker-protocol request decoder, server side, at every version 1.21–1.38:
//! the first input byte picks the version, the rest is what the client sends after
//! the handshake. Requests are read one after another as the daemon does, each
//! request's data stream consumed as its body kind says (framed streams drained,
//! unframed NARs parsed), until the input ends or an error that ends the connection.
//! No input may panic, allocate by an announced length, or loop.
#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use unrooted_protocol::{read_request, BodyKind, FramedReader, ProtocolVersion, WireContext};

fuzz_target!(|data: &[u8]| {
    let mut input = unrooted_fuzz::Bytes::new(data);
    let minor = 21 + input.byte() % 18;
    let cx = WireContext::new(ProtocolVersion::new(1, minor), unrooted_fuzz::store_dir());
    let mut r: &[u8] = input.rest();
    // Each request consumes at least its 8-byte opcode, so this only bounds the loop.
    for _ in 0..data.len() / 8 + 1 {
        match read_request(&mut r, &cx) {
            Ok(None) => return,
            Ok(Some(req)) => match req.body(cx.version) {
                Some(BodyKind::Framed) => {
                    let mut body = FramedReader::new(&mut r, cx.limits.max_frame);
                    if body.drain().is_err() {
                        return;
                    }
                }
                Some(BodyKind::UnframedNar) => {
                    if unrooted_format::nar::validate(&mut r).is_err() {
                        return;
                    }
                }
                // Pulled with STDERR_READ: nothing follows until the server asks.
                Some(BodyKind::PulledWithStderrRead) | None => {}
            },
            Err(e) => {
                let _ = e.to_string();
                if !e.is_recoverable() {
                    return;
                }
            }
        }
    }
    // Whatever is left is never read: the loop above must have ended the input.
    let mut rest = Vec::new();
    let _ = r.read_to_end(&mut rest);
});
