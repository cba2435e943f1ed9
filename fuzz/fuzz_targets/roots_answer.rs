//! The collector's decoder of the roots helper's reply (NUL-terminated items until
//! EOF), in both framings (ours, ending with the end-of-answer item, chosen by the
//! first byte's low bit; and upstream's). A compromised or buggy helper must produce
//! an error or an answer, never a panic; every root returned must be a store path of
//! our store, and an answer in our framing is complete only if it ends with the item.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = unrooted_fuzz::store_dir();
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let end_marker = first & 1 == 1;
    let answer = unrooted_gc::fuzz_parse_helper_answer(data, &dir, end_marker);
    if let (true, Ok(Ok(_))) = (end_marker, &answer) {
        assert!(data.ends_with(b"end of answer\0"), "complete without the end item");
    }
    if let Ok(Ok(roots)) = answer {
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
