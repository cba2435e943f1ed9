//! Derivation vectors from Nix 2.8 (`docs/spec/store-formats.md` §8, V14–V22): see
//! `vectors/drv/README.md`.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use unrooted_format::derivation::{
    aterm, downstream_placeholder, hash_placeholder, json, name_from_drv_path, Derivation,
    DerivationOutput, DerivationType, DrvHashKind, DrvHasher, Field, Limits, ParseError,
};
use unrooted_format::{StoreDir, StorePath, StorePathError};

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/drv")
}

fn nix_store() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

fn load(path: &StorePath) -> Result<Derivation, std::io::Error> {
    let bytes = fs::read(vector_dir().join(path.to_base_name()))?;
    let name = name_from_drv_path(path).unwrap();
    Derivation::parse(&nix_store(), &bytes, name)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

fn vector(base: &str) -> (StorePath, Derivation, Vec<u8>) {
    let path = StorePath::from_base_name(base).unwrap();
    let bytes = fs::read(vector_dir().join(base)).unwrap();
    let drv = load(&path).unwrap();
    (path, drv, bytes)
}

fn hasher() -> DrvHasher<impl FnMut(&StorePath) -> Result<Derivation, std::io::Error>> {
    DrvHasher::new(nix_store(), load)
}

fn hex(h: &[u8; 32]) -> String {
    data_encoding::HEXLOWER.encode(h)
}

fn all_vectors() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(vector_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".drv"))
        .collect();
    names.sort();
    names
}

const SIMPLE: &str = "3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv";
const WITH_SRC: &str = "86x5a09xih4c31vsgc6syy3wp9zgid5h-with-src.drv";
const FOD_FLAT: &str = "gws4wsdqh1v8by5c87x11iml32lx4irc-fod-flat.drv";
const FOD_REC: &str = "i3lixdy9gjqzd5xpf9abmcwyvscwhj0m-fod-rec.drv";
const MULTI: &str = "f9b4r1gs4drbd9y8a5nfpi49vvxfn9gz-multi.drv";
const DEP: &str = "b9fahz5qcrx5x9a286hsd9vzgvkg7s7r-dep.drv";
const ESCAPES: &str = "kp3xq8h1j4vrp61hyc198mdmmnmqbljq-escapes.drv";
const SA: &str = "4miwr8rkvq6xd1q6xv2m469z8y09bmpz-sa.drv";
const CA: &str = "3yqlm6qcq8599j7lzix4ijnrb7clz6wf-ca.drv";
const IA_ON_CA: &str = "qdar41qp1s7k8y5m5q1dv1izxyyfz3yp-ia-on-ca.drv";

#[test]
fn every_vector_round_trips_names_itself_and_checks_out() {
    let names = all_vectors();
    assert_eq!(names.len(), 10, "{names:?}");
    let dir = nix_store();
    let mut h = hasher();
    for base in names {
        let (path, drv, bytes) = vector(&base);
        assert_eq!(drv.to_aterm(&dir), bytes, "{base}: print(parse) differs");
        assert_eq!(
            drv.drv_path(&dir).unwrap(),
            path,
            "{base}: computed .drv path"
        );
        assert_eq!(h.check_outputs(&drv).unwrap(), vec![], "{base}: outputs");
        let json_twin = fs::read(vector_dir().join(format!("{base}.json"))).unwrap();
        let ours = json::show_derivations(&dir, [(&path, &drv)]);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&json_twin),
            "{base}: show-derivation JSON"
        );
        assert_eq!(ours, json_twin);
    }
}

