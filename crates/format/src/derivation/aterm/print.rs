//! The printer of the ATerm text: the exact bytes Nix 2.8 writes for a derivation,
//! and the masked form `hashDerivationModulo` hashes.

use std::collections::{BTreeMap, BTreeSet};

use crate::derivation::{Derivation, DerivationOutput};
use crate::store_path::StoreDir;

/// The exact bytes Nix writes for `drv` (`Derivation::unparse`).
pub fn print(drv: &Derivation, dir: &StoreDir) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write(&mut out, drv, dir, false, None);
    out
}

/// The ATerm that hashDerivationModulo hashes: input derivations replaced by
/// `inputs` (hex hash → output names), and with `mask`, every output path and output
/// env value blanked.
pub(crate) fn print_modulo(
    drv: &Derivation,
    dir: &StoreDir,
    mask: bool,
    inputs: &BTreeMap<String, BTreeSet<String>>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    write(&mut out, drv, dir, mask, Some(inputs));
    out
}

fn write(
    out: &mut Vec<u8>,
    drv: &Derivation,
    dir: &StoreDir,
    mask: bool,
    inputs: Option<&BTreeMap<String, BTreeSet<String>>>,
) {
    out.extend_from_slice(b"Derive([");
    for (i, (name, output)) in drv.outputs.iter().enumerate() {
        comma(out, i);
        out.push(b'(');
        raw(out, name.as_bytes());
        out.push(b',');
        let path = match output.path() {
            Some(p) if !mask => dir.display(p),
            _ => String::new(),
        };
        raw(out, path.as_bytes());
        out.push(b',');
        let (algo, hash) = match output {
            DerivationOutput::InputAddressed(_) | DerivationOutput::Deferred => {
                (String::new(), String::new())
            }
            DerivationOutput::Fixed { method, hash, .. } => (
                format!("{}{}", method.prefix(), hash.algo()),
                hash.to_base16(),
            ),
            DerivationOutput::Floating { method, algo } => {
                (format!("{}{algo}", method.prefix()), String::new())
            }
            DerivationOutput::Impure { method, algo } => {
                (format!("{}{algo}", method.prefix()), "impure".to_owned())
            }
        };
        raw(out, algo.as_bytes());
        out.push(b',');
        raw(out, hash.as_bytes());
        out.push(b')');
    }
    out.extend_from_slice(b"],[");
    match inputs {
        Some(inputs) => {
            for (i, (key, names)) in inputs.iter().enumerate() {
                comma(out, i);
                input_drv(out, key, names);
            }
        }
        None => {
            for (i, (path, names)) in drv.input_drvs.iter().enumerate() {
                comma(out, i);
                input_drv(out, &dir.display(path), names);
            }
        }
    }
    out.extend_from_slice(b"],[");
    for (i, path) in drv.input_srcs.iter().enumerate() {
        comma(out, i);
        raw(out, dir.display(path).as_bytes());
    }
    out.extend_from_slice(b"],");
    raw(out, &drv.system);
    out.push(b',');
    escaped(out, &drv.builder);
    out.extend_from_slice(b",[");
    for (i, arg) in drv.args.iter().enumerate() {
        comma(out, i);
        escaped(out, arg);
    }
    out.extend_from_slice(b"],[");
    for (i, (key, value)) in drv.env.iter().enumerate() {
        comma(out, i);
        out.push(b'(');
        escaped(out, key);
        out.push(b',');
        let masked = mask && std::str::from_utf8(key).is_ok_and(|k| drv.outputs.contains_key(k));
        escaped(out, if masked { b"" } else { value });
        out.push(b')');
    }
    out.extend_from_slice(b"])");
}

fn input_drv(out: &mut Vec<u8>, key: &str, names: &BTreeSet<String>) {
    out.push(b'(');
    raw(out, key.as_bytes());
    out.extend_from_slice(b",[");
    for (i, name) in names.iter().enumerate() {
        comma(out, i);
        raw(out, name.as_bytes());
    }
    out.extend_from_slice(b"])");
}

fn comma(out: &mut Vec<u8>, index: usize) {
    if index > 0 {
        out.push(b',');
    }
}

fn raw(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

pub(super) fn escaped(out: &mut Vec<u8>, s: &[u8]) {
    out.push(b'"');
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}
