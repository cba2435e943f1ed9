//! The NAR vectors of `docs/spec/store-formats.md` §8 (V7, V8, V10 ordering) as data
//! files: parsing them, re-serialising them to the same bytes, and dumping the trees they came from.

use std::fs;
use std::io::Read;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use unrooted_format::hash::{HashAlgo, Hasher};
use unrooted_format::nar::{
    self, list, read_nar, Contents, ListOptions, NarError, NarPath, NarVisitor, NarWriter,
};

fn vector(name: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors/nar")
        .join(name);
    fs::read(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// Re-serialises every node it is shown with a [`NarWriter`].
struct Rewrite {
    writer: NarWriter<Vec<u8>>,
    events: Vec<String>,
}

impl NarVisitor for Rewrite {
    fn regular(
        &mut self,
        path: &NarPath,
        executable: bool,
        contents: &mut Contents<'_>,
    ) -> Result<(), NarError> {
        let mut data = Vec::new();
        contents.read_to_end(&mut data).expect("reading contents");
        self.events
            .push(format!("file {path} exec={executable} {}", data.len()));
        if let Some(name) = path.name() {
            self.writer.entry(name)?;
        }
        self.writer.regular(executable, &data)
    }

    fn symlink(&mut self, path: &NarPath, target: &[u8]) -> Result<(), NarError> {
        self.events.push(format!(
            "symlink {path} -> {}",
            String::from_utf8_lossy(target)
        ));
        if let Some(name) = path.name() {
            self.writer.entry(name)?;
        }
        self.writer.symlink(target)
    }

    fn directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        self.events.push(format!("dir {path}"));
        if let Some(name) = path.name() {
            self.writer.entry(name)?;
        }
        self.writer.directory()
    }

    fn end_directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        self.events.push(format!("end {path}"));
        self.writer.end_directory()
    }
}

fn rewrite(nar: &[u8]) -> (Vec<u8>, Vec<String>) {
    let mut v = Rewrite {
        writer: NarWriter::new(Vec::new()),
        events: Vec::new(),
    };
    let size = read_nar(nar, &mut v).expect("parsing vector");
    assert_eq!(size, nar.len() as u64);
    let (bytes, written) = v.writer.finish().expect("finishing");
    assert_eq!(written, bytes.len() as u64);
    (bytes, v.events)
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().expect("tempdir")
}

fn dump(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let n = nar::dump_path(path, &mut out).expect("dumping");
    assert_eq!(n, out.len() as u64);
    out
}

/// The V8 input tree.
fn make_tree(dir: &Path) -> PathBuf {
    let tree = dir.join("tree");
    fs::create_dir(&tree).unwrap();
    fs::write(tree.join("exe"), "#!/bin/sh\n").unwrap();
    fs::set_permissions(tree.join("exe"), fs::Permissions::from_mode(0o755)).unwrap();
    fs::write(tree.join("file"), "hello\n").unwrap();
    symlink("file", tree.join("link")).unwrap();
    tree
}

#[test]
fn v7_hello_txt_parses_and_rewrites_identically() {
    let nar = vector("hello-txt.nar");
    assert_eq!(nar.len(), 120);
    let (bytes, events) = rewrite(&nar);
    assert_eq!(bytes, nar);
    assert_eq!(events, ["file / exec=false 6"]);
}

#[test]
fn v7_dump_of_hello_txt_is_the_vector() {
    let dir = tempdir();
    let file = dir.path().join("hello.txt");
    fs::write(&file, "hello\n").unwrap();
    assert_eq!(dump(&file), vector("hello-txt.nar"));
}

#[test]
fn v7_nar_hash_is_the_spec_hash() {
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    let dir = tempdir();
    let file = dir.path().join("hello.txt");
    fs::write(&file, "hello\n").unwrap();
    nar::dump_path(&file, &mut hasher).unwrap();
    assert_eq!(
        hasher.finish().to_base16(),
        "1c37d01af40be2e80691de3cc3df44377a699afbb17c68f080964b2fd071fc13"
    );
}

#[test]
fn v8_tree_parses_and_rewrites_identically() {
    let nar = vector("tree.nar");
    assert_eq!(nar.len(), 712);
    let (bytes, events) = rewrite(&nar);
    assert_eq!(bytes, nar);
    assert_eq!(
        events,
        [
            "dir /",
            "file /exe exec=true 10",
            "file /file exec=false 6",
            "symlink /link -> file",
            "end /",
        ]
    );
}

