//! The builder's environment and the files written into its build directory
//! (`docs/spec/sandbox.md` §3), as a pure function of the derivation.
//!
//! Start from nothing; `PATH=/path-not-set`, `HOME=/homeless-shelter`, `NIX_STORE`,
//! `NIX_BUILD_CORES`; then every env entry of the derivation, except that a key listed
//! in `passAsFile` is written to `<build dir>/.attr-<base32(sha256(key))>` and
//! `<key>Path` names that file instead; then `NIX_BUILD_TOP`, `TMPDIR`, `TEMPDIR`, `TMP`,
//! `TEMP` and `PWD` (the build directory as the builder sees it, overriding any
//! same-named derivation entry); for fixed-output derivations `NIX_OUTPUT_CHECKED=1`
//! and each `impureEnvVars` name from the daemon's environment; `NIX_LOG_FD=2` and
//! `TERM=xterm-256color`. With structured attributes no derivation entry is copied:
//! `.attrs.json` (the `__json` object with `outputs` turned into `{name: path}`) and
//! `.attrs.sh` are written instead and `NIX_ATTRS_JSON_FILE`/`NIX_ATTRS_SH_FILE` name
//! them by their in-sandbox paths (what newer Nix does; 2.8 leaked the host path).
//! Finally every `hashPlaceholder(output)` in values, arguments and written files is
//! replaced by the output's path.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::Path;

use serde_json::Value;
use unrooted_format::derivation::{hash_placeholder, Derivation};
use unrooted_format::{base32, hash::sha256, StoreDir, StorePath};

use crate::error::BuildError;

/// What the environment depends on besides the derivation.
#[derive(Clone, Copy)]
pub struct EnvParams<'a> {
    /// The store directory as the builder sees it.
    pub store_dir: &'a StoreDir,
    /// The build directory as the builder sees it (`/build` in the sandbox).
    pub build_dir: &'a Path,
    /// `NIX_BUILD_CORES`.
    pub cores: u32,
    /// The output paths, by output name.
    pub outputs: &'a BTreeMap<String, StorePath>,
    /// Looks up an `impureEnvVars` name in the daemon's environment.
    pub impure_env: &'a dyn Fn(&str) -> Option<String>,
    /// Keys added to `.attrs.json` (the structured `exportReferencesGraph`).
    pub extra_attrs: &'a [(String, Value)],
}

/// The environment, arguments and build-directory files of one build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuilderEnv {
    /// The complete environment, one entry per name, sorted by name.
    pub env: Vec<(OsString, OsString)>,
    /// The builder's arguments after argv\[0\], placeholders rewritten.
    pub args: Vec<OsString>,
    /// Files to create in the build directory: name and contents.
    pub files: Vec<(String, Vec<u8>)>,
}

/// The name of the file holding a `passAsFile` attribute: `.attr-<base32(sha256(key))>`.
pub fn pass_as_file_name(key: &[u8]) -> String {
    format!(".attr-{}", base32::encode(&sha256(key)))
}

/// Replaces each `(from, to)` occurrence, left to right without overlaps (Nix's
/// `rewriteStrings`).
pub(crate) fn rewrite(data: &[u8], rewrites: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let mut out = data.to_vec();
    for (from, to) in rewrites {
        if from.is_empty() || out.len() < from.len() {
            continue;
        }
        let mut next = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(from) {
                next.extend_from_slice(to);
                i += from.len();
            } else {
                next.push(out[i]);
                i += 1;
            }
        }
        out = next;
    }
    out
}

