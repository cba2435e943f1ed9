//! The JSON `nix show-derivation` prints (Nix 2.8), byte for byte.
//!
//! Nix 2.8 writes this with its own streaming JSON writer (`libutil/json.cc`), not a
//! general JSON library, and the bytes follow from it:
//! - pretty-printed, two spaces per level, `"key": value`, empty lists and objects
//!   as `[]` and `{}`, and a newline after the closing brace;
//! - one top-level key per `.drv` path, in store path order;
//! - per derivation the keys `outputs`, `inputSrcs`, `inputDrvs`, `system`, `builder`,
//!   `args`, `env`, in that order;
//! - an output object holds `path` (input-addressed and fixed), `hashAlgo` (fixed,
//!   floating, impure), `hash` (fixed, hex) and `impure: true` (impure); a deferred
//!   output is `{}`;
//! - strings escape `"` `\` LF CR TAB as `\"` `\\` `\n` `\r` `\t`, other bytes below
//!   0x20 as `\u00XX`, and copy every other byte raw, so a non-UTF-8 env value gives
//!   non-UTF-8 output exactly as Nix's does.

use std::collections::BTreeMap;

use super::{Derivation, DerivationOutput};
use crate::store_path::{StoreDir, StorePath};

enum Value {
    Str(Vec<u8>),
    Bool(bool),
    List(Vec<Value>),
    Object(Vec<(Vec<u8>, Value)>),
}

fn s(text: impl Into<Vec<u8>>) -> Value {
    Value::Str(text.into())
}

/// The output of `nix show-derivation` for these derivations, keyed by their `.drv`
/// paths (duplicates collapse, as Nix takes a set of paths).
pub fn show_derivations<'a>(
    dir: &StoreDir,
    drvs: impl IntoIterator<Item = (&'a StorePath, &'a Derivation)>,
) -> Vec<u8> {
    let sorted: BTreeMap<&StorePath, &Derivation> = drvs.into_iter().collect();
    let root = Value::Object(
        sorted
            .into_iter()
            .map(|(path, drv)| (dir.display(path).into_bytes(), derivation(dir, drv)))
            .collect(),
    );
    let mut out = Vec::new();
    write(&mut out, &root, 0);
    out.push(b'\n');
    out
}

fn derivation(dir: &StoreDir, drv: &Derivation) -> Value {
    let outputs = drv
        .outputs
        .iter()
        .map(|(name, o)| (name.clone().into_bytes(), output(dir, o)))
        .collect();
    let input_srcs = drv.input_srcs.iter().map(|p| s(dir.display(p))).collect();
    let input_drvs = drv
        .input_drvs
        .iter()
        .map(|(p, names)| {
            let names = names.iter().map(|n| s(n.as_str())).collect();
            (dir.display(p).into_bytes(), Value::List(names))
        })
        .collect();
    let env = drv
        .env
        .iter()
        .map(|(k, v)| (k.clone(), s(v.clone())))
        .collect();
    Value::Object(vec![
        (b"outputs".to_vec(), Value::Object(outputs)),
        (b"inputSrcs".to_vec(), Value::List(input_srcs)),
        (b"inputDrvs".to_vec(), Value::Object(input_drvs)),
        (b"system".to_vec(), s(drv.system.clone())),
        (b"builder".to_vec(), s(drv.builder.clone())),
        (
            b"args".to_vec(),
            Value::List(drv.args.iter().map(|a| s(a.clone())).collect()),
        ),
        (b"env".to_vec(), Value::Object(env)),
    ])
}

fn output(dir: &StoreDir, o: &DerivationOutput) -> Value {
    let mut attrs = Vec::new();
    match o {
        DerivationOutput::InputAddressed(path) => {
            attrs.push((b"path".to_vec(), s(dir.display(path))));
        }
        DerivationOutput::Fixed { path, method, hash } => {
            attrs.push((b"path".to_vec(), s(dir.display(path))));
            attrs.push((
                b"hashAlgo".to_vec(),
                s(format!("{}{}", method.prefix(), hash.algo())),
            ));
            attrs.push((b"hash".to_vec(), s(hash.to_base16())));
        }
        DerivationOutput::Floating { method, algo } => {
            attrs.push((
                b"hashAlgo".to_vec(),
                s(format!("{}{algo}", method.prefix())),
            ));
        }
        DerivationOutput::Deferred => {}
        DerivationOutput::Impure { method, algo } => {
            attrs.push((
                b"hashAlgo".to_vec(),
                s(format!("{}{algo}", method.prefix())),
            ));
            attrs.push((b"impure".to_vec(), Value::Bool(true)));
        }
    }
    Value::Object(attrs)
}

fn indent(out: &mut Vec<u8>, level: usize) {
    out.push(b'\n');
    out.resize(out.len() + 2 * level, b' ');
}

fn write(out: &mut Vec<u8>, value: &Value, level: usize) {
    match value {
        Value::Str(text) => string(out, text),
        Value::Bool(b) => out.extend_from_slice(if *b { b"true" } else { b"false" }),
        Value::List(items) if items.is_empty() => out.extend_from_slice(b"[]"),
        Value::Object(attrs) if attrs.is_empty() => out.extend_from_slice(b"{}"),
        Value::List(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                indent(out, level + 1);
                write(out, item, level + 1);
            }
            indent(out, level);
            out.push(b']');
        }
        Value::Object(attrs) => {
            out.push(b'{');
            for (i, (key, item)) in attrs.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                indent(out, level + 1);
                string(out, key);
                out.extend_from_slice(b": ");
                write(out, item, level + 1);
            }
            indent(out, level);
            out.push(b'}');
        }
    }
}

fn string(out: &mut Vec<u8>, text: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in text {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=0x1f => {
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
            _ => out.push(b),
        }
    }
    out.push(b'"');
}
