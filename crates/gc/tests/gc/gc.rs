//! The collector on a real store, in-process: roots of each kind, liveness rules,
//! the messages Nix prints, deletion order, limits, leftovers, and crash consistency
//! checked with the real `nix-store --verify --check-contents`.

use crate::common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::symlink;

use common::*;
use unrooted_gc::{add_indirect_root, GcAction, GcError, TempRoots};
use unrooted_testkit::{nix_tool, NixEnv};

#[test]
fn roots_of_each_kind_keep_their_closure_and_the_rest_goes() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let state = tmp.path().join("state");
    let sp = |p| store.print_path(p);
    let dep = text(&store, "dep", "dep", &[]);
    let direct = text(&store, "direct", "direct", &[&dep]);
    let file_root = text(&store, "file-root", "f", &[]);
    let profile = text(&store, "profile", "p", &[]);
    let indirect = text(&store, "indirect", "i", &[]);
    let per_user = text(&store, "per-user", "u", &[]);
    let temp = text(&store, "temp", "t", &[]);
    let dead_low = text(&store, "dead-low", "d", &[]);
    let dead_high = text(&store, "dead-high", "h", &[&dead_low]);

    symlink(sp(&direct), state.join("gcroots/direct")).unwrap();
    fs::write(state.join("gcroots").join(file_root.to_base_name()), b"").unwrap();
    symlink(sp(&profile), state.join("profiles/default-1-link")).unwrap();
    let home = tmp.path().join("home");
    fs::create_dir(&home).unwrap();
    // The indirect root points inside its store path: the whole path is kept.
    symlink(format!("{}/x/y", sp(&indirect)), home.join("result")).unwrap();
    add_indirect_root(&state, &home.join("result")).unwrap();
    fs::create_dir_all(state.join("gcroots/per-user/alice")).unwrap();
    symlink(sp(&per_user), state.join("gcroots/per-user/alice/r")).unwrap();
    let temps = TempRoots::new();
    temps.add(7, temp.clone());

    let roots = unrooted_gc::Collector::new(&store, no_helper(), &temps)
        .find_roots(false)
        .unwrap();
    let listed: BTreeSet<(String, String)> =
        roots.iter().map(|(l, p)| (l.clone(), sp(p))).collect();
    for (link, path) in [
        (
            state.join("gcroots/direct").display().to_string(),
            sp(&direct),
        ),
        (home.join("result").display().to_string(), sp(&indirect)),
        (
            state.join("profiles/default-1-link").display().to_string(),
            sp(&profile),
        ),
        ("{temp:7}".to_owned(), sp(&temp)),
    ] {
        assert!(
            listed.contains(&(link.clone(), path.clone())),
            "{link} -> {path} missing: {listed:?}"
        );
    }
    let censored = unrooted_gc::Collector::new(&store, no_helper(), &temps)
        .find_roots(true)
        .unwrap();
    assert!(censored
        .iter()
        .any(|(l, p)| l == "{censored}" && *p == temp));

    // A result link the user deleted: its auto link is removed with Nix's message.
    add_indirect_root(&state, &home.join("deleted-result")).unwrap();
    let (r, log) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    let r = r.unwrap();
    assert_eq!(
        r.paths,
        [sp(&dead_high), sp(&dead_low)].into_iter().collect()
    );
    assert!(r.bytes_freed > 0);
    for p in [
        &dep, &direct, &file_root, &profile, &indirect, &per_user, &temp,
    ] {
        assert!(store.is_valid_path(p).unwrap(), "{}", sp(p));
        assert!(store.real_path(p).exists());
    }
    for p in [&dead_low, &dead_high] {
        assert!(!store.is_valid_path(p).unwrap());
        assert!(!store.real_path(p).exists());
    }
    let pos = |m: &str| {
        log.iter()
            .position(|l| l == m)
            .unwrap_or_else(|| panic!("{m} not in {log:?}"))
    };
    assert!(pos("finding garbage collector roots...") < pos("deleting garbage..."));
    // Referrers before the paths they refer to.
    assert!(
        pos(&format!("deleting '{}'", sp(&dead_high)))
            < pos(&format!("deleting '{}'", sp(&dead_low)))
    );
    assert!(pos("deleting unused links...") > pos("deleting garbage..."));
    let stale = log
        .iter()
        .find(|l| l.starts_with("removing stale link from '"))
        .expect("stale link message");
    assert!(
        stale.ends_with(&format!("to '{}'", home.join("deleted-result").display())),
        "{stale}"
    );
    assert_eq!(fs::read_dir(state.join("gcroots/auto")).unwrap().count(), 1);
    // The reserved file went first; it comes back at the next open.
    assert!(!state.join("db/reserved").exists());

    // Unrooting makes a path collectable.
    fs::remove_file(state.join("gcroots/direct")).unwrap();
    temps.remove_owner(7);
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    let r = r.unwrap();
    assert_eq!(
        r.paths,
        [sp(&direct), sp(&dep), sp(&temp)].into_iter().collect()
    );
}