/// Computes the environment of `drv` (see the module documentation).
pub fn builder_env(drv: &Derivation, p: &EnvParams<'_>) -> Result<BuilderEnv, BuildError> {
    let rewrites: Vec<(Vec<u8>, Vec<u8>)> = p
        .outputs
        .iter()
        .map(|(name, path)| {
            (
                hash_placeholder(name).into_bytes(),
                p.store_dir.display(path).into_bytes(),
            )
        })
        .collect();
    let build_dir = p.build_dir.as_os_str().as_encoded_bytes().to_vec();
    let mut env: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    let mut files = Vec::new();
    env.insert(b"PATH".to_vec(), b"/path-not-set".to_vec());
    env.insert(b"HOME".to_vec(), b"/homeless-shelter".to_vec());
    env.insert(
        b"NIX_STORE".to_vec(),
        p.store_dir.as_str().as_bytes().to_vec(),
    );
    env.insert(
        b"NIX_BUILD_CORES".to_vec(),
        p.cores.to_string().into_bytes(),
    );
    let structured = drv.structured_attrs().is_some();
    if !structured {
        derivation_vars(drv, &build_dir, &rewrites, &mut env, &mut files);
    }
    for var in ["NIX_BUILD_TOP", "TMPDIR", "TEMPDIR", "TMP", "TEMP", "PWD"] {
        env.insert(var.as_bytes().to_vec(), build_dir.clone());
    }
    let fixed = drv.outputs.values().any(|o| {
        matches!(
            o,
            unrooted_format::derivation::DerivationOutput::Fixed { .. }
        )
    });
    let impure = drv.outputs.values().any(|o| {
        matches!(
            o,
            unrooted_format::derivation::DerivationOutput::Impure { .. }
        )
    });
    if fixed {
        env.insert(b"NIX_OUTPUT_CHECKED".to_vec(), b"1".to_vec());
    }
    // Derivations that are not sandboxed (fixed-output and impure ones) get these.
    if fixed || impure {
        for name in impure_env_vars(drv)? {
            let value = (p.impure_env)(&name).unwrap_or_default();
            env.insert(name.into_bytes(), value.into_bytes());
        }
    }
    env.insert(b"NIX_LOG_FD".to_vec(), b"2".to_vec());
    env.insert(b"TERM".to_vec(), b"xterm-256color".to_vec());
    if structured {
        structured_attrs_files(drv, p, &build_dir, &rewrites, &mut env, &mut files)?;
    }
    let env = env
        .into_iter()
        .map(|(k, v)| {
            (
                OsString::from_vec(k),
                OsString::from_vec(rewrite(&v, &rewrites)),
            )
        })
        .collect();
    let args = drv
        .args
        .iter()
        .map(|a| OsString::from_vec(rewrite(a, &rewrites)))
        .collect();
    Ok(BuilderEnv { env, args, files })
}

/// `<build dir>/<name>`.
fn in_build_dir(build_dir: &[u8], name: &str) -> Vec<u8> {
    let mut v = build_dir.to_vec();
    v.push(b'/');
    v.extend_from_slice(name.as_bytes());
    v
}

/// Without structured attributes: the derivation's variables, those named by
/// `passAsFile` as files in the build directory (`<name>Path` naming each).
fn derivation_vars(
    drv: &Derivation,
    build_dir: &[u8],
    rewrites: &[(Vec<u8>, Vec<u8>)],
    env: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    files: &mut Vec<(String, Vec<u8>)>,
) {
    let pass_as_file: Vec<&[u8]> = drv
        .env
        .get(b"passAsFile".as_slice())
        .map(|v| {
            v.split(|b| b.is_ascii_whitespace())
                .filter(|w| !w.is_empty())
                .collect()
        })
        .unwrap_or_default();
    for (key, value) in &drv.env {
        if pass_as_file.contains(&key.as_slice()) {
            let name = pass_as_file_name(key);
            files.push((name.clone(), rewrite(value, rewrites)));
            let mut var = key.clone();
            var.extend_from_slice(b"Path");
            env.insert(var, in_build_dir(build_dir, &name));
        } else {
            env.insert(key.clone(), value.clone());
        }
    }
}

/// With structured attributes: `.attrs.json` and `.attrs.sh` in the build directory,
/// and the variables naming them.
fn structured_attrs_files(
    drv: &Derivation,
    p: &EnvParams<'_>,
    build_dir: &[u8],
    rewrites: &[(Vec<u8>, Vec<u8>)],
    env: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    files: &mut Vec<(String, Vec<u8>)>,
) -> Result<(), BuildError> {
    let json = attrs_json(drv, p)?;
    let text = serde_json::to_string(&json).map_err(|e| BuildError::StructuredAttrs {
        drv: drv.name.clone(),
        reason: e.to_string(),
    })?;
    files.push((".attrs.json".to_owned(), rewrite(text.as_bytes(), rewrites)));
    files.push((
        ".attrs.sh".to_owned(),
        rewrite(attrs_sh(&json).as_bytes(), rewrites),
    ));
    env.insert(
        b"NIX_ATTRS_JSON_FILE".to_vec(),
        in_build_dir(build_dir, ".attrs.json"),
    );
    env.insert(
        b"NIX_ATTRS_SH_FILE".to_vec(),
        in_build_dir(build_dir, ".attrs.sh"),
    );
    Ok(())
}