#[test]
fn v8_dump_of_tree_is_the_vector_and_hash() {
    let dir = tempdir();
    let tree = make_tree(dir.path());
    assert_eq!(dump(&tree), vector("tree.nar"));
    let mut hasher = Hasher::new(HashAlgo::Sha256);
    nar::dump_path(&tree, &mut hasher).unwrap();
    assert_eq!(
        hasher.finish().to_base16(),
        "8a6e1c5ddcafcaffcd780d6405a42a3db60ecc64ea7dc8e6f9a2063b243d5a86"
    );
}

#[test]
fn v8_restore_then_dump_is_identical_with_nix_modes() {
    let dir = tempdir();
    let out = dir.path().join("out");
    let nar = vector("tree.nar");
    assert_eq!(nar::restore(&nar[..], &out).unwrap(), 712);
    assert_eq!(dump(&out), nar);
    let mode = |p: &str| {
        fs::symlink_metadata(out.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(mode(""), 0o755);
    assert_eq!(mode("exe"), 0o755);
    assert_eq!(mode("file"), 0o644);
    assert_eq!(fs::read_link(out.join("link")).unwrap(), Path::new("file"));
}

#[test]
fn restore_refuses_an_existing_destination() {
    let dir = tempdir();
    let err = nar::restore(&vector("tree.nar")[..], dir.path()).unwrap_err();
    assert!(
        matches!(&err, NarError::Restore { path, source }
            if path == dir.path() && source.kind() == std::io::ErrorKind::AlreadyExists),
        "{err:?}"
    );
}

#[test]
fn v10_entries_are_in_byte_order() {
    let nar = vector("order.nar");
    let (bytes, events) = rewrite(&nar);
    assert_eq!(bytes, nar);
    let names: Vec<&str> = events
        .iter()
        .filter_map(|e| e.strip_prefix("file /"))
        .map(|e| e.split(' ').next().unwrap())
        .collect();
    assert_eq!(names, [".x", "1", "A-b", "B", "_", "a", "é"]);

    // Our dump of the same tree, created in another order, gives the same bytes.
    let dir = tempdir();
    let order = dir.path().join("order");
    fs::create_dir(&order).unwrap();
    for name in ["a", "B", "_", "é", "1", ".x", "A-b"] {
        fs::write(order.join(name), format!("{name}\n")).unwrap();
    }
    assert_eq!(dump(&order), nar);
}

#[test]
fn listing_of_v8_matches_nix_nar_ls() {
    let nar = vector("tree.nar");
    let ls = |long, recursive, json| {
        String::from_utf8(
            list(
                &nar[..],
                ListOptions {
                    long,
                    recursive,
                    json,
                },
            )
            .unwrap(),
        )
        .unwrap()
    };
    // Outputs of `nix nar ls [-l] [--json -R] tree.nar /` (Nix 2.8.0).
    assert_eq!(ls(false, false, false), "./exe\n./file\n./link\n");
    assert_eq!(
        ls(true, false, false),
        "-r-xr-xr-x                   10 ./exe\n\
         -r--r--r--                    6 ./file\n\
         lrwxrwxrwx                    0 ./link -> file\n"
    );
    assert_eq!(
        ls(false, true, true),
        r#"{"type":"directory","entries":{"exe":{"type":"regular","size":10,"executable":true,"narOffset":264},"file":{"type":"regular","size":6,"narOffset":464},"link":{"type":"symlink","target":"file"}}}"#
    );
    assert_eq!(
        ls(false, false, true),
        r#"{"type":"directory","entries":{"exe":{},"file":{},"link":{}}}"#
    );
}

#[test]
fn trailing_bytes_are_left_unread() {
    let mut input = vector("tree.nar");
    input.extend_from_slice(b"NEXT");
    let mut reader = &input[..];
    assert_eq!(nar::validate(&mut reader).unwrap(), 712);
    assert_eq!(reader, b"NEXT");

    let mut copy = Vec::new();
    let mut reader = &input[..];
    assert_eq!(nar::copy_nar(&mut reader, &mut copy).unwrap(), 712);
    assert_eq!(copy, vector("tree.nar"));
    assert_eq!(reader, b"NEXT");
}
