//! The dependency rules of `docs/architecture.md` ("Allowed dependencies"), checked
//! against what Cargo resolves: a crate that gains a dependency on one of ours the
//! document does not allow fails here, and so does a crate the document omits.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

const PREFIX: &str = "unrooted-";

/// The table of the architecture document: crate → the crates it may depend on.
fn allowed() -> BTreeMap<String, BTreeSet<String>> {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/architecture.md");
    let text = std::fs::read_to_string(&doc).expect("docs/architecture.md");
    let section = text
        .split("## Allowed dependencies")
        .nth(1)
        .expect("an 'Allowed dependencies' section");
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut table = BTreeMap::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let name = cells[1].trim_matches('`').to_owned();
        let deps = cells[2]
            .split(',')
            .map(|d| d.trim().trim_matches('`'))
            .filter(|d| !d.is_empty() && *d != "(none)")
            .map(str::to_owned)
            .collect();
        assert!(table.insert(name.clone(), deps).is_none(), "{name} twice");
    }
    table
}

/// Each workspace crate's normal (and build) dependencies among ours, from Cargo.
fn actual() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let mut graph = BTreeMap::new();
    for package in meta["packages"].as_array().expect("packages") {
        let Some(name) = package["name"]
            .as_str()
            .and_then(|n| n.strip_prefix(PREFIX))
        else {
            continue;
        };
        let deps = package["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].as_str() != Some("dev"))
            .filter_map(|d| d["name"].as_str()?.strip_prefix(PREFIX))
            .map(str::to_owned)
            .collect();
        graph.insert(name.to_owned(), deps);
    }
    graph
}

#[test]
fn every_crate_depends_only_on_what_the_architecture_allows() {
    let (allowed, actual) = (allowed(), actual());
    assert!(
        actual.len() >= 14,
        "only {} crates: {actual:?}",
        actual.len()
    );
    let mut wrong = Vec::new();
    for (name, deps) in &actual {
        let Some(may) = allowed.get(name) else {
            wrong.push(format!(
                "{name} is missing from docs/architecture.md's table"
            ));
            continue;
        };
        for dep in deps.difference(may) {
            wrong.push(format!(
                "{name} depends on {dep}, which the table does not allow"
            ));
        }
    }
    for name in allowed.keys().filter(|n| !actual.contains_key(*n)) {
        wrong.push(format!(
            "the table lists {name}, which is not in the workspace"
        ));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

#[test]
fn the_table_allows_no_cycle() {
    let allowed = allowed();
    // Depth-first from each crate; reaching it again is a cycle.
    fn reaches(
        from: &str,
        to: &str,
        g: &BTreeMap<String, BTreeSet<String>>,
        seen: &mut BTreeSet<String>,
    ) -> bool {
        g.get(from)
            .into_iter()
            .flatten()
            .any(|d| d == to || (seen.insert(d.clone()) && reaches(d, to, g, seen)))
    }
    for name in allowed.keys() {
        assert!(
            !reaches(name, name, &allowed, &mut BTreeSet::new()),
            "{name} can reach itself"
        );
    }
}
