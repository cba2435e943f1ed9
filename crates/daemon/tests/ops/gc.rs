//! Garbage collection with roots the daemon can read (its own user's links; no
//! roots helper: `unrooted-gc-without-roots-helper = true`), and temporary roots.

use std::collections::BTreeSet;
use std::path::Path;

use unrooted_format::{StorePath, StorePathName};
use unrooted_protocol::reply::GcResult;
use unrooted_protocol::request::{ContentAddressMethod, GcAction, GcOptions, GcPaths};
use unrooted_protocol::{Features, Request};

use crate::harness::{lines, Harness, Mode};

fn exists(p: &str) -> bool {
    Path::new(p).symlink_metadata().is_ok()
}

#[test]
fn gc_keeps_rooted_paths_and_deletes_the_rest() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let keep = h.nix_ok("nix-store", &["--add", &h.input("keep", "keep\n")]);
    let keep = keep.trim().to_owned();
    let dead = h.nix_ok("nix-store", &["--add", &h.input("dead", "dead\n")]);
    let dead = dead.trim().to_owned();
    // An indirect root: a link of the user's, registered in gcroots/auto.
    let link = h.root().join("home/keep-root");
    let link = link.to_str().unwrap();
    h.nix_ok(
        "nix-store",
        &["-r", &keep, "--add-root", link, "--indirect"],
    );
    let roots = h.nix_ok("nix-store", &["--gc", "--print-roots"]);
    assert!(roots.contains(&format!("{link} -> {keep}")), "{roots}");
    let dead_list = lines(&h.nix_ok("nix-store", &["--gc", "--print-dead"]));
    assert!(
        dead_list.contains(&dead) && !dead_list.contains(&keep),
        "{dead_list:?}"
    );
    let live = lines(&h.nix_ok("nix-store", &["--gc", "--print-live"]));
    assert!(live.contains(&keep), "{live:?}");
    // Deleting a live path is refused.
    let err = h.nix_err("nix-store", &["--delete", &keep]);
    assert!(err.contains("since it is still alive"), "{err}");
    h.nix_ok("nix-store", &["--gc"]);
    assert!(exists(&keep) && !exists(&dead));
    assert_eq!(h.valid_paths_local(), vec![keep.clone()]);
    // The link removed, the next collection deletes the path.
    std::fs::remove_file(link).unwrap();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(!exists(&keep));
    assert!(h.valid_paths_local().is_empty());
    h.assert_store_clean();
}

#[test]
fn build_results_survive_through_their_out_link() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input(
        "e.nix",
        r#"let mk = name: script: derivation { inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ]; };
           in rec { dep = mk "dep" "echo dep > $out"; top = mk "top" "echo ${dep} > $out"; }"#,
    );
    let result = h.root().join("home/result");
    let top = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "top", "-o", result.to_str().unwrap()],
    );
    let top = top.trim().to_owned();
    let closure = lines(&h.nix_ok("nix-store", &["-q", "--requisites", &top]));
    assert_eq!(closure.len(), 2, "{closure:?}");
    h.nix_ok("nix-collect-garbage", &[]);
    // The closure of the result survives; derivations (not kept without
    // keep-derivations roots of their own) do not matter here.
    for p in &closure {
        assert!(exists(p), "{p} was collected");
    }
    std::fs::remove_file(&result).unwrap();
    h.nix_ok("nix-store", &["--gc"]);
    for p in &closure {
        assert!(!exists(p), "{p} survived");
    }
    h.assert_store_clean();
}

#[test]
fn a_temporary_root_keeps_a_path_while_its_connection_lives() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let mut c = h.client();
    let info = c
        .add_to_store(
            StorePathName::new("temp").unwrap(),
            ContentAddressMethod::Text,
            BTreeSet::new(),
            &mut &b"temp\n"[..],
        )
        .unwrap();
    let p = h.store_dir().display(&info.path);
    c.add_temp_root(&info.path).unwrap();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(exists(&p), "a temporary root was collected");
    drop(c);
    // The daemon forgets the connection's roots once it has seen it close; a
    // collection started after that deletes the path. Poll for it (the close is
    // asynchronous to this thread) up to a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        h.nix_ok("nix-store", &["--gc"]);
        if !exists(&p) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the temporary root outlived its connection"
        );
    }
}

const KEEP_EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep" "echo dep > $out";
  top = mk "top" "echo ${dep} > $out";
  other = mk "other" "echo other > $out";
}
"#;

