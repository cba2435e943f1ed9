//! The store database against Nix 2.8: schema text, rows as Nix writes them, queries.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;

use rusqlite::Connection;
use unrooted_db::{Database, DbError, DbOptions, Registration, ValidPathInfo};
use unrooted_format::{ContentAddress, FileIngestionMethod, Hash, HashAlgo, StoreDir, StorePath};
use unrooted_testkit::{nix_tool, NixEnv};

const STORE: &str = "/nix/store";

fn dir() -> StoreDir {
    StoreDir::new(STORE).unwrap()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

fn hash(byte: u8) -> Hash {
    Hash::sha256([byte; 32])
}

fn info(base: &str, refs: &[&str]) -> ValidPathInfo {
    let mut i = ValidPathInfo::new(sp(base), hash(base.as_bytes()[0]));
    i.nar_size = 120;
    i.references = refs.iter().map(|r| sp(r)).collect();
    i
}

const A: &str = "00000000000000000000000000000000-a";
const B: &str = "11111111111111111111111111111111-b";
const C: &str = "22222222222222222222222222222222-c";
const DRV: &str = "33333333333333333333333333333333-c.drv";

/// `select type, name, tbl_name, sql from sqlite_master`, printed as the sqlite3
/// shell prints it with `-separator '|'`.
fn dump_master(conn: &Connection) -> String {
    let mut stmt = conn
        .prepare("select type, name, tbl_name, sql from sqlite_master order by rowid")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?.unwrap_or_default()
            ))
        })
        .unwrap();
    let mut out = String::new();
    for row in rows {
        out.push_str(&row.unwrap());
        out.push('\n');
    }
    out
}

#[test]
fn schema_text_equals_nix_2_8() {
    let expected = include_str!("data/nix-2.8.0-sqlite_master.txt");
    let db = Database::open_in_memory(dir()).unwrap();
    assert_eq!(dump_master(db.connection()), expected);
}

#[test]
fn schema_text_equals_live_nix_store_init() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let env = NixEnv::new();
    env.run(nix_store.to_str().unwrap(), &[OsStr::new("--init")]);
    let nix = Connection::open(env.root().join("state/db/db.sqlite")).unwrap();
    let ours = tempfile::tempdir().unwrap();
    let db = Database::open(ours.path(), dir(), DbOptions::default()).unwrap();
    assert_eq!(dump_master(db.connection()), dump_master(&nix));
    assert_eq!(
        std::fs::read(ours.path().join("schema")).unwrap(),
        std::fs::read(env.root().join("state/db/schema")).unwrap()
    );
}

#[test]
fn open_creates_schema_file_and_uses_nix_pragmas() {
    let tmp = tempfile::tempdir().unwrap();
    {
        let mut db = Database::open(tmp.path(), dir(), DbOptions::default()).unwrap();
        db.register_paths(&[Registration::new(info(A, &[]))])
            .unwrap();
        let c = db.connection();
        let q = |sql: &str| c.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
        assert_eq!(q("pragma foreign_keys"), 1);
        assert_eq!(q("pragma synchronous"), 1, "normal");
        assert_eq!(q("pragma wal_autocheckpoint"), 40000);
        let mode: String = c
            .query_row("pragma journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    assert_eq!(std::fs::read(tmp.path().join("schema")).unwrap(), b"10");
    // Reopening finds the data and does not recreate anything.
    let db = Database::open(tmp.path(), dir(), DbOptions::default()).unwrap();
    assert!(db.is_valid(&sp(A)).unwrap());
}

#[test]
fn other_schema_versions_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("schema"), "7").unwrap();
    let err = Database::open(tmp.path(), dir(), DbOptions::default()).unwrap_err();
    assert!(
        matches!(
            err,
            DbError::UnsupportedSchema {
                found: 7,
                expected: 10,
                ..
            }
        ),
        "{err}"
    );
    std::fs::write(tmp.path().join("schema"), "ten").unwrap();
    let err = Database::open(tmp.path(), dir(), DbOptions::default()).unwrap_err();
    assert!(matches!(err, DbError::ParseSchemaVersion { .. }), "{err}");
    // A schema file without a database: Nix does not create one then, nor do we.
    std::fs::write(tmp.path().join("schema"), "10").unwrap();
    let err = Database::open(tmp.path(), dir(), DbOptions::default()).unwrap_err();
    assert!(matches!(err, DbError::Open { .. }), "{err}");
}

