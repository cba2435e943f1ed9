//! The client side: the log channel (`StderrMessage::read`, error frames included)
//! and every typed reply reader, at every version 1.21–1.38. The first byte picks
//! the version, the second which reader starts; the rest is the daemon's bytes.
//! A hostile or broken daemon must get an error, never a panic or an allocation
//! sized by its announced lengths.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unrooted_protocol::path_info::{UnkeyedValidPathInfo, ValidPathInfo};
use unrooted_protocol::reply::{self, GcResult, MissingInfo};
use unrooted_protocol::stderr::StderrMessage;
use unrooted_protocol::{BuildResult, KeyedBuildResult, ProtocolVersion, WireContext};

fuzz_target!(|data: &[u8]| {
    let mut input = unrooted_fuzz::Bytes::new(data);
    let minor = 21 + input.byte() % 18;
    let which = input.byte();
    let cx = WireContext::new(ProtocolVersion::new(1, minor), unrooted_fuzz::store_dir());
    let mut r: &[u8] = input.rest();
    // Log messages until STDERR_LAST or an error, as `Client::process_stderr` reads.
    for _ in 0..data.len() / 8 + 1 {
        match StderrMessage::read(&mut r, &cx) {
            Ok(StderrMessage::Last) => break,
            Ok(_) => {}
            Err(_) => return,
        }
    }
    let _ = match which % 10 {
        0 => MissingInfo::read(&mut r, &cx).map(drop),
        1 => GcResult::read(&mut r, &cx).map(drop),
        2 => reply::read_roots(&mut r, &cx).map(drop),
        3 => reply::read_output_map(&mut r, &cx).map(drop),
        4 => reply::read_realisations(&mut r, &cx).map(drop),
        5 => ValidPathInfo::read(&mut r, &cx).map(drop),
        6 => UnkeyedValidPathInfo::read(&mut r, &cx).map(drop),
        7 => BuildResult::read(&mut r, &cx).map(drop),
        8 => KeyedBuildResult::read_list(&mut r, &cx).map(drop),
        _ => match std::str::from_utf8(r) {
            Ok(text) => {
                unrooted_protocol::DerivedPath::parse(text, &cx.store_dir, cx.version).map(drop)
            }
            Err(_) => Ok(()),
        },
    };
});
