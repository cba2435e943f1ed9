//! Live comparison with the real Nix 2.8: `nix-instantiate` writes derivations into a
//! private store (whose directory is not `/nix/store`, so the explicit store dir is
//! exercised), and for each one we check that
//! - parsing and printing gives back the file byte for byte,
//! - the computed `.drv` path is the one Nix chose,
//! - the output paths recompute (also from a template with deferred outputs, the way
//!   `derivationStrict` fills them in),
//! - `unrooted drv show` prints the bytes `nix show-derivation` prints, and
//! - `unrooted drv outputs` accepts it and prints Nix's output paths.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use unrooted_format::derivation::{
    name_from_drv_path, Derivation, DerivationOutput, DerivationType, DrvHasher,
};
use unrooted_format::{StoreDir, StorePath};
use unrooted_testkit::{expect_success, nix_tool, NixEnv};

/// Each attribute is instantiated on its own; `deps`-style attributes pull their
/// inputs in. Covers dependencies, fixed outputs in every method/algorithm and
/// spelling, several outputs, escaping, non-UTF-8 bytes, structured attrs,
/// passAsFile and content-addressed derivations.
const EXPR: &str = r#"
let
  sys = "x86_64-linux";
  mk = a: derivation ({ system = sys; builder = "/bin/sh"; args = [ "-c" "echo > $out" ]; } // a);
  src = builtins.toFile "builder.sh" "echo hello > $out\n";
in rec {
  simple = mk { name = "simple"; };
  withSrc = mk { name = "with-src"; args = [ "-e" src ]; };
  multi = mk { name = "multi"; outputs = [ "out" "dev" "lib" "bin" ]; };
  chain1 = mk { name = "chain1"; x = "${simple}"; };
  chain2 = mk { name = "chain2"; x = "${chain1} ${multi.lib} ${multi.dev}"; y = "${fodFlatSha1}"; };
  chain3 = mk { name = "chain3"; x = "${chain2} ${multi} ${fodRecSha512} ${withSrc}"; };
  fodFlatSha256 = mk { name = "fod-flat-sha256"; outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03"; };
  fodFlatSha1 = mk { name = "fod-flat-sha1"; outputHashAlgo = "sha1";
    outputHash = "iwjz551fyw0cxcjgf4l6c879zabd6wpm"; };
  fodFlatSha512Sri = mk { name = "fod-flat-sha512"; outputHash = "sha512-z4PhNX7vuL3xVChQ1m2AB9Yg5AULVxXcg/SpIdNs6c5H0NE8XYXysP+DGNKHfuwvY7kxvUdBeoGlODJ6+SfaPg=="; };
  fodRecSha256Sri = mk { name = "fod-rec-sha256"; outputHashMode = "recursive";
    outputHash = "sha256-HDfQGvQL4ugGkd48w99EN3ppmvuxfGjwgJZLL9Bx/BM="; };
  fodRecSha1 = mk { name = "fod-rec-sha1"; outputHashMode = "recursive"; outputHashAlgo = "sha1";
    outputHash = "80d355fd8862184900faeec3a1dabb5fb5d4bdb9"; };
  fodRecSha512 = mk { name = "fod-rec-sha512"; outputHashMode = "recursive";
    outputHash = "sha512:adefd3dd0d71bc2377926ae55fd55d67184894a42bd43b9fd86571e4e02d2496312d3d958d74a80316508413c3f68d3a4ea3a62355a4e42e6977751545023857"; };
  onFod = mk { name = "on-fod"; x = "${fodFlatSha256} ${fodRecSha256Sri} ${fodFlatSha512Sri} ${fodRecSha1}"; };
  escapes = mk {
    name = "escapes";
    builder = "/bin/sh \"quoted\" \\ back";
    args = [ "-c" "printf 'a\tb\r\n' $out" "\"\\\n\t\r$$ \${x}" "é 日本 ✓" "" ];
    weird = "quote\" backslash\\ newline\n tab\t cr\r dollar$ end ü";
    "key with \"quote\"" = "v";
    "multi\nline" = "x";
    empty = "";
    bool = true;
    list = [ 1 "two" null false ];
  };
  bytes = mk { name = "bytes"; raw = builtins.readFile ./bytes.dat; };
  structured = mk {
    name = "structured"; __structuredAttrs = true; outputs = [ "out" "doc" ];
    list = [ 1 "two" true null 1.5 ]; nested = { a.b = [ "c" ]; s = "q\"\\\n\t"; }; dep = simple;
  };
  passAsFile = mk { name = "pass-as-file"; passAsFile = [ "big" "other" ]; big = "lots\nof\ttext"; other = "x"; };
  ca = mk { name = "ca"; __contentAddressed = true; outputHashMode = "recursive"; outputHashAlgo = "sha256"; };
  caMulti = mk { name = "ca-multi"; __contentAddressed = true; outputs = [ "out" "dev" ]; };
  caFlatSha1 = mk { name = "ca-flat"; __contentAddressed = true; outputHashMode = "flat"; outputHashAlgo = "sha1"; };
  iaOnCa = mk { name = "ia-on-ca"; x = "${ca} ${caMulti.dev}"; };
  iaOnIaOnCa = mk { name = "ia-on-ia-on-ca"; x = "${iaOnCa} ${simple}"; };
}
"#;

/// Bytes Nix copies raw into the `.drv` and its JSON: controls, DEL, invalid UTF-8.
const BYTES_DAT: &[u8] = b"ctl\x01\x02\x1f del\x7f high\xff\xfe utf8\xc3\xa9 quote\" bs\\ nl\n";

const ATTRS: &[&str] = &[
    "simple",
    "withSrc",
    "multi",
    "chain1",
    "chain2",
    "chain3",
    "fodFlatSha256",
    "fodFlatSha1",
    "fodFlatSha512Sri",
    "fodRecSha256Sri",
    "fodRecSha1",
    "fodRecSha512",
    "onFod",
    "escapes",
    "bytes",
    "structured",
    "passAsFile",
    "ca",
    "caMulti",
    "caFlatSha1",
    "iaOnCa",
    "iaOnIaOnCa",
];

fn load_from(dir: &StoreDir) -> impl FnMut(&StorePath) -> Result<Derivation, std::io::Error> + '_ {
    move |p: &StorePath| {
        let bytes = fs::read(dir.display(p))?;
        Derivation::parse(dir, &bytes, name_from_drv_path(p).unwrap_or_default())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
    }
}

#[test]
fn nix_instantiate_agrees() {
    let Some(instantiate) = nix_tool("nix-instantiate") else {
        return;
    };
    let Some(nix) = nix_tool("nix") else { return };
    let env = NixEnv::new();
    let expr = env.root().join("drvs.nix");
    fs::write(&expr, EXPR).unwrap();
    fs::write(env.root().join("bytes.dat"), BYTES_DAT).unwrap();
    let dir = StoreDir::new(env.store_dir().to_str().unwrap()).unwrap();
    assert_ne!(dir.as_str(), "/nix/store");

    let mut drv_paths: BTreeMap<&str, String> = BTreeMap::new();
    for attr in ATTRS {
        let out = env
            .command(&instantiate)
            .args([
                "--extra-experimental-features",
                "ca-derivations",
                "-A",
                attr,
            ])
            .arg(&expr)
            .output()
            .unwrap();
        expect_success(&format!("nix-instantiate -A {attr}"), &out);
        let path = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        drv_paths.insert(attr, path);
    }

    let mut hasher = DrvHasher::new(dir.clone(), load_from(&dir));
    let mut checked = 0;
    for (attr, path) in &drv_paths {
        let bytes = fs::read(path).unwrap();
        let store_path = dir.parse_path(path).unwrap();
        let name = name_from_drv_path(&store_path).unwrap();
        let drv = Derivation::parse(&dir, &bytes, name)
            .unwrap_or_else(|e| panic!("{attr}: parsing {path}: {e}"));
        assert_eq!(drv.to_aterm(&dir), bytes, "{attr}: round trip");
        assert_eq!(
            dir.display(&drv.drv_path(&dir).unwrap()),
            *path,
            "{attr}: .drv path"
        );
        assert_eq!(
            hasher.check_outputs(&drv).unwrap(),
            vec![],
            "{attr}: outputs"
        );

        let ty = drv.derivation_type().unwrap();
        let paths = hasher.output_paths(&drv).unwrap();
        for (o, p) in &paths {
            assert_eq!(p.as_ref(), drv.outputs[o].path(), "{attr}: output {o}");
        }
        if ty == DerivationType::InputAddressed {
            // Rebuild the derivation from a template, as derivationStrict does.
            let mut template = drv.clone();
            for (o, out) in template.outputs.iter_mut() {
                *out = DerivationOutput::Deferred;
                template.env.insert(o.clone().into_bytes(), Vec::new());
            }
            hasher.fill_output_paths(&mut template).unwrap();
            assert_eq!(template, drv, "{attr}: filled-in template");
        }
        match *attr {
            "ca" | "caMulti" | "caFlatSha1" => assert_eq!(ty, DerivationType::Floating),
            "iaOnCa" | "iaOnIaOnCa" => assert_eq!(ty, DerivationType::DeferredInputAddressed),
            a if a.starts_with("fod") => assert_eq!(ty, DerivationType::Fixed),
            _ => assert_eq!(ty, DerivationType::InputAddressed),
        }
        if *attr == "structured" {
            let json = drv.structured_attrs_json().unwrap().unwrap();
            assert_eq!(json["nested"]["s"], "q\"\\\n\t");
        }
        if *attr == "bytes" {
            assert!(drv.env[b"raw".as_slice()] == BYTES_DAT);
        }
        checked += 1;
    }
    assert_eq!(checked, ATTRS.len());

    let unrooted = env!("CARGO_BIN_EXE_unrooted");
    let show = |program: &Path, args: &[&str], paths: &[&str]| {
        let out = env
            .command(program)
            .args(args)
            .args(paths)
            .output()
            .unwrap();
        expect_success(&format!("{} {args:?}", program.display()), &out);
        out.stdout
    };
    let nix_args = [
        "--extra-experimental-features",
        "nix-command ca-derivations",
        "show-derivation",
    ];
    for (attr, path) in &drv_paths {
        let theirs = show(&nix, &nix_args, &[path]);
        let ours = show(Path::new(unrooted), &["drv", "show"], &[path]);
        assert_eq!(
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&theirs),
            "{attr}: show-derivation"
        );
        assert_eq!(ours, theirs, "{attr}: show-derivation bytes");

        let out = env
            .command(unrooted)
            .args(["drv", "outputs", path])
            .output()
            .unwrap();
        expect_success(&format!("unrooted drv outputs {attr}"), &out);
        let drv = Derivation::parse(
            &dir,
            &fs::read(path).unwrap(),
            name_from_drv_path(&dir.parse_path(path).unwrap()).unwrap(),
        )
        .unwrap();
        let expected: String = drv
            .outputs
            .iter()
            .map(|(o, out)| {
                let p = out.path().map_or("-".to_owned(), |p| dir.display(p));
                format!("{o} {p}\n")
            })
            .collect();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            expected,
            "{attr}: drv outputs"
        );
    }
    // All at once: one object, keys in Nix's order.
    let all: Vec<&str> = drv_paths.values().map(String::as_str).collect();
    assert_eq!(
        show(Path::new(unrooted), &["drv", "show"], &all),
        show(&nix, &nix_args, &all)
    );
    eprintln!("compared {} derivations with nix 2.8", drv_paths.len());
}