#[test]
fn print_live_print_dead_delete_specific_and_refusals() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let state = tmp.path().join("state");
    let sp = |p| store.print_path(p);
    let live = text(&store, "live", "l", &[]);
    let dead = text(&store, "dead", "d", &[]);
    let dead_ref = text(&store, "dead-referrer", "r", &[&dead]);
    symlink(sp(&live), state.join("gcroots/l")).unwrap();
    let temps = TempRoots::new();
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::ReturnLive, u64::MAX);
    assert_eq!(r.unwrap().paths, [sp(&live)].into_iter().collect());
    let (r, log) = collect(&store, no_helper(), &temps, GcAction::ReturnDead, u64::MAX);
    assert_eq!(
        r.unwrap().paths,
        [sp(&dead), sp(&dead_ref)].into_iter().collect()
    );
    // Issue 19: the messages of Nix's gc.cc (2.8 and 2.26), compared side by side with
    // Debian 13's nix-daemon: a dry run determines, it does not delete.
    assert!(
        log.iter().any(|l| l == "determining live/dead paths..."),
        "{log:?}"
    );
    assert!(!log.iter().any(|l| l == "deleting garbage..."), "{log:?}");

    let (r, _) = collect(
        &store,
        no_helper(),
        &temps,
        GcAction::DeleteSpecific([live.clone()].into()),
        u64::MAX,
    );
    let e = r.unwrap_err();
    assert_eq!(
        e.to_string(),
        format!("Cannot delete path '{}' since it is still alive. To find out why, use: nix-store --query --roots", sp(&live))
    );
    // A dead path another (dead, not requested) path refers to is refused too.
    let (r, _) = collect(
        &store,
        no_helper(),
        &temps,
        GcAction::DeleteSpecific([dead.clone()].into()),
        u64::MAX,
    );
    assert!(matches!(r, Err(GcError::Referenced { .. })), "{r:?}");
    assert!(store.is_valid_path(&dead).unwrap());
    let (r, log) = collect(
        &store,
        no_helper(),
        &temps,
        GcAction::DeleteSpecific([dead.clone(), dead_ref.clone()].into()),
        u64::MAX,
    );
    assert_eq!(
        r.unwrap().paths,
        [sp(&dead), sp(&dead_ref)].into_iter().collect()
    );
    // Deleting named paths is not announced as a sweep ("deleting garbage..." is
    // printed only when all garbage is collected), but each deletion is.
    assert!(!log.iter().any(|l| l == "deleting garbage..."), "{log:?}");
    assert!(
        log.iter()
            .any(|l| *l == format!("deleting '{}'", sp(&dead))),
        "{log:?}"
    );
    assert!(store.is_valid_path(&live).unwrap());

    let opts = unrooted_gc::GcOptions {
        action: GcAction::DeleteDead,
        ignore_liveness: true,
        max_freed: u64::MAX,
    };
    let e = unrooted_gc::Collector::new(&store, no_helper(), &temps)
        .collect(&opts, &mut |_| {})
        .unwrap_err();
    assert_eq!(e.to_string(), "you are not allowed to ignore liveness");
}