#[test]
fn v14_simple_hashes_and_masked_text() {
    let (_, drv, _) = vector(SIMPLE);
    let dir = nix_store();
    let masked = "Derive([(\"out\",\"\",\"\",\"\")],[],[],\"x86_64-linux\",\"/bin/sh\",[\"-c\",\"echo hello > $out\"],[(\"builder\",\"/bin/sh\"),(\"name\",\"simple\"),(\"out\",\"\"),(\"system\",\"x86_64-linux\")])";
    let text = aterm_masked(&drv, &dir);
    assert_eq!(String::from_utf8(text).unwrap(), masked);
    let mut h = hasher();
    let m = h.hash_modulo(&drv, true).unwrap();
    assert_eq!(m.kind, DrvHashKind::Regular);
    assert_eq!(
        hex(&m.hashes["out"]),
        "cbd84a88dac33c14a874f676ab17db2518d565dc03e891ccf9d4be35138ea813"
    );
    assert_eq!(
        hex(&h.hash_modulo(&drv, false).unwrap().hashes["out"]),
        "d00ef3a220516efccd495b796868b4e1653f864d80d1026c4204f63d63a5845b"
    );
    let paths = h.output_paths(&drv).unwrap();
    assert_eq!(
        dir.display(paths["out"].as_ref().unwrap()),
        "/nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple"
    );
}

/// What hashDerivationModulo hashes for a derivation without inputs.
fn aterm_masked(drv: &Derivation, dir: &StoreDir) -> Vec<u8> {
    let mut d = drv.clone();
    for (name, o) in d.outputs.iter_mut() {
        *o = DerivationOutput::Deferred;
        d.env.insert(name.clone().into_bytes(), Vec::new());
    }
    aterm::print(&d, dir)
}

/// The same expression instantiated in another store (S2): fill in a template with
/// deferred outputs, as derivationStrict does, and get S2's paths.
#[test]
fn v14_in_another_store_dir() {
    let (_, mut drv, _) = vector(SIMPLE);
    let s2 = StoreDir::new("/tmp/nixspec/store").unwrap();
    drv.outputs.insert("out".into(), DerivationOutput::Deferred);
    drv.env.insert(b"out".to_vec(), Vec::new());
    let mut h = DrvHasher::new(s2.clone(), load);
    assert_eq!(
        hex(&h.hash_modulo(&drv, true).unwrap().hashes["out"]),
        "cbd84a88dac33c14a874f676ab17db2518d565dc03e891ccf9d4be35138ea813"
    );
    h.fill_output_paths(&mut drv).unwrap();
    let out = "/tmp/nixspec/store/81v65b2f5zy0zy29rv0a01bbl7116gww-simple";
    assert_eq!(drv.env[b"out".as_slice()], out.as_bytes());
    assert_eq!(
        drv.outputs["out"].path().map(|p| s2.display(p)).unwrap(),
        out
    );
    assert_eq!(
        s2.display(&drv.drv_path(&s2).unwrap()),
        "/tmp/nixspec/store/gxc0q731db674jf8lkv348l3pvv8csx4-simple.drv"
    );
    assert_eq!(h.check_outputs(&drv).unwrap(), vec![]);
}

#[test]
fn v15_input_source_is_a_reference() {
    let (_, drv, _) = vector(WITH_SRC);
    let refs: Vec<String> = drv.references().iter().map(|p| p.to_string()).collect();
    assert_eq!(refs, ["5nw3di7akby6ah73vh1qa8ig75zm49h5-builder.sh"]);
}

#[test]
fn v16_v17_fixed_output_hashes() {
    let mut h = hasher();
    let (_, flat, _) = vector(FOD_FLAT);
    assert_eq!(flat.derivation_type(), Ok(DerivationType::Fixed));
    assert_eq!(
        hex(&h.hash_modulo(&flat, false).unwrap().hashes["out"]),
        "88e2340556ebca28ae63f8f2233a88b8292358ca9dbe7802dbbbc6bc4e514ed2"
    );
    let (_, rec, _) = vector(FOD_REC);
    assert_eq!(
        hex(&h.hash_modulo(&rec, true).unwrap().hashes["out"]),
        "16d9f65a0d26ca7a8e4b1dae3bc7bec5036fd58dd850940b162d8d74e6757635"
    );
    let paths = h.output_paths(&rec).unwrap();
    assert_eq!(
        paths["out"].as_ref().unwrap().to_string(),
        "9x8bwh0mba9ynl5l7840jn3zzs6z6qrb-fod-rec"
    );
    // The fixed-output hash ignores the builder: a changed script keeps dependents.
    let mut changed = flat.clone();
    changed.args[1] = b"curl something".to_vec();
    assert_eq!(
        h.hash_modulo(&changed, false).unwrap(),
        h.hash_modulo(&flat, false).unwrap()
    );
}

