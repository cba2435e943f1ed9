//! `unrooted drv` against the Nix 2.8 vectors in `crates/format/tests/vectors/drv`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn vectors() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../format/tests/vectors/drv")
}

fn unrooted(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_unrooted"))
        .args(args)
        .env_remove("NIX_STORE_DIR")
        .output()
        .expect("running unrooted")
}

fn vector_files() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(vectors())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "drv"))
        .collect();
    v.sort();
    v
}

/// Asserts a failure reported as exactly one `unrooted: error:` line.
fn assert_one_line_error(out: &Output, needle: &str) -> String {
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert!(err.starts_with("unrooted: error: "), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains(needle), "expected '{needle}' in: {err}");
    assert!(!err.contains("panicked"));
    err
}

#[test]
fn show_prints_nix_show_derivation_bytes() {
    let files = vector_files();
    assert_eq!(files.len(), 10);
    for f in &files {
        // Outside the store: the key is the computed path, equal to the file name.
        let out = unrooted(&["drv", "show", f.to_str().unwrap()]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let expected = fs::read(format!("{}.json", f.display())).unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&expected),
            "{}",
            f.display()
        );
    }
}

#[test]
fn show_several_files_sorts_keys_like_nix() {
    let files = vector_files();
    let mut args = vec!["drv", "show"];
    // Reverse order on the command line; Nix prints a set of paths, sorted.
    args.extend(files.iter().rev().map(|f| f.to_str().unwrap()));
    let out = unrooted(&args);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(keys.len(), 10);
    let text = String::from_utf8(out.stdout).unwrap();
    let positions: Vec<usize> = files
        .iter()
        .map(|f| {
            let base = f.file_name().unwrap().to_str().unwrap();
            text.find(&format!("\n  \"/nix/store/{base}\": {{"))
                .unwrap()
        })
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{positions:?}");
}

#[test]
fn outputs_recomputes_every_vector() {
    let dir = vectors();
    let expect = [
        ("3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv", "out /nix/store/94f9f6i31zwzwbf0kclq1naqxxi4c7v9-simple\n"),
        ("b9fahz5qcrx5x9a286hsd9vzgvkg7s7r-dep.drv", "out /nix/store/vzii67nm006ckrlh2z9q7hpy8y69cmfx-dep\n"),
        (
            "f9b4r1gs4drbd9y8a5nfpi49vvxfn9gz-multi.drv",
            "dev /nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev\nout /nix/store/j6pdrf4s3p14yyns9cg08babddrqqjxm-multi\n",
        ),
        ("i3lixdy9gjqzd5xpf9abmcwyvscwhj0m-fod-rec.drv", "out /nix/store/9x8bwh0mba9ynl5l7840jn3zzs6z6qrb-fod-rec\n"),
        ("3yqlm6qcq8599j7lzix4ijnrb7clz6wf-ca.drv", "out -\n"),
        ("qdar41qp1s7k8y5m5q1dv1izxyyfz3yp-ia-on-ca.drv", "out -\n"),
    ];
    for (base, stdout) in expect {
        let out = unrooted(&[
            "drv",
            "outputs",
            "--store-dir",
            "/nix/store",
            "--inputs-dir",
            dir.to_str().unwrap(),
            dir.join(base).to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "{base}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8(out.stdout).unwrap(), stdout, "{base}");
    }
}

#[test]
fn outputs_names_each_wrong_output() {
    let tmp = tempfile::tempdir().unwrap();
    let good =
        fs::read_to_string(vectors().join("f9b4r1gs4drbd9y8a5nfpi49vvxfn9gz-multi.drv")).unwrap();
    // Swap the two output paths in the tuples only; the env vars stay right, so
    // exactly the two paths are reported.
    let dev = "/nix/store/vb2485g3k8ww9m9s24gkmbgh9156aymz-multi-dev";
    let out = "/nix/store/j6pdrf4s3p14yyns9cg08babddrqqjxm-multi";
    let bad = good
        .replacen(
            &format!("(\"dev\",\"{dev}\",\"\",\"\")"),
            &format!("(\"dev\",\"{out}\",\"\",\"\")"),
            1,
        )
        .replacen(
            &format!("(\"out\",\"{out}\",\"\",\"\")"),
            &format!("(\"out\",\"{dev}\",\"\",\"\")"),
            1,
        );
    assert_ne!(good, bad);
    let file = tmp.path().join("multi.drv");
    fs::write(&file, bad).unwrap();
    let res = unrooted(&[
        "drv",
        "outputs",
        "--store-dir",
        "/nix/store",
        file.to_str().unwrap(),
    ]);
    assert_eq!(res.status.code(), Some(1));
    assert_eq!(
        String::from_utf8(res.stdout).unwrap(),
        format!("dev {dev}\nout {out}\n")
    );
    let f = file.display();
    assert_eq!(
        String::from_utf8(res.stderr).unwrap(),
        format!(
            "unrooted: error: {f}: output 'dev' has path '{out}', should be '{dev}'\n\
             unrooted: error: {f}: output 'out' has path '{dev}', should be '{out}'\n"
        )
    );
}

#[test]
fn bad_input_is_one_line_and_no_panic() {
    let tmp = tempfile::tempdir().unwrap();
    let invalid = vectors().join("invalid");
    for entry in fs::read_dir(&invalid).unwrap() {
        let p = entry.unwrap().path();
        if p.extension() != Some(std::ffi::OsStr::new("drv")) {
            continue;
        }
        let out = unrooted(&["drv", "show", p.to_str().unwrap()]);
        assert_one_line_error(&out, "parsing ");
    }
    // An input derivation that is not there.
    let dep = vectors().join("b9fahz5qcrx5x9a286hsd9vzgvkg7s7r-dep.drv");
    let out = unrooted(&[
        "drv",
        "outputs",
        "--store-dir",
        "/nix/store",
        "--inputs-dir",
        tmp.path().to_str().unwrap(),
        dep.to_str().unwrap(),
    ]);
    assert_one_line_error(&out, "loading input derivation '/nix/store/");
    // A file name that gives no valid store path name.
    let odd = tmp.path().join("bad name!.drv");
    fs::copy(
        vectors().join("3ghsl9sd83mc26i81adpa2fzf3yw4f68-simple.drv"),
        &odd,
    )
    .unwrap();
    let out = unrooted(&["drv", "show", odd.to_str().unwrap()]);
    assert_one_line_error(&out, "computing the store path");
    let out = unrooted(&["drv", "outputs", odd.to_str().unwrap()]);
    assert_one_line_error(&out, "computing the output paths");
    // Not a .drv name, a missing file, a bad store dir.
    let plain = tmp.path().join("simple");
    fs::write(&plain, b"").unwrap();
    assert_one_line_error(
        &unrooted(&["drv", "show", plain.to_str().unwrap()]),
        "must end in .drv",
    );
    assert_one_line_error(
        &unrooted(&["drv", "show", "/nonexistent/x.drv"]),
        "opening /nonexistent/x.drv",
    );
    assert_one_line_error(
        &unrooted(&[
            "drv",
            "show",
            "--store-dir",
            "relative",
            odd.to_str().unwrap(),
        ]),
        "invalid store directory",
    );
}
