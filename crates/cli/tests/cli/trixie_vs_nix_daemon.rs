//! Issue 19: every workflow of Debian 13's Nix 2.26 client run side by side against
//! `unrooted daemon` and against Debian 13's own `nix-daemon` 2.26 run as the same
//! ordinary user (what an administrator would try first), on identical stores at the
//! same paths (the store is reset between the two), as the same unprivileged client.
//! Each step's exit status and output must be equal, except for the daemon's version
//! string; "unrooted must do at least what it does".

use std::fs;
use std::process::Output;

use unrooted_testkit::daemon::{can_run_sandboxed_builds, TestDaemon};
use unrooted_testkit::trixie::{trixie_root, workflow_expr, TrixieNixDaemon};

/// Builds run in both daemons' sandboxes with busybox as `/bin/sh`, from a copy in the
/// test's inputs (the trixie root, where `nix-daemon` runs, has no busybox of its own).
const CONF: &str = "sandbox = true\nsandbox-paths = /bin/sh=@BUSYBOX@\nmax-jobs = 2\n\
                    extra-experimental-features = flakes\n";

/// What this test adds to the derivations of [`workflow_expr`].
const EXTRA: &str = r#"  progress = mk "progress" "echo one; echo two; echo ${dep} > $out" {};
  slow1 = mk "slow1" "echo first; sleep 2; echo 1 > $out" {};
  slow2 = mk "slow2" "echo second; sleep 2; echo ${slow1} > $out" {};
  phased = mk "phased" "echo '@nix { \"action\": \"setPhase\", \"phase\": \"buildPhase\" }' >&$NIX_LOG_FD; echo in the build phase; echo '@nix {\"action\":\"msg\",\"level\":0,\"msg\":\"said by the builder\"}' >&2; echo '@nix {\"phase\":\"none\"}' >&2; echo ${hello} > $out" {};
"#;

/// How a step's outcomes are compared.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Equal exit status and output (after [`normalize`]).
    Same,
    /// unrooted must succeed with output; nix-daemon's outcome is only shown (after
    /// its collection lost live paths, it may "succeed" with nothing left to show).
    AtLeast,
    /// A collection: both succeed, and unrooted deletes nothing nix-daemon keeps
    /// (nix-daemon run as an ordinary user cannot read the roots in the client's 0700
    /// home, so it may delete more: paths a profile still uses).
    GcSafety,
}
use Expect::*;

/// The workflow, one shell command per step, run in the client's home with `$E` the
/// expression, `$I` the inputs directory.
const STEPS: &[(Expect, &str)] = &[
    (Same, "nix store info --json"),
    (Same, "nix-store --add $I/file"),
    (Same, "nix store add $I/tree"),
    (Same, "nix store ls -R $(nix store add $I/tree)"),
    (Same, "nix store cat $(nix store add $I/tree)/a"),
    (Same, "nix store dump-path $(nix store add $I/tree) | sha256sum"),
    (Same, "nix store path-from-hash-part $(basename $(nix store add $I/tree) | cut -c1-32)"),
    (Same, "nix build -f $E 'multi^dev' --print-out-paths --no-link"),
    (Same, "nix build -f $E 'multi^*' --print-out-paths --no-link"),
    (Same, "nix build -f $E 'multi^out,doc' --print-out-paths --no-link"),
    (Same, "nix build -f $E multi --json --no-link | sed 's/\"[a-zA-Z]*Time\":[0-9]*,\\?//g'"),
    (Same, "nix build -f $E hello && readlink result && cat result"),
    (Same, "nix build -L -f $E dep --no-link"),
    // The activity stream of one build (what the progress bar is drawn from): each
    // start (type, text), result (type) and stop, in order, ids left out.
    (Same, "nix build --log-format internal-json -v -f $E progress --no-link 2>&1 | grep '^@nix'"),
    (Same, "nix log -f $E hello"),
    // A builder's JSON log messages (stdenv announces its phases so): the phase a
    // result of the build (what the bar shows beside the build's name), the message
    // a message, neither a log line; one without an action stays a log line.
    (Same, "nix build --log-format internal-json -v -f $E phased --no-link 2>&1 | grep '^@nix'"),
    (Same, "nix build -L --rebuild -f $E phased --no-link"),
    (Same, "nix log -f $E phased"),
    (Same, "nix build --keep-going -f $E fails fails2 pkg --no-link"),
    (Same, "nix build -f $E hello --rebuild --no-link"),
    (Same, "nix path-info -rsS --json $(nix build -f $E dep --print-out-paths --no-link)"),
    (Same, "nix path-info -rsS $(nix build -f $E dep --print-out-paths --no-link)"),
    (Same, "nix why-depends $(nix build -f $E dep --print-out-paths --no-link) $(nix build -f $E hello --print-out-paths --no-link)"),
    (Same, "nix store verify $(nix build -f $E hello --print-out-paths --no-link)"),
    (Same, "nix store verify --sigs-needed 1 $(nix build -f $E hello --print-out-paths --no-link)"),
    (Same, "nix store verify --sigs-needed 1 $(nix store add $I/tree)"),
    (Same, "nix store make-content-addressed --json $(nix build -f $E hello --print-out-paths --no-link)"),
    (Same, "nix store optimise"),
    (Same, "nix store delete $(readlink result)"),
    (Same, "nix store delete --ignore-liveness $(readlink result)"),
    (Same, "nix store repair $(readlink result)"),
    (Same, "nix profile install -f $E pkg"),
    (Same, "nix profile install -f $E hello"),
    (Same, "nix profile list"),
    (Same, "~/.nix-profile/bin/pkg"),
    (Same, "nix profile history"),
    (Same, "nix profile remove hello"),
    (Same, "nix profile rollback"),
    (Same, "nix profile list"),
    (Same, "nix profile wipe-history"),
    (Same, "nix profile history"),
    (Same, "nix-env -q"),
    (Same, "nix-env -p ~/envprofile -f $E -iA pkg && nix-env -p ~/envprofile -q"),
    (Same, "nix-env -p ~/envprofile -f $E -iA hello && nix-env -p ~/envprofile -e pkg && nix-env -p ~/envprofile -q"),
    (Same, "nix-env -p ~/envprofile --rollback && nix-env -p ~/envprofile -q"),
    (Same, "nix-env -p ~/envprofile --list-generations | wc -l"),
    (Same, "nix copy --to file://$HOME/cache $(nix build -f $E dep --print-out-paths --no-link) && ls $HOME/cache | sort"),
    (Same, "nix store delete $(nix build -f $E multi --print-out-paths --no-link)"),
    (Same, "nix copy --from file://$HOME/cache $(nix build -f $E dep --print-out-paths --no-link)"),
    (Same, "rm result; nix store gc --dry-run | sort"),
    (GcSafety, "nix store gc"),
    (AtLeast, "~/.nix-profile/bin/pkg"),
    (AtLeast, "nix profile list"),
    (GcSafety, "nix-collect-garbage -d"),
    (AtLeast, "~/.nix-profile/bin/pkg"),
    (AtLeast, "nix-env -p ~/envprofile -q"),
];