#[test]
fn v18_multiple_outputs() {
    let (_, drv, _) = vector(MULTI);
    let mut h = hasher();
    let m = h.hash_modulo(&drv, true).unwrap();
    for o in ["out", "dev"] {
        assert_eq!(
            hex(&m.hashes[o]),
            "90a64114108c80e18ebea2feb7431d45f58d4bd0a6f05be2309ae39da3a60490"
        );
    }
    assert_eq!(
        hex(&h.hash_modulo(&drv, false).unwrap().hashes["dev"]),
        "b6ce31b2381157a90762b575d9f7746187f3b1e8082baa010a9e40a58c6a8312"
    );
    let paths: BTreeMap<_, _> = h
        .output_paths(&drv)
        .unwrap()
        .into_iter()
        .map(|(k, v)| (k, v.unwrap().to_string()))
        .collect();
    assert_eq!(paths["dev"], "vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev");
    assert_eq!(paths["out"], "j6pdrf4s3p14yyns9cg08babddrqqjxm-multi");
}

#[test]
fn v19_dependency_chain() {
    let (_, drv, _) = vector(DEP);
    let mut loads = Vec::new();
    let mut h = DrvHasher::new(nix_store(), |p: &StorePath| {
        loads.push(p.to_string());
        load(p)
    });
    let m = h.hash_modulo(&drv, true).unwrap();
    assert_eq!(
        hex(&m.hashes["out"]),
        "8a2ce57b263c6ecfe71218d9d921aa5ddb780048d2ab57996bebcf4cd09a4544"
    );
    let paths = h.output_paths(&drv).unwrap();
    assert_eq!(
        paths["out"].as_ref().unwrap().to_string(),
        "vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep"
    );
    assert_eq!(
        hex(&h
            .path_hash(&StorePath::from_base_name(FOD_FLAT).unwrap())
            .unwrap()
            .hashes["out"]),
        "88e2340556ebca28ae63f8f2233a88b8292358ca9dbe7802dbbbc6bc4e514ed2"
    );
    drop(h);
    // Memoised: each input loaded once although hashed three times.
    loads.sort();
    assert_eq!(loads, [SIMPLE, MULTI, FOD_FLAT]);

    let expected = "Derive([(\"out\",\"\",\"\",\"\")],[(\"88e2340556ebca28ae63f8f2233a88b8292358ca9dbe7802dbbbc6bc4e514ed2\",[\"out\"]),(\"b6ce31b2381157a90762b575d9f7746187f3b1e8082baa010a9e40a58c6a8312\",[\"dev\"]),(\"d00ef3a220516efccd495b796868b4e1653f864d80d1026c4204f63d63a5845b\",[\"out\"])],[],\"x86_64-linux\",\"/bin/sh\",[\"-c\",\"cat /nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple /nix/store/2vmnikz9gvdskxvni5na3alrgzm86qqy-fod-flat > $out; echo /nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev >> $out; echo $out >> $out\"],[(\"builder\",\"/bin/sh\"),(\"name\",\"dep\"),(\"out\",\"\"),(\"system\",\"x86_64-linux\")])";
    assert_eq!(
        hex(&unrooted_format::hash::sha256(expected.as_bytes())),
        "8a2ce57b263c6ecfe71218d9d921aa5ddb780048d2ab57996bebcf4cd09a4544"
    );
}

