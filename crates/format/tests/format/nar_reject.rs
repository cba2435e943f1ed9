//! Negative vectors: archives each rejection rule must refuse, built from the
//! grammar's strings, one test per rule, each asserting the exact error variant and
//! the node it names.

use unrooted_format::nar::{self, NarError, MAX_DEPTH, MAX_NAME_LEN, MAX_TARGET_LEN};

/// Builds an archive string by string, so a test can spell out any (mal)formed shape.
#[derive(Default)]
struct Nar(Vec<u8>);

impl Nar {
    fn new() -> Self {
        Self::default().s(b"nix-archive-1")
    }

    /// Appends a correctly framed string.
    fn s(mut self, s: &[u8]) -> Self {
        self.0.extend_from_slice(&(s.len() as u64).to_le_bytes());
        self.0.extend_from_slice(s);
        self.0.resize(self.0.len().next_multiple_of(8), 0);
        self
    }

    /// Appends raw bytes (a bare length, bad padding...).
    fn raw(mut self, b: &[u8]) -> Self {
        self.0.extend_from_slice(b);
        self
    }

    fn strs(self, ss: &[&[u8]]) -> Self {
        ss.iter().fold(self, |n, s| n.s(s))
    }

    fn file(self, contents: &[u8]) -> Self {
        self.strs(&[b"(", b"type", b"regular", b"contents", contents, b")"])
    }

    fn entry(self, name: &[u8]) -> Self {
        self.strs(&[b"entry", b"(", b"name", name, b"node"])
    }

    fn dir(self) -> Self {
        self.strs(&[b"(", b"type", b"directory"])
    }

    fn end(self) -> Self {
        self.s(b")")
    }

    fn check(&self) -> Result<u64, NarError> {
        nar::validate(&self.0[..])
    }
}

/// A directory holding empty files with these names, in the order given.
fn dir_with(names: &[&[u8]]) -> Nar {
    names
        .iter()
        .fold(Nar::new().dir(), |n, name| n.entry(name).file(b"").end())
        .end()
}

fn assert_path(path: &nar::NarPath, expected: &str) {
    assert_eq!(path.to_string(), expected);
}

#[test]
fn well_formed_builder_output_is_accepted() {
    let nar = dir_with(&[b"a", b"b"]);
    assert_eq!(nar.check().unwrap(), nar.0.len() as u64);
}

#[test]
fn wrong_magic_is_rejected() {
    let nar = Nar::default().s(b"nix-archive-2").file(b"x");
    assert!(matches!(nar.check(), Err(NarError::BadMagic)));
    let nar = Nar::default().s(b"nix").file(b"x");
    assert!(matches!(nar.check(), Err(NarError::BadMagic)));
}

#[test]
fn huge_magic_length_is_rejected_without_allocating() {
    let nar = Nar::default().raw(&(1u64 << 63).to_le_bytes());
    assert!(matches!(nar.check(), Err(NarError::BadMagic)));
}

#[test]
fn empty_name_is_rejected() {
    let err = dir_with(&[b""]).check().unwrap_err();
    assert!(
        matches!(&err, NarError::InvalidName { path, name } if name.0.is_empty() && path.is_root()),
        "{err:?}"
    );
}

#[test]
fn dot_and_dotdot_names_are_rejected() {
    for bad in [&b"."[..], b".."] {
        let err = dir_with(&[bad]).check().unwrap_err();
        assert!(
            matches!(&err, NarError::InvalidName { name, .. } if name.0 == bad),
            "{err:?}"
        );
    }
}

#[test]
fn name_with_slash_is_rejected() {
    let err = dir_with(&[b"a/b"]).check().unwrap_err();
    assert!(
        matches!(&err, NarError::InvalidName { name, .. } if name.0 == b"a/b"),
        "{err:?}"
    );
}

#[test]
fn name_with_nul_is_rejected() {
    let err = dir_with(&[b"a\0b"]).check().unwrap_err();
    assert!(
        matches!(&err, NarError::InvalidName { name, .. } if name.0 == b"a\0b"),
        "{err:?}"
    );
}

#[test]
fn name_longer_than_255_bytes_is_rejected() {
    let ok = vec![b'n'; MAX_NAME_LEN];
    dir_with(&[&ok]).check().unwrap();
    let long = vec![b'n'; MAX_NAME_LEN + 1];
    let err = dir_with(&[&long]).check().unwrap_err();
    assert!(
        matches!(err, NarError::NameTooLong { len: 256, .. }),
        "{err:?}"
    );
}

#[test]
fn huge_name_length_is_rejected_without_allocating() {
    let nar = Nar::new()
        .dir()
        .strs(&[b"entry", b"(", b"name"])
        .raw(&(1u64 << 63).to_le_bytes());
    let err = nar.check().unwrap_err();
    assert!(
        matches!(err, NarError::NameTooLong { len, .. } if len == 1 << 63),
        "{err:?}"
    );
}

