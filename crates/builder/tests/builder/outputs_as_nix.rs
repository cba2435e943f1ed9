//! What Nix 2.8's functional tests (check-refs, check-reqs, structured-attrs,
//! export-graph, post-hook, signing, optimise-store) expect of a local build, with
//! real builders run directly (`sandbox = false`) against a private store.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{MetadataExt, PermissionsExt};

use unrooted_builder::checks::{check_outputs, BuiltOutput, OutputCheckError};
use unrooted_builder::{BuildOptions, Status};
use unrooted_format::derivation::{Derivation, DerivationOutput};
use unrooted_format::signature::SecretKey;
use unrooted_format::StorePath;

use crate::common;
use common::lab;

#[test]
fn allowed_references_count_self_references_and_name_every_offender() {
    let Some(lab) = lab(2) else { return };
    // A self-reference is refused by `allowedReferences = []` (check-refs test6)…
    let six = lab.drv_with(
        "check-refs-6",
        "$B mkdir $out; $B ln -s $out $out/link",
        &[],
        &["out"],
        &[("allowedReferences", "")],
    );
    let (r, _) = lab.build(&[&six], &BuildOptions::default());
    assert_eq!(r[0].status, Status::OutputRejected, "{}", r[0].error);
    let out = lab.out_of(&six);
    assert!(
        r[0].error.contains(&format!(
            "output '{out}' is not allowed to refer to the following paths:\n  {out}"
        )),
        "{}",
        r[0].error
    );
    // …and allowed by naming the output (test7).
    let seven = lab.drv_with(
        "check-refs-7",
        "$B mkdir $out; $B ln -s $out $out/link",
        &[],
        &["out"],
        &[("allowedReferences", "out")],
    );
    let (r, _) = lab.build(&[&seven], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);

    // Every requisite missing from allowedRequisites is named (check-reqs test4).
    let dep1 = lab.drv("check-reqs-dep1", "$B mkdir $out; $B touch $out/file1", &[]);
    let dep2 = lab.drv("check-reqs-dep2", "$B mkdir $out; $B touch $out/file2", &[]);
    let deps = lab.drv(
        "check-reqs-deps",
        "$B mkdir $out; $B ln -s $dep0/file1 $out/file1; $B ln -s $dep1/file2 $out/file2",
        &[&dep1, &dep2],
    );
    let deps_out = lab.out_of(&deps);
    let four = lab.drv_with(
        "check-reqs-4",
        "$B mkdir $out; $B ln -s $dep0 $out/depdir1",
        &[&deps],
        &["out"],
        &[("allowedRequisites", &deps_out)],
    );
    let (r, _) = lab.build(&[&four], &BuildOptions::default());
    assert_eq!(r[0].status, Status::OutputRejected, "{}", r[0].error);
    for d in [&dep1, &dep2] {
        let p = lab.out_of(d);
        assert!(r[0].error.contains(&format!("\n  {p}")), "{}", r[0].error);
    }
    // The output itself is no requisite of its own without structured attributes.
    let one = lab.drv_with(
        "check-reqs-1",
        "$B mkdir $out; $B ln -s $dep0 $out/depdir1",
        &[&deps],
        &["out"],
        &[(
            "allowedRequisites",
            &format!("{} {} {deps_out}", lab.out_of(&dep1), lab.out_of(&dep2)),
        )],
    );
    let (r, _) = lab.build(&[&one], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);

    // A word that is neither a store path nor an output is an error.
    let bad = lab.drv_with(
        "check-refs-bad",
        "$B mkdir $out",
        &[],
        &["out"],
        &[("allowedReferences", "nonsense")],
    );
    let (r, _) = lab.build(&[&bad], &BuildOptions::default());
    assert_eq!(r[0].status, Status::OutputRejected, "{}", r[0].error);
    assert!(r[0]
        .error
        .contains("derivation contains an illegal reference specifier 'nonsense'"));
}