#[test]
fn v19_tampered_output_is_reported() {
    let (_, mut drv, _) = vector(DEP);
    let wrong = nix_store()
        .parse_path("/nix/store/nww3hczmw8rjr933hvxdx5l25xs6xm0l-dep")
        .unwrap();
    drv.outputs
        .insert("out".into(), DerivationOutput::InputAddressed(wrong));
    let mismatches = hasher().check_outputs(&drv).unwrap();
    let lines: Vec<String> = mismatches
        .iter()
        .map(|m| m.describe(&nix_store()))
        .collect();
    assert_eq!(
        lines,
        ["output 'out' has path '/nix/store/nww3hczmw8rjr933hvxdx5l25xs6xm0l-dep', should be '/nix/store/vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep'"]
    );
    drv.env.remove(b"out".as_slice());
    assert_eq!(hasher().check_outputs(&drv).unwrap().len(), 2);
}

#[test]
fn v19_missing_input_is_an_error() {
    let (_, drv, _) = vector(DEP);
    let mut h = DrvHasher::new(nix_store(), |_: &StorePath| {
        Err::<Derivation, _>(std::io::Error::from(std::io::ErrorKind::NotFound))
    });
    let err = h.output_paths(&drv).unwrap_err().to_string();
    assert!(
        err.starts_with("loading input derivation '/nix/store/"),
        "{err}"
    );
}

#[test]
fn v20_escapes_decode_to_the_original_bytes() {
    let (_, drv, _) = vector(ESCAPES);
    assert_eq!(
        drv.env[b"weird".as_slice()],
        b"quote\" backslash\\ newline\n tab\t cr\r dollar$ end"
    );
}

#[test]
fn v21_structured_attrs_and_placeholders() {
    let (_, drv, _) = vector(SA);
    let attrs = drv.structured_attrs_json().unwrap().unwrap();
    assert_eq!(
        serde_json::Value::Object(attrs).to_string(),
        r#"{"builder":"/bin/sh","list":[1,"two",true,null],"name":"sa","system":"x86_64-linux"}"#
    );
    assert_eq!(
        hash_placeholder("out"),
        "/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9"
    );
    assert_eq!(
        hash_placeholder("dev"),
        "/02qcpld1y6xhs5gz9bchpxaw0xdhmsp5dv88lh25r2ss44kh8dxz"
    );
    assert!(vector(SIMPLE).1.structured_attrs().is_none());
}

#[test]
fn v22_content_addressed_and_deferred() {
    let (ca_path, ca, _) = vector(CA);
    assert_eq!(ca.derivation_type(), Ok(DerivationType::Floating));
    assert_eq!(
        ca.env[b"out".as_slice()],
        hash_placeholder("out").into_bytes()
    );
    let mut h = hasher();
    let m = h.hash_modulo(&ca, true).unwrap();
    assert_eq!(m.kind, DrvHashKind::Deferred);
    // The realisation id of `ca` (Realisations.drvPath) is its masked hash.
    assert_eq!(
        hex(&m.hashes["out"]),
        "01ab836cad1d712312b0b913d12b5cc1fafa847108c72ce4e9827b1f56478b93"
    );
    assert_eq!(
        downstream_placeholder(&ca_path, "out"),
        "/0lmyb5nvfl8al7yg3j6w99qddvi1160rjvrbf5xfcn8j53ifgf1v"
    );
    let (_, ia, _) = vector(IA_ON_CA);
    assert_eq!(
        ia.derivation_type(),
        Ok(DerivationType::DeferredInputAddressed)
    );
    assert_eq!(
        h.hash_modulo(&ia, true).unwrap().kind,
        DrvHashKind::Deferred
    );
    assert_eq!(h.output_paths(&ia).unwrap()["out"], None);
    assert_eq!(h.output_paths(&ca).unwrap()["out"], None);
}