#[test]
fn register_and_query() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let mut c = info(C, &[A, B, C]);
    c.deriver = Some(sp(DRV));
    c.ultimate = true;
    c.sigs = ["k2:bbbb".to_owned(), "k1:aaaa".to_owned()].into();
    let mut drv = info(DRV, &[A]);
    drv.ca = Some(ContentAddress::Text(hash(9)));
    let mut drv_reg = Registration::new(drv.clone());
    drv_reg.derivation_outputs = BTreeMap::from([("out".to_owned(), sp(C))]);
    // References before or after their referrer in the batch: both work.
    db.register_paths(&[
        Registration::new(c.clone()),
        Registration::new(info(A, &[])),
        Registration::new(info(B, &[A])),
        drv_reg,
    ])
    .unwrap();

    let got = db.path_info(&sp(C)).unwrap().unwrap();
    assert_ne!(got.registration_time, 0, "0 means now");
    assert_eq!(
        got,
        ValidPathInfo {
            registration_time: got.registration_time,
            ..c
        }
    );
    assert_eq!(db.path_info(&sp(DRV)).unwrap().unwrap().ca, drv.ca);
    assert_eq!(db.references(&sp(B)).unwrap(), BTreeSet::from([sp(A)]));
    assert_eq!(
        db.referrers(&sp(A)).unwrap(),
        BTreeSet::from([sp(B), sp(C), sp(DRV)])
    );
    assert_eq!(
        db.referrers(&sp(C)).unwrap(),
        BTreeSet::from([sp(C)]),
        "self"
    );
    assert_eq!(
        db.valid_derivers(&sp(C)).unwrap(),
        BTreeSet::from([sp(DRV)])
    );
    assert!(db.valid_derivers(&sp(A)).unwrap().is_empty());
    assert_eq!(
        db.derivation_outputs(&sp(DRV)).unwrap(),
        BTreeMap::from([("out".to_owned(), sp(C))])
    );
    assert!(db.derivation_outputs(&sp(A)).unwrap().is_empty());
    assert_eq!(
        db.all_valid_paths().unwrap(),
        BTreeSet::from([sp(A), sp(B), sp(C), sp(DRV)])
    );
    assert!(db.is_valid(&sp(A)).unwrap());
    let missing = sp("44444444444444444444444444444444-x");
    assert!(!db.is_valid(&missing).unwrap());
    assert_eq!(db.path_info(&missing).unwrap(), None);
    assert!(db.references(&missing).unwrap().is_empty());
    assert!(db.referrers(&missing).unwrap().is_empty());
    assert!(matches!(
        db.derivation_outputs(&missing),
        Err(DbError::NotValid { .. })
    ));
}

#[test]
fn rows_are_written_as_nix_writes_them() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let mut a = info(A, &[]);
    a.registration_time = 1234;
    a.nar_size = 0;
    let mut c = info(C, &[A]);
    c.registration_time = 99;
    c.deriver = Some(sp(DRV));
    c.ultimate = true;
    c.sigs = ["k2:bbbb".to_owned(), "k1:aaaa".to_owned()].into();
    c.ca = Some(ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: hash(7),
    });
    db.register_paths(&[Registration::new(a), Registration::new(c)])
        .unwrap();
    let mut stmt = db
        .connection()
        .prepare("select path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca, typeof(deriver), typeof(narSize), typeof(ultimate), typeof(sigs), typeof(ca) from ValidPaths order by id")
        .unwrap();
    let rows: Vec<String> = stmt
        .query_map([], |r| {
            let mut cols = Vec::new();
            for i in 0..13 {
                let v: rusqlite::types::Value = r.get(i)?;
                cols.push(match v {
                    rusqlite::types::Value::Null => String::new(),
                    rusqlite::types::Value::Integer(n) => n.to_string(),
                    rusqlite::types::Value::Text(t) => t,
                    other => format!("{other:?}"),
                });
            }
            Ok(cols.join("|"))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let h = |b: u8| format!("sha256:{}", format!("{b:02x}").repeat(32));
    assert_eq!(
        rows,
        [
            format!("/nix/store/{A}|{}|1234||||||null|null|null|null|null", h(b'0')),
            format!(
                "/nix/store/{C}|{}|99|/nix/store/{DRV}|120|1|k1:aaaa k2:bbbb|fixed:r:sha256:{}|text|integer|integer|text|text",
                h(b'2'),
                hash(7).to_base32()
            ),
        ]
    );
}

#[test]
fn reregistering_updates_but_keeps_the_row() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let mut a = info(A, &[]);
    a.registration_time = 5;
    a.deriver = Some(sp(DRV));
    db.register_paths(&[Registration::new(a.clone())]).unwrap();
    let mut a2 = a.clone();
    a2.nar_size = 999;
    a2.nar_hash = hash(1);
    a2.sigs = ["k:x".to_owned()].into();
    a2.registration_time = 77;
    a2.deriver = None;
    db.register_paths(&[Registration::new(a2.clone())]).unwrap();
    let got = db.path_info(&sp(A)).unwrap().unwrap();
    // As in Nix, an update leaves registrationTime and deriver alone.
    assert_eq!(
        got,
        ValidPathInfo {
            registration_time: 5,
            deriver: Some(sp(DRV)),
            ..a2
        }
    );
    let id: i64 = db
        .connection()
        .query_row("select id from ValidPaths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(id, 1);
}

#[test]
fn invalid_reference_rolls_back_the_whole_batch() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let err = db
        .register_paths(&[
            Registration::new(info(A, &[])),
            Registration::new(info(B, &[C])),
        ])
        .unwrap_err();
    assert!(
        matches!(&err, DbError::RegisterInvalidReference { path, reference }
            if path == &format!("/nix/store/{B}") && reference == &format!("/nix/store/{C}")),
        "{err}"
    );
    assert!(db.all_valid_paths().unwrap().is_empty());
}