#[test]
fn max_freed_stops_once_enough_is_freed() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let big = vec![7u8; 100_000];
    let mut paths = Vec::new();
    for c in ['a', 'b', 'c', 'd', 'f'] {
        let mut bytes = big.clone();
        bytes[0] = c as u8;
        paths.push(file_path(&store, c, "big", &bytes, None));
    }
    let temps = TempRoots::new();
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, 150_000);
    let r = r.unwrap();
    assert_eq!(r.paths.len(), 2, "{r:?}");
    assert!(
        r.bytes_freed >= 150_000 && r.bytes_freed < 300_000,
        "{}",
        r.bytes_freed
    );
    let valid = paths
        .iter()
        .filter(|p| store.is_valid_path(p).unwrap())
        .count();
    assert_eq!(valid, 3);
}

#[test]
fn keep_derivations_keeps_the_deriver_of_a_live_path() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let state = tmp.path().join("state");
    let deriver = text(&store, "fake-deriver", "drv", &[]);
    let out = file_path(&store, 'a', "out", b"out", Some(&deriver));
    symlink(store.print_path(&out), state.join("gcroots/out")).unwrap();
    let temps = TempRoots::new();
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    assert!(r.unwrap().paths.is_empty());
    assert!(store.is_valid_path(&deriver).unwrap());
    let mut config = no_helper();
    config.keep_derivations = false;
    let (r, _) = collect(&store, config, &temps, GcAction::DeleteDead, u64::MAX);
    assert_eq!(
        r.unwrap().paths,
        [store.print_path(&deriver)].into_iter().collect()
    );
    assert!(store.is_valid_path(&out).unwrap());
}

#[test]
fn invalid_leftovers_and_stale_locks_go_busy_ones_stay_links_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let root = tmp.path().join("store");
    // Two paths sharing one file through `.links`.
    let a = file_path(&store, 'a', "same", b"identical contents", None);
    let b = file_path(&store, 'b', "same", b"identical contents", None);
    store.optimise().unwrap();
    assert_eq!(fs::read_dir(root.join(".links")).unwrap().count(), 1);
    // An invalid leftover, a stale lock, junk, and a leftover whose lock is held.
    let leftover = root.join("cccccccccccccccccccccccccccccccc-leftover");
    fs::create_dir_all(leftover.join("d")).unwrap();
    fs::write(leftover.join("d/f"), b"x").unwrap();
    fs::write(
        root.join("dddddddddddddddddddddddddddddddd-stale.lock"),
        b"",
    )
    .unwrap();
    fs::write(root.join("junk"), b"junk").unwrap();
    let busy = root.join("ffffffffffffffffffffffffffffffff-busy");
    fs::create_dir(&busy).unwrap();
    let busy_lock =
        fs::File::create(root.join("ffffffffffffffffffffffffffffffff-busy.lock")).unwrap();
    rustix::fs::flock(&busy_lock, rustix::fs::FlockOperation::LockExclusive).unwrap();

    let temps = TempRoots::new();
    let (r, log) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    let r = r.unwrap();
    assert!(r.paths.contains(&store.print_path(&a)) && r.paths.contains(&store.print_path(&b)));
    assert!(!leftover.exists());
    assert!(!root
        .join("dddddddddddddddddddddddddddddddd-stale.lock")
        .exists());
    assert!(!root.join("junk").exists());
    assert!(busy.exists(), "a path being added must survive");
    assert!(root
        .join("ffffffffffffffffffffffffffffffff-busy.lock")
        .exists());
    assert_eq!(
        fs::read_dir(root.join(".links")).unwrap().count(),
        0,
        "{log:?}"
    );
    assert!(log
        .iter()
        .any(|l| l.starts_with("note: currently hard linking saves")));
    drop(busy_lock);
}

