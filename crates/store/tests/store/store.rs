//! The local store on its own: layout, adds, errors, locking, verify, optimise.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::sync::Arc;

use common::*;
use unrooted_format::signature::{SecretKey, TrustedKeys};
use unrooted_format::{ContentAddress, FileIngestionMethod, Hash, HashAlgo, StorePath};
use unrooted_store::{
    canonicalise::canonicalise_path_metadata, CheckSigs, LocalStore, StoreError, ValidPathInfo,
    VerifyMessage,
};
use unrooted_testkit::generate_tree;

#[test]
fn open_creates_the_layout_once() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    drop(open_at(root));
    let mode = |p: &str| fs::symlink_metadata(root.join(p)).unwrap().mode() & 0o7777;
    assert_eq!(mode("store"), 0o755);
    assert_eq!(mode("store/.links"), 0o755);
    for d in [
        "state/profiles",
        "state/temproots",
        "state/db",
        "state/gcroots",
    ] {
        assert!(root.join(d).is_dir(), "{d}");
    }
    assert_eq!(mode("state/profiles/per-user"), 0o755);
    assert_eq!(mode("state/gcroots/per-user"), 0o755);
    assert_eq!(mode("state/gc.lock"), 0o600);
    assert_eq!(
        fs::read_link(root.join("state/gcroots/profiles")).unwrap(),
        root.join("state/profiles")
    );
    assert_eq!(fs::read(root.join("state/db/schema")).unwrap(), b"10");
    assert!(
        temp_entries(&root.join("store")).is_empty(),
        "area removed on drop"
    );
    // Created once: an administrator's later choice is not undone at the next open.
    fs::set_permissions(
        root.join("state/gcroots/per-user"),
        fs::Permissions::from_mode(0o750),
    )
    .unwrap();
    drop(open_at(root));
    assert_eq!(mode("state/gcroots/per-user"), 0o750);
}

#[test]
fn open_removes_dead_temporaries_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    drop(open_at(root));
    let store = root.join("store");
    // A crashed instance's area with a read-only tree inside, and a stray file.
    let dead = store.join(".unrooted-tmp-1-2-0");
    fs::create_dir(&dead).unwrap();
    generate_tree(&dead.join("nar-0"), 1, 30, 10);
    canonicalise_path_metadata(&dead.join("nar-0")).unwrap();
    fs::write(store.join(".unrooted-tmp-stray"), "x").unwrap();
    fs::write(store.join("not-ours"), "keep").unwrap();
    fs::create_dir(store.join(".tmp-other")).unwrap();
    // An area that a live instance holds must survive.
    let live = open_at(root);
    let live_area = temp_entries(&store);
    assert_eq!(live_area.len(), 1);
    let second = open_at(root);
    assert!(!dead.exists() && !store.join(".unrooted-tmp-stray").exists());
    assert!(store.join("not-ours").exists() && store.join(".tmp-other").exists());
    assert!(live_area[0].exists(), "the live instance's area was kept");
    assert_eq!(temp_entries(&store).len(), 2);
    drop((live, second));
    assert!(temp_entries(&store).is_empty());
}

