//! Trust rules, with the client's identity injected: who may connect
//! (`allowed-users`), who is trusted (`trusted-users`, `@group` by the kernel's
//! supplementary groups too), and what an untrusted client is refused.

use std::io::Write;
use std::process::Stdio;

use unrooted_daemon::testing::InProcessDaemon;
use unrooted_protocol::handshake::TrustedFlag;

use crate::harness::{expect_err, nobody, Harness, Mode};

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

#[test]
fn untrusted_clients_are_refused_privileged_operations() {
    let h = Harness::new(Mode::Unsandboxed).unwrap();
    if h.nix("nix-store").is_none() {
        return;
    }
    // As the owner (trusted): an input-addressed path, built and exported.
    let expr = h.input(
        "ia.nix",
        r#"derivation { name = "ia"; system = builtins.currentSystem; builder = "/bin/sh"; args = [ "-c" "echo ia > $out" ]; }"#,
    );
    let p = h
        .nix_ok("nix-build", &[&expr, "--no-out-link"])
        .trim()
        .to_owned();
    let export = h
        .nix("nix-store")
        .unwrap()
        .args(["--export", &p])
        .output()
        .unwrap();
    assert!(export.status.success());
    h.nix_ok("nix-store", &["--delete", &p]);

    // From now on the Nix client connects as `nobody`, untrusted.
    h.daemon().set_socket_peer(Some(nobody()));
    let err = h.nix_err("nix-store", &["--verify", "--check-contents", "--repair"]);
    assert!(
        err.contains("you are not privileged to repair paths"),
        "{err}"
    );
    for extra in [&[][..], &["--option", "require-sigs", "false"][..]] {
        let mut child = h
            .nix("nix-store")
            .unwrap()
            .args(extra)
            .arg("--import")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&export.stdout)
            .unwrap();
        let out = child.wait_with_output().unwrap();
        let err = expect_err("nix-store --import", extra, &out);
        assert!(
            err.contains("because it lacks a signature by a trusted key"),
            "{err}"
        );
        assert!(
            !h.valid_paths_local().contains(&p),
            "a refused import changed the store"
        );
    }
    // A substituter that is not trusted is dropped with Nix's warning.
    let cache = format!("file://{}/cache", h.root().display());
    let out = h
        .nix("nix-store")
        .unwrap()
        .args(["--option", "substituters", &cache, "-q", "--hash", &p])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("ignoring untrusted substituter '{cache}'")),
        "{stderr}"
    );
    // Content-addressed adds need no trust.
    let file = h.input("x", "added\n");
    let q = h.nix_ok("nix-store", &["--add", &file]);
    assert!(q.trim().ends_with("-x"), "{q}");
    // Back to the kernel's word: the owner, trusted, may import.
    h.daemon().set_socket_peer(None);
    h.nix_ok("nix-store", &["--delete", &p]);
    let mut child = h
        .nix("nix-store")
        .unwrap()
        .arg("--import")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&export.stdout)
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    h.assert_store_clean();
}
