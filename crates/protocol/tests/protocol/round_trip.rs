//! Encode → decode round trips of every request kind and the replies, at every
//! version where an encoding changes (including those no 2.8 client speaks).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use common::{cx, hello, path};
use unrooted_format::hash::{Hash, HashAlgo};
use unrooted_format::{ContentAddress, FileIngestionMethod, StorePathName};
use unrooted_protocol::build_result::dummy_drv_hash;
use unrooted_protocol::path_info::SubstitutablePathInfo;
use unrooted_protocol::reply::{self, GcResult, MissingInfo, RealisationReply};
use unrooted_protocol::request::{
    AddToStoreNar, BasicDerivation, BuildMode, ClientSettings, ContentAddressMethod,
    DerivationOutputWire, GcAction, GcOptions, GcPaths,
};
use unrooted_protocol::stderr::Verbosity;
use unrooted_protocol::{
    read_request, BuildResult, BuildStatus, DerivedPath, DrvOutput, KeyedBuildResult, OutputsSpec,
    ProtocolError, Realisation, Request, UnkeyedValidPathInfo, ValidPathInfo, WireContext,
};

const VERSIONS: [u8; 14] = [21, 22, 23, 25, 26, 27, 28, 29, 30, 31, 34, 35, 37, 38];

fn drv() -> unrooted_format::StorePath {
    path("6f7sr28xsakyb8bk7d4fkq7wh9mwrir2-trivial.drv")
}

fn dep() -> unrooted_format::StorePath {
    path("f19jpi3n2qbp4317m2mms1x8943j6h3n-trivial2")
}

fn realisation() -> Realisation {
    let id = DrvOutput {
        drv_hash: Hash::parse_bare(
            "236c7e2899f5ff7ea0e4dc8d5e3b8a4e6a3d7e1f0b3c2a1d9e8f7a6b5c4dd6f3",
            HashAlgo::Sha256,
        )
        .unwrap(),
        output_name: "out".into(),
    };
    Realisation {
        id: id.clone(),
        out_path: dep(),
        signatures: ["k:c2ln".to_owned()].into(),
        dependent_realisations: [(
            DrvOutput {
                drv_hash: dummy_drv_hash(),
                output_name: "dev".into(),
            },
            hello(),
        )]
        .into(),
    }
}

fn path_info() -> ValidPathInfo {
    let h = Hash::sha256([7; 32]);
    ValidPathInfo {
        path: hello(),
        info: UnkeyedValidPathInfo {
            deriver: Some(drv()),
            nar_hash: h,
            references: [dep(), hello()].into(),
            registration_time: 1_700_000_000,
            nar_size: 1234,
            ultimate: true,
            signatures: ["a:b".to_owned(), "c:d".to_owned()].into(),
            ca: Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Flat,
                hash: h,
            }),
        },
    }
}

fn derived_paths() -> Vec<DerivedPath> {
    vec![
        DerivedPath::Opaque(hello()),
        DerivedPath::Opaque(drv()),
        DerivedPath::Built {
            drv_path: drv(),
            outputs: OutputsSpec::All,
        },
        DerivedPath::Built {
            drv_path: drv(),
            outputs: OutputsSpec::Names(["out".to_owned(), "dev".to_owned()].into()),
        },
    ]
}