/// One step's outcome.
#[derive(Debug, PartialEq)]
struct Outcome {
    success: bool,
    stdout: String,
    stderr: String,
}

/// What may differ between two daemons doing the same thing, made equal: the
/// daemon's version; registration times; the order of builds started at once and of
/// deletions (nix-daemon's follows a hash table); `-0.00 MiB`; nix-daemon's
/// "cannot read potential root" warnings (counted in the test, they are its GC
/// weakness as an ordinary user); and two messages whose wording changed between Nix
/// releases (2.8's, which unrooted sends, and 2.26's): the "For full logs" hint and
/// the "To find out why" hint. Also the wall clock in a local flake's locked URL
/// (`lastModified=`, the newest modification time of the flake's files, which the
/// steps rewrite as they run: the flake's content is in its `narHash`).
fn normalize(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut activities = Activities::default();
    let mut lines = text.lines().peekable();
    while let Some(l) = lines.next() {
        if let Some(json) = l.strip_prefix("@nix ") {
            if let Some(kept) = activities.normalize(json) {
                out.push(format!("@nix {kept}"));
            }
            continue;
        }
        if l.starts_with("cannot read potential root '") {
            continue;
        }
        let mut l = l.to_owned();
        if let Some(i) = l.find("\"version\":") {
            let rest = &l[i..];
            let end = rest
                .find(',')
                .or_else(|| rest.find('}'))
                .unwrap_or(rest.len());
            l = format!("{}\"version\":V{}", &l[..i], &rest[end..]);
        }
        while let Some(i) = l.find("\"registrationTime\":") {
            let rest = &l[i + 19..];
            let end = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            l = format!("{}\"registrationtime\":T{}", &l[..i], &rest[end..]);
        }
        l = l.replace("-0.00 MiB", "0.00 MiB");
        let mut rest = l.as_str();
        let mut timeless = String::new();
        while let Some(i) = rest.find("lastModified=") {
            let (head, tail) = rest.split_at(i + "lastModified=".len());
            timeless.push_str(head);
            timeless.push('T');
            rest = tail.trim_start_matches(|c: char| c.is_ascii_digit());
        }
        timeless.push_str(rest);
        l = timeless;
        l = l.replace(" and nix-store --query --referrers", "");
        if l.trim() == "For full logs, run:" {
            if let Some(next) = lines.next() {
                let indent = &l[..l.len() - l.trim_start().len()];
                l = format!("{indent}For full logs, run '{}'.", next.trim());
            }
        }
        out.push(l);
    }
    // Runs of concurrent starts and of deletions, sorted.
    let mut i = 0;
    while i < out.len() {
        let key = |l: &str| l.starts_with("building '") || l.starts_with("deleting '");
        if key(&out[i]) {
            let start = i;
            while i < out.len() && key(&out[i]) {
                i += 1;
            }
            out[start..i].sort();
        } else {
            i += 1;
        }
    }
    out.join("\n")
}

/// The activity stream of `--log-format internal-json`, made comparable: ids numbered
/// in order of appearance, and of the `progress` (105) and `setExpected` (106) results
/// only those that change what the progress bar shows (nix-daemon counts a goal for
/// every derivation it looks at, even one already built, and takes it back at once:
/// the expected count moves without anything on the bar changing).
#[derive(Default)]
struct Activities {
    ids: std::collections::HashMap<u64, u64>,
    shown: std::collections::HashMap<(u64, u64), serde_json::Value>,
}

