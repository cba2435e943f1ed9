//! The size limits of `docs/architecture.md` ("Unit sizes"): no non-test function over
//! 100 lines and no source file over 800 lines, tests and vectors aside, unless the
//! document's list of exceptions names the file or function with its reason.
//!
//! The sources are formatted by `rustfmt` (the test command checks it), so an item's
//! body ends at the first line that closes a brace at the indentation its `fn` line
//! opened at; that is all this reads, no parser needed.

use std::path::{Path, PathBuf};

const MAX_FUNCTION_LINES: usize = 100;
const MAX_FILE_LINES: usize = 800;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under each crate's `src/` that is not test code by its name.
fn source_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    let crates = std::fs::read_dir(workspace().join("crates")).expect("crates/");
    for krate in crates {
        collect_rs(
            &krate.expect("crates/ entry").path().join("src"),
            &mut files,
        );
    }
    files.sort();
    assert!(files.len() > 100, "found only {} source files", files.len());
    files
}

fn collect_rs(dir: &Path, files: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            collect_rs(&path, files);
        } else if path.extension().is_some_and(|e| e == "rs") && !is_test_file(&path) {
            files.push(path);
        }
    }
}

fn is_test_file(path: &Path) -> bool {
    let name = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
    name == "tests" || name.ends_with("_tests")
}

/// The file's lines before its first top-level `#[cfg(test)]` (in-file tests come last).
fn non_test_lines(text: &str) -> Vec<&str> {
    text.lines().take_while(|l| *l != "#[cfg(test)]").collect()
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// `(name, first line, length)` of every function with a body in these lines.
fn functions(lines: &[&str]) -> Vec<(String, usize, usize)> {
    let mut found = Vec::new();
    for (start, line) in lines.iter().enumerate() {
        let Some(name) = fn_name(line) else { continue };
        let depth = indent(line);
        let mut end = None;
        for (i, later) in lines.iter().enumerate().skip(start) {
            if i == start && later.trim_end().ends_with('}') && later.contains('{') {
                end = Some(i);
                break;
            }
            if i > start && indent(later) == depth && later.trim_start().starts_with('}') {
                end = Some(i);
                break;
            }
            if later.trim_end().ends_with(';') && !lines[start..i].iter().any(|l| l.contains('{')) {
                break; // a declaration without a body
            }
        }
        if let Some(end) = end {
            found.push((name, start + 1, end - start + 1));
        }
    }
    found
}

/// The name a line declares with `fn`, if it is a function's first line.
fn fn_name(line: &str) -> Option<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return None;
    }
    let after = code.split_once("fn ").filter(|(before, _)| {
        before.is_empty()
            || before.split_whitespace().all(|w| {
                w.starts_with("pub")
                    || ["const", "async", "unsafe", "extern"].contains(&w)
                    || w.starts_with('"')
            })
    })?;
    let name: String = after
        .1
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect();
    (!name.is_empty()).then_some(name)
}

/// The exceptions of the architecture document: lines `- `path` or `path::function`: why`.
fn exceptions() -> Vec<String> {
    let doc = std::fs::read_to_string(workspace().join("docs/architecture.md"))
        .expect("docs/architecture.md");
    let section = doc
        .split("## Unit sizes")
        .nth(1)
        .expect("a 'Unit sizes' section in docs/architecture.md");
    let section = section.split("\n## ").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|l| l.strip_prefix("- `"))
        .filter_map(|l| l.split_once('`').map(|(name, _)| name.to_owned()))
        .collect()
}

fn relative(path: &Path) -> String {
    let root = workspace().canonicalize().expect("workspace");
    let path = path.canonicalize().expect("source file");
    path.strip_prefix(root)
        .expect("inside")
        .display()
        .to_string()
}

#[test]
fn no_function_over_100_lines_and_no_file_over_800() {
    let allowed = exceptions();
    let mut over = Vec::new();
    for file in source_files() {
        let text = std::fs::read_to_string(&file).expect("source file");
        let lines = non_test_lines(&text);
        let name = relative(&file);
        if lines.len() > MAX_FILE_LINES && !allowed.contains(&name) {
            over.push(format!("{name}: {} lines", lines.len()));
        }
        for (function, line, length) in functions(&lines) {
            let id = format!("{name}::{function}");
            if length > MAX_FUNCTION_LINES && !allowed.contains(&id) {
                over.push(format!("{name}:{line}: fn {function} has {length} lines"));
            }
        }
    }
    assert!(
        over.is_empty(),
        "over the limits of docs/architecture.md:\n{}",
        over.join("\n")
    );
}

#[test]
fn the_size_check_finds_a_long_function_and_ends_bodies_at_their_brace() {
    let mut text = String::from("pub(crate) fn long(\n    a: u8,\n) -> u8 {\n");
    text.push_str(&"    let _ = a;\n".repeat(120));
    text.push_str("    if a > 0 {\n    }\n    a\n}\n\nfn short() {}\nfn decl();\n");
    let lines: Vec<&str> = text.lines().collect();
    let found = functions(&lines);
    assert_eq!(found[0], ("long".to_owned(), 1, 127));
    assert_eq!(found[1], ("short".to_owned(), 129, 1));
    assert_eq!(found.len(), 2);
    assert_eq!(non_test_lines("a\n#[cfg(test)]\nmod tests {}\n"), vec!["a"]);
}
