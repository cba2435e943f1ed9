//! DerivedPath (`docs/spec/worker-protocol.md` §2.3): what BuildPaths,
//! BuildPathsWithResults and QueryMissing name.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use unrooted_format::{StoreDir, StorePath};

use crate::error::ProtocolError;
use crate::version::ProtocolVersion;
use crate::wire::{self, decoder::placeholder_path, Decoder, WireContext, MAX_PATH_LEN};

type Result<T> = std::result::Result<T, ProtocolError>;

/// Which outputs of a derivation are wanted.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum OutputsSpec {
    /// All outputs (`drv!*`, or a bare `.drv` before 1.30).
    All,
    /// These outputs (never empty).
    Names(BTreeSet<String>),
}

/// A store path to make valid: as it is, or by building outputs of a derivation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DerivedPath {
    /// The store object itself, substituted if missing (even if it is a `.drv`).
    Opaque(StorePath),
    /// Outputs of a derivation.
    Built {
        /// The derivation.
        drv_path: StorePath,
        /// The wanted outputs.
        outputs: OutputsSpec,
    },
}

fn bad(text: &str, reason: &'static str) -> ProtocolError {
    ProtocolError::InvalidDerivedPath {
        text: text.to_owned(),
        reason,
    }
}

impl DerivedPath {
    /// Parses the syntax of version `v`.
    ///
    /// ≥ 1.30: `path` is opaque; `drv!*` is all outputs; `drv!a,b` names outputs.
    /// < 1.30: a bare `.drv` means all outputs. Nested `drv!out!out2` (dynamic
    /// derivations) is refused.
    pub fn parse(text: &str, dir: &StoreDir, v: ProtocolVersion) -> Result<Self> {
        let Some((drv, outs)) = text.split_once('!') else {
            let path = wire::parse_path(dir, text)?;
            if !v.has_new_derived_path_syntax() && path.is_derivation() {
                return Ok(Self::Built {
                    drv_path: path,
                    outputs: OutputsSpec::All,
                });
            }
            return Ok(Self::Opaque(path));
        };
        let drv_path = wire::parse_path(dir, drv)?;
        if outs.contains('!') {
            return Err(bad(text, "nested derived paths are not supported"));
        }
        let outputs = if outs == "*" {
            OutputsSpec::All
        } else {
            let names: BTreeSet<String> = outs.split(',').map(str::to_owned).collect();
            if names.iter().any(|n| n.is_empty() || n == "*") {
                return Err(bad(text, "empty or invalid output name"));
            }
            OutputsSpec::Names(names)
        };
        Ok(Self::Built { drv_path, outputs })
    }

    /// Prints the syntax of version `v`. Before 1.30 an opaque `.drv` cannot be told
    /// apart from "all outputs" (Nix 2.8 has the same ambiguity); it is printed bare.
    pub fn to_wire_string(&self, dir: &StoreDir, v: ProtocolVersion) -> String {
        match self {
            Self::Opaque(p) => dir.display(p),
            Self::Built {
                drv_path,
                outputs: OutputsSpec::All,
            } if !v.has_new_derived_path_syntax() => dir.display(drv_path),
            Self::Built { drv_path, outputs } => {
                let outs = match outputs {
                    OutputsSpec::All => "*".to_owned(),
                    OutputsSpec::Names(n) => {
                        n.iter().map(String::as_str).collect::<Vec<_>>().join(",")
                    }
                };
                format!("{}!{outs}", dir.display(drv_path))
            }
        }
    }

    /// Writes it as a `str`.
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, cx: &WireContext) -> Result<()> {
        wire::write_bytes(w, self.to_wire_string(&cx.store_dir, cx.version).as_bytes())?;
        Ok(())
    }

    pub(crate) fn decode<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Self> {
        // A derivation path plus a list of output names; the path bound covers it.
        let s = d.string(MAX_PATH_LEN + 4096, "derived path")?;
        let res = Self::parse(&s, &d.cx.store_dir, d.cx.version);
        d.soft(res, || Self::Opaque(placeholder_path()))
    }

    pub(crate) fn decode_list<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Vec<Self>> {
        let n = d.count("derived paths")?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(Self::decode(d)?);
        }
        Ok(out)
    }

    /// Writes a `list<DerivedPath>`.
    pub fn write_list<W: Write + ?Sized>(
        w: &mut W,
        cx: &WireContext,
        paths: &[Self],
    ) -> Result<()> {
        wire::write_u64(w, paths.len() as u64)?;
        for p in paths {
            p.write(w, cx)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DRV: &str = "/nix/store/6f7sr28xsakyb8bk7d4fkq7wh9mwrir2-trivial.drv";

    #[test]
    fn both_syntaxes() {
        let dir = StoreDir::new("/nix/store").unwrap();
        let new = ProtocolVersion::new(1, 30);
        let old = ProtocolVersion::new(1, 29);
        assert!(matches!(
            DerivedPath::parse(DRV, &dir, new).unwrap(),
            DerivedPath::Opaque(_)
        ));
        let all = DerivedPath::parse(DRV, &dir, old).unwrap();
        assert!(matches!(
            &all,
            DerivedPath::Built {
                outputs: OutputsSpec::All,
                ..
            }
        ));
        assert_eq!(all.to_wire_string(&dir, old), DRV);
        assert_eq!(all.to_wire_string(&dir, new), format!("{DRV}!*"));
        let outs = DerivedPath::parse(&format!("{DRV}!out,dev"), &dir, new).unwrap();
        assert_eq!(outs.to_wire_string(&dir, new), format!("{DRV}!dev,out"));
        assert!(DerivedPath::parse(&format!("{DRV}!out!bin"), &dir, new).is_err());
        assert!(DerivedPath::parse(&format!("{DRV}!"), &dir, new).is_err());
        assert!(DerivedPath::parse("/etc/passwd", &dir, new).is_err());
    }
}