/// A collection killed after invalidating and before deleting leaves paths on disk
/// that are not valid: the store is consistent for Nix, and the next collection
/// removes them.
#[test]
fn crash_between_invalidation_and_deletion_leaves_a_consistent_store() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let env = NixEnv::new();
    let store = open_at(env.root());
    let keep = text(&store, "keep", "k", &[]);
    let low = text(&store, "low", "l", &[]);
    let high = text(&store, "high", "h", &[&low]);
    symlink(store.print_path(&keep), env.root().join("state/gcroots/k")).unwrap();
    // The first half of a collection: one transaction, referrers first.
    store
        .invalidate_paths(&[high.clone(), low.clone()])
        .unwrap();
    // Referees before referrers is refused by the database, changing nothing.
    let other = text(&store, "other-low", "o", &[]);
    let other_high = text(&store, "other-high", "oh", &[&other]);
    assert!(store
        .invalidate_paths(&[other.clone(), other_high.clone()])
        .is_err());
    assert!(store.is_valid_path(&other).unwrap() && store.is_valid_path(&other_high).unwrap());
    drop(store); // the crash

    let verify = |what: &str| {
        let out = env
            .command(&nix_store)
            .args(["--verify", "--check-contents"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{what}: {err}");
        assert!(
            !err.contains("error") && !err.contains("missing"),
            "{what}: {err}"
        );
    };
    verify("after the crash");
    let store = open_at(env.root());
    assert!(store.real_path(&high).exists() && !store.is_valid_path(&high).unwrap());
    let temps = TempRoots::new();
    let (r, log) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    r.unwrap();
    assert!(
        !store.real_path(&high).exists() && !store.real_path(&low).exists(),
        "{log:?}"
    );
    assert!(store.real_path(&keep).exists());
    drop(store);
    verify("after the next collection");
}

#[test]
fn temp_roots_guard_and_nix_temproots_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let held = text(&store, "held", "h", &[]);
    let nix_held = text(&store, "nix-held", "n", &[]);
    let temps = TempRoots::new();
    // A Nix process holding its temporary roots file locked.
    let file = tmp.path().join("state/temproots/12345");
    fs::write(&file, format!("{}\0", store.print_path(&nix_held))).unwrap();
    let f = fs::File::open(&file).unwrap();
    rustix::fs::flock(&f, rustix::fs::FlockOperation::LockShared).unwrap();
    // A dead process's file is removed.
    fs::write(tmp.path().join("state/temproots/99999"), b"").unwrap();
    {
        let _guard = temps.hold([held.clone()]);
        let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
        assert!(r.unwrap().paths.is_empty());
    }
    assert!(!tmp.path().join("state/temproots/99999").exists());
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    assert_eq!(
        r.unwrap().paths,
        [store.print_path(&held)].into_iter().collect()
    );
    drop(f);
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    assert_eq!(
        r.unwrap().paths,
        [store.print_path(&nix_held)].into_iter().collect()
    );
}

#[test]
fn runtime_root_of_our_own_process_is_seen_without_helper() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let dir = file_path(&store, 'a', "cwd-holder", b"x", None);
    let by_fd = file_path(&store, 'b', "fd-holder", b"y", None);
    // It says when the descriptor is open.
    let mut child = unrooted_testkit::spawn_ready(
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec 3<'{}'; echo ready; exec sleep 30",
                store.real_path(&by_fd).display()
            ))
            .current_dir(tmp.path().join("store"))
            .env("HOLD", store.print_path(&dir)),
    );
    let temps = TempRoots::new();
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    let _ = child.kill();
    let _ = child.wait();
    assert!(r.unwrap().paths.is_empty());
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    assert_eq!(r.unwrap().paths.len(), 2);
}

/// The collector's lock file travels from path to path: a path whose lock is held
/// elsewhere stays, one with an unlocked lock file goes, and no lock file is left.
#[test]
fn deletion_lock_skips_held_locks_and_leaves_no_lock_files() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let root = tmp.path().join("store");
    let dead: Vec<_> = (0..600)
        .map(|i| text(&store, &format!("dead-{i}"), &format!("dead {i}\n"), &[]))
        .collect();
    let lock_of = |p: &unrooted_format::StorePath| {
        let mut name = store.real_path(p).into_os_string();
        name.push(".lock");
        std::path::PathBuf::from(name)
    };
    let held = fs::File::create(lock_of(&dead[300])).unwrap();
    rustix::fs::flock(&held, rustix::fs::FlockOperation::LockExclusive).unwrap();
    fs::write(lock_of(&dead[301]), b"").unwrap();

    let temps = TempRoots::new();
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    let r = r.unwrap();
    assert!(
        store.real_path(&dead[300]).exists(),
        "a locked path must stay"
    );
    for (i, p) in dead.iter().enumerate() {
        if i != 300 {
            assert!(!store.real_path(p).exists(), "{i} not deleted");
            assert!(r.paths.contains(&store.print_path(p)));
        }
    }
    let locks: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "lock"))
        .collect();
    assert_eq!(locks, vec![lock_of(&dead[300])]);
    drop(held);
}

