//! The real Nix 2.8 clients, run as an unprivileged user, against `unrooted daemon`
//! run as another unprivileged user.
//!
//! Expected outputs come from Nix itself: the same query run by the store owner in
//! local mode (no daemon) on the same store must print the same bytes, and adding the
//! same content in local mode must give the same path without creating a new one.

use std::fs;
use std::io::{BufRead, BufReader, Read};

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

fn prepared() -> Option<TestDaemon> {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return None;
    }
    Some(TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), ""))
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_owned).collect()
}

fn write_inputs(d: &TestDaemon) -> String {
    unrooted_testkit::inputs::write_client_inputs(&d.inputs())
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn daemon_is_unprivileged() {
    let Some(mut d) = prepared() else { return };
    d.start();
    let uid_line = d.proc_status("Uid");
    let uids: Vec<u32> = uid_line
        .split_whitespace()
        .map(|u| u.parse().unwrap())
        .collect();
    assert_eq!(uids, vec![d.daemon_uid; 4], "real/effective/saved/fs uid");
    assert_ne!(d.daemon_uid, 0);
    for cap in ["CapEff", "CapPrm", "CapAmb", "CapInh"] {
        assert_eq!(d.proc_status(cap), "0000000000000000", "{cap}");
    }
    let ping = d.client("nix").args(["store", "ping"]).output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&ping.stdout),
        String::from_utf8_lossy(&ping.stderr)
    );
    d.expect_ok("nix store ping", &ping);
    assert!(text.contains("Store URL: daemon"), "{text}");
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn profiles_roots_and_instantiate() {
    let Some(mut d) = prepared() else { return };
    let expr = write_inputs(&d);
    d.start();
    let i = d.inputs();
    let other = d.client_ok("nix-store", &["--add", i.join("tree").to_str().unwrap()]);
    let other = other.trim().to_owned();
    let dep = d.client_ok(
        "nix-store",
        &["--add", i.join("hello.txt").to_str().unwrap()],
    );
    let dep = dep.trim();

    // Profiles in the client's home: generations, rollback, switching.
    let home = d.client_home();
    let profile = home.join("profile");
    let profile = profile.to_str().unwrap();
    d.client_ok("nix-env", &["-p", profile, "--set", &other]);
    d.client_ok("nix-env", &["-p", profile, "--set", dep]);
    let generations = d.client_ok("nix-env", &["-p", profile, "--list-generations"]);
    assert_eq!(generations.lines().count(), 2, "{generations}");
    assert!(
        generations.lines().nth(1).unwrap().contains("(current)"),
        "{generations}"
    );
    assert_eq!(
        fs::read_link(profile).unwrap().to_str().unwrap(),
        "profile-2-link"
    );
    assert_eq!(
        fs::read_link(home.join("profile-2-link"))
            .unwrap()
            .to_str()
            .unwrap(),
        dep
    );
    d.client_ok("nix-env", &["-p", profile, "--rollback"]);
    assert_eq!(
        fs::read_link(profile).unwrap().to_str().unwrap(),
        "profile-1-link"
    );
    d.client_ok("nix-env", &["-p", profile, "--switch-generation", "2"]);
    assert_eq!(
        fs::read_link(profile).unwrap().to_str().unwrap(),
        "profile-2-link"
    );
    let auto: Vec<String> = fs::read_dir(d.state_dir().join("gcroots/auto"))
        .unwrap()
        .map(|e| {
            fs::read_link(e.unwrap().path())
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    for g in ["profile-1-link", "profile-2-link"] {
        let link = home.join(g).to_string_lossy().into_owned();
        assert!(
            auto.contains(&link),
            "{link} not an indirect root: {auto:?}"
        );
    }

    // The default profile (~/.nix-profile → profiles/per-user/<user>/profile). Nix
    // 2.8's daemon made per-user/<user> as root and chowned it to the user, and the
    // 2.8 client relies on that. Ours cannot chown: it makes the directory itself
    // and grants the user access with an ACL; the parents are writable by the store
    // owner alone, so no user can make another's.
    let per_user = d.state_dir().join("profiles/per-user");
    use std::os::unix::fs::PermissionsExt;
    for parent in ["profiles/per-user", "gcroots/per-user"] {
        let mode = fs::metadata(d.state_dir().join(parent))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o7777, 0o755, "{parent}");
    }
    let mine = per_user.join("unrooted-test-client");
    {
        use std::os::unix::fs::MetadataExt;
        assert_eq!(
            fs::metadata(&mine).unwrap().uid(),
            d.daemon_uid,
            "made by the daemon"
        );
    }
    d.client_ok("nix-env", &["--set", &other]);
    d.client_ok("nix-env", &["--set", dep]);
    d.client_ok("nix-env", &["--rollback"]);
    assert_eq!(
        fs::read_link(mine.join("profile"))
            .unwrap()
            .to_str()
            .unwrap(),
        "profile-1-link"
    );
    assert_eq!(
        fs::read_link(mine.join("profile-1-link"))
            .unwrap()
            .to_str()
            .unwrap(),
        other
    );
    assert_eq!(
        fs::read_link(home.join(".nix-profile")).unwrap(),
        mine.join("profile")
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        fs::symlink_metadata(mine.join("profile-1-link"))
            .unwrap()
            .uid(),
        d.client_uid
    );
    let gens = d.client_ok("nix-env", &["--list-generations"]);
    assert_eq!(gens.lines().count(), 2, "{gens}");
    // Installing builds the user environment (builtin:buildenv) in the daemon.
    d.client_ok("nix-env", &["-i", &other]);

    // An indirect root made by nix-store --add-root.
    let root = home.join("my-root");
    let root = root.to_str().unwrap();
    let realised = d.client_ok(
        "nix-store",
        &["--add-root", root, "--indirect", "-r", &other],
    );
    assert_eq!(realised.trim(), root);
    assert_eq!(fs::read_link(root).unwrap().to_str().unwrap(), other);
    let auto_root = d
        .state_dir()
        .join("gcroots/auto")
        .join(unrooted_auto_root_name(root));
    assert_eq!(fs::read_link(auto_root).unwrap().to_str().unwrap(), root);
    // A root the client cannot make itself is refused by the file system, not made
    // by the daemon for it.
    let outside = d.state_dir().join("gcroots/mine");
    let err = d.client_err(
        "nix-store",
        &["--add-root", outside.to_str().unwrap(), "-r", &other],
    );
    assert!(err.contains("Permission denied"), "{err}");
    assert!(fs::symlink_metadata(&outside).is_err());
    // nix-instantiate with dependencies: the .drv paths Nix computes in local mode.
    let before = d.valid_paths_local();
    let drvs = lines(&d.client_ok("nix-instantiate", &[&expr, "-A", "top", "-A", "other"]));
    assert_eq!(drvs.len(), 2);
    let after = d.valid_paths_local();
    assert_eq!(
        lines(&d.owner_ok("nix-instantiate", &[&expr, "-A", "top", "-A", "other"])),
        drvs
    );
    assert_eq!(
        d.valid_paths_local(),
        after,
        "local mode made other derivations"
    );
    let new: Vec<&String> = after.iter().filter(|p| !before.contains(p)).collect();
    let names: Vec<&str> = new.iter().map(|p| &p[p.len() - 8..]).collect();
    assert_eq!(new.len(), 5, "{new:?}");
    for (drv, name) in drvs.iter().zip(["-top.drv", "ther.drv"]) {
        assert!(
            drv.ends_with(name) && new.contains(&drv),
            "{drv}: {names:?}"
        );
    }
    assert_eq!(
        d.client_ok("nix-store", &["-q", "--requisites", &drvs[0]]),
        d.owner_ok("nix-store", &["-q", "--requisites", &drvs[0]])
    );

    // nix-build -o: the client makes the link, the daemon the indirect root.
    let result = home.join("result");
    let built = d.client_ok(
        "nix-build",
        &[&expr, "-A", "dep", "-o", result.to_str().unwrap()],
    );
    assert_eq!(fs::read_link(&result).unwrap().to_str(), Some(built.trim()));
    let auto_result = d
        .state_dir()
        .join("gcroots/auto")
        .join(unrooted_auto_root_name(result.to_str().unwrap()));
    assert_eq!(fs::read_link(auto_result).unwrap(), result);
    // Nix 2.8 in local mode (run above by the store owner) sets the per-user
    // parents to 0755, as the daemon does; loosened by hand, the daemon tightens
    // them again when it starts, and keeps the user's directory.
    let mode = fs::metadata(&per_user).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "after Nix 2.8 local mode");
    d.kill();
    fs::set_permissions(&per_user, fs::Permissions::from_mode(0o1777)).unwrap();
    d.start();
    for parent in ["profiles/per-user", "gcroots/per-user"] {
        let mode = fs::metadata(d.state_dir().join(parent))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777;
        assert_eq!(mode, 0o755, "{parent} after a restart");
    }
    assert_eq!(
        fs::read_link(mine.join("profile")).unwrap().to_str(),
        Some("profile-3-link")
    );
    d.assert_store_clean();
}

