//! narinfo and nix-cache-info parsing: hostile text from a binary cache is refused
//! with an error; what parses prints to text that parses to the same value, and its
//! fingerprint (what signatures are checked against) is computed without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unrooted_format::narinfo::{CacheInfo, NarInfo};

fuzz_target!(|data: &[u8]| {
    // Caches serve text; the fetcher refuses bytes that are not UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = unrooted_fuzz::store_dir();
    if let Ok(info) = NarInfo::parse(&dir, text) {
        let _ = info.fingerprint(&dir);
        let printed = info.to_text(&dir);
        let again = NarInfo::parse(&dir, &printed).expect("printed narinfo parses");
        assert_eq!(again, info, "print/parse round trip");
    }
    if let Ok(cache) = CacheInfo::parse(text) {
        let printed = cache.to_text();
        let again = CacheInfo::parse(&printed).expect("printed cache info parses");
        assert_eq!(again, cache, "print/parse round trip");
    }
});