#[test]
fn keep_derivations_and_keep_outputs() {
    let mut h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-build").is_none() {
        return;
    }
    let expr = h.input("keep.nix", KEEP_EXPR);
    // keep-derivations (default true): a rooted output keeps its .drv.
    let result = h.root().join("home/result");
    let top = h.nix_ok(
        "nix-build",
        &[&expr, "-A", "top", "-o", result.to_str().unwrap()],
    );
    let top = top.trim().to_owned();
    let drv = h.nix_ok("nix-store", &["-q", "--deriver", &top]);
    let drv = drv.trim().to_owned();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(exists(&top) && exists(&drv));

    h.restart_with("keep-derivations = false\n");
    h.nix_ok("nix-store", &["--gc"]);
    assert!(
        exists(&top) && !exists(&drv),
        "keep-derivations = false kept {drv}"
    );

    // keep-outputs: a rooted .drv keeps its outputs.
    let drv_root = h.root().join("home/drv-root");
    let drv_root_s = drv_root.to_str().unwrap();
    h.nix_ok(
        "nix-instantiate",
        &["--add-root", drv_root_s, "--indirect", &expr, "-A", "other"],
    );
    let drv2 = std::fs::read_link(&drv_root).unwrap();
    let drv2 = drv2.to_str().unwrap().to_owned();
    let out2 = h.nix_ok("nix-store", &["-r", &drv2]).trim().to_owned();
    h.nix_ok("nix-store", &["--gc"]);
    assert!(
        exists(&drv2) && !exists(&out2),
        "keep-outputs = false kept {out2}"
    );
    let out2 = h.nix_ok("nix-store", &["-r", &drv2]).trim().to_owned();
    h.restart_with("keep-outputs = true\n");
    h.nix_ok("nix-store", &["--gc"]);
    assert!(
        exists(&drv2) && exists(&out2),
        "keep-outputs = true lost {out2}"
    );
    h.assert_store_clean();
}

#[test]
fn max_freed_stops_early_and_the_messages_are_nixs() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    let a = h.nix_ok("nix-store", &["--add", &h.input("a", "a\n")]);
    let b = h.nix_ok("nix-store", &["--add", &h.input("b", "b\n")]);
    let (a, b) = (a.trim(), b.trim());
    h.nix_ok("nix-store", &["--gc", "--max-freed", "1"]);
    assert_eq!(
        [a, b].iter().filter(|p| exists(p)).count(),
        1,
        "--max-freed 1 deletes one path"
    );
    let out = h.nix("nix-store").unwrap().arg("--gc").output().unwrap();
    assert!(out.status.success());
    // Progress on stderr, the summary on stdout.
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    for expected in [
        "finding garbage collector roots...",
        "deleting garbage...",
        "deleting unused links...",
        "store paths deleted,",
        "MiB freed",
        "deleting '",
    ] {
        assert!(text.contains(expected), "missing '{expected}' in: {text}");
    }
    assert!(!exists(a) && !exists(b));
}