#[test]
fn negative_vectors_give_the_named_error() {
    let dir = nix_store();
    let invalid = vector_dir().join("invalid");
    let mut seen = 0;
    let mut check = |file: &str, ok: &dyn Fn(&ParseError) -> bool| {
        let bytes = fs::read(invalid.join(format!("{file}.drv"))).unwrap();
        let err = Derivation::parse(&dir, &bytes, "simple").unwrap_err();
        assert!(ok(&err), "{file}: unexpected error {err:?}");
        seen += 1;
    };
    use ParseError as E;
    check("truncated", &|e| matches!(e, E::UnexpectedEnd { .. }));
    check("empty", &|e| {
        matches!(e, E::UnexpectedEnd { offset: 0, .. })
    });
    check("not-derive", &|e| {
        matches!(
            e,
            E::Expected {
                field: Field::Structure,
                offset: 5,
                ..
            }
        )
    });
    check("unterminated-string", &|e| {
        matches!(
            e,
            E::UnexpectedEnd {
                field: Field::OutputName,
                offset: 13
            }
        )
    });
    check("bad-escape-at-end", &|e| {
        matches!(
            e,
            E::UnexpectedEnd {
                field: Field::EnvValue,
                ..
            }
        )
    });
    check("needless-escape", &|e| {
        matches!(
            e,
            E::NonCanonicalEscape {
                field: Field::Builder,
                offset: 103
            }
        )
    });
    check("raw-newline-in-arg", &|e| {
        matches!(
            e,
            E::NonCanonicalEscape {
                field: Field::Arg,
                ..
            }
        )
    });
    check("backslash-in-system", &|e| {
        matches!(
            e,
            E::BackslashInRawString {
                field: Field::System,
                ..
            }
        )
    });
    check("relative-output-path", &|e| {
        matches!(
            e,
            E::PathNotAbsolute {
                field: Field::OutputPath,
                offset: 15,
                ..
            }
        )
    });
    check("output-outside-store", &|e| {
        matches!(
            e,
            E::StorePath {
                field: Field::OutputPath,
                source: StorePathError::NotInStore { .. },
                ..
            }
        )
    });
    check("bad-hash-part", &|e| {
        matches!(
            e,
            E::StorePath {
                source: StorePathError::HashPart { .. },
                ..
            }
        )
    });
    check("output-tuple-three-fields", &|e| {
        matches!(
            e,
            E::Expected {
                field: Field::OutputHashAlgo,
                ..
            }
        )
    });
    check("output-hash-without-algo", &|e| {
        matches!(e, E::OutputTuple { .. })
    });
    check("floating-with-path", &|e| {
        matches!(e, E::OutputTuple { .. })
    });
    check("bad-hash-algo", &|e| matches!(e, E::HashAlgo { .. }));
    check("fixed-hash-uppercase", &|e| {
        matches!(e, E::OutputHash { .. })
    });
    check("fixed-hash-wrong-length", &|e| {
        matches!(e, E::OutputHash { .. })
    });
    check("unsorted-env", &|e| {
        matches!(
            e,
            E::Unsorted {
                field: Field::EnvKey,
                ..
            }
        )
    });
    check("duplicate-env", &|e| {
        matches!(
            e,
            E::Duplicate {
                field: Field::EnvKey,
                ..
            }
        )
    });
    check("duplicate-output", &|e| {
        matches!(
            e,
            E::Duplicate {
                field: Field::OutputName,
                ..
            }
        )
    });
    check("missing-comma", &|e| {
        matches!(
            e,
            E::Expected {
                field: Field::Arg,
                ..
            }
        )
    });
    check("leading-comma", &|e| {
        matches!(
            e,
            E::Expected {
                field: Field::Arg,
                ..
            }
        )
    });
    check("trailing-newline", &|e| {
        matches!(e, E::TrailingBytes { offset: 263 })
    });
    check("non-utf8-output-name", &|e| {
        matches!(
            e,
            E::Utf8 {
                field: Field::OutputName,
                ..
            }
        )
    });
    check("too-many-outputs", &|e| {
        matches!(
            e,
            E::TooMany {
                field: Field::OutputName,
                max: 1024,
                ..
            }
        )
    });
    let files = fs::read_dir(&invalid)
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .path()
                .extension()
                .is_some_and(|x| x == "drv")
        })
        .count();
    assert_eq!(seen, files, "every negative vector has an expectation");
}