/// One sample of every request kind.
fn samples() -> Vec<Request> {
    let p = hello;
    let mut settings = ClientSettings {
        verbosity: Verbosity::Vomit,
        verbose_build: Verbosity::Vomit,
        keep_going: true,
        max_silent_time: 3600,
        ..ClientSettings::default()
    };
    settings.overrides.insert("sandbox".into(), "false".into());
    settings
        .overrides
        .insert("substituters".into(), "https://a https://b".into());
    vec![
        Request::IsValidPath(p()),
        Request::HasSubstitutes(p()),
        Request::QueryPathHash(p()),
        Request::QueryReferences(p()),
        Request::QueryReferrers(p()),
        Request::AddToStore {
            name: StorePathName::new("hello.txt").unwrap(),
            method: ContentAddressMethod::Fixed {
                method: FileIngestionMethod::Recursive,
                algo: HashAlgo::Sha256,
            },
            references: BTreeSet::new(),
            repair: false,
        },
        Request::AddToStore {
            name: StorePathName::new("flat").unwrap(),
            method: ContentAddressMethod::Fixed {
                method: FileIngestionMethod::Flat,
                algo: HashAlgo::Sha1,
            },
            references: BTreeSet::new(),
            repair: false,
        },
        Request::AddToStore {
            name: StorePathName::new("x.drv").unwrap(),
            method: ContentAddressMethod::Text,
            references: [dep()].into(),
            repair: true,
        },
        Request::AddTextToStore {
            name: StorePathName::new("t").unwrap(),
            text: "some text\n".into(),
            references: [dep()].into(),
        },
        Request::BuildPaths {
            paths: derived_paths(),
            mode: BuildMode::Check,
        },
        Request::BuildPaths {
            paths: vec![],
            mode: BuildMode::Normal,
        },
        Request::EnsurePath(p()),
        Request::AddTempRoot(p()),
        Request::AddIndirectRoot("/home/u/result".into()),
        Request::SyncWithGC,
        Request::FindRoots,
        Request::ExportPath { path: p(), sign: 0 },
        Request::QueryDeriver(p()),
        Request::SetOptions(settings),
        Request::CollectGarbage(GcOptions {
            action: GcAction::DeleteSpecific,
            paths: GcPaths::Specific {
                paths: [dep(), hello()].into(),
                delete_referrers: false,
            },
            ignore_liveness: false,
            max_freed: u64::MAX,
        }),
        Request::QuerySubstitutablePathInfo(p()),
        Request::QueryDerivationOutputs(drv()),
        Request::QueryAllValidPaths,
        Request::QueryPathInfo(p()),
        Request::ImportPaths,
        Request::QueryDerivationOutputNames(drv()),
        Request::QueryPathFromHashPart("79mr059vryxmkssnrikjr8v8ic6mmk57".into()),
        Request::QuerySubstitutablePathInfos(
            [(p(), path_info().info.ca), (dep(), None)]
                .into_iter()
                .collect(),
        ),
        Request::QueryValidPaths {
            paths: [p(), dep()].into(),
            substitute: true,
        },
        Request::QuerySubstitutablePaths([p()].into()),
        Request::QueryValidDerivers(p()),
        Request::OptimiseStore,
        Request::VerifyStore {
            check_contents: true,
            repair: false,
        },
        Request::BuildDerivation {
            drv_path: drv(),
            drv: BasicDerivation {
                outputs: [
                    (
                        "out".to_owned(),
                        DerivationOutputWire {
                            path: Some(dep()),
                            hash_algo: String::new(),
                            hash: String::new(),
                        },
                    ),
                    (
                        "ca".to_owned(),
                        DerivationOutputWire {
                            path: None,
                            hash_algo: "r:sha256".into(),
                            hash: String::new(),
                        },
                    ),
                ]
                .into(),
                input_srcs: [hello()].into(),
                platform: b"x86_64-linux".to_vec(),
                builder: b"/bin/sh".to_vec(),
                args: vec![b"-c".to_vec(), b"echo hi > $out".to_vec()],
                env: [
                    (b"out".to_vec(), b"/x".to_vec()),
                    (b"a".to_vec(), vec![0xff, 0]),
                ]
                .into(),
            },
            mode: BuildMode::Repair,
        },
        Request::AddSignatures {
            path: p(),
            signatures: vec!["z:1".into(), "a:2".into()],
        },
        Request::NarFromPath(p()),
        Request::AddToStoreNar(AddToStoreNar {
            info: path_info(),
            repair: false,
            dont_check_sigs: true,
        }),
        Request::QueryMissing(derived_paths()),
        Request::QueryDerivationOutputMap(drv()),
        Request::RegisterDrvOutput(realisation()),
        Request::QueryRealisation(realisation().id),
        Request::AddMultipleToStore {
            repair: true,
            dont_check_sigs: false,
        },
        Request::AddBuildLog(drv()),
        Request::BuildPathsWithResults {
            paths: derived_paths(),
            mode: BuildMode::Normal,
        },
        Request::AddPermRoot {
            path: p(),
            gc_root: "/home/u/root".into(),
        },
    ]
}

fn normalise_paths(paths: &[DerivedPath], minor: u8) -> Vec<DerivedPath> {
    paths
        .iter()
        .map(|d| match d {
            DerivedPath::Opaque(p) if minor < 30 && p.is_derivation() => DerivedPath::Built {
                drv_path: p.clone(),
                outputs: OutputsSpec::All,
            },
            other => other.clone(),
        })
        .collect()
}

