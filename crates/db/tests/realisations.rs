//! Realisations (experimental `ca-derivations`): the tables as Nix 2.8 creates them,
//! and recording and querying as `LocalStore::registerDrvOutput` and
//! `queryRealisation` do.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;

use rusqlite::Connection;
use unrooted_db::{
    Database, DbError, DbOptions, DrvOutputId, Realisation, Registration, ValidPathInfo,
};
use unrooted_format::{Hash, StoreDir, StorePath};
use unrooted_testkit::{nix_tool, NixEnv};

const A: &str = "00000000000000000000000000000000-a";
const B: &str = "11111111111111111111111111111111-b";

fn dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

fn sp(base: &str) -> StorePath {
    StorePath::from_base_name(base).unwrap()
}

fn ca() -> DbOptions {
    DbOptions {
        ca_derivations: true,
        ..DbOptions::default()
    }
}

fn dump_master(conn: &Connection) -> String {
    let mut stmt = conn
        .prepare("select type, name, tbl_name, sql from sqlite_master order by rowid")
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(format!(
                "{}|{}|{}|{}\n",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, String>(2)?,
                r.get::<_, Option<String>>(3)?.unwrap_or_default()
            ))
        })
        .unwrap();
    rows.map(Result::unwrap).collect()
}

fn id(output: &str, byte: char) -> DrvOutputId {
    DrvOutputId {
        drv_hash: format!("sha256:{}", byte.to_string().repeat(64)),
        output_name: output.to_owned(),
    }
}

fn realisation(id: DrvOutputId, path: &str) -> Realisation {
    Realisation {
        id,
        out_path: sp(path),
        signatures: BTreeSet::new(),
        dependent_realisations: BTreeMap::new(),
    }
}

fn db_with_paths() -> Database {
    let mut db = Database::open_in_memory_with(dir(), ca()).unwrap();
    let regs: Vec<Registration> = [A, B]
        .iter()
        .map(|p| Registration::new(ValidPathInfo::new(sp(p), Hash::sha256([1; 32]))))
        .collect();
    db.register_paths(&regs).unwrap();
    db
}

#[test]
fn ca_schema_text_equals_nix_2_8() {
    let expected = include_str!("data/nix-2.8.0-ca-derivations-sqlite_master.txt");
    let db = Database::open_in_memory_with(dir(), ca()).unwrap();
    assert_eq!(dump_master(db.connection()), expected);
}

#[test]
fn ca_schema_is_created_on_disk_with_its_version_file_and_only_with_the_feature() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Database::open(tmp.path(), dir(), DbOptions::default()).unwrap());
    assert!(!tmp.path().join("ca-schema").exists());
    let db = Database::open(tmp.path(), dir(), ca()).unwrap();
    assert!(db.has_realisations());
    assert_eq!(std::fs::read(tmp.path().join("ca-schema")).unwrap(), b"3");
    drop(db);
    // Opening again changes nothing.
    let db = Database::open(tmp.path(), dir(), ca()).unwrap();
    assert_eq!(
        dump_master(db.connection()),
        include_str!("data/nix-2.8.0-ca-derivations-sqlite_master.txt")
    );
}

#[test]
fn ca_schema_newer_than_nix_2_8_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    drop(Database::open(tmp.path(), dir(), DbOptions::default()).unwrap());
    std::fs::write(tmp.path().join("ca-schema"), "4").unwrap();
    let err = Database::open(tmp.path(), dir(), ca()).unwrap_err();
    assert!(
        matches!(err, DbError::UnsupportedCaSchema { found: 4, .. }),
        "{err}"
    );
}

#[test]
fn ca_schema_equals_live_nix_store_init_with_ca_derivations() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let env = NixEnv::new();
    env.run(
        nix_store.to_str().unwrap(),
        &[
            OsStr::new("--init"),
            OsStr::new("--extra-experimental-features"),
            OsStr::new("ca-derivations"),
        ],
    );
    let nix = Connection::open(env.root().join("state/db/db.sqlite")).unwrap();
    let ours = tempfile::tempdir().unwrap();
    let db = Database::open(ours.path(), dir(), ca()).unwrap();
    assert_eq!(dump_master(db.connection()), dump_master(&nix));
    assert_eq!(
        std::fs::read(ours.path().join("ca-schema")).unwrap(),
        std::fs::read(env.root().join("state/db/ca-schema")).unwrap()
    );
}