#[test]
fn structured_output_checks_are_honoured() {
    let Some(lab) = lab(1) else { return };
    let dir = lab.store.store_dir().clone();
    let out = dir
        .parse_path(&format!(
            "{}/7rjj86a15146cq1d0ngn2ax9v0ydvy9n-structured",
            dir.as_str()
        ))
        .unwrap();
    let dep = dir
        .parse_path(&format!(
            "{}/0mdqa9w1p6cmli6976v4wi0sw9r4p5pr-dep",
            dir.as_str()
        ))
        .unwrap();
    let drv_with = |checks: serde_json::Value| Derivation {
        name: "structured".into(),
        outputs: BTreeMap::from([(
            "out".to_owned(),
            DerivationOutput::InputAddressed(out.clone()),
        )]),
        input_drvs: BTreeMap::new(),
        input_srcs: BTreeSet::new(),
        system: b"x86_64-linux".to_vec(),
        builder: b"/bin/sh".to_vec(),
        args: Vec::new(),
        env: BTreeMap::from([(
            b"__json".to_vec(),
            serde_json::json!({ "outputChecks": { "out": checks } })
                .to_string()
                .into_bytes(),
        )]),
    };
    let built = BTreeMap::from([(
        "out".to_owned(),
        BuiltOutput {
            path: out.clone(),
            nar_size: 1000,
            references: BTreeSet::from([out.clone(), dep.clone()]),
        },
    )]);
    let query = |_: &StorePath| Ok((50u64, BTreeSet::new()));
    let check = |checks| check_outputs(&dir, "/x.drv", &drv_with(checks), &built, &query);
    // Structured attributes count the self-reference in requisites too.
    let e = check(serde_json::json!({ "allowedRequisites": [dir.display(&dep)] })).unwrap_err();
    assert!(
        matches!(&e, OutputCheckError::NotAllowed { paths, .. } if paths == &[dir.display(&out)])
    );
    check(serde_json::json!({ "allowedReferences": ["out", dir.display(&dep)] })).unwrap();
    let e = check(serde_json::json!({ "disallowedReferences": [dir.display(&dep)] })).unwrap_err();
    assert!(e
        .to_string()
        .contains("is not allowed to refer to the following paths:\n  "));
    let e = check(serde_json::json!({ "maxSize": 999 })).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "path '{}' is too large at 1000 bytes; limit is 999 bytes",
            dir.display(&out)
        )
    );
    let e = check(serde_json::json!({ "maxClosureSize": 1049 })).unwrap_err();
    assert!(e.to_string().contains("too large at 1050 bytes"), "{e}");
    check(serde_json::json!({ "maxSize": 1000, "maxClosureSize": 1050 })).unwrap();
}

#[test]
fn export_references_graph_writes_the_registration_file() {
    let Some(lab) = lab(1) else { return };
    let a = lab.drv("input-1", "echo A > $out", &[]);
    let b = lab.drv("input-2", "echo $dep0 > $out", &[&a]);
    let (pa, pb) = (lab.out_of(&a), lab.out_of(&b));
    let c = lab.drv_with(
        "graph",
        "$B cp refs $out",
        &[&b],
        &["out"],
        &[("exportReferencesGraph", &format!("refs {pb}"))],
    );
    let (r, _) = lab.build(&[&c], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let text = std::fs::read_to_string(lab.out_of(&c)).unwrap();
    let mut want = [
        (pa.clone(), format!("{pa}\n\n0\n")),
        (pb.clone(), format!("{pb}\n\n1\n{pa}\n")),
    ];
    want.sort();
    assert_eq!(text, want.map(|(_, t)| t).concat());

    // A path outside the inputs, and a file name that is not a plain name.
    let outside = lab.drv_with(
        "graph-outside",
        "$B cp refs $out",
        &[],
        &["out"],
        &[("exportReferencesGraph", &format!("refs {pb}"))],
    );
    let (r, _) = lab.build(&[&outside], &BuildOptions::default());
    assert!(!r[0].status.is_success());
    assert!(
        r[0].error.contains(&format!(
            "cannot export references of path '{pb}' because it is not in the input closure of the derivation"
        )),
        "{}",
        r[0].error
    );
    let escape = lab.drv_with(
        "graph-escape",
        "$B cp refs $out",
        &[&b],
        &["out"],
        &[("exportReferencesGraph", &format!("../refs {pb}"))],
    );
    let (r, _) = lab.build(&[&escape], &BuildOptions::default());
    assert!(r[0]
        .error
        .contains("invalid file name '../refs' in 'exportReferencesGraph'"));
}

#[test]
fn post_build_hook_runs_with_drv_path_and_out_paths() {
    let Some(lab) = lab(1) else { return };
    let seen = lab.file("seen");
    let hook = lab.file("hook.sh");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/busybox sh\necho \"$DRV_PATH|$OUT_PATHS\" > {}\necho hello from the hook\necho to stderr >&2\nexit $(/bin/busybox cat {}.status 2>/dev/null || echo 0)\n",
            seen.display(),
            hook.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    let opts = BuildOptions {
        post_build_hook: Some(hook.clone()),
        ..BuildOptions::default()
    };
    let d = lab.drv_with(
        "hooked",
        "echo a > $out; echo b > $dev",
        &[],
        &["out", "dev"],
        &[],
    );
    let (r, rec) = lab.build(&[&d], &opts);
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let mut outs = [lab.output(&d, "dev"), lab.output(&d, "out")];
    outs.sort();
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap(),
        format!("{}|{}\n", lab.store.print_path(&d), outs.join(" "))
    );
    assert_eq!(rec.hooks, [hook.display().to_string()]);
    assert_eq!(rec.hook_lines, ["hello from the hook", "to stderr"]);

    // A failing hook fails the request with Nix's message; the outputs stay valid.
    std::fs::write(format!("{}.status", hook.display()), "3").unwrap();
    let e = lab.drv("hooked-fails", "echo c > $out", &[]);
    let (r, _) = lab.build(&[&e], &opts);
    assert!(!r[0].status.is_success());
    assert!(
        r[0].error.contains(&format!(
            "program '{}' failed with exit code 3",
            hook.display()
        )),
        "{}",
        r[0].error
    );
    let out = lab.store.query_derivation_output_map(&e).unwrap()["out"].clone();
    assert!(lab.store.is_valid_path(&out).unwrap());
}