/// FindRoots lists a root the daemon read itself once, by its link, even when the
/// roots helper reports it too; roots only the helper saw show as `{censored}`.
#[test]
fn helper_roots_the_daemon_found_are_not_listed_twice() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let readable = text(&store, "readable", "r\n", &[]);
    let hidden = text(&store, "hidden", "h\n", &[]);
    let gcroots = tmp.path().join("state/gcroots");
    fs::create_dir_all(&gcroots).unwrap();
    std::os::unix::fs::symlink(store.real_path(&readable), gcroots.join("r")).unwrap();
    let socket = tmp.path().join("helper.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    let answer = format!(
        "{}\0{}\0end of answer\0",
        store.print_path(&readable),
        store.print_path(&hidden)
    );
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.write_all(answer.as_bytes()).unwrap();
    });
    let temps = TempRoots::new();
    let config = unrooted_gc::GcConfig::new(unrooted_gc::RootsHelper::Socket(socket));
    let roots = unrooted_gc::Collector::new(&store, config, &temps)
        .find_roots(true)
        .unwrap();
    server.join().unwrap();
    let of = |p: &unrooted_format::StorePath| {
        roots
            .iter()
            .filter(|(_, r)| r == p)
            .map(|(l, _)| l.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(of(&readable), vec![gcroots.join("r").display().to_string()]);
    assert_eq!(of(&hidden), vec!["{censored}".to_owned()]);
}

/// Hostile roots: a user plants a million entries in its per-user roots directory.
/// The daemon's own walk still finds the one real root among them, in bounded time
/// (its bounds are 4,000,000 entries and 60 s; past them it refuses to delete), and
/// the collection deletes exactly the dead path.
#[test]
fn a_million_entries_in_a_roots_directory_keep_their_root_in_bounded_time() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let state = tmp.path().join("state");
    let kept = text(&store, "kept", "kept", &[]);
    let dead = text(&store, "dead", "dead", &[]);
    let many = state.join("gcroots/per-user/mallory");
    fs::create_dir_all(&many).unwrap();
    fill_with_entries(&many, 1_000_000);
    symlink(store.print_path(&kept), many.join("the-real-root")).unwrap();

    let started = std::time::Instant::now();
    let temps = TempRoots::new();
    let (r, _) = collect(&store, no_helper(), &temps, GcAction::DeleteDead, u64::MAX);
    let took = started.elapsed();
    let r = r.unwrap_or_else(|e| panic!("{}", chain(&e)));
    eprintln!("collection beside a million root entries: {took:?}");
    assert!(took < std::time::Duration::from_secs(60), "took {took:?}");
    assert_eq!(r.paths, BTreeSet::from([store.print_path(&dead)]));
    assert!(store.is_valid_path(&kept).unwrap());
    assert!(fs::symlink_metadata(store.real_path(&kept)).is_ok());
    let roots = unrooted_gc::Collector::new(&store, no_helper(), &temps)
        .find_roots(false)
        .unwrap();
    assert!(roots
        .iter()
        .any(|(l, p)| *p == kept && l.ends_with("the-real-root")));
}

/// A full collection while a stand-in helper at the config's socket gives `answers`.
fn collect_beside_helper(
    store: &unrooted_store::LocalStore,
    config: &unrooted_gc::GcConfig,
    temps: &TempRoots,
    answers: Vec<String>,
) -> Result<unrooted_gc::GcResult, GcError> {
    let (unrooted_gc::RootsHelper::Socket(socket)
    | unrooted_gc::RootsHelper::RuntimeOnlySocket(socket)) = &config.roots_helper
    else {
        panic!("no helper socket");
    };
    let helper = fake_helper(socket, answers);
    let (r, _) = collect(store, config.clone(), temps, GcAction::DeleteDead, u64::MAX);
    helper.join().unwrap();
    r
}

/// A stand-in for the roots helper at `socket`: answers one connection with each of
/// `answers` in turn, then stops listening (later connections are refused).
fn fake_helper(socket: &std::path::Path, answers: Vec<String>) -> std::thread::JoinHandle<()> {
    use std::io::Write;
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for answer in answers {
            let (mut conn, _) = listener.accept().unwrap();
            conn.write_all(answer.as_bytes()).unwrap();
        }
    })
}

