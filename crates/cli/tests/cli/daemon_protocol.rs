//! The daemon killed (SIGKILL) during a large import by the real Nix client, an
//! unprivileged user: the store stays consistent and a second import completes it.
//! (The protocol at every version and stalled or vanishing clients are tested in
//! process, as any user, in `crates/daemon/tests/ops/protocol.rs`.)

use std::fs::{self, File};
use std::time::{Duration, Instant};

use unrooted_testkit::daemon::{can_run_daemon_tests, TestDaemon};

fn daemon(conf: &str) -> Option<TestDaemon> {
    if !can_run_daemon_tests() || unrooted_testkit::nix_tool("nix-store").is_none() {
        return None;
    }
    let mut d = TestDaemon::new(env!("CARGO_BIN_EXE_unrooted").as_ref(), conf);
    d.start();
    Some(d)
}

#[test]
#[ignore = "needs root and the test users; CI runs it with --include-ignored"]
fn sigkill_during_large_import() {
    let Some(mut d) = daemon("require-sigs = false") else {
        return;
    };
    let mut rng = unrooted_testkit::Rng::new(7);
    let mut args = vec!["--add".to_owned()];
    for i in 0..4 {
        let f = d.inputs().join(format!("big-{i}"));
        let data: Vec<u8> = (0..(24 << 20) / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect();
        fs::write(&f, data).unwrap();
        args.push(f.to_string_lossy().into_owned());
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut paths: Vec<String> = d
        .client_ok("nix-store", &args)
        .lines()
        .map(str::to_owned)
        .collect();
    paths.sort();
    let mut export = vec!["--export"];
    export.extend(paths.iter().map(String::as_str));
    let out = d.client("nix-store").args(&export).output().unwrap();
    d.expect_ok("nix-store --export", &out);
    let export_file = d.inputs().join("big.export");
    fs::write(&export_file, &out.stdout).unwrap();
    drop(out);

    d.reset_store();
    d.start();
    let import = |d: &TestDaemon| {
        d.client("nix-store")
            .arg("--import")
            .stdin(File::open(&export_file).unwrap())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let client = import(&d);
    // Kill once the import is under way (something landed in the store directory).
    let deadline = Instant::now() + Duration::from_secs(30);
    while fs::read_dir(d.store_dir())
        .unwrap()
        .filter(|e| {
            !e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .starts_with(".links")
        })
        .count()
        == 0
    {
        assert!(Instant::now() < deadline, "the import never started");
        std::thread::sleep(Duration::from_millis(5));
    }
    d.kill();
    let out = client.wait_with_output().unwrap();
    assert!(
        !out.status.success(),
        "the import survived SIGKILL of the daemon"
    );
    d.start();
    d.assert_store_clean();
    let valid = d.valid_paths_local();
    assert!(
        valid.len() < paths.len(),
        "everything was imported before the kill"
    );
    assert!(valid.iter().all(|p| paths.contains(p)), "{valid:?}");
    // Importing again completes the store.
    let out = import(&d).wait_with_output().unwrap();
    d.expect_ok("nix-store --import after the crash", &out);
    assert_eq!(d.valid_paths_local(), paths);
    d.assert_store_clean();
}