impl Activities {
    fn normalize(&mut self, json: &str) -> Option<String> {
        let mut v: serde_json::Value = serde_json::from_str(json).ok()?;
        for key in ["id", "parent"] {
            if let Some(id) = v.get(key).and_then(|i| i.as_u64()).filter(|i| *i != 0) {
                let n = self.ids.len() as u64 + 1;
                let new = *self.ids.entry(id).or_insert(n);
                v[key] = new.into();
            }
        }
        if v["action"] == "result" {
            let id = v["id"].as_u64().unwrap_or(0);
            let fields = v["fields"].clone();
            let shown = match v["type"].as_u64() {
                // done, running, failed (not expected).
                Some(105) => Some((105, serde_json::json!([fields[0], fields[2], fields[3]]))),
                Some(106) => Some((
                    106 * 1000 + fields[0].as_u64().unwrap_or(0),
                    fields[1].clone(),
                )),
                _ => None,
            };
            if let Some((kind, value)) = shown {
                if self.shown.get(&(id, kind)) == Some(&value) {
                    return None;
                }
                self.shown.insert((id, kind), value);
            }
        }
        Some(v.to_string())
    }
}

fn outcome(o: &Output) -> Outcome {
    Outcome {
        success: o.status.success(),
        stdout: normalize(&String::from_utf8_lossy(&o.stdout)),
        stderr: normalize(&String::from_utf8_lossy(&o.stderr)),
    }
}

/// `o` without the lines of lock files a collection deleted (`deleting '….lock'`),
/// and with its count of deleted store paths lowered by as many.
fn without_lock_files(o: &Outcome) -> Outcome {
    let is_lock = |l: &str| l.starts_with("deleting '") && l.ends_with(".lock'");
    let locks = o.stderr.lines().filter(|l| is_lock(l)).count();
    let count = |l: &str| -> String {
        match l.split_once(" store paths deleted, ") {
            Some((n, rest)) if locks > 0 => match n.trim().parse::<usize>() {
                Ok(n) => format!("{} store paths deleted, {rest}", n - locks.min(n)),
                Err(_) => l.to_owned(),
            },
            _ => l.to_owned(),
        }
    };
    Outcome {
        success: o.success,
        stdout: o.stdout.lines().map(count).collect::<Vec<_>>().join("\n"),
        stderr: o
            .stderr
            .lines()
            .filter(|l| !is_lock(l))
            .map(count)
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

/// The paths a collection's output says it deleted.
fn deleted(o: &Outcome) -> std::collections::BTreeSet<String> {
    o.stderr
        .lines()
        .filter_map(|l| l.strip_prefix("deleting '")?.strip_suffix('\''))
        .filter(|p| !p.ends_with(".lock"))
        .map(str::to_owned)
        .collect()
}

fn run_all(d: &TestDaemon, root: &std::path::Path) -> Vec<Outcome> {
    let e = d.inputs().join("pkgs.nix");
    STEPS
        .iter()
        .map(|(_, step)| {
            let o = d
                .trixie_client(root, "sh")
                .args(["-c", step])
                .env("E", &e)
                .env("I", d.inputs())
                .output()
                .expect("spawning");
            outcome(&o)
        })
        .collect()
}

/// Debian 13's nix-daemon on `d`'s store, as root or as the daemon's (ordinary)
/// user.
fn nix_daemon(d: &TestDaemon, root: &std::path::Path, as_root: bool) -> TrixieNixDaemon {
    if as_root {
        TrixieNixDaemon::start_as_root(d, root)
    } else {
        TrixieNixDaemon::start(d, root)
    }
}

/// What a root nix-daemon needs in the shared configuration: no build users group
/// (the test machine has no `nixbld`; its builds then run as root in its sandbox).
/// Harmless to unrooted, which has no build users.
fn for_root(as_root: bool) -> &'static str {
    if as_root {
        "build-users-group =\n"
    } else {
        ""
    }
}

fn clear_home(d: &TestDaemon) {
    for e in fs::read_dir(d.client_home()).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() && !p.is_symlink() {
            let _ = std::process::Command::new("chmod")
                .args(["-R", "u+w"])
                .arg(&p)
                .status();
            fs::remove_dir_all(&p).unwrap();
        } else {
            fs::remove_file(&p).unwrap();
        }
    }
}

#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn every_workflow_as_with_nix_daemon() {
    compare_every_workflow(false);
}

/// Issue 19, item 2: the same steps against Debian 13's nix-daemon 2.26 run as root
/// (as `nix-setup-systemd` runs it; `build-users-group` empty, since the test machine
/// has no `nixbld` group, so its builds run as root in its sandbox).
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn every_workflow_as_with_root_nix_daemon() {
    compare_every_workflow(true);
}