/// Upstream's roots daemon (`roots-helper-runtime-only`) ends its answer at EOF, so
/// one killed between two items looks like a shorter list. The collector asks again
/// once the first answer is complete and uses the union: a root only the second
/// answer names survives, and a helper that is gone by then makes the collection
/// fail with nothing deleted.
#[test]
fn an_upstream_helper_answer_cut_short_loses_no_root() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let sp = |p| store.print_path(p);
    let a = text(&store, "a", "a", &[]);
    let b_dep = text(&store, "b-dep", "b-dep", &[]);
    let b = text(&store, "b", "b", &[&b_dep]);
    let c = text(&store, "c", "c", &[]);
    let socket = tmp.path().join("helper.sock");
    let helper = unrooted_gc::RootsHelper::RuntimeOnlySocket(socket.clone());
    let config = unrooted_gc::GcConfig::new(helper);
    let temps = TempRoots::new();

    // Cut short, then complete (a restarted or socket-activated helper).
    let answers = vec![format!("{}\0", sp(&a)), format!("{}\0{}\0", sp(&a), sp(&b))];
    let r = collect_beside_helper(&store, &config, &temps, answers);
    let r = r.unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(r.paths, BTreeSet::from([sp(&c)]));
    for p in [&a, &b, &b_dep] {
        assert!(store.is_valid_path(p).unwrap(), "{} was deleted", sp(p));
    }

    // Cut short, then gone: refused, nothing deleted.
    fs::remove_file(&socket).unwrap();
    let helper = fake_helper(&socket, vec![format!("{}\0", sp(&a))]);
    let (r, _) = collect(&store, config, &temps, GcAction::DeleteDead, u64::MAX);
    helper.join().unwrap();
    match r {
        Err(GcError::AskHelper { socket: s, .. }) => assert_eq!(s, socket),
        other => panic!("expected a failed second ask, got {other:?}"),
    }
    for p in [&a, &b, &b_dep] {
        assert!(store.is_valid_path(p).unwrap(), "{} was deleted", sp(p));
    }
}

/// GC fails closed: our helper's answer counts only when it ends with its
/// end-of-answer item and carries no error item. Every other outcome (a helper that
/// closes at once because it refused this uid or crashed, an error item, an answer
/// cut short before the end item, a malformed item, an item after the end, no answer
/// within the time-out, no helper at all) refuses the collection with an error naming
/// the cause, and deletes nothing; the complete answer then collects.
#[test]
fn gc_refuses_unless_the_helper_answer_is_complete() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let sp = |p| store.print_path(p);
    let rooted = text(&store, "rooted", "rooted", &[]);
    let dead = text(&store, "dead", "dead", &[]);
    let socket = tmp.path().join("helper.sock");
    let mut config = unrooted_gc::GcConfig::new(unrooted_gc::RootsHelper::Socket(socket.clone()));
    config.helper_timeout = std::time::Duration::from_millis(300);
    let temps = TempRoots::new();
    let root = sp(&rooted);
    let cases: Vec<(&str, String, &str)> = vec![
        ("closed at once", String::new(), "without answering"),
        (
            "refused",
            "error: refusing peer 3-1-1000: not uid 4294967295\0".into(),
            "not uid 4294967295",
        ),
        (
            "error item before the end",
            format!("{root}\0error: cannot read potential root '/home/a/result'\0end of answer\0"),
            "cannot read potential root",
        ),
        ("cut short", format!("{root}\0"), "no end-of-answer item"),
        (
            "cut mid-item",
            format!("{root}\0/nix/sto"),
            "not NUL-terminated",
        ),
        (
            "malformed item",
            format!("{root}\0garbage\0end of answer\0"),
            "malformed",
        ),
        (
            "item after the end",
            format!("end of answer\0{root}\0"),
            "after the end",
        ),
    ];
    for (what, answer, cause) in cases {
        let _ = fs::remove_file(&socket);
        let r = collect_beside_helper(&store, &config, &temps, vec![answer]);
        let e = r.expect_err(what);
        assert!(chain(&e).contains(cause), "{what}: {}", chain(&e));
        for p in [&rooted, &dead] {
            assert!(store.is_valid_path(p).unwrap(), "{what}: {} deleted", sp(p));
        }
    }

    // No answer within the time-out: the helper holds the connection open.
    let _ = fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // Held until the collection has given up on it.
    let (given_up, wait) = std::sync::mpsc::channel::<()>();
    let hold = std::thread::spawn(move || {
        let conn = listener.accept().unwrap();
        let _ = wait.recv();
        drop(conn);
    });
    let (r, _) = collect(
        &store,
        config.clone(),
        &temps,
        GcAction::DeleteDead,
        u64::MAX,
    );
    given_up.send(()).unwrap();
    hold.join().unwrap();
    let e = r.expect_err("time-out");
    assert!(
        chain(&e).contains("no complete answer within"),
        "{}",
        chain(&e)
    );

    // No helper listening.
    fs::remove_file(&socket).unwrap();
    let (r, _) = collect(
        &store,
        config.clone(),
        &temps,
        GcAction::DeleteDead,
        u64::MAX,
    );
    assert!(matches!(r, Err(GcError::AskHelper { .. })), "{r:?}");
    assert!(store.is_valid_path(&dead).unwrap());

    // Complete: the dead path goes, the rooted one stays.
    let helper = fake_helper(&socket, vec![format!("{root}\0end of answer\0")]);
    let (r, _) = collect(&store, config, &temps, GcAction::DeleteDead, u64::MAX);
    helper.join().unwrap();
    let r = r.unwrap_or_else(|e| panic!("{}", chain(&e)));
    assert_eq!(r.paths, BTreeSet::from([sp(&dead)]));
    assert!(store.is_valid_path(&rooted).unwrap());
}

