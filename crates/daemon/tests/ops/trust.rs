//! Trust rules, with the client's identity injected: who may connect
//! (`allowed-users`), who is trusted (`trusted-users`, `@group` by the kernel's
//! supplementary groups too), and what an untrusted client is refused.

use std::fs;

use unrooted_daemon::testing::InProcessDaemon;
use unrooted_protocol::handshake::TrustedFlag;

use crate::harness::{expect_ok, nobody, Harness, Mode};

fn trust_of(h: &Harness, peer: unrooted_daemon::trust::Peer) -> Option<TrustedFlag> {
    match h.client_as(peer) {
        Ok(c) => c.server_info().trust,
        // Refused: the daemon closes the connection without a word, as Nix does.
        Err(_) => None,
    }
}

#[test]
fn allowed_and_trusted_users_as_in_nix() {
    let mut h = Harness::new(Mode::Unsandboxed).unwrap();
    // Defaults: everyone with an account may connect, only root is trusted.
    assert_eq!(trust_of(&h, nobody()), Some(TrustedFlag::NotTrusted));
    // The store owner is always trusted, whatever the settings say.
    let own = h.daemon().own_uid();
    let owner = InProcessDaemon::peer(1, own, 0);
    h.restart_with("allowed-users = somebody-else\ntrusted-users = somebody-else\n");
    assert_eq!(trust_of(&h, owner.clone()), Some(TrustedFlag::Trusted));
    // Not in allowed-users: refused.
    assert_eq!(trust_of(&h, nobody()), None);
    // In trusted-users: trusted (and so allowed).
    h.restart_with("allowed-users = somebody-else\ntrusted-users = nobody\n");
    assert_eq!(trust_of(&h, nobody()), Some(TrustedFlag::Trusted));
    // By primary group.
    h.restart_with("allowed-users =\ntrusted-users = @nogroup\n");
    assert_eq!(trust_of(&h, nobody()), Some(TrustedFlag::Trusted));
}

#[test]
fn at_group_matches_the_kernels_supplementary_groups() {
    let h = Harness::with_conf(Mode::Unsandboxed, "trusted-users = @users\n").unwrap();
    let Some(users) = unrooted_daemon::trust::system_group("users") else {
        eprintln!("skipping: no group 'users' here");
        return;
    };
    let mut peer = nobody();
    peer.groups = vec![peer.gid];
    assert_eq!(trust_of(&h, peer.clone()), Some(TrustedFlag::NotTrusted));
    // A membership only the kernel knows (newgrp, a directory service).
    peer.groups.push(users.gid);
    assert_eq!(trust_of(&h, peer), Some(TrustedFlag::Trusted));
}

#[test]
fn a_uid_without_an_account_must_be_listed() {
    let mut h = Harness::new(Mode::Unsandboxed).unwrap();
    // A uid nobody has (names come from the user database).
    let ghost = InProcessDaemon::peer(1, 3_999_999_999, 3_999_999_999);
    assert!(!ghost.account, "{ghost:?}");
    assert_eq!(trust_of(&h, ghost.clone()), None, "`*` needs an account");
    h.restart_with("allowed-users = 3999999999\n");
    assert_eq!(trust_of(&h, ghost.clone()), Some(TrustedFlag::NotTrusted));
    // A subordinate id of a user counts as that user for `*`.
    h.restart_with("");
    let mut sub = ghost;
    sub.subordinate_of = Some("uid 1000".into());
    assert_eq!(trust_of(&h, sub), Some(TrustedFlag::NotTrusted));
}

const EXPR: &str = r#"
let
  mk = name: script: derivation {
    inherit name; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" script ];
  };
in rec {
  dep = mk "dep" "echo dep > $out";
  top = mk "top" "echo ${dep} ${./src.txt} > $out";
}
"#;

fn lines(s: &str) -> Vec<String> {
    let mut v: Vec<String> = s.lines().map(str::to_owned).collect();
    v.sort();
    v
}