#[test]
fn limits_bound_size_counts_and_strings() {
    let dir = nix_store();
    let bytes = fs::read(vector_dir().join(SIMPLE)).unwrap();
    let limits = |f: fn(&mut Limits)| {
        let mut l = Limits::default();
        f(&mut l);
        l
    };
    assert_eq!(
        aterm::parse(&dir, &bytes, "simple", &limits(|l| l.max_size = 100)),
        Err(ParseError::TooLarge {
            size: 263,
            max: 100
        })
    );
    assert!(matches!(
        aterm::parse(&dir, &bytes, "simple", &limits(|l| l.max_args = 1)),
        Err(ParseError::TooMany {
            field: Field::Arg,
            max: 1,
            ..
        })
    ));
    assert!(matches!(
        aterm::parse(&dir, &bytes, "simple", &limits(|l| l.max_env = 3)),
        Err(ParseError::TooMany {
            field: Field::EnvKey,
            max: 3,
            ..
        })
    ));
    assert!(matches!(
        aterm::parse(&dir, &bytes, "simple", &limits(|l| l.max_string = 10)),
        Err(ParseError::StringTooLong { .. })
    ));
    // Every prefix of a valid file is an error, never a panic.
    for n in 0..bytes.len() {
        assert!(Derivation::parse(&dir, &bytes[..n], "simple").is_err());
    }
}

#[test]
fn output_types_must_not_mix() {
    let (_, simple, _) = vector(SIMPLE);
    let (_, flat, _) = vector(FOD_FLAT);
    let mut mixed = simple.clone();
    mixed
        .outputs
        .insert("dev".into(), DerivationOutput::Deferred);
    assert!(mixed.derivation_type().is_err());
    let mut two_fixed = flat.clone();
    two_fixed
        .outputs
        .insert("dev".into(), flat.outputs["out"].clone());
    assert!(two_fixed.derivation_type().is_err());
    let mut bad_name = simple;
    bad_name.name = "a/b".into();
    assert!(bad_name.drv_path(&nix_store()).is_err());
    assert!(hasher().output_paths(&bad_name).is_err());
}

/// A synthetic input-addressed derivation `n` depending on `next`.
fn chain_link(n: u64, next: Option<StorePath>) -> Derivation {
    let (_, mut drv, _) = vector(SIMPLE);
    drv.name = format!("link{n}");
    drv.input_drvs.clear();
    if let Some(next) = next {
        drv.input_drvs.insert(next, ["out".to_owned()].into());
    }
    drv
}

fn link_path(n: u64) -> StorePath {
    let name = unrooted_format::StorePathName::new(&format!("link{n}.drv")).unwrap();
    let digest = unrooted_format::hash::sha256(&n.to_le_bytes());
    nix_store().make_text_path(&name, &digest, &Default::default())
}

fn link_index(p: &StorePath) -> u64 {
    let name = name_from_drv_path(p).unwrap();
    name.trim_start_matches("link").parse().unwrap()
}

#[test]
fn hostile_loader_cycle_is_an_error() {
    // link0 -> link1 -> link2 -> link0
    let mut h = DrvHasher::new(nix_store(), |p: &StorePath| {
        let n = link_index(p);
        Ok::<_, std::io::Error>(chain_link(n, Some(link_path((n + 1) % 3))))
    });
    let err = h.hash_modulo(&chain_link(9, Some(link_path(0))), true);
    assert!(
        matches!(
            err,
            Err(unrooted_format::derivation::HashModuloError::Cycle { .. })
        ),
        "{err:?}"
    );
}

#[test]
fn deep_input_chain_does_not_overflow_the_stack() {
    const DEPTH: u64 = 20_000;
    let mut h = DrvHasher::new(nix_store(), |p: &StorePath| {
        let n = link_index(p);
        Ok::<_, std::io::Error>(chain_link(n, (n < DEPTH).then(|| link_path(n + 1))))
    });
    let top = chain_link(0, Some(link_path(1)));
    let paths = h.output_paths(&top).unwrap();
    assert!(paths["out"].is_some());
}
