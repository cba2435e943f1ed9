//! Interop with the real Nix 2.8 tools, both ways, on a private store (`NixEnv`).

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::Path;

use common::*;
use unrooted_format::derivation::hash_modulo::DrvHasher;
use unrooted_format::derivation::{Derivation, DerivationOutput};
use unrooted_format::export::{ExportRecord, ExportWriter};
use unrooted_format::{FileIngestionMethod, HashAlgo, StorePath, StorePathName};
use unrooted_store::{CheckSigs, LocalStore, ValidPathInfo};
use unrooted_testkit::{generate_tree, nix_tool, NixEnv};

fn q(env: &NixEnv, args: &[&str]) -> String {
    let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    String::from_utf8(env.run("nix-store", &args)).unwrap()
}

fn lines(s: &str) -> BTreeSet<String> {
    s.lines()
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Checks what `nix-store -q` says about `info` against our record.
fn nix_agrees(env: &NixEnv, store: &LocalStore, info: &ValidPathInfo) {
    let p = store.print_path(&info.path);
    assert_eq!(
        q(env, &["-q", "--hash", &p]).trim(),
        info.nar_hash.to_prefixed_base32(),
        "{p}"
    );
    assert_eq!(
        q(env, &["-q", "--size", &p]).trim(),
        info.nar_size.to_string(),
        "{p}"
    );
    let refs: BTreeSet<String> = info
        .references
        .iter()
        .map(|r| store.print_path(r))
        .collect();
    assert_eq!(lines(&q(env, &["-q", "--references", &p])), refs, "{p}");
    let referrers: BTreeSet<String> = store
        .query_referrers(&info.path)
        .unwrap()
        .iter()
        .map(|r| store.print_path(r))
        .collect();
    assert_eq!(lines(&q(env, &["-q", "--referrers", &p])), referrers, "{p}");
    let deriver = info
        .deriver
        .as_ref()
        .map_or("unknown-deriver".to_owned(), |d| store.print_path(d));
    assert_eq!(q(env, &["-q", "--deriver", &p]).trim(), deriver, "{p}");
}

/// `nix-store --verify --check-contents` exits 0 and says nothing beyond its four
/// progress lines.
fn nix_verify_clean(env: &NixEnv) {
    let out = env
        .command("nix-store")
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    unrooted_testkit::expect_success("nix-store --verify --check-contents", &out);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let progress = [
        "reading the Nix store...",
        "checking path existence...",
        "checking link hashes...",
        "checking store hashes...",
    ];
    let other: Vec<&str> = stderr.lines().filter(|l| !progress.contains(l)).collect();
    assert!(other.is_empty(), "nix-store --verify complained: {stderr}");
    assert!(stderr.contains("checking store hashes..."), "{stderr}");
}

fn store_for(env: &NixEnv) -> LocalStore {
    LocalStore::open(config_at(env.root())).unwrap()
}

#[test]
fn a_store_nix_made_reads_the_same_here() {
    if nix_tool("nix-store").is_none() || nix_tool("nix-instantiate").is_none() {
        return;
    }
    let env = NixEnv::new();
    let file = env.root().join("hello.txt");
    std::fs::write(&file, "hello world\n").unwrap();
    let tree = env.root().join("tree");
    generate_tree(&tree, 5, 40, 50_000);
    let added = q(
        &env,
        &["--add", file.to_str().unwrap(), tree.to_str().unwrap()],
    );
    let expr = env.root().join("d.nix");
    std::fs::write(
        &expr,
        format!(
            r#"let src = builtins.toFile "builder.sh" "echo hi > $out"; in
            derivation {{ name = "demo"; system = "x86_64-linux"; builder = "/bin/sh";
              args = [ src ]; outputs = [ "out" "dev" ]; dep = {}; }}"#,
            added.lines().next().unwrap()
        ),
    )
    .unwrap();
    let out = env.command("nix-instantiate").arg(&expr).output().unwrap();
    unrooted_testkit::expect_success("nix-instantiate", &out);
    let drv_text = String::from_utf8(out.stdout).unwrap().trim().to_owned();

    let store = store_for(&env);
    let valid = store.query_all_valid_paths().unwrap();
    let nix_all = lines(&q(&env, &["-q", "--requisites", &drv_text]));
    assert!(valid.len() >= 5, "{valid:?}");
    for p in &valid {
        let info = store.query_path_info(p).unwrap().unwrap();
        nix_agrees(&env, &store, &info);
    }
    let drv_path = store.store_dir().parse_path(&drv_text).unwrap();
    let outputs = store.query_derivation_output_map(&drv_path).unwrap();
    let nix_outputs = lines(&q(&env, &["-q", "--outputs", &drv_text]));
    let ours: BTreeSet<String> = outputs.values().map(|p| store.print_path(p)).collect();
    assert_eq!(ours, nix_outputs);
    assert_eq!(outputs.len(), 2);
    for out in outputs.values() {
        assert_eq!(
            store.query_valid_derivers(out).unwrap(),
            BTreeSet::from([drv_path.clone()])
        );
    }
    let closure: BTreeSet<String> = store
        .query_closure(&BTreeSet::from([drv_path.clone()]))
        .unwrap()
        .iter()
        .map(|p| store.print_path(p))
        .collect();
    assert_eq!(closure, nix_all);
    drop(store);
    // Opening it here changed nothing Nix cares about.
    nix_verify_clean(&env);
}

/// A derivation named `name` whose outputs are filled in as `derivationStrict` does.
fn make_drv(store: &LocalStore, name: &str, src: &StorePath) -> Derivation {
    let dir = store.store_dir();
    let mut env = BTreeMap::new();
    for (k, v) in [
        ("builder", "/bin/sh"),
        ("name", name),
        ("system", "x86_64-linux"),
        ("out", ""),
    ] {
        env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
    }
    env.insert(b"src".to_vec(), dir.display(src).into_bytes());
    let mut drv = Derivation {
        name: name.to_owned(),
        outputs: BTreeMap::from([("out".to_owned(), DerivationOutput::Deferred)]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::from([src.clone()]),
        system: b"x86_64-linux".to_vec(),
        builder: b"/bin/sh".to_vec(),
        args: vec![b"-c".to_vec(), b"echo hi > $out".to_vec()],
        env,
    };
    let mut hasher = DrvHasher::new(
        dir.clone(),
        |_: &StorePath| -> Result<Derivation, std::io::Error> {
            Err(std::io::ErrorKind::NotFound.into())
        },
    );
    hasher.fill_output_paths(&mut drv).unwrap();
    drv
}

fn export_stream(store: &LocalStore, tree: &Path, path: &StorePath, refs: &[StorePath]) -> Vec<u8> {
    let mut w = ExportWriter::new(Vec::new(), store.store_dir().clone());
    w.write_path_record(
        &ExportRecord {
            path: path.clone(),
            references: refs.to_vec(),
            deriver: None,
            legacy_signature: None,
        },
        tree,
    )
    .unwrap();
    w.finish().unwrap()
}

#[test]
fn a_store_written_here_passes_nix_verify() {
    if nix_tool("nix-store").is_none() {
        return;
    }
    let env = NixEnv::new();
    let mut config = config_at(env.root());
    config.fsync_paths = true;
    let store = LocalStore::open(config).unwrap();
    let src = env.root().join("src");
    generate_tree(&src, 9, 80, 300_000);
    let nar = nar_of(&src);
    let none = BTreeSet::new();
    let tree = store
        .add_ca(
            "tree",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha256,
            &mut &nar[..],
            &none,
            false,
        )
        .unwrap();
    let tree_sha1 = store
        .add_ca(
            "tree1",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha1,
            &mut &nar[..],
            &none,
            false,
        )
        .unwrap();
    let flat = store
        .add_ca(
            "f.txt",
            FileIngestionMethod::Flat,
            HashAlgo::Sha256,
            &mut &b"hello world\n"[..],
            &none,
            false,
        )
        .unwrap();
    let refs = set(&[&tree.path, &flat.path]);
    let text = store
        .add_text("greeting", b"refers to things", &refs, false)
        .unwrap();
    let drv = make_drv(&store, "demo", &text.path);
    let drv_bytes = drv.to_aterm(store.store_dir());
    let drv_info = store
        .add_text("demo.drv", &drv_bytes, &drv.references(), false)
        .unwrap();
    assert_eq!(drv_info.path, drv.drv_path(store.store_dir()).unwrap());
    // An import: an input-addressed-looking path built by "someone else".
    let imported_path = StorePath::from_base_name(&format!(
        "{}-imported",
        store
            .store_dir()
            .make_store_path(
                "output:out",
                &[7; 32],
                &StorePathName::new("imported").unwrap()
            )
            .hash_part()
    ))
    .unwrap();
    let stream = export_stream(
        &store,
        &src,
        &imported_path,
        std::slice::from_ref(&text.path),
    );
    let imported = store
        .import_paths(&mut &stream[..], CheckSigs::DontCheck)
        .unwrap();
    assert_eq!(imported, vec![imported_path.clone()]);
    let stats = store.optimise().unwrap();
    assert!(
        stats.files_linked > 0,
        "tree, tree1 and the import share files"
    );

    let infos: Vec<ValidPathInfo> = store
        .query_all_valid_paths()
        .unwrap()
        .iter()
        .map(|p| store.query_path_info(p).unwrap().unwrap())
        .collect();
    assert_eq!(infos.len(), 6);
    let nix_outputs = lines(&q(
        &env,
        &["-q", "--outputs", &store.print_path(&drv_info.path)],
    ));
    let ours: BTreeSet<String> = store
        .query_derivation_output_map(&drv_info.path)
        .unwrap()
        .values()
        .map(|p| store.print_path(p))
        .collect();
    assert_eq!(nix_outputs, ours);
    for info in &infos {
        nix_agrees(&env, &store, info);
    }
    assert_eq!(tree_sha1.ca.unwrap().hash().algo(), HashAlgo::Sha1);
    // Nix computes the same path for the same content and name.
    let same = store
        .add_ca(
            "src",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha256,
            &mut &nar[..],
            &none,
            false,
        )
        .unwrap();
    let nix_added = q(&env, &["--add", src.to_str().unwrap()]);
    assert_eq!(nix_added.trim(), store.print_path(&same.path));
    drop(store);
    nix_verify_clean(&env);
    // nix-store --export of our paths round-trips into a Nix store's import too.
    let out = env
        .command("nix-store")
        .arg("--export")
        .arg(env.store_dir().join(imported_path.to_base_name()))
        .output()
        .unwrap();
    unrooted_testkit::expect_success("nix-store --export", &out);
}