fn compare_every_workflow(root_daemon: bool) {
    if !can_run_sandboxed_builds() {
        return;
    }
    let Some(root) = trixie_root() else { return };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let busybox = d.inputs().join("busybox");
    fs::copy("/bin/busybox", &busybox).unwrap();
    let mut conf = CONF.replace("@BUSYBOX@", busybox.to_str().unwrap());
    if root_daemon {
        conf.push_str(for_root(true));
    }
    d.set_conf(&conf);
    fs::write(d.inputs().join("pkgs.nix"), workflow_expr(EXTRA)).unwrap();
    fs::write(d.inputs().join("file"), "a file\n").unwrap();
    fs::create_dir(d.inputs().join("tree")).unwrap();
    fs::write(d.inputs().join("tree/a"), "A\n").unwrap();
    fs::write(d.inputs().join("tree/b"), "A\n").unwrap();

    d.start();
    d.start_roots_helper();
    let ours = run_all(&d, &root);
    let our_log = d.log();
    d.reset_store();
    clear_home(&d);
    let nd = nix_daemon(&d, &root, root_daemon);
    let theirs = run_all(&d, &root);
    let their_log = nd.log();
    drop(nd);

    // Against a root nix-daemon, the one difference (recorded in
    // docs/conformance.md): its collector can see that an indirect root in
    // `gcroots/auto` points into a 0700 home at a link that is gone, and says it
    // removes it ("removing stale link from …"); unrooted cannot look into that home
    // (the roots helper resolves such roots for it) and keeps the dead link, silently.
    let stale = |o: &Outcome| Outcome {
        success: o.success,
        stdout: o.stdout.clone(),
        stderr: o
            .stderr
            .lines()
            .filter(|l| !(root_daemon && l.starts_with("removing stale link from '")))
            .collect::<Vec<_>>()
            .join("\n"),
    };
    let theirs: Vec<Outcome> = theirs.iter().map(stale).collect();
    // And one more, in what collections delete: nix-daemon leaves the lock file of
    // each output whose build failed (`fails.lock`, `fails2.lock`: Nix 2.26 deletes
    // a lock file only after a build that succeeded, `PathLocks::setDeletion`), and
    // its next collection deletes and counts them; unrooted removes every lock file
    // as it releases it, so there is nothing left to collect. Taken out of the
    // collection's lines and its count, for both.
    let theirs: Vec<Outcome> = theirs.iter().map(without_lock_files).collect();
    let ours: Vec<Outcome> = ours.iter().map(without_lock_files).collect();
    let mut diffs = Vec::new();
    for (((expect, step), a), b) in STEPS.iter().zip(&ours).zip(&theirs) {
        // A root nix-daemon reads every root, as unrooted does with its roots
        // helper: its collections must delete exactly what unrooted's do, and the
        // profiles must show the same afterwards.
        let expect = if root_daemon { &Same } else { expect };
        let ok = match expect {
            Same => a == b,
            AtLeast => {
                if a != b {
                    eprintln!("`{step}`: unrooted {a:?}, nix-daemon {b:?}");
                }
                a.success && !a.stdout.is_empty()
            }
            GcSafety => {
                let (da, db) = (deleted(a), deleted(b));
                let extra: Vec<_> = db.difference(&da).collect();
                if !extra.is_empty() {
                    eprintln!("nix-daemon (ordinary user) deleted what unrooted kept: {extra:?}");
                }
                a.success && b.success && da.is_subset(&db)
            }
        };
        if !ok {
            diffs.push(format!(
                "step `{step}` ({expect:?}):\n  unrooted:   {a:?}\n  nix-daemon: {b:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n{}\n--- unrooted log ---\n{our_log}\n--- nix-daemon log ---\n{their_log}",
        diffs.len(),
        STEPS.len(),
        diffs.join("\n")
    );
}

/// Issue 19, item 3: the activity stream of one substitution (from a signed
/// `file://` cache the daemon is configured with), unrooted against nix-daemon 2.26.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn substitution_activity_stream_as_with_nix_daemon() {
    substitution_activity_stream(false, false);
}

/// The same, against nix-daemon 2.26 run as root.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn substitution_activity_stream_as_with_root_nix_daemon() {
    substitution_activity_stream(false, true);
}

/// Issue 19, item 3: the same from the same cache served over HTTP (Python's
/// `http.server` on loopback), where both daemons also report each download as a
/// `file-transfer` activity (101).
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn http_substitution_activity_stream_as_with_nix_daemon() {
    substitution_activity_stream(true, false);
}

/// The same, against nix-daemon 2.26 run as root.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn http_substitution_activity_stream_as_with_root_nix_daemon() {
    substitution_activity_stream(true, true);
}

/// An activity stream with its stops taken out of the order and listed at the end:
/// nix-daemon stops a download's activities from curl's thread, so where they land
/// among the other lines (even after the reply that ends the request, once its
/// logger buffers them) depends on timing. Every other line keeps its place.
fn stops_apart(stream: &str) -> String {
    let mut kept = Vec::new();
    let mut stopped = Vec::new();
    for l in stream.lines() {
        let v: Option<serde_json::Value> = l
            .strip_prefix("@nix ")
            .and_then(|j| serde_json::from_str(j).ok());
        match v {
            Some(v) if v["action"] == "stop" => stopped.push(v["id"].as_u64().unwrap_or(0)),
            _ => kept.push(l.to_owned()),
        }
    }
    stopped.sort_unstable();
    kept.push(format!("stopped: {stopped:?}"));
    kept.join("\n")
}