/// Issue 19: the two forms Nix 2.35 sends with `delete-dead-specific-referrers`:
/// `nix store delete --also-referrers` (the paths, which must be dead, with every
/// path that refers to them) and `--skip-alive` (the dead ones among the paths; live
/// ones, and without referrers those something outside refers to, skipped silently).
#[test]
fn delete_with_referrers_and_skip_alive() {
    let tmp = tempfile::tempdir().unwrap();
    let store = open_at(tmp.path());
    let state = tmp.path().join("state");
    let sp = |p| store.print_path(p);
    let live = text(&store, "live", "l", &[]);
    let dead = text(&store, "dead", "d", &[]);
    let dead_ref = text(&store, "dead-referrer", "r", &[&dead]);
    let dead_ref2 = text(&store, "dead-referrer-2", "r2", &[&dead_ref]);
    let lone = text(&store, "lone", "x", &[]);
    symlink(sp(&live), state.join("gcroots/l")).unwrap();
    let temps = TempRoots::new();

    // --skip-alive without referrers: live skipped, dead kept for its referrer, lone
    // deleted; no error.
    let (r, log) = collect(
        &store,
        no_helper(),
        &temps,
        GcAction::DeleteDeadWithin {
            paths: [live.clone(), dead.clone(), lone.clone()].into(),
            referrers: false,
        },
        u64::MAX,
    );
    assert_eq!(r.unwrap().paths, [sp(&lone)].into_iter().collect());
    assert!(
        log.iter()
            .any(|l| l == "deleting garbage within specified paths..."),
        "{log:?}"
    );
    assert!(store.is_valid_path(&live).unwrap() && store.is_valid_path(&dead).unwrap());

    // --also-referrers of a live path: refused, as a plain delete is.
    let (r, _) = collect(
        &store,
        no_helper(),
        &temps,
        GcAction::DeleteSpecificWithReferrers([live.clone()].into()),
        u64::MAX,
    );
    assert!(matches!(r, Err(GcError::StillAlive { .. })), "{r:?}");

    // --also-referrers of a dead path: it and its referrers, transitively.
    let (r, log) = collect(
        &store,
        no_helper(),
        &temps,
        GcAction::DeleteSpecificWithReferrers([dead.clone()].into()),
        u64::MAX,
    );
    assert_eq!(
        r.unwrap().paths,
        [sp(&dead), sp(&dead_ref), sp(&dead_ref2)]
            .into_iter()
            .collect()
    );
    assert!(
        log.iter().any(|l| l == "deleting specified paths..."),
        "{log:?}"
    );
    assert!(store.is_valid_path(&live).unwrap());
}