#[test]
fn the_sweep_of_a_dead_area_never_follows_a_symlink_out_of_it() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_at(root);
    let src = root.join("src");
    generate_tree(&src, 3, 20, 10_000);
    let nar = nar_of(&src);
    let valid = store
        .add_ca(
            "tree",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha256,
            &mut &nar[..],
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    let valid_dir = store.real_path(&valid.path);
    let mode_of = |p: &std::path::Path| fs::symlink_metadata(p).unwrap().mode() & 0o7777;
    let valid_mode = mode_of(&valid_dir);
    drop(store);
    let outside = root.join("outside");
    fs::create_dir(&outside).unwrap();
    fs::write(outside.join("keep"), "keep").unwrap();
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o555)).unwrap();

    // A dead area whose links lead to a valid path and to a directory outside, at
    // the top and inside read-only and unreadable directories the sweep must open up.
    let dead = root.join("store/.unrooted-tmp-1-3-0");
    let deep = dead.join("sandbox-0/nix/store/out");
    fs::create_dir_all(&deep).unwrap();
    for dir in [&dead, &deep] {
        std::os::unix::fs::symlink(&valid_dir, dir.join("to-valid")).unwrap();
        std::os::unix::fs::symlink(&outside, dir.join("to-outside")).unwrap();
        std::os::unix::fs::symlink(valid_dir.join("f0"), dir.join("to-file")).unwrap();
    }
    fs::set_permissions(&deep, fs::Permissions::from_mode(0o000)).unwrap();
    fs::set_permissions(dead.join("sandbox-0"), fs::Permissions::from_mode(0o500)).unwrap();
    // A leftover that is itself a link to a valid path.
    std::os::unix::fs::symlink(&valid_dir, root.join("store/.unrooted-tmp-link")).unwrap();

    let store = open_at(root);
    assert!(!dead.exists(), "the dead area was removed");
    assert!(fs::symlink_metadata(root.join("store/.unrooted-tmp-link")).is_err());
    assert_eq!(nar_of(&valid_dir), nar, "the valid path is untouched");
    assert_eq!(mode_of(&valid_dir), valid_mode, "and so is its mode");
    assert!(store.is_valid_path(&valid.path).unwrap());
    assert_eq!(fs::read_to_string(outside.join("keep")).unwrap(), "keep");
    assert_eq!(mode_of(&outside), 0o555);
    drop(store);
    fs::set_permissions(&outside, fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn add_tree_flat_and_text_then_query() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let src = tmp.path().join("src");
    generate_tree(&src, 7, 60, 100_000);
    let nar = nar_of(&src);
    let tree = store
        .add_ca(
            "tree",
            FileIngestionMethod::Recursive,
            HashAlgo::Sha256,
            &mut &nar[..],
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    assert_eq!(tree.nar_hash, sha256(&nar));
    assert_eq!(tree.nar_size, nar.len() as u64);
    assert!(tree.ca_matches_path(store.store_dir()));
    assert_eq!(
        nar_of(&store.real_path(&tree.path)),
        nar,
        "contents round-trip"
    );

    let flat = store
        .add_ca(
            "flat.txt",
            FileIngestionMethod::Flat,
            HashAlgo::Sha1,
            &mut &b"hello world\n"[..],
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    let mut sha1 = unrooted_format::Hasher::new(HashAlgo::Sha1);
    sha1.update(b"hello world\n");
    assert_eq!(
        flat.ca.unwrap().to_string(),
        format!("fixed:sha1:{}", sha1.finish().to_base32())
    );
    let meta = fs::metadata(store.real_path(&flat.path)).unwrap();
    assert_eq!((meta.mode() & 0o7777, meta.mtime()), (0o444, 1));

    let refs: BTreeSet<StorePath> = [tree.path.clone(), flat.path.clone()].into();
    let text = store.add_text("greeting", b"hi", &refs, false).unwrap();
    assert!(matches!(text.ca, Some(ContentAddress::Text(_))));
    assert_eq!(store.query_references(&text.path).unwrap(), refs);
    assert_eq!(
        store.query_referrers(&tree.path).unwrap(),
        set(&[&text.path])
    );
    assert_eq!(
        store.query_closure(&set(&[&text.path])).unwrap(),
        set(&[&text.path, &tree.path, &flat.path])
    );
    assert_eq!(
        store
            .query_path_from_hash_part(text.path.hash_part())
            .unwrap(),
        Some(text.path.clone())
    );
    assert_eq!(store.query_deriver(&text.path).unwrap(), None);
    // Adding again returns the same record without redoing anything.
    let again = store.add_text("greeting", b"hi", &refs, false).unwrap();
    assert_eq!(again, text);
    assert!(temp_contents(&tmp.path().join("store")).is_empty());
    // Every directory is read-only with mtime 1.
    let mut stack = vec![store.real_path(&tree.path)];
    while let Some(p) = stack.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        assert_eq!(m.mtime(), 1, "{}", p.display());
        if m.is_dir() {
            assert_eq!(m.mode() & 0o7777, 0o555);
            stack.extend(fs::read_dir(&p).unwrap().map(|e| e.unwrap().path()));
        } else if m.is_file() {
            assert!(matches!(m.mode() & 0o7777, 0o444 | 0o555));
        }
    }
}

fn nar_info(store: &LocalStore, name: &str, nar: &[u8]) -> ValidPathInfo {
    let hash = sha256(nar);
    let ca = ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash,
    };
    let path = ca
        .store_path(
            store.store_dir(),
            &unrooted_format::StorePathName::new(name).unwrap(),
            &BTreeSet::new(),
            false,
        )
        .unwrap();
    let mut info = ValidPathInfo::new(path, hash);
    info.nar_size = nar.len() as u64;
    info
}

