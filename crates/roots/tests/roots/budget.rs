//! The helper must stay small enough to audit in one sitting.

/// Lines of code in the helper (not blank, not only a comment).
fn code_lines() -> usize {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        n += text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("//"))
            .count();
    }
    n
}

#[test]
fn helper_is_under_its_line_budget() {
    let n = code_lines();
    eprintln!("unrooted-find-roots: {n} lines of code");
    assert!(n < 600, "{n} lines of code: over the budget of 600");
}

#[test]
fn helper_has_no_dependencies_and_no_unsafe() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let deps = manifest
        .split("[dependencies]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    assert!(
        deps.lines()
            .all(|l| l.trim().is_empty() || l.trim().starts_with('#')),
        "the helper must use only std: {deps}"
    );
    for f in ["lib.rs", "main.rs"] {
        let text = std::fs::read_to_string(root.join("src").join(f)).unwrap();
        assert!(text.contains("#![forbid(unsafe_code)]"), "{f}");
    }
}
