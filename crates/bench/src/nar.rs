//! The NAR workload: serialise a generated tree and hash it with SHA-256, against
//! `nix-hash`, `nix-store --dump | sha256sum` and `sha256sum` of the same bytes.

use std::fs;
use std::io::Write;
use std::path::Path;

use anyhow::bail;
use unrooted_testkit::{write_random_file, Rng};

use crate::util::median;

/// Small files per directory in the generated tree.
const FILES_PER_DIR: u64 = 200;
/// The share of the bytes held by the few large files.
const LARGE_FILES: u64 = 6;

/// Generates `root` (a tree of `size_mib` MiB of contents) and `concat` (one file of
/// all its contents) unless a previous run left them at that size.
pub fn generate(root: &Path, concat: &Path, size_mib: u64) -> anyhow::Result<()> {
    let stamp = root.with_extension("size");
    if root.is_dir() && fs::read_to_string(&stamp).ok().as_deref() == Some(&size_mib.to_string()) {
        return Ok(());
    }
    let _ = fs::remove_file(&stamp);
    let _ = fs::remove_dir_all(root);
    fs::create_dir_all(root)?;
    let total = size_mib << 20;
    // Half the bytes in many small files (the per-file cost), half in a few large ones
    // (the streaming and hashing cost).
    let large_size = total / 2 / LARGE_FILES;
    let mut rng = Rng::new(42);
    let mut small_left = total - large_size * LARGE_FILES;
    let mut n = 0u64;
    while small_left > 0 {
        let dir = root.join(format!("d{:04}", n / FILES_PER_DIR));
        fs::create_dir_all(&dir)?;
        let size = (rng.below(16 << 10) + 1).min(small_left);
        write_random_file(&dir.join(format!("f{n}")), &mut rng, size as usize);
        small_left -= size;
        n += 1;
    }
    fs::create_dir_all(root.join("large"))?;
    for i in 0..LARGE_FILES {
        write_random_file(
            &root.join(format!("large/big{i}")),
            &mut rng,
            large_size as usize,
        );
    }
    // The hashing floor: the same bytes in one file, hashed by coreutils.
    let mut out = fs::File::create(concat)?;
    concat_files(root, &mut out)?;
    fs::write(&stamp, size_mib.to_string())?;
    eprintln!(
        "generated {} ({n} small files and {LARGE_FILES} large ones, {size_mib} MiB)",
        root.display()
    );
    Ok(())
}

fn concat_files(dir: &Path, out: &mut fs::File) -> anyhow::Result<()> {
    let mut entries: Vec<_> = fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        if e.file_type()?.is_dir() {
            concat_files(&e.path(), out)?;
        } else {
            out.write_all(&fs::read(e.path())?)?;
        }
    }
    Ok(())
}

/// Runs the NAR workload on a `size_mib` MiB tree under `dir` and prints its table.
pub fn run(unrooted: &Path, dir: &Path, size_mib: u64, runs: usize) -> anyhow::Result<()> {
    let tree = dir.join("tree");
    let concat = dir.join("concat.bin");
    generate(&tree, &concat, size_mib)?;

    let u = unrooted.display();
    let t = tree.display();
    let c = concat.display();
    println!("## NAR serialisation + SHA-256 of a {size_mib} MiB tree");
    let cases = [
        (
            "unrooted hash path --type sha256",
            format!("{u} hash path --type sha256 {t}"),
        ),
        (
            "nix-hash --type sha256",
            format!("nix-hash --type sha256 {t}"),
        ),
        (
            "nix-store --dump | sha256sum",
            format!("nix-store --dump {t} | sha256sum"),
        ),
        (
            "unrooted nar pack | sha256sum",
            format!("{u} nar pack {t} | sha256sum"),
        ),
        ("sha256sum (one file, same bytes)", format!("sha256sum {c}")),
    ];
    let mut results = Vec::new();
    let mut digests = Vec::new();
    for (label, script) in &cases {
        let (t, out) = median(script, runs)?;
        println!("{label:<36} {:>8.3} s   {out}", t.as_secs_f64());
        results.push(t.as_secs_f64());
        digests.push(out);
    }
    // The four NAR hashes must agree, or the fastest is not doing the same work.
    if digests[..4].iter().any(|d| *d != digests[0]) {
        bail!("the NAR hashes differ: {:?}", &digests[..4]);
    }
    if results[0] == 0.0 {
        bail!("unrooted took no measurable time");
    }
    println!();
    println!(
        "nix-hash / unrooted                  {:>8.2}x  (goal >= 2)",
        results[1] / results[0]
    );
    println!(
        "nix-store --dump|sha256sum / unrooted {:>7.2}x",
        results[2] / results[0]
    );
    println!(
        "unrooted / sha256sum floor           {:>8.2}x  (goal <= 1.3)",
        results[0] / results[4]
    );
    Ok(())
}