#[test]
fn mismatches_are_refused_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let nar = file_nar(tmp.path(), b"payload");
    let good = nar_info(&store, "p", &nar);
    let check = |r: Result<(), StoreError>| {
        let e = r.unwrap_err();
        assert!(store.query_all_valid_paths().unwrap().is_empty());
        assert!(temp_contents(&tmp.path().join("store")).is_empty());
        assert!(!store.real_path(&good.path).exists());
        e
    };

    let mut bad = good.clone();
    bad.nar_hash = Hash::sha256([1; 32]);
    let e = check(store.add_to_store_nar(&bad, &mut &nar[..], false, CheckSigs::DontCheck));
    assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
    assert!(e.to_string().starts_with(&format!(
        "hash mismatch importing path '{}'",
        store.print_path(&good.path)
    )));

    let mut bad = good.clone();
    bad.nar_size += 1;
    let e = check(store.add_to_store_nar(&bad, &mut &nar[..], false, CheckSigs::DontCheck));
    assert!(matches!(e, StoreError::SizeMismatch { .. }), "{e}");
    assert!(e.to_string().starts_with("size mismatch importing path"));

    // A CA claim for other content, on the path that claim gives, with the NAR
    // hash of what is really sent.
    let other = file_nar(tmp.path(), b"other");
    let mut bad = nar_info(&store, "p", &other);
    bad.ca = Some(ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: sha256(&other),
    });
    bad.nar_hash = sha256(&nar);
    bad.nar_size = nar.len() as u64;
    let e = store
        .add_to_store_nar(&bad, &mut &nar[..], false, CheckSigs::DontCheck)
        .unwrap_err();
    assert!(matches!(e, StoreError::CaHashMismatch { .. }), "{e}");
    assert!(e.to_string().starts_with("ca hash mismatch importing path"));
    assert!(store.query_all_valid_paths().unwrap().is_empty());

    // A CA claim that does not give the path.
    let mut bad = good.clone();
    bad.ca = Some(ContentAddress::Text(sha256(b"x")));
    let e = check(store.add_to_store_nar(&bad, &mut &nar[..], false, CheckSigs::DontCheck));
    assert!(matches!(e, StoreError::NotContentAddressed { .. }), "{e}");

    // A truncated NAR.
    let e = check(store.add_to_store_nar(
        &good,
        &mut &nar[..nar.len() - 9],
        false,
        CheckSigs::DontCheck,
    ));
    assert!(matches!(e, StoreError::Restore { .. }), "{e}");

    // No trusted signature and no CA claim.
    let e = check(store.add_to_store_nar(&good, &mut &nar[..], false, CheckSigs::Check));
    assert!(matches!(e, StoreError::Untrusted { .. }), "{e}");

    for name in ["", "a/b", "x y", &"n".repeat(212)] {
        let e = store
            .add_text(name, b"t", &BTreeSet::new(), false)
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{name}: {e}");
        let e = store
            .add_ca(
                name,
                FileIngestionMethod::Recursive,
                HashAlgo::Sha256,
                &mut &nar[..],
                &BTreeSet::new(),
                false,
            )
            .unwrap_err();
        assert!(matches!(e, StoreError::InvalidName { .. }), "{name}: {e}");
    }
    // References on a flat path are impossible.
    let e = store
        .add_ca(
            "flat",
            FileIngestionMethod::Flat,
            HashAlgo::Sha256,
            &mut &b"x"[..],
            &set(&[&good.path]),
            false,
        )
        .unwrap_err();
    assert!(matches!(e, StoreError::ComputePath { .. }), "{e}");
    assert!(temp_contents(&tmp.path().join("store")).is_empty());

    // And the good one goes in.
    store
        .add_to_store_nar(&good, &mut &nar[..], false, CheckSigs::DontCheck)
        .unwrap();
    assert!(store.is_valid_path(&good.path).unwrap());
}

