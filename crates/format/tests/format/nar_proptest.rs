//! Property tests: write → read → write gives the same bytes and the same tree;
//! restore → dump gives the same bytes; damaged archives are refused without panics.

use std::collections::BTreeMap;
use std::io::Read;

use proptest::prelude::*;
use unrooted_format::nar::{self, Contents, NarError, NarPath, NarVisitor, NarWriter};

/// A file tree in memory; `BTreeMap` over bytes keeps entries in NAR order.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Node {
    File { executable: bool, data: Vec<u8> },
    Symlink(Vec<u8>),
    Dir(BTreeMap<Vec<u8>, Node>),
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
        1..12,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn node() -> impl Strategy<Value = Node> {
    let leaf = prop_oneof![
        (any::<bool>(), prop::collection::vec(any::<u8>(), 0..300))
            .prop_map(|(executable, data)| Node::File { executable, data }),
        prop::collection::vec(1u8..=255, 1..40).prop_map(Node::Symlink),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop::collection::btree_map(name(), inner, 0..6).prop_map(Node::Dir)
    })
}

fn write_node<W: std::io::Write>(w: &mut NarWriter<W>, node: &Node) -> Result<(), NarError> {
    match node {
        Node::File { executable, data } => w.regular(*executable, data),
        Node::Symlink(target) => w.symlink(target),
        Node::Dir(entries) => {
            w.directory()?;
            for (name, child) in entries {
                w.entry(name)?;
                write_node(w, child)?;
            }
            w.end_directory()
        }
    }
}

fn serialise(node: &Node) -> Vec<u8> {
    let mut w = NarWriter::new(Vec::new());
    write_node(&mut w, node).expect("writing");
    let (bytes, size) = w.finish().expect("finishing");
    assert_eq!(size, bytes.len() as u64);
    bytes
}

/// Rebuilds the tree from the visitor's calls.
#[derive(Default)]
struct Build {
    stack: Vec<BTreeMap<Vec<u8>, Node>>,
    root: Option<Node>,
}

impl Build {
    fn place(&mut self, path: &NarPath, node: Node) {
        match (path.name(), self.stack.last_mut()) {
            (Some(name), Some(dir)) => {
                dir.insert(name.to_vec(), node);
            }
            _ => self.root = Some(node),
        }
    }
}

impl NarVisitor for Build {
    fn regular(
        &mut self,
        path: &NarPath,
        executable: bool,
        contents: &mut Contents<'_>,
    ) -> Result<(), NarError> {
        let mut data = Vec::new();
        contents.read_to_end(&mut data).expect("reading contents");
        self.place(path, Node::File { executable, data });
        Ok(())
    }

    fn symlink(&mut self, path: &NarPath, target: &[u8]) -> Result<(), NarError> {
        self.place(path, Node::Symlink(target.to_vec()));
        Ok(())
    }

    fn directory(&mut self, _path: &NarPath) -> Result<(), NarError> {
        self.stack.push(BTreeMap::new());
        Ok(())
    }

    fn end_directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        let entries = self.stack.pop().expect("balanced directories");
        self.place(path, Node::Dir(entries));
        Ok(())
    }
}

proptest! {
    #[test]
    fn write_read_write_is_identical(tree in node()) {
        let bytes = serialise(&tree);
        let mut build = Build::default();
        let size = nar::read_nar(&bytes[..], &mut build).expect("reading our own output");
        prop_assert_eq!(size, bytes.len() as u64);
        let back = build.root.expect("a root");
        prop_assert_eq!(&back, &tree);
        prop_assert_eq!(serialise(&back), bytes);
    }

    #[test]
    fn damaged_archives_are_refused_without_panicking(
        tree in node(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = serialise(&tree);
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        // Whatever the damage, the parser returns (it may accept if the flip kept the
        // archive valid) and never reads past what it reports.
        if let Ok(n) = nar::validate(&bytes[..]) {
            prop_assert!(n <= bytes.len() as u64);
        }
        let cut = cut.index(bytes.len());
        let _ = nar::validate(&bytes[..cut]);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn restore_then_dump_is_identical(tree in node()) {
        let bytes = serialise(&tree);
        let dir = tempfile::tempdir().expect("tempdir");
        let dest = dir.path().join("out");
        nar::restore(&bytes[..], &dest).expect("restoring");
        let mut dumped = Vec::new();
        nar::dump_path(&dest, &mut dumped).expect("dumping");
        prop_assert_eq!(dumped, bytes);
    }
}