/// Adds text paths `name` (with `refs`) over a connection that then closes, and
/// waits until the daemon has dropped that connection's temporary roots: every path
/// returned is dead unless something else roots it.
fn dead_paths(h: &Harness, names: &[(&str, &[usize])]) -> Vec<StorePath> {
    let mut adder = h.client();
    let mut added: Vec<StorePath> = Vec::new();
    for (name, refs) in names {
        let refs: BTreeSet<StorePath> = refs.iter().map(|i| added[*i].clone()).collect();
        let info = adder
            .add_to_store(
                StorePathName::new(name).unwrap(),
                ContentAddressMethod::Text,
                refs,
                &mut name.as_bytes(),
            )
            .unwrap();
        added.push(info.path);
    }
    drop(adder);
    let mut c = h.client();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let dead = collect(&mut c, GcAction::ReturnDead, GcPaths::WholeStore).unwrap();
        if added
            .iter()
            .all(|p| dead.paths.contains(&h.store_dir().display(p)))
        {
            return added;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the adding connection's temporary roots outlived it"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn collect(
    c: &mut crate::harness::SocketClient,
    action: GcAction,
    paths: GcPaths,
) -> Result<GcResult, unrooted_protocol::ProtocolError> {
    c.call(&Request::CollectGarbage(GcOptions {
        action,
        paths,
        ignore_liveness: false,
        max_freed: u64::MAX,
    }))?;
    let cx = c.context().clone();
    GcResult::read(c.reader(), &cx)
}

/// Issue 19, item 4: protocol 1.38's feature exchange through the daemon, as Nix
/// 2.35 makes it. A client naming both of 2.35's features gets
/// `delete-dead-specific-referrers` only (`realisation-with-path-not-hash` waits for
/// content-addressed derivations), and with it CollectGarbage's tagged paths:
/// `nix store delete --skip-alive` (DeleteDead among specific paths: the dead one
/// without referrers goes; a live one and one a path outside refers to stay,
/// silently) and `--also-referrers` (DeleteSpecific with referrers: the path and
/// what refers to it).
#[test]
fn feature_delete_dead_specific_referrers_at_1_38() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    let p = dead_paths(
        &h,
        &[
            ("live", &[]),
            ("dead", &[]),
            ("referrer", &[1]),
            ("lone", &[]),
        ],
    );
    let shown = |i: usize| h.store_dir().display(&p[i]);
    let mut holder = h.client();
    holder.add_temp_root(&p[0]).unwrap();
    let (mut c, _) = h.client_with_features(&[
        "delete-dead-specific-referrers",
        "realisation-with-path-not-hash",
    ]);
    assert_eq!(
        c.context().features,
        Features {
            delete_dead_specific_referrers: true,
            realisation_with_path_not_hash: false,
        }
    );
    let skip_alive = GcPaths::Specific {
        paths: [p[0].clone(), p[1].clone(), p[3].clone()].into(),
        delete_referrers: false,
    };
    let r = collect(&mut c, GcAction::DeleteDead, skip_alive).unwrap();
    assert_eq!(r.paths, [shown(3)].into_iter().collect());
    assert!(exists(&shown(0)) && exists(&shown(1)) && !exists(&shown(3)));
    let also_referrers = GcPaths::Specific {
        paths: [p[1].clone()].into(),
        delete_referrers: true,
    };
    let r = collect(&mut c, GcAction::DeleteSpecific, also_referrers).unwrap();
    assert_eq!(r.paths, [shown(1), shown(2)].into_iter().collect());
    assert!(exists(&shown(0)) && !exists(&shown(1)) && !exists(&shown(2)));
    // The whole store, tagged: only the live path is left.
    let r = collect(&mut c, GcAction::DeleteDead, GcPaths::WholeStore).unwrap();
    assert!(!r.paths.contains(&shown(0)), "{:?}", r.paths);
    assert!(exists(&shown(0)));
}

/// Issue 19, item 4: at 1.38 without features (Nix 2.24 to 2.34, Debian 13's 2.26)
/// the plain forms keep working: `nix store delete P` (DeleteSpecific of a set) and
/// `nix store gc` (DeleteDead of an empty set); DeleteDead of a non-empty set, which
/// no Nix client sends (2.35's refuses to without the feature), is refused with
/// nix-daemon's message.
#[test]
fn no_features_at_1_38_keep_the_plain_forms() {
    use std::io::Write;
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    let p = dead_paths(&h, &[("dead", &[]), ("other", &[])]);
    let shown = |i: usize| h.store_dir().display(&p[i]);
    let (mut c, mut raw) = h.client_with_features(&[]);
    assert_eq!(
        c.context().version,
        unrooted_protocol::ProtocolVersion::new(1, 38)
    );
    assert_eq!(c.context().features, Features::default());
    // CollectGarbage (20), DeleteDead (2), the set {dead}, ignoreLiveness 0,
    // maxFreed 2^64-1, three obsolete zeros: as nix-daemon 2.35 reads it untagged.
    let mut bytes = Vec::new();
    for n in [20, 2, 1] {
        bytes.extend(u64::to_le_bytes(n));
    }
    let text = shown(0);
    bytes.extend(u64::to_le_bytes(text.len() as u64));
    bytes.extend(text.as_bytes());
    bytes.resize(bytes.len() + (8 - text.len() % 8) % 8, 0);
    for n in [0, u64::MAX, 0, 0, 0] {
        bytes.extend(u64::to_le_bytes(n));
    }
    raw.write_all(&bytes).unwrap();
    let err = c.process_stderr(None).unwrap_err();
    assert!(
        err.to_string().contains(
            "Garbage collecting specific paths requested but it is not supported by the negotiated protocol"
        ),
        "{err}"
    );
    assert!(exists(&shown(0)));
    let (mut c, _) = h.client_with_features(&[]);
    let r = collect(
        &mut c,
        GcAction::DeleteSpecific,
        GcPaths::Specific {
            paths: [p[0].clone()].into(),
            delete_referrers: false,
        },
    )
    .unwrap();
    assert_eq!(r.paths, [shown(0)].into_iter().collect());
    let r = collect(&mut c, GcAction::DeleteDead, GcPaths::WholeStore).unwrap();
    assert!(r.paths.contains(&shown(1)), "{:?}", r.paths);
    assert!(!exists(&shown(0)) && !exists(&shown(1)));
}