/// What decoding the encoding of `req` at 1.`minor` gives, or `None` if it cannot be
/// encoded there.
fn expected_at(req: &Request, minor: u8) -> Option<Request> {
    Some(match req.clone() {
        Request::AddToStore {
            method: ContentAddressMethod::Text,
            ..
        } if minor < 25 => return None,
        Request::AddToStore {
            ref references,
            repair,
            ..
        } if minor < 25 && (!references.is_empty() || repair) => return None,
        Request::QueryValidPaths { paths, .. } if minor < 27 => Request::QueryValidPaths {
            paths,
            substitute: false,
        },
        Request::QuerySubstitutablePathInfos(m) if minor < 22 => {
            Request::QuerySubstitutablePathInfos(m.into_keys().map(|k| (k, None)).collect())
        }
        Request::RegisterDrvOutput(r) if minor < 31 => Request::RegisterDrvOutput(Realisation {
            signatures: BTreeSet::new(),
            dependent_realisations: BTreeMap::new(),
            ..r
        }),
        Request::BuildPaths { paths, mode } => Request::BuildPaths {
            paths: normalise_paths(&paths, minor),
            mode,
        },
        Request::BuildPathsWithResults { paths, mode } => Request::BuildPathsWithResults {
            paths: normalise_paths(&paths, minor),
            mode,
        },
        Request::QueryMissing(paths) => Request::QueryMissing(normalise_paths(&paths, minor)),
        other => other,
    })
}

#[test]
fn every_request_round_trips_at_every_version() {
    let samples = samples();
    let mut covered = BTreeSet::new();
    for minor in VERSIONS {
        let cx = cx(minor);
        for req in &samples {
            covered.insert(req.opcode().code());
            let mut bytes = Vec::new();
            let res = req.write(&mut bytes, &cx);
            let Some(expected) = expected_at(req, minor) else {
                assert!(
                    matches!(res, Err(ProtocolError::Unrepresentable { .. })),
                    "{req:?} at 1.{minor} should be unrepresentable"
                );
                continue;
            };
            res.unwrap();
            let mut r = &bytes[..];
            let back = read_request(&mut r, &cx)
                .unwrap_or_else(|e| panic!("{req:?} at 1.{minor}: {e}"))
                .unwrap();
            assert_eq!(back, expected, "at 1.{minor}");
            assert!(r.is_empty(), "{req:?} at 1.{minor}: {} bytes left", r.len());
            assert_eq!(bytes.len() % 8, 0);
        }
    }
    // Every opcode except the two removed ones has a sample.
    assert_eq!(covered.len(), unrooted_protocol::Opcode::ALL.len() - 2);
}

#[test]
fn encodings_really_differ_where_the_table_says() {
    let size = |req: &Request, minor| {
        let mut b = Vec::new();
        req.write(&mut b, &cx(minor)).unwrap();
        b
    };
    let s = samples();
    let find = |op| s.iter().find(|r| r.opcode() == op).unwrap();
    use unrooted_protocol::Opcode as O;
    assert_ne!(size(find(O::AddToStore), 24), size(find(O::AddToStore), 25));
    assert_ne!(
        size(find(O::QueryValidPaths), 26),
        size(find(O::QueryValidPaths), 27)
    );
    assert_ne!(
        size(find(O::QuerySubstitutablePathInfos), 21),
        size(find(O::QuerySubstitutablePathInfos), 22)
    );
    assert_ne!(
        size(find(O::RegisterDrvOutput), 30),
        size(find(O::RegisterDrvOutput), 31)
    );
    assert_ne!(
        size(find(O::QueryMissing), 29),
        size(find(O::QueryMissing), 30)
    );
    // The legacy AddToStore sends `fixed = 0` for recursive sha256, like old clients.
    let legacy = size(find(O::AddToStore), 21);
    assert_eq!(&legacy[32..40], &0u64.to_le_bytes());
}

