//! The Nix client's store commands against the daemon (an untrusted client): queries,
//! dumps and exports equal to Nix's in local mode, adds, optimise, verify, import
//! into an empty store and `nix copy` through a `file://` cache.

use std::fs;

use crate::harness::{expect_ok, nobody, Harness, Mode};

fn prepared() -> Option<Harness> {
    let h = Harness::new(Mode::Unsandboxed)?;
    h.nix("nix-store")?;
    Some(h)
}

fn lines(s: &str) -> Vec<String> {
    s.lines().map(str::to_owned).collect()
}

fn write_inputs(d: &Harness) -> String {
    unrooted_testkit::inputs::write_client_inputs(&d.inputs())
}

#[test]
fn store_commands() {
    let Some(mut d) = prepared() else { return };
    let expr = write_inputs(&d);
    // The Nix client is an unprivileged user here, untrusted.
    d.daemon().set_socket_peer(Some(nobody()));
    // A store made by Nix 2.8 in local mode, served unchanged.
    let top = d.local_ok("nix-build", &[&expr, "-A", "top", "--no-out-link"]);
    let top = top.trim().to_owned();
    let before = d.valid_paths_local();

    let dep = lines(&d.nix_ok("nix-store", &["-q", "--references", &top]))
        .into_iter()
        .find(|p| p.ends_with("-dep"))
        .expect("top refers to dep");
    assert_eq!(
        d.nix_ok("nix-store", &["-q", "--referrers", &dep]),
        d.local_ok("nix-store", &["-q", "--referrers", &dep])
    );
    for q in [
        "--references",
        "--requisites",
        "--deriver",
        "--hash",
        "--size",
        "--tree",
        "--graph",
    ] {
        let via_daemon = d.nix_ok("nix-store", &["-q", q, &top]);
        let local = d.local_ok("nix-store", &["-q", q, &top]);
        assert_eq!(via_daemon, local, "nix-store -q {q}");
    }
    let json = d.nix_ok("nix", &["path-info", "--json", "-r", "-S", &top]);
    assert_eq!(
        json,
        d.local_ok("nix", &["path-info", "--json", "-r", "-S", &top])
    );
    assert_eq!(before, d.valid_paths_local());

    // --dump and --export: the bytes Nix produces in local mode.
    let dump = d
        .nix("nix-store")
        .unwrap()
        .args(["--dump", &top])
        .output()
        .unwrap();
    assert!(dump.status.success());
    let local_dump = d
        .local("nix-store")
        .unwrap()
        .args(["--dump", &top])
        .output()
        .unwrap();
    assert_eq!(dump.stdout, local_dump.stdout);
    let closure = lines(&d.nix_ok("nix-store", &["-q", "--requisites", &top]));
    let mut export_args = vec!["--export"];
    export_args.extend(closure.iter().map(String::as_str));
    let export = d
        .nix("nix-store")
        .unwrap()
        .args(&export_args)
        .output()
        .unwrap();
    expect_ok("nix-store --export", &[], &export);
    let local_export = d
        .local("nix-store")
        .unwrap()
        .args(&export_args)
        .output()
        .unwrap();
    assert_eq!(export.stdout, local_export.stdout);

    // Adding: the paths Nix gives in local mode for the same content.
    let hello = d.inputs().join("hello.txt");
    let hello = hello.to_str().unwrap();
    let tree = d.inputs().join("tree");
    let tree = tree.to_str().unwrap();
    let adds: [&[&str]; 4] = [
        &["--add", hello, tree],
        &["--add-fixed", "sha256", hello],
        &["--add-fixed", "sha1", hello],
        &["--add-fixed", "--recursive", "sha512", tree],
    ];
    let mut added = Vec::new();
    for args in adds {
        let via_daemon = lines(&d.nix_ok("nix-store", args));
        added.extend(via_daemon.iter().cloned());
        let after = d.valid_paths_local();
        assert_eq!(
            lines(&d.local_ok("nix-store", args)),
            via_daemon,
            "{args:?}"
        );
        assert_eq!(
            d.valid_paths_local(),
            after,
            "local mode added another path"
        );
        // Adding again is idempotent.
        assert_eq!(lines(&d.nix_ok("nix-store", args)), via_daemon);
    }
    assert_eq!(added.len(), 5);
    assert_eq!(
        d.nix_ok("nix-store", &["-q", "--hash", &added[0]]).trim(),
        "sha256:00zns3gj9hwz2a4b0i07y7nmxybq59lh24bl3xsxblcl6333mjil",
        "the narHash of the spec's hello.txt vector"
    );

    // Optimise: identical files end up as one inode.
    let optimise = d
        .nix("nix-store")
        .unwrap()
        .arg("--optimise")
        .output()
        .unwrap();
    expect_ok("nix-store --optimise", &[], &optimise);
    assert!(
        String::from_utf8_lossy(&optimise.stderr).contains("freed by hard-linking"),
        "{}",
        String::from_utf8_lossy(&optimise.stderr)
    );
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| fs::metadata(p).unwrap().ino();
    assert_eq!(
        ino(&added[0]),
        ino(&added[2]),
        "hello.txt copies not linked"
    );

    let verify = d
        .nix("nix-store")
        .unwrap()
        .args(["--verify", "--check-contents"])
        .output()
        .unwrap();
    expect_ok("nix-store --verify --check-contents", &[], &verify);
    d.assert_store_clean();

    // Import into an empty store at the same place; the client is not trusted, so
    // that store does not require signatures.
    let queries = ["--hash", "--references", "--deriver", "--size", "--tree"];
    let expected: Vec<String> = queries
        .iter()
        .map(|q| d.nix_ok("nix-store", &["-q", q, &top]))
        .collect();
    let cache = format!("file://{}/cache", d.root().join("home").display());
    d.nix_ok("nix", &["copy", "--to", &cache, &top]);
    let narinfos = fs::read_dir(d.root().join("home/cache"))
        .unwrap()
        .filter(|e| {
            e.as_ref()
                .unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".narinfo")
        })
        .count();
    assert_eq!(narinfos, 3);

    d.reset_store("require-sigs = false");
    d.daemon().set_socket_peer(Some(nobody()));
    assert_eq!(d.valid_paths_local(), Vec::<String>::new());
    let export_file = d.inputs().join("closure.nar-export");
    fs::write(&export_file, &export.stdout).unwrap();
    let imported = d
        .nix("nix-store")
        .unwrap()
        .arg("--import")
        .stdin(fs::File::open(&export_file).unwrap())
        .output()
        .unwrap();
    let mut imported = lines(&expect_ok("nix-store --import", &[], &imported));
    imported.sort();
    let mut sorted_closure = closure.clone();
    sorted_closure.sort();
    assert_eq!(imported, sorted_closure);
    assert_eq!(d.valid_paths_local(), sorted_closure);
    for (q, want) in queries.iter().zip(&expected) {
        assert_eq!(
            &d.nix_ok("nix-store", &["-q", q, &top]),
            want,
            "{q} after import"
        );
    }
    d.assert_store_clean();

    // nix copy from the file:// cache into an empty store.
    d.reset_store("require-sigs = false");
    d.daemon().set_socket_peer(Some(nobody()));
    d.nix_ok("nix", &["copy", "--no-check-sigs", "--from", &cache, &top]);
    assert_eq!(d.valid_paths_local(), sorted_closure);
    for (q, want) in queries.iter().zip(&expected) {
        assert_eq!(
            &d.nix_ok("nix-store", &["-q", q, &top]),
            want,
            "{q} after nix copy"
        );
    }
    d.assert_store_clean();
}