fn substitution_activity_stream(http: bool, as_root: bool) {
    if !can_run_sandboxed_builds() {
        return;
    }
    let Some(root) = trixie_root() else { return };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let busybox = d.inputs().join("busybox");
    fs::copy("/bin/busybox", &busybox).unwrap();
    let conf = CONF.replace("@BUSYBOX@", busybox.to_str().unwrap());
    fs::write(d.inputs().join("pkgs.nix"), workflow_expr(EXTRA)).unwrap();
    let cache = d.inputs().join("cache");
    fs::create_dir(&cache).unwrap();
    let (uid, gid) = d.client_ids();
    std::os::unix::fs::chown(&cache, Some(uid), Some(gid)).unwrap();
    // A key made by the client, trusted by the daemon.
    let client = |d: &TestDaemon, script: &str| {
        let o = d
            .trixie_client(&root, "sh")
            .args(["-c", script])
            .env("E", d.inputs().join("pkgs.nix"))
            .env("C", &cache)
            .output()
            .unwrap();
        (d.expect_ok(script, &o), o)
    };
    let (_, _) = client(
        &d,
        "nix key generate-secret --key-name cache-1 > ~/sk && nix key convert-secret-to-public < ~/sk > ~/pk",
    );
    let pk = fs::read_to_string(d.client_home().join("pk")).unwrap();
    let server = http.then(|| unrooted_testkit::http::PythonServer::start(&cache, None));
    let url = match &server {
        Some(server) => server.url(),
        None => format!("file://{}", cache.display()),
    };
    d.set_conf(&format!(
        "{conf}{}substituters = {url}\ntrusted-public-keys = {}\n",
        for_root(as_root),
        pk.trim()
    ));
    d.start();
    client(
        &d,
        "nix copy --to \"file://$C?secret-key=$HOME/sk\" $(nix build -f $E dep --print-out-paths --no-link)",
    );
    let step = "nix build --log-format internal-json -v -f $E dep --no-link 2>&1 | grep '^@nix'";
    d.reset_store();
    d.start();
    let (_, ours) = client(&d, step);
    let mut ours = outcome(&ours);
    d.reset_store();
    let nd = nix_daemon(&d, &root, as_root);
    let (_, theirs) = client(&d, step);
    let mut theirs = outcome(&theirs);
    if http {
        ours.stdout = stops_apart(&ours.stdout);
        theirs.stdout = stops_apart(&theirs.stdout);
    }
    let their_log = nd.log();
    drop(nd);
    // The same stream: the caches' query-path-info activities (109) inside the
    // client's QueryMissing; then the worker's realise, builds and copyPaths
    // activities, its queryMissing, the expected download and NAR sizes as each
    // path is announced, and per path the copyPaths count running, a `substitute`
    // activity (108) with its `copy-path` child (100), and the count done. Over
    // HTTP, each narinfo and NAR download is a `file-transfer` activity (101) too;
    // Nix reads a `file://` cache without one.
    let copies = |s: &str| -> Vec<String> {
        let mut v: Vec<String> = s
            .lines()
            .filter(|l| l.contains("\"type\":100"))
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(&l[5..]).unwrap();
                format!("{} {}", v["text"], v["fields"])
            })
            .collect();
        v.sort();
        v
    };
    eprintln!("the activity stream of a substitution:\n{}", ours.stdout);
    assert_eq!(copies(&ours.stdout).len(), 2, "{}", ours.stdout);
    assert_eq!(
        ours.stdout, theirs.stdout,
        "activity streams differ\n--- unrooted ---\n{}\n--- nix-daemon ---\n{}\n--- nix-daemon log ---\n{their_log}",
        ours.stdout, theirs.stdout
    );
    // What the bar counts: two paths expected, two done, both sizes announced.
    let last_copy_paths = theirs
        .stdout
        .lines()
        .rev()
        .find(|l| l.contains("\"type\":105") && l.contains("[2,2,0,0]"));
    assert!(last_copy_paths.is_some(), "{}", theirs.stdout);
    assert!(ours.stdout.contains("\"type\":108"), "{}", ours.stdout);
    assert!(ours.stdout.contains("\"type\":109"), "{}", ours.stdout);
    assert_eq!(
        ours.stdout.contains("\"type\":101"),
        http,
        "{}",
        ours.stdout
    );
}

/// The flake of [`flake_develop_and_shell_as_with_nix_daemon`]: its only input a
/// path (no registry, no network), one package built with bash, with a variable
/// `nix develop` must bring into its shell.
const FLAKE: &str = r#"{
  inputs.src = { url = "path:@SRC@"; flake = false; };
  outputs = { self, src }: {
    packages.x86_64-linux.default = derivation {
      name = "tool-${builtins.readFile (src + "/version")}";
      system = "x86_64-linux"; builder = "/bin/bash"; outputs = [ "out" ];
      GREETING = "hello from the flake";
      script = "mkdir -p $out/bin; printf '#!/bin/sh\necho tool %s\n' ${builtins.readFile (src + "/version")} > $out/bin/tool; chmod +x $out/bin/tool";
      args = [ "-c" "exec /bin/sh -c \"$script\"" ];
    };
  };
}
"#;

/// Issue 19, item 2: `nix develop` and `nix shell` (and `nix print-dev-env`, `nix
/// flake update`, `nix profile install` and `upgrade` of the flake's package) on a
/// local flake whose only input is a path, with the 2.26 client
/// as an unprivileged user other than the store owner: each step's status and output
/// equal against unrooted and against nix-daemon 2.26 (as an ordinary user, and in
/// [`flake_develop_and_shell_as_with_root_nix_daemon`] as root), on identical
/// stores. `nix develop` builds the flake's environment derivation (Nix's
/// `get-env.sh`, a bash script) in the daemon's sandbox, with Debian's static bash
/// bound at `/bin/bash`; its own interactive bash comes from the client's `PATH`
/// (no `nixpkgs` in an empty registry).
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn flake_develop_and_shell_as_with_nix_daemon() {
    flake_develop_and_shell(false);
}

/// [`flake_develop_and_shell_as_with_nix_daemon`] against nix-daemon 2.26 run as root.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn flake_develop_and_shell_as_with_root_nix_daemon() {
    flake_develop_and_shell(true);
}