#[test]
fn secret_key_files_sign_local_builds_with_every_key() {
    let Some(lab) = lab(1) else { return };
    let keys: Vec<SecretKey> = ["cache1.example.org", "cache2.example.org"]
        .iter()
        .map(|n| SecretKey::generate(n).unwrap())
        .collect();
    let files: Vec<_> = keys
        .iter()
        .enumerate()
        .map(|(i, k)| {
            let f = lab.file(&format!("sk{i}"));
            std::fs::write(&f, k.to_file_text()).unwrap();
            f
        })
        .collect();
    let opts = BuildOptions {
        secret_key_files: files,
        ..BuildOptions::default()
    };
    let d = lab.drv("signed", "echo s > $out", &[]);
    let (r, _) = lab.build(&[&d], &opts);
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let out = lab.store.query_derivation_output_map(&d).unwrap()["out"].clone();
    let info = lab.store.query_path_info(&out).unwrap().unwrap();
    assert!(info.ultimate);
    assert_eq!(info.sigs.len(), 2);
    let fp = info.fingerprint(lab.store.store_dir()).unwrap();
    for k in &keys {
        let sig = info
            .sigs
            .iter()
            .find(|s| s.starts_with(&format!("{}:", k.name())))
            .unwrap();
        let sig = unrooted_format::signature::Signature::parse(sig).unwrap();
        assert!(k.to_public().verify(&fp, &sig));
    }
    // Without keys nothing is signed.
    let u = lab.drv("unsigned", "echo u > $out", &[]);
    let (r, _) = lab.build(&[&u], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let out = lab.store.query_derivation_output_map(&u).unwrap()["out"].clone();
    assert!(lab
        .store
        .query_path_info(&out)
        .unwrap()
        .unwrap()
        .sigs
        .is_empty());
}

#[test]
fn auto_optimise_store_links_new_outputs() {
    let Some(lab) = lab(1) else { return };
    let opts = BuildOptions {
        auto_optimise: true,
        ..BuildOptions::default()
    };
    let script = "$B mkdir $out; echo hello > $out/foo";
    let one = lab.drv("foo1", script, &[]);
    let two = lab.drv("foo2", script, &[]);
    let three = lab.drv("foo3", script, &[]);
    let (r, _) = lab.build(&[&one, &two], &opts);
    assert!(r.iter().all(|r| r.status == Status::Built), "{r:?}");
    let (r, _) = lab.build(&[&three], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let meta = |d| std::fs::metadata(format!("{}/foo", lab.out_of(d))).unwrap();
    assert_eq!(meta(&one).ino(), meta(&two).ino());
    assert_eq!(meta(&one).nlink(), 3, "two outputs and .links");
    assert_ne!(meta(&one).ino(), meta(&three).ino());
}

#[test]
fn unsandboxed_rebuild_redirects_valid_outputs_and_rewrites_hashes() {
    let Some(lab) = lab(1) else { return };
    // multiple-outputs.nix's `a`: `second` links to `first`.
    let a = lab.drv_with(
        "multiple-outputs-a",
        "$B mkdir $first $second; $B test -z \"$all\"; echo first > $first/file; echo second > $second/file; $B ln -s $first $second/link",
        &[],
        &["first", "second"],
        &[],
    );
    let (r, _) = lab.build(&[&a], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let map = lab.store.query_derivation_output_map(&a).unwrap();
    let (first, second) = (map["first"].clone(), map["second"].clone());
    let hash1 = lab
        .store
        .query_path_info(&second)
        .unwrap()
        .unwrap()
        .nar_hash;
    let first_ino = std::fs::metadata(lab.store.real_path(&first).join("file"))
        .unwrap()
        .ino();

    // Delete `second` only; the rebuild finds `first` valid and must not be given it.
    lab.store
        .invalidate_paths(std::slice::from_ref(&second))
        .unwrap();
    lab.store.delete_invalid_path(&second).unwrap();
    assert!(!lab.store.real_path(&second).exists());
    let (r, _) = lab.build(&[&a], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    let info = lab.store.query_path_info(&second).unwrap().unwrap();
    assert_eq!(
        info.nar_hash, hash1,
        "the rewritten output is the one built before"
    );
    assert_eq!(info.references, BTreeSet::from([first.clone()]));
    let link = std::fs::read_link(lab.store.real_path(&second).join("link")).unwrap();
    assert_eq!(link, lab.store.real_path(&first));
    // The valid output is untouched and no scratch path is left in the store.
    let ino = std::fs::metadata(lab.store.real_path(&first).join("file"))
        .unwrap()
        .ino();
    assert_eq!(ino, first_ino);
    let entries: Vec<String> = lab
        .store
        .store_entries()
        .unwrap()
        .into_iter()
        .map(|e| e.to_string_lossy().into_owned())
        .filter(|e| !e.starts_with('.') && !e.ends_with(".lock"))
        .collect();
    assert_eq!(entries.len(), 3, "{entries:?}");
}

#[test]
fn output_locks_are_held_for_the_whole_build() {
    let Some(lab) = lab(1) else { return };
    // gc-concurrent.builder.sh: `test -e "$out.lock"` while it runs.
    let d = lab.drv_with(
        "locked",
        "$B test -e $out.lock; $B test -e $dev.lock; $B mkdir $out $dev",
        &[],
        &["out", "dev"],
        &[],
    );
    let (r, _) = lab.build(&[&d], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
    // Released and removed once the outputs are registered.
    for o in ["out", "dev"] {
        let lock = format!("{}.lock", lab.output(&d, o));
        assert!(!std::path::Path::new(&lock).exists(), "{lock}");
    }
}

#[test]
fn required_system_features_are_checked_against_system_features() {
    let Some(lab) = lab(1) else { return };
    let d = lab.drv_with(
        "needs-kvm-and-more",
        "echo x > $out",
        &[],
        &["out"],
        &[("requiredSystemFeatures", "big-parallel no-such-feature")],
    );
    let (r, _) = lab.build(&[&d], &BuildOptions::default());
    assert!(!r[0].status.is_success());
    let have = unrooted_builder::default_system_features()
        .into_iter()
        .collect::<Vec<_>>()
        .join(", ");
    let system = unrooted_builder::default_system();
    assert_eq!(
        r[0].error,
        format!(
            "a '{system}' with features {{big-parallel, no-such-feature}} is required to build '{}', but I am a '{system}' with features {{{have}}}",
            lab.store.print_path(&d)
        )
    );
    // Features the machine has are fine.
    let ok = lab.drv_with(
        "needs-big-parallel",
        "echo x > $out",
        &[],
        &["out"],
        &[("requiredSystemFeatures", "big-parallel benchmark")],
    );
    let (r, _) = lab.build(&[&ok], &BuildOptions::default());
    assert_eq!(r[0].status, Status::Built, "{}", r[0].error);
}