#[test]
fn unsorted_entries_are_rejected() {
    let err = dir_with(&[b"b", b"a"]).check().unwrap_err();
    assert!(
        matches!(&err, NarError::UnsortedEntries { previous, name, .. } if previous.0 == b"b" && name.0 == b"a"),
        "{err:?}"
    );
    // Byte order, not locale order: "B" (0x42) sorts before "a" (0x61).
    let err = dir_with(&[b"a", b"B"]).check().unwrap_err();
    assert!(matches!(err, NarError::UnsortedEntries { .. }), "{err:?}");
}

#[test]
fn duplicate_entries_are_rejected() {
    let err = dir_with(&[b"a", b"a"]).check().unwrap_err();
    assert!(
        matches!(&err, NarError::DuplicateEntry { name, .. } if name.0 == b"a"),
        "{err:?}"
    );
}

#[test]
fn non_zero_padding_is_rejected() {
    // `hello\n` padded with a 1 instead of 0.
    let nar = Nar::new()
        .strs(&[b"(", b"type", b"regular", b"contents"])
        .raw(&6u64.to_le_bytes())
        .raw(b"hello\n\0\x01")
        .end();
    let err = nar.check().unwrap_err();
    assert!(
        matches!(err, NarError::NonZeroPadding { offset: 102, .. }),
        "{err:?}"
    );
}

#[test]
fn non_zero_padding_in_a_tag_is_rejected() {
    let nar = Nar::new()
        .raw(&1u64.to_le_bytes())
        .raw(b"(\0\0\0\0\0\0\x01");
    let err = nar.check().unwrap_err();
    assert!(matches!(err, NarError::NonZeroPadding { .. }), "{err:?}");
}

#[test]
fn unknown_tag_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"type", b"fifo", b")"]);
    let err = nar.check().unwrap_err();
    assert!(
        matches!(&err, NarError::UnexpectedTag { found, .. } if found.0 == b"fifo"),
        "{err:?}"
    );
}

#[test]
fn contents_before_type_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"contents", b"x", b")"]);
    let err = nar.check().unwrap_err();
    assert!(
        matches!(&err, NarError::UnexpectedTag { found, expected, .. } if found.0 == b"contents" && *expected == "'type'"),
        "{err:?}"
    );
}

#[test]
fn field_of_another_node_type_is_rejected() {
    // `target` belongs to symlinks.
    let nar = Nar::new().strs(&[b"(", b"type", b"regular", b"target", b"x", b")"]);
    assert!(matches!(nar.check(), Err(NarError::UnexpectedTag { .. })));
    // `contents` inside a directory.
    let nar = Nar::new().dir().strs(&[b"contents", b"x", b")"]);
    assert!(matches!(nar.check(), Err(NarError::UnexpectedTag { .. })));
}

#[test]
fn second_type_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"type", b"regular", b"type", b"regular"]);
    assert!(matches!(nar.check(), Err(NarError::UnexpectedTag { .. })));
}

#[test]
fn executable_after_contents_is_rejected() {
    let nar = Nar::new().strs(&[
        b"(",
        b"type",
        b"regular",
        b"contents",
        b"x",
        b"executable",
        b"",
        b")",
    ]);
    let err = nar.check().unwrap_err();
    assert!(
        matches!(&err, NarError::UnexpectedTag { found, .. } if found.0 == b"executable"),
        "{err:?}"
    );
}

#[test]
fn regular_without_contents_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"type", b"regular", b")"]);
    assert!(matches!(nar.check(), Err(NarError::UnexpectedTag { .. })));
}

#[test]
fn symlink_without_target_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"type", b"symlink", b")"]);
    assert!(matches!(nar.check(), Err(NarError::UnexpectedTag { .. })));
}

#[test]
fn executable_with_non_empty_value_is_rejected() {
    let nar = Nar::new()
        .dir()
        .entry(b"x")
        .strs(&[
            b"(",
            b"type",
            b"regular",
            b"executable",
            b"1",
            b"contents",
            b"",
            b")",
        ])
        .end()
        .end();
    let err = nar.check().unwrap_err();
    assert!(
        matches!(&err, NarError::ExecutableValue { path } if path.to_string() == "/x"),
        "{err:?}"
    );
}

#[test]
fn empty_symlink_target_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"type", b"symlink", b"target", b"", b")"]);
    let err = nar.check().unwrap_err();
    assert!(
        matches!(&err, NarError::InvalidTarget { target, .. } if target.0.is_empty()),
        "{err:?}"
    );
}