#[test]
fn signatures_and_ca_satisfy_signature_checks() {
    let tmp = tempfile::tempdir().unwrap();
    let key = SecretKey::from_seed("test-1", &[3; 32]);
    let mut config = config_at(tmp.path());
    let mut keys = TrustedKeys::new();
    keys.insert(key.to_public());
    config.trusted_public_keys = keys;
    let store = LocalStore::open(config).unwrap();
    let nar = file_nar(tmp.path(), b"signed");
    let mut info = nar_info(&store, "s", &nar);
    let fp = info.fingerprint(store.store_dir()).unwrap();
    info.sigs.insert(key.sign(&fp).to_string());
    store
        .add_to_store_nar(&info, &mut &nar[..], false, CheckSigs::Check)
        .unwrap();
    assert_eq!(
        store.query_path_info(&info.path).unwrap().unwrap().sigs,
        info.sigs
    );
    // Unsigned but content-addressed: trusted by its address.
    let nar2 = file_nar(tmp.path(), b"ca");
    let mut info2 = nar_info(&store, "c", &nar2);
    info2.ca = Some(ContentAddress::Fixed {
        method: FileIngestionMethod::Recursive,
        hash: sha256(&nar2),
    });
    store
        .add_to_store_nar(&info2, &mut &nar2[..], false, CheckSigs::Check)
        .unwrap();
    store
        .add_signatures(&info2.path, ["other:sig".to_owned()])
        .unwrap();
    assert!(store
        .query_path_info(&info2.path)
        .unwrap()
        .unwrap()
        .sigs
        .contains("other:sig"));
}

#[test]
fn invalid_leftover_at_the_final_name_is_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let src = tmp.path().join("src");
    generate_tree(&src, 3, 20, 10);
    let nar = nar_of(&src);
    let info = nar_info(&store, "t", &nar);
    // What a crash between rename and registration leaves (here: incomplete).
    let real = store.real_path(&info.path);
    fs::create_dir(&real).unwrap();
    fs::write(real.join("partial"), "half").unwrap();
    fs::set_permissions(&real, fs::Permissions::from_mode(0o555)).unwrap();
    store
        .add_to_store_nar(&info, &mut &nar[..], false, CheckSigs::DontCheck)
        .unwrap();
    assert_eq!(nar_of(&real), nar);
    assert!(temp_contents(&tmp.path().join("store")).is_empty());
    // Repair swaps a fresh copy in even though the path is valid.
    fs::set_permissions(&real, fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(real.join("junk"), "j").unwrap();
    store
        .add_to_store_nar(&info, &mut &nar[..], true, CheckSigs::DontCheck)
        .unwrap();
    assert_eq!(nar_of(&real), nar);
}

#[test]
fn concurrent_adds_of_one_path_do_the_work_once() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Arc::new(open_at(tmp.path()));
    let src = tmp.path().join("src");
    generate_tree(&src, 11, 200, 2_000_000);
    let nar = Arc::new(nar_of(&src));
    let info = Arc::new(nar_info(&store, "same", &nar));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (store, nar, info) = (store.clone(), nar.clone(), info.clone());
            std::thread::spawn(move || {
                if i % 2 == 0 {
                    store
                        .add_to_store_nar(&info, &mut &nar[..], false, CheckSigs::DontCheck)
                        .unwrap();
                    info.path.clone()
                } else {
                    store
                        .add_ca(
                            "same",
                            FileIngestionMethod::Recursive,
                            HashAlgo::Sha256,
                            &mut &nar[..],
                            &BTreeSet::new(),
                            false,
                        )
                        .unwrap()
                        .path
                }
            })
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), info.path);
    }
    let rows: i64 = rusqlite::Connection::open(tmp.path().join("state/db/db.sqlite"))
        .unwrap()
        .query_row("select max(id) from ValidPaths", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1, "registered once, never re-registered");
    assert_eq!(nar_of(&store.real_path(&info.path)), *nar);

    // Different paths at the same time.
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let store = store.clone();
            std::thread::spawn(move || {
                store
                    .add_text(
                        &format!("t{i}"),
                        format!("text {i}").as_bytes(),
                        &BTreeSet::new(),
                        false,
                    )
                    .unwrap()
                    .path
            })
        })
        .collect();
    let paths: BTreeSet<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(paths.len(), 8);
    assert_eq!(store.query_all_valid_paths().unwrap().len(), 9);
    assert!(temp_contents(&tmp.path().join("store")).is_empty());
}