fn flake_develop_and_shell(as_root: bool) {
    if !can_run_sandboxed_builds() {
        return;
    }
    let Some(root) = trixie_root() else { return };
    let bash_static = std::path::Path::new("/bin/bash-static");
    if !bash_static.exists() {
        assert!(
            !unrooted_testkit::in_ci(),
            "/bin/bash-static (Debian's bash-static) is missing, but CI=true"
        );
        eprintln!("skipping: no /bin/bash-static (apt-get install bash-static)");
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let inputs = d.inputs();
    fs::copy("/bin/busybox", inputs.join("busybox")).unwrap();
    fs::copy(bash_static, inputs.join("bash")).unwrap();
    fs::write(
        inputs.join("registry.json"),
        "{\"flakes\":[],\"version\":2}\n",
    )
    .unwrap();
    d.set_conf(&format!(
        "sandbox = true\nsandbox-paths = /bin/sh={i}/busybox /bin/bash={i}/bash\nmax-jobs = 2\n\
         extra-experimental-features = flakes\nflake-registry = {i}/registry.json\n{}",
        for_root(as_root),
        i = inputs.display()
    ));
    let src = inputs.join("src");
    fs::create_dir(&src).unwrap();
    let flake = d.client_home().join("flake");
    let (uid, gid) = d.client_ids();
    // Fixed times: the lock file records the input's last modification.
    let touch = |when: &str, paths: &[&std::path::Path]| {
        let ok = std::process::Command::new("touch")
            .arg("-d")
            .arg(when)
            .args(paths)
            .status()
            .unwrap();
        assert!(ok.success());
    };
    let make_flake = || {
        fs::write(src.join("version"), "1.0").unwrap();
        touch("@1700000000", &[&src.join("version"), &src]);
        fs::create_dir_all(&flake).unwrap();
        fs::write(
            flake.join("flake.nix"),
            FLAKE.replace("@SRC@", src.to_str().unwrap()),
        )
        .unwrap();
        for p in [&flake, &flake.join("flake.nix")] {
            std::os::unix::fs::chown(p, Some(uid), Some(gid)).unwrap();
        }
    };
    const FLAKE_STEPS: &[&str] = &[
        "nix build path:$F --print-out-paths --no-link",
        "nix shell path:$F -c tool",
        "nix develop path:$F -c sh -c 'echo \"$GREETING\"; echo \"$IN_NIX_SHELL\"; echo \"$name\"'",
        "nix print-dev-env path:$F | grep -E '^(GREETING|name)='",
        "nix develop -L path:$F -c true",
        "nix profile install path:$F && ~/.nix-profile/bin/tool",
        "printf 2.0 > $S/version; touch -d @1700000100 $S/version $S; nix flake update --flake path:$F && nix shell path:$F -c tool",
        "nix develop path:$F -c sh -c 'echo \"$name\"'",
        "nix profile upgrade --all && ~/.nix-profile/bin/tool",
        "nix profile list",
    ];
    let run = |d: &TestDaemon| -> Vec<Outcome> {
        FLAKE_STEPS
            .iter()
            .map(|step| {
                let o = d
                    .trixie_client(&root, "sh")
                    .args(["-c", step])
                    .env("F", &flake)
                    .env("S", &src)
                    .output()
                    .expect("spawning");
                outcome(&o)
            })
            .collect()
    };
    // The source directory is the client's to change (the last steps bump it).
    std::os::unix::fs::chown(&src, Some(uid), Some(gid)).unwrap();
    make_flake();
    std::os::unix::fs::chown(src.join("version"), Some(uid), Some(gid)).unwrap();
    d.start();
    d.start_roots_helper();
    let ours = run(&d);
    let our_log = d.log();
    d.reset_store();
    clear_home(&d);
    make_flake();
    let nd = nix_daemon(&d, &root, as_root);
    let theirs = run(&d);
    let their_log = nd.log();
    drop(nd);
    let mut diffs = Vec::new();
    for ((step, a), b) in FLAKE_STEPS.iter().zip(&ours).zip(&theirs) {
        eprintln!("`{step}`: unrooted {a:?}");
        if a != b {
            diffs.push(format!(
                "step `{step}`:\n  unrooted:   {a:?}\n  nix-daemon: {b:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n{}\n--- unrooted log ---\n{our_log}\n--- nix-daemon log ---\n{their_log}",
        diffs.len(),
        FLAKE_STEPS.len(),
        diffs.join("\n")
    );
    // What the steps show, against unrooted.
    assert!(ours.iter().all(|o| o.success), "{ours:?}");
    assert!(
        ours[0].stdout.trim().ends_with("-tool-1.0"),
        "{:?}",
        ours[0]
    );
    assert_eq!(ours[1].stdout, "tool 1.0");
    assert_eq!(ours[2].stdout, "hello from the flake\nimpure\ntool-1.0-env");
    assert!(
        ours[3].stdout.contains("GREETING='hello from the flake'"),
        "{:?}",
        ours[3]
    );
    assert_eq!(ours[5].stdout, "tool 1.0");
    assert_eq!(ours[6].stdout, "tool 2.0");
    assert_eq!(ours[7].stdout, "tool-2.0-env");
    assert_eq!(ours[8].stdout, "tool 2.0");
    assert!(ours[9].stdout.contains("-tool-2.0"), "{:?}", ours[9]);
}

/// The progress bar's lines in what a terminal got: escape sequences out, each
/// redraw (after a carriage return) a line of its own, those that begin with the
/// bar's `[`, in order, repeats out.
fn bar_lines(typescript: &str) -> Vec<String> {
    let mut plain = String::new();
    let mut chars = typescript.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    let mut out: Vec<String> = Vec::new();
    for l in plain.split(['\r', '\n']) {
        let l = l.trim_end();
        if l.starts_with('[') && out.last().map(String::as_str) != Some(l) {
            out.push(l.to_owned());
        }
    }
    out
}

/// Issue 19, item 3: the 2.26 client's progress bar itself (`nix build` without
/// `-L`, on a terminal: `script` gives it one), drawn from each daemon's activities
/// while two builds of two seconds each run one after the other. Redraws are timed
/// by the client, so the comparison is of the states each build holds for its two
/// seconds once it has logged its first line (drawn whatever the timing): the
/// counts of builds running, done and expected, and the build shown with its last
/// line, e.g. `[1/0/2 built] building slow1: first`. (Passing states, such as
/// `[0/2 built]` before the first build starts or `[1/2 built]` between the two,
/// are drawn or not depending on when the client redraws.)
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn progress_bar_as_with_nix_daemon() {
    progress_bar(false);
}

/// [`progress_bar_as_with_nix_daemon`] against nix-daemon 2.26 run as root.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn progress_bar_as_with_root_nix_daemon() {
    progress_bar(true);
}

fn progress_bar(as_root: bool) {
    if !can_run_sandboxed_builds() {
        return;
    }
    let Some(root) = trixie_root() else { return };
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let busybox = d.inputs().join("busybox");
    fs::copy("/bin/busybox", &busybox).unwrap();
    d.set_conf(&format!(
        "{}{}",
        CONF.replace("@BUSYBOX@", busybox.to_str().unwrap()),
        for_root(as_root)
    ));
    fs::write(d.inputs().join("pkgs.nix"), workflow_expr(EXTRA)).unwrap();
    let bar = |d: &TestDaemon| -> Vec<String> {
        let o = d
            .trixie_client(&root, "script")
            .args(["-qec", "nix build -f \"$E\" slow2 --no-link", "/dev/null"])
            .env("E", d.inputs().join("pkgs.nix"))
            .env("TERM", "xterm")
            .output()
            .unwrap();
        d.expect_ok("script -qec 'nix build -f $E slow2 --no-link'", &o);
        bar_lines(&String::from_utf8_lossy(&o.stdout))
    };
    d.start();
    let ours = bar(&d);
    d.reset_store();
    let nd = nix_daemon(&d, &root, as_root);
    let theirs = bar(&d);
    drop(nd);
    eprintln!("unrooted's bar: {ours:#?}\nnix-daemon's bar: {theirs:#?}");
    let held = |lines: &[String]| -> Vec<String> {
        let mut v: Vec<String> = lines
            .iter()
            .filter(|l| {
                l.split_once("] building ")
                    .is_some_and(|(_, shown)| shown.contains(": "))
            })
            .cloned()
            .collect();
        v.dedup();
        v
    };
    assert!(!held(&theirs).is_empty(), "{theirs:#?}");
    assert_eq!(held(&ours), held(&theirs));
}

/// Issue 19, item 2: `nix copy --to` and `--from ssh-ng://` with the 2.26 client (and
/// its own `ssh`, from the Debian 13 root), as the client user, to the test store
/// served over a private sshd to `unrooted-test-ssh`: by `unrooted daemon --stdio`,
/// then, on an identical store, by Debian 13's `nix-daemon --stdio` (run from the
/// trixie root's files by its loader, as the SSH user), each relaying to its
/// daemon's socket, nix-daemon run as root. Every step's status and output equal.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn ssh_ng_copy_as_with_root_nix_daemon() {
    ssh_ng_copy(true);
}

/// [`ssh_ng_copy_as_with_root_nix_daemon`] with nix-daemon run as an ordinary user.
#[test]
#[ignore = "needs root, the test users and the Debian 13 root; CI runs it with --include-ignored"]
fn ssh_ng_copy_as_with_nix_daemon() {
    ssh_ng_copy(false);
}

fn ssh_ng_copy(as_root: bool) {
    use std::os::unix::fs::{chown, PermissionsExt};
    const SSH_USER: &str = "unrooted-test-ssh";
    if !can_run_sandboxed_builds() {
        return;
    }
    let Some(root) = trixie_root() else { return };
    if !unrooted_testkit::require(
        std::path::Path::new("/usr/sbin/sshd").exists()
            && crate::remote_ssh::ssh_user().is_some()
            && root.join("usr/bin/ssh").is_file(),
        "sshd, the SSH test user or the Debian 13 root's ssh (scripts/trixie-root.sh) \
         is missing",
    ) {
        return;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), "");
    let busybox = d.inputs().join("busybox");
    fs::copy("/bin/busybox", &busybox).unwrap();
    d.set_conf(&format!(
        "{}{}",
        CONF.replace("@BUSYBOX@", busybox.to_str().unwrap()),
        for_root(as_root)
    ));
    fs::write(d.inputs().join("pkgs.nix"), workflow_expr(EXTRA)).unwrap();
    let (uid, gid) = d.client_ids();
    // The client's key and known hosts, outside its home (which is cleared between
    // the two daemons).
    let ssh_dir = d.root().join("client-ssh");
    fs::create_dir(&ssh_dir).unwrap();
    let key = ssh_dir.join("id_ed25519");
    let ok = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(ok.success());
    let sshd = crate::trixie_client::Sshd::start(
        SSH_USER,
        &fs::read_to_string(ssh_dir.join("id_ed25519.pub")).unwrap(),
    );
    let host_key = fs::read_to_string(sshd.dir.path().join("host_ed25519.pub")).unwrap();
    let known = ssh_dir.join("known_hosts");
    fs::write(&known, format!("[127.0.0.1]:{} {host_key}", sshd.port)).unwrap();
    for p in [&ssh_dir, &key, &known, &ssh_dir.join("id_ed25519.pub")] {
        chown(p, Some(uid), Some(gid)).unwrap();
    }
    let env = format!(
        "export NIX_DAEMON_SOCKET_PATH={} NIX_STORE_DIR={} NIX_STATE_DIR={} NIX_CONF_DIR={} NIX_REMOTE=daemon\n",
        d.socket().display(),
        d.store_dir().display(),
        d.state_dir().display(),
        d.root().join("conf").display()
    );
    let program = |name: &str, exec: String| {
        let p = d.root().join(name);
        fs::write(&p, format!("#!/bin/sh\n{env}exec {exec} \"$@\"\n")).unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o755)).unwrap();
        p
    };
    let ours_program = program(
        "remote-unrooted",
        format!("{} daemon", env!("CARGO_BIN_EXE_unrooted")),
    );
    let r = root.display();
    let theirs_program = program(
        "remote-nix-daemon",
        format!(
            "{r}/lib64/ld-linux-x86-64.so.2 --library-path {r}/usr/lib/x86_64-linux-gnu:{r}/lib/x86_64-linux-gnu {r}/usr/bin/nix-daemon"
        ),
    );
    let sshopts = format!(
        "-p {} -o UserKnownHostsFile={} -o StrictHostKeyChecking=yes -o BatchMode=yes",
        sshd.port,
        known.display()
    );
    // $U the remote store, $L and $L2 two local stores of the client's at the test
    // store's path (their files under its home).
    const SSH_STEPS: &[&str] = &[
        "nix store info --json --store \"$U\"",
        "printf 'over ssh-ng\\n' > ~/hello.txt; nix store add-file --store \"$L\" ~/hello.txt",
        "P=$(nix store add-file --store \"$L\" ~/hello.txt); nix copy --from \"$L\" --to \"$U\" $P && cat $P",
        "nix path-info --json --store \"$U\" $(nix store add-file --store \"$L\" ~/hello.txt) | sed 's/\"registrationTime\":[0-9]*,\\?//'",
        "nix store cat --store \"$U\" $(nix store add-file --store \"$L\" ~/hello.txt)",
        "P=$(nix store add-file --store \"$L\" ~/hello.txt); nix copy --from \"$U\" --to \"$L2\" $P && cat ~/real2/$(basename $P)",
        "P=$(nix build --store \"$L\" --option sandbox false -f $E hello --print-out-paths --no-link) && nix copy --from \"$L\" --to \"$U\" $P",
        "P=$(nix build --store \"$L\" --option sandbox false -f $E hello --print-out-paths --no-link) && nix copy --no-check-sigs --from \"$L\" --to \"$U\" $P",
    ];
    // The steps, and the daemon's version string `nix store info` shows (which the
    // comparison evens out): who served the remote store.
    let run = |d: &TestDaemon, program: &std::path::Path| -> (Vec<Outcome>, String) {
        let home = d.client_home();
        let uri = format!(
            "ssh-ng://{SSH_USER}@127.0.0.1?remote-program={}&ssh-key={}",
            program.display(),
            key.display()
        );
        let info = d
            .trixie_client(&root, "nix")
            .args(["store", "info", "--json", "--store", &uri])
            .env("NIX_SSHOPTS", &sshopts)
            .output()
            .expect("spawning");
        let info = d.expect_ok("nix store info --store ssh-ng://…", &info);
        let info: serde_json::Value = serde_json::from_str(&info).expect(&info);
        let version = info["version"].as_str().unwrap_or_default().to_owned();
        let local = |n: &str| {
            format!(
                "local?store={}&real={h}/real{n}&state={h}/state{n}&log={h}/log{n}",
                d.store_dir().display(),
                h = home.display()
            )
        };
        let outcomes = SSH_STEPS
            .iter()
            .map(|step| {
                let o = d
                    .trixie_client(&root, "sh")
                    .args(["-c", step])
                    .env("U", &uri)
                    .env("L", local(""))
                    .env("L2", local("2"))
                    .env("E", d.inputs().join("pkgs.nix"))
                    .env("NIX_SSHOPTS", &sshopts)
                    .output()
                    .expect("spawning");
                outcome(&o)
            })
            .collect();
        (outcomes, version)
    };
    d.start();
    let (ours, our_version) = run(&d, &ours_program);
    let our_log = d.log();
    d.reset_store();
    clear_home(&d);
    let nd = nix_daemon(&d, &root, as_root);
    let (theirs, their_version) = run(&d, &theirs_program);
    let their_log = nd.log();
    drop(nd);
    assert!(our_version.contains("unrooted"), "{our_version}");
    assert!(their_version.starts_with("2.26."), "{their_version}");
    let mut diffs = Vec::new();
    for ((step, a), b) in SSH_STEPS.iter().zip(&ours).zip(&theirs) {
        eprintln!("`{step}`: unrooted {a:?}");
        if a != b {
            diffs.push(format!(
                "step `{step}`:\n  unrooted:   {a:?}\n  nix-daemon: {b:?}"
            ));
        }
    }
    assert!(
        diffs.is_empty(),
        "{} of {} steps differ:\n{}\n--- sshd ---\n{}\n--- unrooted log ---\n{our_log}\n--- nix-daemon log ---\n{their_log}",
        diffs.len(),
        SSH_STEPS.len(),
        diffs.join("\n"),
        sshd.log()
    );
    // What the steps show, through unrooted: the content-addressed path went there
    // and back, the unsigned input-addressed one is refused from the untrusted SSH
    // user, even with --no-check-sigs.
    assert_eq!(
        ours[0].stdout,
        "{\"trusted\":0,\"url\":\"ssh-ng://\",\"version\":V}"
    );
    assert_eq!(ours[2].stdout, "over ssh-ng");
    assert!(ours[3].stdout.contains("\"ca\":\"fixed:"), "{:?}", ours[3]);
    assert_eq!(ours[5].stdout, "over ssh-ng");
    for o in &ours[6..] {
        assert!(
            !o.success && o.stderr.contains("lacks a signature by a trusted key"),
            "{o:?}"
        );
    }
}