/// The `impureEnvVars` names (structured: a list in `__json`; otherwise words).
fn impure_env_vars(drv: &Derivation) -> Result<Vec<String>, BuildError> {
    if let Some(json) = drv.structured_attrs_json() {
        let json = json.map_err(|e| BuildError::StructuredAttrs {
            drv: drv.name.clone(),
            reason: e.to_string(),
        })?;
        return Ok(match json.get("impureEnvVars") {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            _ => Vec::new(),
        });
    }
    Ok(drv
        .env
        .get(b"impureEnvVars".as_slice())
        .map(|v| {
            String::from_utf8_lossy(v)
                .split_ascii_whitespace()
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default())
}

/// The `.attrs.json` object: `__json` with `outputs` as `{name: placeholder}` (the
/// placeholders are rewritten to paths with everything else).
fn attrs_json(drv: &Derivation, p: &EnvParams<'_>) -> Result<Value, BuildError> {
    let mut json = match drv.structured_attrs_json() {
        Some(Ok(j)) => j,
        Some(Err(e)) => {
            return Err(BuildError::StructuredAttrs {
                drv: drv.name.clone(),
                reason: e.to_string(),
            })
        }
        None => serde_json::Map::new(),
    };
    let mut outputs = serde_json::Map::new();
    for name in p.outputs.keys() {
        outputs.insert(name.clone(), Value::String(hash_placeholder(name)));
    }
    json.insert("outputs".to_owned(), Value::Object(outputs));
    for (key, value) in p.extra_attrs {
        json.insert(key.clone(), value.clone());
    }
    // serde_json may keep insertion order; nlohmann (Nix) sorts keys.
    Ok(sorted(Value::Object(json)))
}

fn sorted(v: Value) -> Value {
    match v {
        Value::Object(m) => {
            let mut entries: Vec<(String, Value)> = m.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(entries.into_iter().map(|(k, v)| (k, sorted(v))).collect())
        }
        Value::Array(a) => Value::Array(a.into_iter().map(sorted).collect()),
        other => other,
    }
}

/// Single-quotes for the shell (`'` → `'\''`).
fn shell_escape(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn is_shell_name(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// A scalar as `.attrs.sh` writes it, or `None` for what it leaves out.
fn sh_scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(shell_escape(s)),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(i.to_string())
            } else if let Some(u) = n.as_u64() {
                Some(u.to_string())
            } else {
                // Nix prints integral floats as integers and omits the rest.
                let f = n.as_f64()?;
                (f.ceil() == f && f.abs() < 2f64.powi(31)).then(|| (f as i64).to_string())
            }
        }
        Value::Null => Some("''".to_owned()),
        Value::Bool(b) => Some(if *b { "1" } else { "" }.to_owned()),
        _ => None,
    }
}

