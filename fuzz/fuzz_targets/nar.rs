//! The NAR reader: validation, listing (every flag combination) and restoring into
//! a fresh directory. Each must refuse bad input with an error (no panic, no
//! allocation sized by a length prefix, no hang), and all three must agree on
//! whether the input is one archive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unrooted_format::nar::{self, ListOptions};

fuzz_target!(|data: &[u8]| {
    let valid = nar::validate(data).map_err(|e| e.to_string());
    for bits in 0..8u8 {
        let options = ListOptions {
            long: bits & 1 != 0,
            recursive: bits & 2 != 0,
            json: bits & 4 != 0,
        };
        let listed = nar::list(data, options);
        assert_eq!(valid.is_ok(), listed.is_ok(), "validate and list disagree");
    }
    let mut copy = Vec::new();
    let copied = nar::copy_nar(data, &mut copy);
    assert_eq!(
        valid.is_ok(),
        copied.is_ok(),
        "validate and copy_nar disagree"
    );
    if let Ok(size) = &valid {
        // A valid archive is consumed exactly: copy_nar hands back the same bytes.
        assert_eq!(copy, data[..*size as usize], "copy_nar altered the archive");
    }
    let dir = tempfile::tempdir().expect("temporary directory");
    let restored = nar::restore(data, &dir.path().join("out"));
    assert_eq!(
        valid.is_ok(),
        restored.is_ok(),
        "validate and restore disagree: {valid:?} vs {restored:?}"
    );
    if let Ok(size) = valid {
        // A strict reader accepts only canonical archives, so what was restored dumps
        // back to the very same bytes.
        let mut again = Vec::new();
        nar::dump_path(&dir.path().join("out"), &mut again).expect("dumping the restored tree");
        assert_eq!(again, data[..size as usize], "restore/dump round trip");
    }
});