#[test]
fn bodies_per_version() {
    use unrooted_protocol::request::body_of;
    use unrooted_protocol::{BodyKind, Opcode, ProtocolVersion};
    let v = |m| ProtocolVersion::new(1, m);
    assert_eq!(
        body_of(Opcode::AddToStore, v(24)),
        Some(BodyKind::UnframedNar)
    );
    assert_eq!(body_of(Opcode::AddToStore, v(25)), Some(BodyKind::Framed));
    assert_eq!(
        body_of(Opcode::AddToStoreNar, v(20)),
        Some(BodyKind::UnframedNar)
    );
    assert_eq!(
        body_of(Opcode::AddToStoreNar, v(21)),
        Some(BodyKind::PulledWithStderrRead)
    );
    assert_eq!(
        body_of(Opcode::AddToStoreNar, v(22)),
        Some(BodyKind::PulledWithStderrRead)
    );
    assert_eq!(
        body_of(Opcode::AddToStoreNar, v(23)),
        Some(BodyKind::Framed)
    );
    assert_eq!(
        body_of(Opcode::AddMultipleToStore, v(34)),
        Some(BodyKind::Framed)
    );
    assert_eq!(body_of(Opcode::AddBuildLog, v(34)), Some(BodyKind::Framed));
    assert_eq!(
        body_of(Opcode::ImportPaths, v(21)),
        Some(BodyKind::PulledWithStderrRead)
    );
    assert_eq!(body_of(Opcode::IsValidPath, v(38)), None);
}

fn build_result() -> BuildResult {
    let r = realisation();
    BuildResult {
        status: BuildStatus::Built,
        error_msg: String::new(),
        times_built: 1,
        is_non_deterministic: true,
        start_time: 100,
        stop_time: 200,
        cpu_user: Some(5),
        cpu_system: None,
        built_outputs: [(r.id.clone(), r)].into(),
    }
}

fn build_result_at(minor: u8) -> BuildResult {
    let full = build_result();
    let mut r = BuildResult::new(full.status, full.error_msg.clone());
    if minor >= 28 {
        r.built_outputs = full.built_outputs.clone();
    }
    if minor >= 29 {
        r.times_built = full.times_built;
        r.is_non_deterministic = full.is_non_deterministic;
        r.start_time = full.start_time;
        r.stop_time = full.stop_time;
    }
    if minor >= 37 {
        r.cpu_user = full.cpu_user;
        r.cpu_system = full.cpu_system;
    }
    r
}

fn round<T, E, D>(cx: &WireContext, enc: E, dec: D) -> T
where
    E: FnOnce(&mut Vec<u8>),
    D: FnOnce(&mut &[u8]) -> Result<T, ProtocolError>,
{
    let mut b = Vec::new();
    enc(&mut b);
    let mut r = &b[..];
    let v = dec(&mut r).unwrap_or_else(|e| panic!("at {}: {e}", cx.version));
    assert!(r.is_empty(), "at {}: trailing bytes", cx.version);
    v
}

#[test]
fn build_results_by_version() {
    for minor in [27, 28, 29, 34, 37, 38] {
        let cx = cx(minor);
        let got = round(
            &cx,
            |b| build_result().write(b, &cx).unwrap(),
            |r| BuildResult::read(r, &cx),
        );
        assert_eq!(got, build_result_at(minor), "at 1.{minor}");
        let keyed: Vec<KeyedBuildResult> = derived_paths()
            .into_iter()
            .filter(|d| minor >= 30 || !matches!(d, DerivedPath::Opaque(p) if p.is_derivation()))
            .map(|path| KeyedBuildResult {
                path,
                result: build_result(),
            })
            .collect();
        let got = round(
            &cx,
            |b| KeyedBuildResult::write_list(b, &cx, &keyed).unwrap(),
            |r| KeyedBuildResult::read_list(r, &cx),
        );
        assert_eq!(got.len(), keyed.len());
        assert!(got.iter().all(|k| k.result == build_result_at(minor)));
    }
}

#[test]
fn realisation_json_is_nix_shaped() {
    let mut r = realisation();
    r.signatures.clear();
    r.dependent_realisations.clear();
    assert_eq!(
        r.to_json(),
        "{\"dependentRealisations\":{},\"id\":\"sha256:236c7e2899f5ff7ea0e4dc8d5e3b8a4e6a3d7e1f0b3c2a1d9e8f7a6b5c4dd6f3!out\",\
         \"outPath\":\"f19jpi3n2qbp4317m2mms1x8943j6h3n-trivial2\",\"signatures\":[]}"
    );
    assert_eq!(
        Realisation::from_json(&realisation().to_json()).unwrap(),
        realisation()
    );
}

