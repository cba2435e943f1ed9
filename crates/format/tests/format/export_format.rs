//! The export format: vector V25 (one path) read and rewritten byte for byte, a live
//! export of paths with references and a deriver from the real `nix-store`, and the
//! rejections of malformed streams.

use std::ffi::OsStr;
use std::fs;
use std::path::Path;

use unrooted_format::export::{ExportError, ExportReader, ExportRecord, ExportWriter};
use unrooted_format::nar::{self, NarError};
use unrooted_format::store_path::StoreDir;
use unrooted_testkit::{generate_tree, nix_tool, NixEnv};

fn vector(name: &str) -> Vec<u8> {
    fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/vectors/nar")
            .join(name),
    )
    .expect("reading vector")
}

fn nix_store_dir() -> StoreDir {
    StoreDir::new("/nix/store").unwrap()
}

/// Reads every record of `stream`, keeping each NAR.
fn read_all(stream: &[u8], store_dir: &StoreDir) -> Vec<(ExportRecord, Vec<u8>)> {
    let mut reader = ExportReader::new(stream, store_dir.clone());
    let mut records = Vec::new();
    loop {
        let mut nar_bytes = Vec::new();
        match reader.next_record(&mut nar_bytes).expect("reading export") {
            Some(record) => records.push((record, nar_bytes)),
            None => break,
        }
    }
    assert_eq!(reader.position(), stream.len() as u64);
    records
}

fn write_all(records: &[(ExportRecord, Vec<u8>)], store_dir: &StoreDir) -> Vec<u8> {
    let mut writer = ExportWriter::new(Vec::new(), store_dir.clone());
    for (record, nar_bytes) in records {
        writer
            .write_nar_record(record, &nar_bytes[..])
            .expect("writing record");
    }
    writer.finish().expect("finishing")
}

#[test]
fn v25_export_of_hello_txt_reads_and_rewrites_identically() {
    let stream = vector("hello-txt.export");
    assert_eq!(stream.len(), 232);
    let store_dir = nix_store_dir();
    let records = read_all(&stream, &store_dir);
    assert_eq!(records.len(), 1);
    let (record, nar_bytes) = &records[0];
    assert_eq!(
        store_dir.display(&record.path),
        "/nix/store/i9pmrzmpshapij2kin22pff6fc2adavx-hello.txt"
    );
    assert!(record.references.is_empty());
    assert_eq!(record.deriver, None);
    assert_eq!(record.legacy_signature, None);
    assert_eq!(nar_bytes, &vector("hello-txt.nar"));
    assert_eq!(write_all(&records, &store_dir), stream);
}

#[test]
fn export_writer_dumps_a_path_from_disk() {
    let store_dir = nix_store_dir();
    let records = read_all(&vector("hello-txt.export"), &store_dir);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hello.txt");
    fs::write(&file, "hello\n").unwrap();
    let mut writer = ExportWriter::new(Vec::new(), store_dir);
    writer.write_path_record(&records[0].0, &file).unwrap();
    assert_eq!(writer.finish().unwrap(), vector("hello-txt.export"));
}

#[test]
fn reading_stops_at_the_end_marker() {
    let mut stream = vector("hello-txt.export");
    stream.extend_from_slice(b"trailer");
    let mut reader = ExportReader::new(&stream[..], nix_store_dir());
    assert!(reader.next_record(&mut std::io::sink()).unwrap().is_some());
    assert!(reader.next_record(&mut std::io::sink()).unwrap().is_none());
    assert!(reader.next_record(&mut std::io::sink()).unwrap().is_none());
    assert_eq!(reader.into_inner(), b"trailer");
}

/// Offsets inside V25: the record flag, the NAR (120 bytes), `NIXE`, the path string.
const NIXE_AT: usize = 8 + 120;
const PATH_LEN_AT: usize = NIXE_AT + 8;
const REFS_AT: usize = PATH_LEN_AT + 8 + 56;

fn patched(at: usize, value: u64) -> Vec<u8> {
    let mut stream = vector("hello-txt.export");
    stream[at..at + 8].copy_from_slice(&value.to_le_bytes());
    stream
}

fn first_record(stream: &[u8], store_dir: StoreDir) -> Result<Option<ExportRecord>, ExportError> {
    ExportReader::new(stream, store_dir).next_record(&mut std::io::sink())
}

#[test]
fn bad_record_flag_is_rejected() {
    let err = first_record(&patched(0, 2), nix_store_dir()).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::RecordFlag {
                value: 2,
                offset: 0
            }
        ),
        "{err:?}"
    );
}

#[test]
fn missing_nixe_marker_is_rejected() {
    let err = first_record(&patched(NIXE_AT, 0x4558_494f), nix_store_dir()).unwrap_err();
    assert!(
        matches!(err, ExportError::Magic { record: 0, .. }),
        "{err:?}"
    );
}

#[test]
fn invalid_nar_inside_a_record_is_rejected() {
    let mut stream = vector("hello-txt.export");
    stream[8 + 8] = b'X'; // the magic string
    let err = first_record(&stream, nix_store_dir()).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::Nar {
                record: 0,
                source: NarError::BadMagic
            }
        ),
        "{err:?}"
    );
}

