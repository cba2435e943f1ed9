//! The collector's decoder of the roots helper's reply (NUL-terminated items until
//! EOF). A compromised or buggy helper must produce an error or an answer, never a
//! panic; every root returned must be a store path of our store.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = unrooted_fuzz::store_dir();
    if let Ok(Ok(roots)) = unrooted_gc::fuzz_parse_helper_answer(data, &dir) {
        for root in roots {
            let full = dir.display(&root);
            assert_eq!(
                dir.parse_path(&full).ok(),
                Some(root),
                "root outside the store"
            );
        }
    }
});