/// `.attrs.sh`: one `declare` per top-level key that is a shell identifier (Nix's
/// `writeStructuredAttrsShell`).
pub fn attrs_sh(json: &Value) -> String {
    let mut out = String::new();
    let Value::Object(map) = json else {
        return out;
    };
    for (key, value) in map {
        if !is_shell_name(key) {
            continue;
        }
        if let Some(s) = sh_scalar(value) {
            out.push_str(&format!("declare {key}={s}\n"));
        } else if let Value::Array(items) = value {
            let parts: Option<Vec<String>> = items.iter().map(sh_scalar).collect();
            if let Some(parts) = parts {
                let body: String = parts.iter().map(|p| format!("{p} ")).collect();
                out.push_str(&format!("declare -a {key}=({body})\n"));
            }
        } else if let Value::Object(items) = value {
            let parts: Option<Vec<String>> = items
                .iter()
                .map(|(k, v)| sh_scalar(v).map(|s| format!("[{}]={s} ", shell_escape(k))))
                .collect();
            if let Some(parts) = parts {
                out.push_str(&format!("declare -A {key}=({})\n", parts.concat()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use unrooted_format::derivation::DerivationOutput;

    fn dir() -> StoreDir {
        StoreDir::new("/nix/store").unwrap()
    }

    fn probe() -> (Derivation, BTreeMap<String, StorePath>) {
        let out = StorePath::from_base_name("a632zdfmmd8b63frvi5mci9ngss9k2rx-probe").unwrap();
        let mut env = BTreeMap::new();
        for (k, v) in [
            ("big", "lots of data"),
            ("builder", "/bin/sh"),
            ("name", "probe"),
            ("out", "/nix/store/a632zdfmmd8b63frvi5mci9ngss9k2rx-probe"),
            ("passAsFile", "big"),
            ("system", "x86_64-linux"),
        ] {
            env.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec());
        }
        let drv = Derivation {
            name: "probe".into(),
            outputs: [(
                "out".to_owned(),
                DerivationOutput::InputAddressed(out.clone()),
            )]
            .into_iter()
            .collect(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            system: b"x86_64-linux".to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![b"-c".to_vec(), b"env".to_vec()],
            env,
        };
        (drv, [("out".to_owned(), out)].into_iter().collect())
    }

    fn render(env: &[(OsString, OsString)]) -> String {
        env.iter()
            .map(|(k, v)| format!("{}={}\n", k.to_string_lossy(), v.to_string_lossy()))
            .collect()
    }

    /// V26 and V29 (`docs/spec/store-formats.md` §8, `docs/spec/sandbox.md` §3.1–§3.2):
    /// `env | sort` in the sandbox, minus `SHLVL`
    /// (which the shell adds).
    #[test]
    fn sandbox_env_is_v29_byte_for_byte() {
        let (drv, outputs) = probe();
        let d = dir();
        let none = |_: &str| None;
        let e = builder_env(
            &drv,
            &EnvParams {
                store_dir: &d,
                build_dir: Path::new("/build"),
                cores: 2,
                outputs: &outputs,
                impure_env: &none,
                extra_attrs: &[],
            },
        )
        .unwrap();
        assert_eq!(
            render(&e.env),
            "HOME=/homeless-shelter\n\
             NIX_BUILD_CORES=2\n\
             NIX_BUILD_TOP=/build\n\
             NIX_LOG_FD=2\n\
             NIX_STORE=/nix/store\n\
             PATH=/path-not-set\n\
             PWD=/build\n\
             TEMP=/build\n\
             TEMPDIR=/build\n\
             TERM=xterm-256color\n\
             TMP=/build\n\
             TMPDIR=/build\n\
             bigPath=/build/.attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a\n\
             builder=/bin/sh\n\
             name=probe\n\
             out=/nix/store/a632zdfmmd8b63frvi5mci9ngss9k2rx-probe\n\
             passAsFile=big\n\
             system=x86_64-linux\n"
        );
        assert_eq!(
            e.files,
            vec![(
                ".attr-1lak0mvllw8rv9i9ygkglvhqsq19qi9ynl4bi7gbf69ab5nzw89a".to_owned(),
                b"lots of data".to_vec()
            )]
        );
        assert_eq!(e.args, ["-c", "env"]);
    }

    #[test]
    fn fixed_output_gets_checked_flag_and_impure_vars_and_build_vars_win() {
        let (mut drv, outputs) = probe();
        let out = outputs["out"].clone();
        drv.outputs.insert(
            "out".into(),
            DerivationOutput::Fixed {
                path: out,
                method: unrooted_format::FileIngestionMethod::Flat,
                hash: unrooted_format::Hash::sha256([0; 32]),
            },
        );
        drv.env
            .insert(b"impureEnvVars".to_vec(), b"http_proxy UNSET".to_vec());
        drv.env.insert(b"TMPDIR".to_vec(), b"/elsewhere".to_vec());
        let d = dir();
        let lookup = |k: &str| (k == "http_proxy").then(|| "http://proxy:3128".to_owned());
        let e = builder_env(
            &drv,
            &EnvParams {
                store_dir: &d,
                build_dir: Path::new("/tmp/nix-build-probe.drv-0"),
                cores: 4,
                outputs: &outputs,
                impure_env: &lookup,
                extra_attrs: &[],
            },
        )
        .unwrap();
        let text = render(&e.env);
        assert!(text.contains("NIX_OUTPUT_CHECKED=1\n"));
        assert!(text.contains("http_proxy=http://proxy:3128\n"));
        assert!(text.contains("UNSET=\n"));
        assert!(text.contains("TMPDIR=/tmp/nix-build-probe.drv-0\n"));
        assert!(!text.contains("/elsewhere"));
    }

    /// V21's derivation: `__json` becomes `.attrs.json` with `outputs` as an object,
    /// `.attrs.sh` declares the shell-compatible keys, and no drv entry is copied.
    #[test]
    fn structured_attrs_files_and_placeholders() {
        let out = StorePath::from_base_name("i47kryvzhvibv8hbazqcjjhlpgsyi7jf-sa").unwrap();
        let mut env = BTreeMap::new();
        env.insert(
            b"__json".to_vec(),
            br#"{"builder":"/bin/sh","list":[1,"two",true,null],"name":"sa","self":"/1rz4g4znpzjwh1xymhjpm42vipw92pr73vdgl6xs1hycac8kf2n9/x","system":"x86_64-linux","nested":{"a":[1]},"it's":1}"#
                .to_vec(),
        );
        env.insert(
            b"out".to_vec(),
            b"/nix/store/i47kryvzhvibv8hbazqcjjhlpgsyi7jf-sa".to_vec(),
        );
        let drv = Derivation {
            name: "sa".into(),
            outputs: [(
                "out".to_owned(),
                DerivationOutput::InputAddressed(out.clone()),
            )]
            .into_iter()
            .collect(),
            input_drvs: BTreeMap::new(),
            input_srcs: BTreeSet::new(),
            system: b"x86_64-linux".to_vec(),
            builder: b"/bin/sh".to_vec(),
            args: vec![b"-c".to_vec(), b"true".to_vec()],
            env,
        };
        let outputs: BTreeMap<String, StorePath> = [("out".to_owned(), out)].into_iter().collect();
        let d = dir();
        let none = |_: &str| None;
        let e = builder_env(
            &drv,
            &EnvParams {
                store_dir: &d,
                build_dir: Path::new("/build"),
                cores: 1,
                outputs: &outputs,
                impure_env: &none,
                extra_attrs: &[],
            },
        )
        .unwrap();
        let text = render(&e.env);
        assert!(!text.contains("__json"));
        assert!(!text.contains("\nout="));
        assert!(text.contains("NIX_ATTRS_JSON_FILE=/build/.attrs.json\n"));
        assert!(text.contains("NIX_ATTRS_SH_FILE=/build/.attrs.sh\n"));
        let files: BTreeMap<_, _> = e.files.into_iter().collect();
        assert_eq!(
            String::from_utf8(files[".attrs.json"].clone()).unwrap(),
            r#"{"builder":"/bin/sh","it's":1,"list":[1,"two",true,null],"name":"sa","nested":{"a":[1]},"outputs":{"out":"/nix/store/i47kryvzhvibv8hbazqcjjhlpgsyi7jf-sa"},"self":"/nix/store/i47kryvzhvibv8hbazqcjjhlpgsyi7jf-sa/x","system":"x86_64-linux"}"#
        );
        assert_eq!(
            String::from_utf8(files[".attrs.sh"].clone()).unwrap(),
            "declare builder='/bin/sh'\n\
             declare -a list=(1 'two' 1 '' )\n\
             declare name='sa'\n\
             declare -A outputs=(['out']='/nix/store/i47kryvzhvibv8hbazqcjjhlpgsyi7jf-sa' )\n\
             declare self='/nix/store/i47kryvzhvibv8hbazqcjjhlpgsyi7jf-sa/x'\n\
             declare system='x86_64-linux'\n"
        );
    }

    #[test]
    fn shell_escape_quotes() {
        assert_eq!(shell_escape("it's"), r"'it'\''s'");
        assert_eq!(
            attrs_sh(&serde_json::json!({"f": false, "x": 1.5, "y": 2.0})),
            "declare f=\ndeclare y=2\n"
        );
    }
}