#[test]
fn symlink_target_with_nul_is_rejected() {
    let nar = Nar::new().strs(&[b"(", b"type", b"symlink", b"target", b"a\0b", b")"]);
    let err = nar.check().unwrap_err();
    assert!(matches!(err, NarError::InvalidTarget { .. }), "{err:?}");
}

#[test]
fn symlink_target_longer_than_4095_bytes_is_rejected() {
    let ok = vec![b't'; MAX_TARGET_LEN];
    let nar = Nar::new().strs(&[b"(", b"type", b"symlink", b"target", &ok, b")"]);
    nar.check().unwrap();
    let long = vec![b't'; MAX_TARGET_LEN + 1];
    let nar = Nar::new().strs(&[b"(", b"type", b"symlink", b"target", &long, b")"]);
    let err = nar.check().unwrap_err();
    assert!(
        matches!(err, NarError::TargetTooLong { len: 4096, .. }),
        "{err:?}"
    );
}

#[test]
fn huge_target_length_is_rejected_without_allocating() {
    let nar = Nar::new()
        .strs(&[b"(", b"type", b"symlink", b"target"])
        .raw(&(1u64 << 63).to_le_bytes());
    let err = nar.check().unwrap_err();
    assert!(matches!(err, NarError::TargetTooLong { .. }), "{err:?}");
}

#[test]
fn huge_contents_length_is_rejected_before_reading() {
    let nar = Nar::new()
        .strs(&[b"(", b"type", b"regular", b"contents"])
        .raw(&(1u64 << 63).to_le_bytes());
    let err = nar.check().unwrap_err();
    assert!(
        matches!(err, NarError::ContentsTooLong { len, .. } if len == 1 << 63),
        "{err:?}"
    );
}

#[test]
fn huge_tag_length_is_rejected_without_allocating() {
    let nar = Nar::new().s(b"(").raw(&(1u64 << 63).to_le_bytes());
    let err = nar.check().unwrap_err();
    assert!(
        matches!(err, NarError::TagTooLong { len, .. } if len == 1 << 63),
        "{err:?}"
    );
}

#[test]
fn nesting_deeper_than_the_bound_is_rejected() {
    let nested = |levels: usize| {
        let mut nar = Nar::new();
        for _ in 0..levels {
            nar = nar.dir().entry(b"d");
        }
        nar = nar.file(b"");
        for _ in 0..levels {
            nar = nar.end().end();
        }
        nar
    };
    nested(MAX_DEPTH).check().unwrap();
    let err = nested(MAX_DEPTH + 1).check().unwrap_err();
    assert!(matches!(err, NarError::TooDeep { .. }), "{err:?}");
}

#[test]
fn truncation_anywhere_is_reported_with_the_node() {
    let full = Nar::new()
        .dir()
        .entry(b"sub")
        .dir()
        .entry(b"f")
        .file(b"some contents")
        .end()
        .end()
        .end()
        .end();
    full.check().unwrap();
    for cut in 0..full.0.len() {
        let err = nar::validate(&full.0[..cut]).unwrap_err();
        assert!(
            matches!(&err, NarError::Truncated { offset, .. } if *offset <= cut as u64),
            "cut at {cut}: {err:?}"
        );
    }
    let cut = full.0.len() - 40;
    let err = nar::validate(&full.0[..cut]).unwrap_err();
    assert!(
        matches!(&err, NarError::Truncated { path, .. } if path.to_string() == "/sub"),
        "{err:?}"
    );
}

#[test]
fn error_names_the_offending_entry_path() {
    let nar = Nar::new()
        .dir()
        .entry(b"sub")
        .dir()
        .entry(b"x")
        .strs(&[b"(", b"type", b"symlink", b"target", b"", b")"]);
    let err = nar.check().unwrap_err();
    match &err {
        NarError::InvalidTarget { path, .. } => assert_path(path, "/sub/x"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        err.to_string(),
        "NAR symlink '/sub/x' has the invalid target ''"
    );
}

#[test]
fn restore_refuses_a_bad_archive_before_creating_anything_past_it() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out");
    let nar = dir_with(&[b"a", b"a"]);
    let err = nar::restore(&nar.0[..], &dest).unwrap_err();
    assert!(matches!(err, NarError::DuplicateEntry { .. }), "{err:?}");
    // The first `a` was created; the duplicate never reached the filesystem.
    assert!(dest.join("a").is_file());
}

#[test]
fn restore_of_a_truncated_file_reports_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let nar = Nar::new().file(b"0123456789abcdef");
    let cut = &nar.0[..nar.0.len() - 20];
    let err = nar::restore(cut, &dir.path().join("out")).unwrap_err();
    assert!(matches!(err, NarError::Truncated { .. }), "{err:?}");
}
