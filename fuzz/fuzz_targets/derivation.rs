//! The ATerm parser (`Derivation::parse`): hostile `.drv` bytes are refused with an
//! error; what parses prints to a form that parses to the same derivation, and the type and reference queries the
//! daemon runs on it do not panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unrooted_format::derivation::Derivation;

fuzz_target!(|data: &[u8]| {
    let dir = unrooted_fuzz::store_dir();
    let Ok(drv) = Derivation::parse(&dir, data, "fuzz") else {
        return;
    };
    let _ = drv.derivation_type();
    let _ = drv.references();
    let _ = drv.drv_path(&dir);
    let _ = drv.structured_attrs_json();
    let printed = drv.to_aterm(&dir);
    let again = Derivation::parse(&dir, &printed, "fuzz").expect("printed form parses");
    assert_eq!(again, drv, "print/parse round trip");
});
