//! `exportReferencesGraph`, as Nix 2.8 gives it to a builder: the closure of named
//! input paths (and of the outputs of the derivations in it), either as a file in the
//! build directory in the format of `nix-store --register-validity` without hashes
//! and derivers (`exportReferencesGraph = [ name path … ]`), or, with structured
//! attributes, as a JSON list in `.attrs.json` under each key of the
//! `exportReferencesGraph` object (`path`, `narHash`, `narSize`, `references`, `ca`
//! when there is one, `closureSize`).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Value};
use thiserror::Error;
use unrooted_format::derivation::Derivation;
use unrooted_format::StorePath;
use unrooted_store::{LocalStore, StoreError};

use crate::goal::{load_derivation, output_paths};

/// Why the graph could not be exported; the messages are Nix 2.8's.
#[derive(Debug, Error)]
pub enum ExportGraphError {
    /// The list is not of pairs.
    #[error("odd number of tokens in 'exportReferencesGraph': '{0}'")]
    OddTokens(String),
    /// A file name that could escape the build directory or is not a plain name.
    #[error("invalid file name '{0}' in 'exportReferencesGraph'")]
    FileName(String),
    /// Not a path in the store.
    #[error("'exportReferencesGraph' contains a non-store path '{0}'")]
    NotInStore(String),
    /// A path outside the inputs of the derivation.
    #[error("cannot export references of path '{0}' because it is not in the input closure of the derivation")]
    NotInput(String),
    /// The store could not answer.
    #[error("exporting the references graph")]
    Store(#[from] StoreError),
    /// A derivation in the graph could not be read.
    #[error("exporting the references graph")]
    Derivation(#[source] Box<crate::BuildError>),
}

/// What a builder gets: files for its build directory and keys for `.attrs.json`.
#[derive(Debug, Default)]
pub(crate) struct ExportedGraph {
    pub files: Vec<(String, Vec<u8>)>,
    pub attrs: Vec<(String, Value)>,
}

/// Nix's `[A-Za-z_][A-Za-z0-9_.-]*`.
fn valid_file_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// The closure of `roots` plus the closures of the outputs of every derivation in it
/// (Nix's `Store::exportReferences`); each root must be among `inputs`.
fn export_references(
    store: &LocalStore,
    roots: &BTreeSet<StorePath>,
    inputs: &BTreeSet<StorePath>,
) -> Result<BTreeSet<StorePath>, ExportGraphError> {
    if let Some(p) = roots.iter().find(|p| !inputs.contains(*p)) {
        return Err(ExportGraphError::NotInput(store.print_path(p)));
    }
    let mut paths = store.query_closure(roots)?;
    let mut outputs = BTreeSet::new();
    for p in paths.iter().filter(|p| p.is_derivation()) {
        let drv =
            load_derivation(store, p).map_err(|e| ExportGraphError::Derivation(Box::new(e)))?;
        let outs =
            output_paths(store, p, &drv).map_err(|e| ExportGraphError::Derivation(Box::new(e)))?;
        outputs.extend(outs.into_values());
    }
    paths.extend(store.query_closure(&outputs)?);
    Ok(paths)
}

/// The `exportReferencesGraph` of `drv`, whose input closure is `inputs`.
pub(crate) fn export_references_graph(
    store: &LocalStore,
    drv: &Derivation,
    inputs: &BTreeSet<StorePath>,
) -> Result<ExportedGraph, ExportGraphError> {
    let mut out = ExportedGraph::default();
    if let Some(json) = drv.structured_attrs_json() {
        let Ok(json) = json else { return Ok(out) };
        let Some(Value::Object(graph)) = json.get("exportReferencesGraph") else {
            return Ok(out);
        };
        for (key, value) in graph {
            let items: Vec<&Value> = match value {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            let mut roots = BTreeSet::new();
            for item in items {
                let text = item.as_str().unwrap_or_default();
                let path = store
                    .store_dir()
                    .parse_path(text)
                    .map_err(|_| ExportGraphError::NotInStore(text.to_owned()))?;
                roots.insert(path);
            }
            let paths = export_references(store, &roots, inputs)?;
            out.attrs
                .push((key.clone(), path_info_json(store, &paths)?));
        }
        return Ok(out);
    }
    let Some(spec) = drv.env.get(b"exportReferencesGraph".as_slice()) else {
        return Ok(out);
    };
    let spec = String::from_utf8_lossy(spec);
    let tokens: Vec<&str> = spec.split_ascii_whitespace().collect();
    if !tokens.len().is_multiple_of(2) {
        return Err(ExportGraphError::OddTokens(spec.into_owned()));
    }
    for pair in tokens.chunks(2) {
        let (name, path) = (pair[0], pair[1]);
        if !valid_file_name(name) {
            return Err(ExportGraphError::FileName(name.to_owned()));
        }
        let (root, _) = store
            .store_dir()
            .parse_path_prefix(path)
            .map_err(|_| ExportGraphError::NotInStore(path.to_owned()))?;
        let paths = export_references(store, &BTreeSet::from([root]), inputs)?;
        out.files
            .push((name.to_owned(), validity_registration(store, &paths)?));
    }
    Ok(out)
}

/// Nix's `makeValidityRegistration(paths, false, false)`: per path its name, an
/// empty deriver line, the number of references and each reference.
fn validity_registration(
    store: &LocalStore,
    paths: &BTreeSet<StorePath>,
) -> Result<Vec<u8>, ExportGraphError> {
    let mut s = String::new();
    for p in paths {
        let refs = store.query_references(p)?;
        s.push_str(&store.print_path(p));
        s.push_str("\n\n");
        s.push_str(&format!("{}\n", refs.len()));
        for r in refs {
            s.push_str(&store.print_path(&r));
            s.push('\n');
        }
    }
    Ok(s.into_bytes())
}

/// Nix's `pathInfoToJSON(paths, false, true)`.
fn path_info_json(
    store: &LocalStore,
    paths: &BTreeSet<StorePath>,
) -> Result<Value, ExportGraphError> {
    let mut sizes: BTreeMap<StorePath, u64> = BTreeMap::new();
    let mut list = Vec::new();
    for p in paths {
        let Some(info) = store.query_path_info(p)? else {
            list.push(json!({"path": store.print_path(p), "valid": false}));
            continue;
        };
        let closure = store.query_closure(&BTreeSet::from([p.clone()]))?;
        let mut closure_size = 0u64;
        for q in &closure {
            let size = match sizes.get(q) {
                Some(s) => *s,
                None => {
                    let s = store.query_path_info(q)?.map_or(0, |i| i.nar_size);
                    sizes.insert(q.clone(), s);
                    s
                }
            };
            closure_size = closure_size.saturating_add(size);
        }
        let mut entry = serde_json::Map::new();
        entry.insert("path".into(), store.print_path(p).into());
        entry.insert("narHash".into(), info.nar_hash.to_prefixed_base32().into());
        entry.insert("narSize".into(), info.nar_size.into());
        entry.insert(
            "references".into(),
            info.references
                .iter()
                .map(|r| Value::from(store.print_path(r)))
                .collect::<Vec<_>>()
                .into(),
        );
        if let Some(ca) = &info.ca {
            entry.insert("ca".into(), ca.to_string().into());
        }
        entry.insert("closureSize".into(), closure_size.into());
        list.push(Value::Object(entry));
    }
    Ok(Value::Array(list))
}

#[cfg(test)]
mod tests {
    use super::valid_file_name;

    #[test]
    fn export_graph_file_names_are_nix_plain_names() {
        for ok in ["refs", "_x", "a.b-c_1"] {
            assert!(valid_file_name(ok), "{ok}");
        }
        for bad in ["", "1refs", "../x", "a/b", ".attrs.json", "-x"] {
            assert!(!valid_file_name(bad), "{bad}");
        }
    }
}
