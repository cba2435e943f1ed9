//! Property: printing and parsing are inverse on every derivation, including odd
//! bytes (quotes, backslashes, control bytes, non-UTF-8) in the escaped fields.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use unrooted_format::derivation::{json, Derivation, DerivationOutput};
use unrooted_format::{FileIngestionMethod, Hash, HashAlgo, StoreDir, StorePath};

fn store_path(suffix: &'static str) -> impl Strategy<Value = StorePath> {
    ("[0-9a-df-np-sv-z]{32}", "[A-Za-z0-9+._?=-]{1,20}").prop_map(move |(hash, name)| {
        StorePath::from_base_name(&format!("{hash}-{name}{suffix}")).unwrap()
    })
}

fn method() -> impl Strategy<Value = FileIngestionMethod> {
    prop_oneof![
        Just(FileIngestionMethod::Flat),
        Just(FileIngestionMethod::Recursive)
    ]
}

fn algo() -> impl Strategy<Value = HashAlgo> {
    prop::sample::select(HashAlgo::ALL.to_vec())
}

fn output_name() -> impl Strategy<Value = String> {
    "[a-z][a-z0-9]{0,6}"
}

fn outputs() -> impl Strategy<Value = BTreeMap<String, DerivationOutput>> {
    prop_oneof![
        prop::collection::btree_map(
            output_name(),
            store_path("").prop_map(DerivationOutput::InputAddressed),
            1..4
        ),
        (
            store_path(""),
            method(),
            algo(),
            prop::collection::vec(any::<u8>(), 64)
        )
            .prop_map(|(path, method, algo, bytes)| {
                let hash = Hash::from_digest(algo, &bytes[..algo.size()]).unwrap();
                BTreeMap::from([(
                    "out".to_owned(),
                    DerivationOutput::Fixed { path, method, hash },
                )])
            }),
        (
            method(),
            algo(),
            prop::collection::btree_set(output_name(), 1..3)
        )
            .prop_map(|(method, algo, names)| names
                .into_iter()
                .map(|n| (n, DerivationOutput::Floating { method, algo }))
                .collect()),
        prop::collection::btree_set(output_name(), 1..3).prop_map(|names| names
            .into_iter()
            .map(|n| (n, DerivationOutput::Deferred))
            .collect()),
        (method(), algo()).prop_map(|(method, algo)| BTreeMap::from([(
            "out".to_owned(),
            DerivationOutput::Impure { method, algo }
        )])),
    ]
}

/// Bytes biased towards the ones escaping is about.
fn odd_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        prop_oneof![
            prop::sample::select(b"\"\\\n\r\t$()[],\x00\x01\x7f\xff\xc3\xa9 ".to_vec()),
            any::<u8>(),
        ],
        0..24,
    )
}

fn derivation() -> impl Strategy<Value = Derivation> {
    (
        "[a-z][a-z0-9-]{0,10}",
        outputs(),
        prop::collection::btree_map(
            store_path(".drv"),
            prop::collection::btree_set(output_name(), 0..3),
            0..3,
        ),
        prop::collection::btree_set(store_path(""), 0..3),
        // `system` is written raw: Nix could not read back a quote or backslash.
        prop::collection::vec(
            any::<u8>().prop_filter("raw", |b| *b != b'"' && *b != b'\\'),
            0..16,
        ),
        odd_bytes(),
        prop::collection::vec(odd_bytes(), 0..4),
        prop::collection::btree_map(odd_bytes(), odd_bytes(), 0..6),
    )
        .prop_map(
            |(name, outputs, input_drvs, input_srcs, system, builder, args, env)| Derivation {
                name,
                outputs,
                input_drvs,
                input_srcs,
                system,
                builder,
                args,
                env,
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn print_parse_print_is_identity(
        drv in derivation(),
        dir in prop::sample::select(vec!["/nix/store", "/tmp/some store/x", "/s"]),
    ) {
        let dir = StoreDir::new(dir).unwrap();
        let printed = drv.to_aterm(&dir);
        let parsed = Derivation::parse(&dir, &printed, &drv.name).unwrap();
        prop_assert_eq!(&parsed.to_aterm(&dir), &printed);
        prop_assert_eq!(&parsed, &drv);
        // The JSON writer copes with every byte too.
        let path = drv.drv_path(&dir).unwrap();
        let out = json::show_derivations(&dir, [(&path, &drv)]);
        let ends_with_brace = out.ends_with(b"}\n");
        prop_assert!(ends_with_brace);
    }

    #[test]
    fn parser_never_panics_on_mutations(
        drv in derivation(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = StoreDir::new("/nix/store").unwrap();
        let mut bytes = drv.to_aterm(&dir);
        for (at, byte) in edits {
            let i = at.index(bytes.len());
            bytes[i] = byte;
        }
        let n = cut.index(bytes.len() + 1);
        if let Ok(d) = Derivation::parse(&dir, &bytes[..n], "x") {
            // Whatever is accepted prints back to exactly the accepted bytes.
            prop_assert_eq!(d.to_aterm(&dir), bytes[..n].to_vec());
        }
    }
}

#[test]
fn input_drv_sets_may_be_empty_and_names_sorted() {
    let dir = StoreDir::new("/nix/store").unwrap();
    let p = StorePath::from_base_name("3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv").unwrap();
    let drv = Derivation {
        name: "x".into(),
        outputs: BTreeMap::from([("out".into(), DerivationOutput::Deferred)]),
        input_drvs: BTreeMap::from([(p, BTreeSet::from(["out".into(), "dev".into()]))]),
        input_srcs: BTreeSet::new(),
        system: b"s".to_vec(),
        builder: b"b".to_vec(),
        args: vec![],
        env: BTreeMap::new(),
    };
    assert_eq!(
        String::from_utf8(drv.to_aterm(&dir)).unwrap(),
        r#"Derive([("out","","","")],[("/nix/store/3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv",["dev","out"])],[],"s","b",[],[])"#
    );
}