#[test]
fn huge_path_length_is_rejected_without_allocating() {
    let err = first_record(&patched(PATH_LEN_AT, 1 << 63), nix_store_dir()).unwrap_err();
    assert!(
        matches!(err, ExportError::StringTooLong { what: "path", .. }),
        "{err:?}"
    );
}

#[test]
fn huge_reference_count_is_rejected_without_allocating() {
    let err = first_record(&patched(REFS_AT, u64::MAX), nix_store_dir()).unwrap_err();
    assert!(
        matches!(
            err,
            ExportError::TooManyReferences {
                count: u64::MAX,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn path_outside_the_store_dir_is_rejected() {
    let other = StoreDir::new("/other/store").unwrap();
    let err = first_record(&vector("hello-txt.export"), other).unwrap_err();
    assert!(
        matches!(err, ExportError::StorePath { what: "path", .. }),
        "{err:?}"
    );
}

#[test]
fn bad_signature_flag_is_rejected() {
    let stream = vector("hello-txt.export");
    let at = stream.len() - 16;
    let err = first_record(&patched(at, 7), nix_store_dir()).unwrap_err();
    assert!(
        matches!(err, ExportError::SignatureFlag { value: 7, .. }),
        "{err:?}"
    );
}

#[test]
fn truncated_stream_is_rejected() {
    let stream = vector("hello-txt.export");
    for cut in [0, 5, 100, NIXE_AT + 4, REFS_AT, stream.len() - 12] {
        let mut reader = ExportReader::new(&stream[..cut], nix_store_dir());
        let err = reader.next_record(&mut std::io::sink()).unwrap_err();
        assert!(
            matches!(
                err,
                ExportError::Truncated { .. }
                    | ExportError::Nar {
                        source: NarError::Truncated { .. },
                        ..
                    }
            ),
            "cut {cut}: {err:?}"
        );
    }
}

#[test]
fn live_export_with_references_and_deriver_round_trips() {
    let Some(nix_store) = nix_tool("nix-store") else {
        return;
    };
    let Some(nix_instantiate) = nix_tool("nix-instantiate") else {
        return;
    };
    let env = NixEnv::new();
    let work = tempfile::tempdir().unwrap();

    // A generated tree added as a source path, and a built path that refers to it.
    let tree = work.path().join("tree");
    generate_tree(&tree, 11, 120, 2 * 1024 * 1024);
    let added = String::from_utf8(env.run(
        nix_store.to_str().unwrap(),
        &[OsStr::new("--add"), tree.as_os_str()],
    ))
    .unwrap();
    let added = added.trim();
    let expr = work.path().join("withref.nix");
    fs::write(
        &expr,
        format!(
            "derivation {{ name = \"withref\"; system = builtins.currentSystem; builder = \"/bin/sh\"; \
             args = [ \"-c\" \"echo ${{builtins.storePath \"{added}\"}} > $out; echo ${{builtins.toFile \"dep\" \"hi\"}} >> $out\" ]; }}"
        ),
    )
    .unwrap();
    let drv =
        String::from_utf8(env.run(nix_instantiate.to_str().unwrap(), &[expr.as_os_str()])).unwrap();
    let out = String::from_utf8(env.run(
        nix_store.to_str().unwrap(),
        &[OsStr::new("--realise"), OsStr::new(drv.trim())],
    ))
    .unwrap();
    let closure = String::from_utf8(env.run(
        nix_store.to_str().unwrap(),
        &[OsStr::new("-qR"), OsStr::new(out.trim())],
    ))
    .unwrap();
    let mut args = vec![OsStr::new("--export")];
    args.extend(closure.lines().map(OsStr::new));
    let stream = env.run(nix_store.to_str().unwrap(), &args);

    let store_dir = StoreDir::new(env.store_dir().to_str().unwrap()).unwrap();
    let records = read_all(&stream, &store_dir);
    assert_eq!(records.len(), 3);
    let built = records
        .iter()
        .find(|(r, _)| store_dir.display(&r.path) == out.trim())
        .expect("the built path is exported");
    assert_eq!(built.0.references.len(), 2);
    assert_eq!(
        built
            .0
            .deriver
            .as_ref()
            .map(|d| store_dir.display(d))
            .as_deref(),
        Some(drv.trim())
    );
    let source = records
        .iter()
        .find(|(r, _)| store_dir.display(&r.path) == added)
        .expect("the source path is exported");
    assert!(source.0.references.is_empty());
    assert_eq!(source.0.deriver, None);

    // Our writer reproduces nix-store's stream byte for byte, from the NARs read and
    // from the store paths on disk.
    assert!(
        write_all(&records, &store_dir) == stream,
        "rewritten stream differs"
    );
    let mut writer = ExportWriter::new(Vec::new(), store_dir.clone());
    for (record, _) in &records {
        writer
            .write_path_record(record, Path::new(&store_dir.display(&record.path)))
            .unwrap();
    }
    assert!(
        writer.finish().unwrap() == stream,
        "stream dumped from disk differs"
    );

    // Each NAR is the dump of its store path.
    for (record, nar_bytes) in &records {
        let mut dumped = Vec::new();
        nar::dump_path(Path::new(&store_dir.display(&record.path)), &mut dumped).unwrap();
        assert!(&dumped == nar_bytes);
    }
}