#[test]
fn canonicalisation_resets_modes_times_and_xattrs() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path().join("t");
    fs::create_dir(&t).unwrap();
    fs::write(t.join("suid"), "x").unwrap();
    fs::set_permissions(t.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::write(t.join("rw"), "x").unwrap();
    fs::set_permissions(t.join("rw"), fs::Permissions::from_mode(0o666)).unwrap();
    fs::create_dir(t.join("sub")).unwrap();
    fs::set_permissions(t.join("sub"), fs::Permissions::from_mode(0o3777)).unwrap();
    std::os::unix::fs::symlink("rw", t.join("link")).unwrap();
    let xattr = rustix::fs::lsetxattr(
        t.join("rw"),
        "user.unrooted-test",
        b"v",
        rustix::fs::XattrFlags::empty(),
    );
    let xattr_supported = xattr.is_ok();
    if !xattr_supported {
        eprintln!("user xattrs unsupported here ({xattr:?}); xattr part not checked");
    }
    canonicalise_path_metadata(&t).unwrap();
    let m = |p: &str| fs::symlink_metadata(t.join(p)).unwrap();
    assert_eq!(m("suid").mode() & 0o7777, 0o555);
    assert_eq!(m("rw").mode() & 0o7777, 0o444);
    assert_eq!(m("sub").mode() & 0o7777, 0o555);
    assert_eq!(m("").mode() & 0o7777, 0o555);
    for p in ["", "suid", "rw", "sub", "link"] {
        assert_eq!((m(p).mtime(), m(p).mtime_nsec()), (1, 0), "{p}");
    }
    if xattr_supported {
        assert_eq!(rustix::fs::llistxattr_query(t.join("rw")).unwrap(), 0);
    }
    // Devices, fifos and sockets are refused.
    let f = tmp.path().join("fifo-tree");
    fs::create_dir(&f).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        f.join("fifo"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    let e = canonicalise_path_metadata(&f).unwrap_err();
    assert!(matches!(e, StoreError::UnsupportedFileType { .. }), "{e}");
}

#[test]
fn verify_reports_damage_and_removes_vanished_paths() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let a = store
        .add_text("a", b"aaa", &BTreeSet::new(), false)
        .unwrap();
    let b = store
        .add_text("b", b"bbb", &BTreeSet::new(), false)
        .unwrap();
    let c = store
        .add_text("c", b"ccc", &set(&[&b.path]), false)
        .unwrap();
    let mut log = Vec::new();
    assert!(!store.verify(true, false, &mut |m| log.push(m)).unwrap());
    assert_eq!(
        log,
        [
            VerifyMessage::ReadingStore,
            VerifyMessage::CheckingPathExistence,
            VerifyMessage::CheckingLinkHashes,
            VerifyMessage::CheckingStoreHashes
        ]
    );
    // Damage a: its hash no longer matches.
    let ra = store.real_path(&a.path);
    fs::set_permissions(&ra, fs::Permissions::from_mode(0o644)).unwrap();
    fs::write(&ra, "AAA").unwrap();
    // Remove b (referred to by c) and c (no referrers).
    fs::remove_file(store.real_path(&b.path)).unwrap();
    fs::remove_file(store.real_path(&c.path)).unwrap();
    let mut log = Vec::new();
    assert!(store.verify(true, true, &mut |m| log.push(m)).unwrap());
    let text: Vec<String> = log.iter().map(ToString::to_string).collect();
    let has = |s: &str| text.iter().any(|t| t.contains(s));
    assert!(
        has(&format!(
            "path '{}' was modified!",
            store.print_path(&a.path)
        )),
        "{text:?}"
    );
    assert!(has("disappeared, removing from database"), "{text:?}");
    assert!(
        has(&format!(
            "cannot repair path '{}'",
            store.print_path(&a.path)
        )),
        "{text:?}"
    );
    assert!(!store.is_valid_path(&c.path).unwrap());
    // b's referrer c was removed first only if it came earlier; either way b is
    // reported or removed, never silently kept valid without contents.
    assert!(
        !store.is_valid_path(&b.path).unwrap()
            || has(&format!("'{}' disappeared, but", store.print_path(&b.path)))
    );
}