#[test]
fn reference_cycle_between_paths_is_refused() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let err = db
        .register_paths(&[
            Registration::new(info(A, &[B])),
            Registration::new(info(B, &[C])),
            Registration::new(info(C, &[A, C])),
        ])
        .unwrap_err();
    assert!(matches!(err, DbError::RegisterCycle { .. }), "{err}");
    assert!(db.all_valid_paths().unwrap().is_empty());
    // Self references alone are fine.
    db.register_paths(&[Registration::new(info(C, &[C]))])
        .unwrap();
}

#[test]
fn path_from_hash_part_is_a_prefix_query() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    db.register_paths(&[
        Registration::new(info(B, &[])),
        Registration::new(info(C, &[])),
    ])
    .unwrap();
    assert_eq!(
        db.path_from_hash_part("11111111111111111111111111111111")
            .unwrap(),
        Some(sp(B))
    );
    // The next path in order exists but does not have the prefix.
    assert_eq!(
        db.path_from_hash_part("11111111111111111111111111111112")
            .unwrap(),
        None
    );
    assert_eq!(
        db.path_from_hash_part("zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz")
            .unwrap(),
        None
    );
    for bad in [
        "1111",
        "eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee",
        "11111111111111111111111111111111-b",
    ] {
        assert!(
            matches!(
                db.path_from_hash_part(bad),
                Err(DbError::InvalidHashPart { .. })
            ),
            "{bad}"
        );
    }
}

#[test]
fn invalidation_respects_referrers() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let mut drv_reg = Registration::new(info(DRV, &[A]));
    drv_reg.derivation_outputs.insert("out".into(), sp(C));
    db.register_paths(&[
        Registration::new(info(A, &[A])),
        Registration::new(info(B, &[A, B])),
        drv_reg,
    ])
    .unwrap();
    let err = db.invalidate_paths(&[sp(A)]).unwrap_err();
    assert!(matches!(err, DbError::Invalidate { .. }), "{err}");
    // A failed batch changes nothing, even the parts before the failure.
    let err = db.invalidate_paths(&[sp(B), sp(A)]).unwrap_err();
    assert!(matches!(err, DbError::Invalidate { .. }), "{err}");
    assert!(db.is_valid(&sp(B)).unwrap());
    db.invalidate_paths(&[sp(B), sp(DRV), sp(A)]).unwrap();
    assert!(db.all_valid_paths().unwrap().is_empty());
    let leftover: i64 = db
        .connection()
        .query_row(
            "select (select count(*) from Refs) + (select count(*) from DerivationOutputs)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(leftover, 0);
}

#[test]
fn signatures_are_a_set() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let mut a = info(A, &[]);
    a.sigs = ["b:2".to_owned()].into();
    db.register_paths(&[Registration::new(a)]).unwrap();
    db.add_signatures(&sp(A), ["a:1".to_owned(), "b:2".to_owned()])
        .unwrap();
    let got = db.path_info(&sp(A)).unwrap().unwrap();
    assert_eq!(
        got.sigs,
        BTreeSet::from(["a:1".to_owned(), "b:2".to_owned()])
    );
    let raw: String = db
        .connection()
        .query_row("select sigs from ValidPaths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(raw, "a:1 b:2");
    assert!(matches!(
        db.add_signatures(&sp(B), ["x:1".to_owned()]),
        Err(DbError::NotValid { .. })
    ));
}