/// What an untrusted client (an ordinary user, not in `trusted-users`) is refused,
/// that each refusal is a clear error and leaves the store untouched, and that
/// trusted keys and trusted users work as in Nix 2.8.
#[test]
fn untrusted_clients() {
    let Some(mut d) = Harness::new(Mode::Unsandboxed) else {
        return;
    };
    if d.nix("nix-store").is_none() {
        return;
    }
    let i = d.inputs();
    fs::write(i.join("src.txt"), "source\n").unwrap();
    fs::write(i.join("expr.nix"), EXPR).unwrap();
    let expr = i.join("expr.nix").to_string_lossy().into_owned();
    let top = d.local_ok("nix-build", &[&expr, "-A", "top", "--no-out-link"]);
    let top = top.trim().to_owned();
    // A signing key; the owner signs the closure in local mode.
    let (sk, pk) = (i.join("sk"), i.join("pk"));
    d.local_ok(
        "nix-store",
        &[
            "--generate-binary-cache-key",
            "test-key-1",
            sk.to_str().unwrap(),
            pk.to_str().unwrap(),
        ],
    );
    d.local_ok(
        "nix",
        &["store", "sign", "-r", "-k", sk.to_str().unwrap(), &top],
    );
    let pk = fs::read_to_string(&pk).unwrap();
    // From now on the Nix client is `nobody` to the daemon: untrusted.
    d.daemon().set_socket_peer(Some(nobody()));
    let closure = lines(&d.nix_ok("nix-store", &["-q", "--requisites", &top]));
    let src = closure
        .iter()
        .find(|p| p.ends_with("-src.txt"))
        .unwrap()
        .clone();
    let hashes = d.nix_ok("nix-store", &["-q", "--hash", &top]);
    let mut export_args = vec!["--export".to_owned()];
    export_args.extend(closure.iter().cloned());
    let export = d
        .nix("nix-store")
        .unwrap()
        .args(&export_args)
        .output()
        .unwrap();
    expect_ok("nix-store --export", &[], &export);
    let export_file = i.join("closure.export");
    fs::write(&export_file, &export.stdout).unwrap();
    let cache = format!("file://{}/cache", d.root().join("home").display());
    d.nix_ok("nix", &["copy", "--to", &cache, &top]);

    // Repairs are refused, and change nothing.
    let err = d.nix_err("nix-store", &["--verify", "--check-contents", "--repair"]);
    assert!(
        err.contains("you are not privileged to repair paths"),
        "{err}"
    );
    let err = d.nix_err("nix-store", &["--realise", "--repair", &src]);
    assert!(
        err.contains("repairing is not allowed because you are not in 'trusted-users'"),
        "{err}"
    );

    // An empty store that requires signatures and trusts no key.
    d.reset_store("");
    d.daemon().set_socket_peer(Some(nobody()));
    let empty: Vec<String> = Vec::new();
    let import = |d: &Harness, extra: &[&str]| {
        d.nix("nix-store")
            .unwrap()
            .args(extra)
            .arg("--import")
            .stdin(fs::File::open(&export_file).unwrap())
            .output()
            .unwrap()
    };
    for extra in [&[][..], &["--option", "require-sigs", "false"][..]] {
        let out = import(&d, extra);
        assert!(
            !out.status.success(),
            "untrusted import with {extra:?} succeeded"
        );
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("because it lacks a signature by a trusted key"),
            "{err}"
        );
        assert_eq!(
            d.valid_paths_local(),
            empty,
            "a refused import changed the store"
        );
    }
    // A substituter that is not trusted is dropped with Nix's warning.
    let out = d
        .nix("nix-store")
        .unwrap()
        .args(["--option", "substituters", &cache, "-q", "--hash", &src])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains(&format!("ignoring untrusted substituter '{cache}'")),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Signed, but by a key this store does not trust.
    let err = d.nix_err("nix", &["copy", "--from", &cache, &top]);
    assert!(
        err.contains("because it lacks a signature by a trusted key"),
        "{err}"
    );
    let err = d.nix_err("nix", &["copy", "--no-check-sigs", "--from", &cache, &top]);
    assert!(
        err.contains("because it lacks a signature by a trusted key"),
        "{err}"
    );
    // The unsigned, input-addressed path is refused and not registered. (Paths are
    // added one by one, as Nix does: a content-addressed dependency sent before it
    // may have been accepted on its own merits.)
    let valid = d.valid_paths_local();
    assert!(!valid.contains(&top), "{valid:?}");
    assert!(valid.iter().all(|p| *p == src), "{valid:?}");
    // Content-addressed and checking out: accepted without a signature.
    d.nix_ok("nix", &["copy", "--no-check-sigs", "--from", &cache, &src]);
    assert_eq!(d.valid_paths_local(), vec![src.clone()]);
    d.assert_store_clean();

    // Trusting the key admits the signed closure.
    d.reset_store(&format!("trusted-public-keys = {pk}"));
    d.daemon().set_socket_peer(Some(nobody()));
    d.nix_ok("nix", &["copy", "--from", &cache, &top]);
    assert_eq!(d.valid_paths_local(), closure);
    assert_eq!(d.nix_ok("nix-store", &["-q", "--hash", &top]), hashes);
    d.assert_store_clean();

    // A trusted user may import unsigned paths.
    d.reset_store("trusted-users = nobody");
    d.daemon().set_socket_peer(Some(nobody()));
    let out = import(&d, &[]);
    expect_ok("trusted nix-store --import", &[], &out);
    assert_eq!(d.valid_paths_local(), closure);
    d.assert_store_clean();
}