#[test]
fn optimise_links_identical_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let mk = |name: &str, extra: &str| {
        let src = tmp.path().join(name);
        fs::create_dir(&src).unwrap();
        fs::write(src.join("same"), "identical contents").unwrap();
        fs::write(src.join("own"), extra).unwrap();
        let nar = nar_of(&src);
        store
            .add_ca(
                name,
                FileIngestionMethod::Recursive,
                HashAlgo::Sha256,
                &mut &nar[..],
                &BTreeSet::new(),
                false,
            )
            .unwrap()
    };
    let one = mk("one", "1");
    let two = mk("two", "2");
    let stats = store.optimise().unwrap();
    assert_eq!(stats.files_linked, 1);
    assert_eq!(stats.bytes_freed, "identical contents".len() as u64);
    let ino = |p: &StorePath| fs::metadata(store.real_path(p).join("same")).unwrap().ino();
    assert_eq!(ino(&one.path), ino(&two.path));
    for p in [&one.path, &two.path] {
        let m = fs::metadata(store.real_path(p)).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.mtime()),
            (0o555, 1),
            "dir read-only again"
        );
    }
    assert_eq!(store.optimise().unwrap().files_linked, 0, "idempotent");
    assert!(!store.verify(true, false, &mut |_| {}).unwrap());
}

/// Nix's test suite removes and re-makes the store and state directories while the
/// daemon runs (`clearStore`): the next connection's `revalidate` re-makes the layout
/// and opens the new, empty database, so nothing of the old store is served (its
/// paths are invalid, queries through pooled readers too) and adds work again.
#[test]
fn a_store_removed_under_the_daemon_is_made_again_and_serves_no_stale_state() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let store = open_at(root);
    let none = BTreeSet::new();
    let old = store.add_text("old", b"old", &none, false).unwrap().path;
    assert!(store.is_valid_path(&old).unwrap());
    store.revalidate().unwrap();
    assert!(store.is_valid_path(&old).unwrap(), "nothing changed: kept");

    for d in ["store", "state"] {
        fs::remove_dir_all(root.join(d)).unwrap();
        fs::create_dir(root.join(d)).unwrap();
    }
    store.revalidate().unwrap();
    assert!(root.join("state/db/db.sqlite").is_file());
    assert!(root.join("state/profiles/per-user").is_dir());
    assert!(root.join("store/.links").is_dir());
    assert!(
        !store.is_valid_path(&old).unwrap(),
        "a stale path was served"
    );
    let new = store.add_text("new", b"new", &none, false).unwrap().path;
    assert!(store.is_valid_path(&new).unwrap());
    assert_eq!(fs::read(store.real_path(&new)).unwrap(), b"new");
}

/// Nix's test suite ends with `rmdir $NIX_STORE_DIR` after a collection: between
/// uses nothing of ours may be left there, and the area comes back when needed.
#[test]
fn temporary_area_is_gone_when_the_last_use_ends() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let s = open_at(root);
    let store = root.join("store");
    let first = s.in_use();
    let second = s.in_use();
    let p = s.new_temp_path("work");
    fs::write(&p, b"in progress").unwrap();
    drop(first);
    assert_eq!(temp_entries(&store).len(), 1, "a use is left");
    drop(second);
    assert_eq!(temp_entries(&store).len(), 1, "not empty: kept");
    fs::remove_file(&p).unwrap();
    drop(s.in_use());
    assert!(temp_entries(&store).is_empty());
    // Made again (and locked: a second store's sweep leaves it alone) on demand.
    let u = s.in_use();
    let p = s.new_temp_path("again");
    fs::write(&p, b"x").unwrap();
    let other = open_at(root);
    assert!(p.exists(), "a live area is not swept");
    drop(other);
    fs::remove_file(&p).unwrap();
    drop(u);
    assert!(temp_entries(&store).is_empty());
}