#[test]
fn corrupt_rows_are_errors_not_panics() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    db.register_paths(&[Registration::new(info(A, &[]))])
        .unwrap();
    for (sql, column) in [
        ("update ValidPaths set hash = 'sha256:zz'", "hash"),
        ("update ValidPaths set hash = 'sha256:00', deriver = '/elsewhere/x'", "hash"),
        ("update ValidPaths set hash = 'sha256:0000000000000000000000000000000000000000000000000000000000000000', deriver = '/elsewhere/x'", "deriver"),
        ("update ValidPaths set deriver = null, narSize = -1", "narSize"),
        ("update ValidPaths set narSize = 1, ca = 'bogus'", "ca"),
    ] {
        db.connection().execute(sql, []).unwrap();
        let err = db.path_info(&sp(A)).unwrap_err();
        assert!(
            matches!(&err, DbError::CorruptRow { column: c, .. } if *c == column),
            "{sql}: {err}"
        );
    }
}

#[test]
fn opens_a_store_database_nix_made() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let env = NixEnv::new();
    let file = env.root().join("hello.txt");
    std::fs::write(&file, "hello world\n").unwrap();
    let out = env.run(
        nix_store.to_str().unwrap(),
        &[OsStr::new("--add"), file.as_os_str()],
    );
    let full = String::from_utf8(out).unwrap().trim().to_owned();
    let store_dir = StoreDir::new(env.store_dir().to_str().unwrap()).unwrap();
    let path = store_dir.parse_path(&full).unwrap();
    let before = dump_master(&Connection::open(env.root().join("state/db/db.sqlite")).unwrap());
    let db = Database::open(
        &env.root().join("state/db"),
        store_dir,
        DbOptions::default(),
    )
    .unwrap();
    let got = db.path_info(&path).unwrap().unwrap();
    assert_eq!(got.nar_hash.algo(), HashAlgo::Sha256);
    assert_eq!(got.nar_size, 128);
    assert!(got.references.is_empty() && got.deriver.is_none() && !got.ultimate);
    assert!(matches!(
        got.ca,
        Some(ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            ..
        })
    ));
    assert!(got.ca_matches_path(db.store_dir()));
    let hash_text = env.run(
        nix_store.to_str().unwrap(),
        &[OsStr::new("-q"), OsStr::new("--hash"), OsStr::new(&full)],
    );
    assert_eq!(
        String::from_utf8(hash_text).unwrap().trim(),
        got.nar_hash.to_prefixed_base32()
    );
    drop(db);
    let after = dump_master(&Connection::open(env.root().join("state/db/db.sqlite")).unwrap());
    assert_eq!(before, after, "opening must not change the schema");
}

#[test]
fn reference_graph_lists_every_path_with_references_and_deriver() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    let mut c = info(C, &[A, B, C]);
    c.deriver = Some(sp(DRV));
    db.register_paths(&[
        Registration::new(info(A, &[])),
        Registration::new(info(B, &[A])),
        Registration::new(c),
    ])
    .unwrap();
    let graph = db.reference_graph().unwrap();
    assert_eq!(graph.len(), 3);
    assert!(graph[&sp(A)].references.is_empty());
    assert_eq!(graph[&sp(B)].references, BTreeSet::from([sp(A)]));
    assert_eq!(
        graph[&sp(C)].references,
        BTreeSet::from([sp(A), sp(B), sp(C)])
    );
    assert_eq!(graph[&sp(C)].deriver, Some(sp(DRV)));
    for p in [A, B, C] {
        assert_eq!(graph[&sp(p)].references, db.references(&sp(p)).unwrap());
    }
}

#[test]
fn batched_validity_and_referrers_agree_with_the_per_path_queries() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    // More paths than one `in (...)` list holds, so the chunking is exercised.
    let bases: Vec<String> = (0..600).map(|i| format!("{i:0>32}-p{i}")).collect();
    let mut regs = vec![
        Registration::new(info(A, &[])),
        Registration::new(info(B, &[A])),
    ];
    regs.push(Registration::new(info(C, &[A, B, C])));
    for b in &bases {
        regs.push(Registration::new(info(b, &[B])));
    }
    db.register_paths(&regs).unwrap();
    let missing = sp("44444444444444444444444444444444-gone");
    let mut asked: Vec<StorePath> = bases.iter().map(|b| sp(b)).collect();
    asked.extend([sp(A), sp(B), sp(C), missing.clone()]);

    let valid = db.valid_subset(&asked).unwrap();
    assert_eq!(valid.len(), asked.len() - 1);
    assert!(!valid.contains(&missing));

    let referrers = db.referrers_of_many(&asked).unwrap();
    for p in &asked {
        let one = db.referrers(p).unwrap();
        assert_eq!(referrers.get(p).cloned().unwrap_or_default(), one, "{p:?}");
    }
    assert_eq!(referrers[&sp(B)].len(), 601);
    assert_eq!(referrers[&sp(C)], BTreeSet::from([sp(C)]));
    assert!(db.valid_subset(&[]).unwrap().is_empty());
}