/// Runs `script` with `sh` as the third user (the squatter), returning its output.
fn as_squatter(d: &TestDaemon, script: &str) -> std::process::Output {
    d.other("sh").args(["-c", script]).output().unwrap()
}

/// How many of the former aside names the squatter makes in advance.
const PREMADE: usize = 2000;

/// Issue 15, item 4: in a store an earlier release left with world-writable (1777)
/// per-user parents, another user squats the client's directories in every way
/// (a directory holding a `profile` link of theirs, a symlink to a directory of
/// theirs, a file under a real user's name, the daemon's former aside names made in
/// advance as non-empty directories), and keeps trying while the daemon starts and
/// the client connects for the first time. The daemon tightens the parents before it
/// listens, moves every squatted entry aside under an unguessable name, and the
/// client's directories end up the daemon's with the client's ACL: the client's Nix
/// 2.8 writes its profile there, the squatter can neither write there nor create
/// anything in the parents.
#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn per_user_squatters_are_moved_aside() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let Some(mut d) = prepared() else { return };
    // The layout as an earlier release made it.
    d.start();
    d.kill();
    let state = d.state_dir();
    let (profiles, gcroots) = (
        state.join("profiles/per-user"),
        state.join("gcroots/per-user"),
    );
    for p in [&profiles, &gcroots] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o1777)).unwrap();
    }
    let victim = "unrooted-test-client";
    // The aside names of the daemon's former scheme (`.squatted-<user>-<daemon
    // pid>`) are made in advance, non-empty, for the next 2,000 pids, by one
    // process so that it uses none of them.
    let squat = format!(
        r#"set -e
P={profiles}; G={gcroots}; V={victim}
mkdir "$P/$V"; ln -s /nonexistent/evil "$P/$V/profile"
mkdir "$G/evil"; ln -s "$G/evil" "$G/$V"
echo evil > "$P/root"
mkdir "$G/unrooted-test-daemon"
exec perl -e 'open my $f, "<", "/proc/sys/kernel/ns_last_pid" or die; my $l = <$f>;
  for my $i ($l + 1 .. $l + {PREMADE}) {{ for my $d (@ARGV) {{
    mkdir "$d/.squatted-{victim}-$i" or die; mkdir "$d/.squatted-{victim}-$i/x" or die }} }}' "$P" "$G""#,
        profiles = profiles.display(),
        gcroots = gcroots.display(),
    );
    let out = as_squatter(&d, &squat);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The squatter keeps trying (every 10 ms, for 4 s) while the daemon starts and
    // the client first connects; it says when it has begun, and the daemon starts then.
    let race = format!(
        r#"end=$(($(date +%s)+4)); n=0
echo racing
while [ $(date +%s) -lt $end ]; do
  mkdir "{p}/{victim}" 2>/dev/null && n=$((n+1))
  ln -sT /nonexistent "{g}/{victim}" 2>/dev/null && n=$((n+1))
  sleep 0.01
done; echo $n"#,
        p = profiles.display(),
        g = gcroots.display(),
    );
    let mut racer = d
        .other("sh")
        .args(["-c", &race])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut raced = BufReader::new(racer.stdout.take().unwrap());
    let mut line = String::new();
    raced.read_line(&mut line).unwrap();
    assert_eq!(line, "racing\n", "the squatter did not start");
    d.start();
    let i = d.inputs();
    fs::write(i.join("mine.txt"), "mine\n").unwrap();
    let path = d.client_ok(
        "nix-store",
        &["--add", i.join("mine.txt").to_str().unwrap()],
    );
    let path = path.trim();
    d.client_ok("nix-env", &["--set", path]);
    let mut made = String::new();
    raced.read_to_string(&mut made).unwrap();
    racer.wait().unwrap();
    assert_eq!(
        made.trim(),
        "0",
        "entries the squatter made while the daemon started"
    );

    let log = d.log();
    for (parent, dir) in [("profiles", &profiles), ("gcroots", &gcroots)] {
        let m = fs::metadata(dir).unwrap();
        assert_eq!(
            (m.mode() & 0o7777, m.uid()),
            (0o755, d.daemon_uid),
            "{parent}"
        );
        // The victim's directory is the daemon's, granting the victim.
        let mine = dir.join(victim);
        let m = fs::symlink_metadata(&mine).unwrap();
        assert!(m.is_dir() && m.uid() == d.daemon_uid, "{parent}: {log}");
        let names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        // What the squatter made in advance is all still there: nothing it prepared
        // was in the way.
        let premade = names
            .iter()
            .filter(|n| n.starts_with(&format!(".squatted-{victim}-")) && n.len() < 40)
            .count();
        assert_eq!(premade, PREMADE, "{parent}");
        // Its squats were moved aside under 128-bit random names.
        let random = |prefix: &str| {
            names
                .iter()
                .filter(|n| {
                    n.strip_prefix(prefix)
                        .is_some_and(|h| h.len() == 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
                })
                .count()
        };
        assert_eq!(
            random(&format!(".squatted-{victim}-")),
            1,
            "{parent}: {names:?}"
        );
        // Nothing made during the start stayed.
        assert!(!names.iter().any(|n| n == "evil"), "{parent}: {names:?}");
    }
    for (dir, name) in [(&profiles, "root"), (&gcroots, "unrooted-test-daemon")] {
        assert!(
            fs::symlink_metadata(dir.join(name)).is_err(),
            "{name} stayed"
        );
    }
    // The client's Nix 2.8 wrote its profile in its directory.
    let mine = profiles.join(victim);
    assert_eq!(
        fs::read_link(mine.join("profile")).unwrap().to_str(),
        Some("profile-1-link")
    );
    assert_eq!(
        fs::read_link(mine.join("profile-1-link")).unwrap().to_str(),
        Some(path)
    );
    assert_eq!(
        fs::symlink_metadata(mine.join("profile-1-link"))
            .unwrap()
            .uid(),
        d.client_uid
    );
    // The squatter can no longer touch it, nor create anything in the parents.
    let out = as_squatter(
        &d,
        &format!(
            "ln -sfn /nonexistent {m}/profile || echo refused-1; mkdir {p}/x || echo refused-2; mv {m} {p}/y || echo refused-3",
            m = mine.display(),
            p = profiles.display()
        ),
    );
    let said = String::from_utf8_lossy(&out.stdout);
    for r in ["refused-1", "refused-2", "refused-3"] {
        assert!(said.contains(r), "{said}");
    }
    assert_eq!(
        fs::read_link(mine.join("profile")).unwrap().to_str(),
        Some("profile-1-link")
    );
    // A restart moves nothing more and keeps the client's directory.
    d.kill();
    d.start();
    d.client_ok("nix-env", &["--list-generations"]);
    assert!(!d.log().contains("aside"), "{}", d.log());
    assert_eq!(fs::symlink_metadata(&mine).unwrap().uid(), d.daemon_uid);
}

/// The name Nix gives the indirect root for `link`: base-32 of its SHA-1, computed
/// with `nix-hash` so it does not come from the code under test.
fn unrooted_auto_root_name(link: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", "printf %s \"$1\" | sha1sum | cut -c1-40", "sh", link])
        .output()
        .unwrap();
    let hex = String::from_utf8(out.stdout).unwrap();
    let out = std::process::Command::new("nix-hash")
        .args(["--type", "sha1", "--to-base32", hex.trim()])
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}