#[test]
fn replies_round_trip() {
    for minor in [21, 25, 34, 37, 38] {
        let cx = cx(minor);
        let info = path_info();
        let got = round(
            &cx,
            |b| info.write(b, &cx, cx.version).unwrap(),
            |r| ValidPathInfo::read(r, &cx),
        );
        assert_eq!(got, info);
        let got = round(
            &cx,
            |b| info.write_multiple_item(b, &cx).unwrap(),
            |r| ValidPathInfo::read_multiple_item(r, &cx),
        );
        assert_eq!(got, info);

        let missing = MissingInfo {
            will_build: [drv()].into(),
            will_substitute: [dep()].into(),
            unknown: [hello()].into(),
            download_size: 5,
            nar_size: 6,
        };
        assert_eq!(
            round(
                &cx,
                |b| missing.write(b, &cx).unwrap(),
                |r| MissingInfo::read(r, &cx)
            ),
            missing
        );

        let gc = GcResult {
            paths: ["/tmp/nixproto/store/a".to_owned()].into(),
            bytes_freed: 77,
        };
        assert_eq!(
            round(&cx, |b| gc.write(b).unwrap(), |r| GcResult::read(r, &cx)),
            gc
        );

        let roots = vec![
            ("/home/u/result".to_owned(), hello()),
            ("{temp:42}".to_owned(), dep()),
        ];
        assert_eq!(
            round(
                &cx,
                |b| reply::write_roots(b, &cx, &roots).unwrap(),
                |r| reply::read_roots(r, &cx)
            ),
            roots
        );

        let outs: BTreeMap<String, Option<_>> =
            [("out".to_owned(), Some(dep())), ("ca".to_owned(), None)].into();
        assert_eq!(
            round(
                &cx,
                |b| reply::write_output_map(b, &cx, &outs).unwrap(),
                |r| reply::read_output_map(r, &cx)
            ),
            outs
        );

        let sub = SubstitutablePathInfo {
            deriver: None,
            references: [dep()].into(),
            download_size: 1,
            nar_size: 2,
        };
        assert_eq!(
            round(
                &cx,
                |b| SubstitutablePathInfo::write_single_reply(b, &cx, Some(&sub)).unwrap(),
                |r| SubstitutablePathInfo::read_single_reply(r, &cx)
            ),
            Some(sub.clone())
        );
        let map: BTreeMap<_, _> = [(hello(), sub)].into();
        assert_eq!(
            round(
                &cx,
                |b| SubstitutablePathInfo::write_map_reply(b, &cx, &map).unwrap(),
                |r| SubstitutablePathInfo::read_map_reply(r, &cx)
            ),
            map
        );

        let real = realisation();
        let got = round(
            &cx,
            |b| reply::write_realisations(b, &cx, Some(&real)).unwrap(),
            |r| reply::read_realisations(r, &cx),
        );
        if minor >= 31 {
            assert_eq!(got, RealisationReply::Realisations(vec![real]));
        } else {
            assert_eq!(got, RealisationReply::OutPaths([dep()].into()));
        }
    }
}

#[test]
fn nar_hash_is_parsed_leniently_in_requests() {
    let h = Hash::sha256([0xab; 32]);
    let cx = cx(34);
    for text in [
        h.to_base16(),
        h.to_base32(),
        h.to_base64(),
        h.to_prefixed_base16(),
        h.to_prefixed_base32(),
        h.to_sri(),
    ] {
        let mut b = Vec::new();
        unrooted_protocol::wire::write_u64(&mut b, 39).unwrap();
        unrooted_protocol::wire::write_path(&mut b, &cx.store_dir, &hello()).unwrap();
        unrooted_protocol::wire::write_bytes(&mut b, b"").unwrap();
        unrooted_protocol::wire::write_bytes(&mut b, text.as_bytes()).unwrap();
        for w in [0u64, 0, 5, 0, 0, 0, 0, 1] {
            // references, registrationTime, narSize, ultimate, sigs, ca, repair, dontCheckSigs
            unrooted_protocol::wire::write_u64(&mut b, w).unwrap();
        }
        let Request::AddToStoreNar(a) = read_request(&mut &b[..], &cx).unwrap().unwrap() else {
            panic!("not AddToStoreNar");
        };
        assert_eq!(a.info.info.nar_hash, h, "{text}");
        assert_eq!(a.info.info.nar_size, 5);
        assert!(a.dont_check_sigs);
    }
}