#[test]
fn realisation_round_trips_and_signatures_merge() {
    let mut db = db_with_paths();
    let mut r = realisation(id("out", 'a'), A);
    r.signatures.insert("k1:sig1".into());
    db.register_realisation(&r).unwrap();
    assert_eq!(db.query_realisation(&r.id).unwrap(), Some(r.clone()));
    let mut again = r.clone();
    again.signatures = BTreeSet::from(["k2:sig2".to_owned()]);
    db.register_realisation(&again).unwrap();
    let got = db.query_realisation(&r.id).unwrap().unwrap();
    assert_eq!(
        got.signatures,
        BTreeSet::from(["k1:sig1".to_owned(), "k2:sig2".to_owned()])
    );
    let row: (String, String, Option<String>) = db
        .connection()
        .query_row(
            "select drvPath, outputName, signatures from Realisations",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(row.0, format!("sha256:{}", "a".repeat(64)));
    assert_eq!(row.1, "out");
    assert_eq!(row.2.as_deref(), Some("k1:sig1 k2:sig2"));
}

#[test]
fn realisation_with_another_path_is_refused_and_changes_nothing() {
    let mut db = db_with_paths();
    let r = realisation(id("out", 'a'), A);
    db.register_realisation(&r).unwrap();
    let err = db
        .register_realisation(&realisation(id("out", 'a'), B))
        .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "Trying to register a realisation of 'sha256:{}!out', but we already have another one locally.\nLocal:  /nix/store/{A}\nRemote: /nix/store/{B}",
            "a".repeat(64)
        )),
        "{err}"
    );
    assert_eq!(db.query_realisation(&r.id).unwrap(), Some(r));
}

#[test]
fn realisation_of_an_invalid_path_is_refused() {
    let mut db = Database::open_in_memory_with(dir(), ca()).unwrap();
    let err = db
        .register_realisation(&realisation(id("out", 'a'), A))
        .unwrap_err();
    assert!(matches!(err, DbError::NotValid { .. }), "{err}");
}

#[test]
fn dependent_realisations_must_be_known_and_match() {
    let mut db = db_with_paths();
    let dep = realisation(id("out", 'b'), B);
    let mut r = realisation(id("out", 'a'), A);
    r.dependent_realisations.insert(dep.id.clone(), sp(B));
    let err = db.register_realisation(&r).unwrap_err();
    assert!(
        matches!(err, DbError::MissingDependentRealisation { .. }),
        "{err}"
    );
    assert_eq!(db.query_realisation(&r.id).unwrap(), None);
    db.register_realisation(&dep).unwrap();
    let mut wrong = r.clone();
    wrong.dependent_realisations.insert(dep.id.clone(), sp(A));
    let err = db.register_realisation(&wrong).unwrap_err();
    assert!(
        matches!(err, DbError::MismatchedDependentRealisation { .. }),
        "{err}"
    );
    db.register_realisation(&r).unwrap();
    assert_eq!(db.query_realisation(&r.id).unwrap(), Some(r));
}

#[test]
fn realisations_go_with_their_paths() {
    let mut db = db_with_paths();
    let r = realisation(id("out", 'a'), A);
    db.register_realisation(&r).unwrap();
    db.invalidate_paths(&[sp(A)]).unwrap();
    assert_eq!(db.query_realisation(&r.id).unwrap(), None);
}

#[test]
fn without_the_feature_there_are_no_realisations() {
    let mut db = Database::open_in_memory(dir()).unwrap();
    assert!(!db.has_realisations());
    assert_eq!(db.query_realisation(&id("out", 'a')).unwrap(), None);
    let err = db
        .register_realisation(&realisation(id("out", 'a'), A))
        .unwrap_err();
    assert!(matches!(err, DbError::NoRealisations { .. }), "{err}");
}
