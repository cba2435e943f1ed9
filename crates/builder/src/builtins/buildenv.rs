//! `builtin:buildenv`: the symlink tree of a user environment (what `nix-env` builds
//! for a profile generation), as Nix 2.8's `builtins/buildenv.cc` makes it. It runs in
//! the build's sandbox, where the store directory holds the input closure at the
//! paths the derivation names, so every path here is read as it is written.
//!
//! The derivation's env gives `derivations` — groups of `<active> <priority> <n>
//! <path>…` — and `manifest`. Packages are linked in priority order (lower number
//! wins, ties by path), directories merged recursively (a symlink to a directory is
//! replaced by a real directory when a second package adds to it), files conflicting
//! at equal priority are an error, and `nix-support/propagated-user-env-packages` of
//! each package pulls in more packages at priorities from 1000 on. Dot files and a
//! few special files are skipped. `manifest.nix` links to the manifest.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::fs::{symlink, DirBuilderExt};
use std::path::{Path, PathBuf};

use super::{BuiltinError, Env};

/// The most symlinks one environment may have (a bound on untrusted input).
const MAX_LINKS: usize = 1_000_000;

/// The most bytes of `propagated-user-env-packages` read.
const MAX_PROPAGATED: u64 = 1 << 20;

struct State {
    priorities: BTreeMap<PathBuf, i64>,
    links: usize,
}

/// The builtin: the environment described by `derivations` and `manifest` at `$out`.
pub(crate) fn run(
    env: &[(std::ffi::OsString, std::ffi::OsString)],
) -> Result<(), Box<dyn std::error::Error>> {
    let env = Env(env);
    let out = PathBuf::from(env.require("out")?);
    build_env(env.text("derivations")?, env.text("manifest")?, &out)
        .map_err(|message| BuiltinError::Profile { message })?;
    Ok(())
}

/// Builds the environment at `out` (a fresh path).
pub(crate) fn build_env(derivations: &str, manifest: &str, out: &Path) -> Result<(), String> {
    let mut words = derivations.split_ascii_whitespace();
    let mut pkgs: Vec<(PathBuf, bool, i64)> = Vec::new();
    while let Some(active) = words.next() {
        let priority: i64 = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or("malformed 'derivations' attribute")?;
        let n: usize = words
            .next()
            .and_then(|w| w.parse().ok())
            .ok_or("malformed 'derivations' attribute")?;
        for _ in 0..n {
            let path = words.next().ok_or("malformed 'derivations' attribute")?;
            pkgs.push((PathBuf::from(path), active != "false", priority));
        }
    }
    fs::DirBuilder::new()
        .mode(0o755)
        .create(out)
        .map_err(|e| format!("creating '{}': {e}", out.display()))?;
    let mut state = State {
        priorities: BTreeMap::new(),
        links: 0,
    };
    pkgs.sort_by(|a, b| a.2.cmp(&b.2).then_with(|| a.0.cmp(&b.0)));
    let mut done: BTreeSet<PathBuf> = BTreeSet::new();
    let mut postponed: BTreeSet<PathBuf> = BTreeSet::new();
    let mut add = |state: &mut State,
                   pkg: &Path,
                   priority: i64,
                   postponed: &mut BTreeSet<PathBuf>|
     -> Result<(), String> {
        if !done.insert(pkg.to_path_buf()) {
            return Ok(());
        }
        create_links(state, pkg, out, priority)?;
        let prop = pkg.join("nix-support/propagated-user-env-packages");
        if let Ok(f) = fs::File::open(&prop) {
            let mut text = String::new();
            use std::io::Read;
            let _ = f.take(MAX_PROPAGATED).read_to_string(&mut text);
            for p in text.split([' ', '\n']).filter(|w| !w.is_empty()) {
                if !done.contains(Path::new(p)) {
                    postponed.insert(PathBuf::from(p));
                }
            }
        }
        Ok(())
    };
    for (path, active, priority) in &pkgs {
        if *active {
            add(&mut state, path, *priority, &mut postponed)?;
        }
    }
    let mut counter = 1000;
    while !postponed.is_empty() {
        let batch = std::mem::take(&mut postponed);
        for p in batch {
            add(&mut state, &p, counter, &mut postponed)?;
            counter += 1;
        }
    }
    let link = out.join("manifest.nix");
    symlink(manifest, &link).map_err(|e| format!("creating '{}': {e}", link.display()))?;
    Ok(())
}

fn skipped(name: &str, src: &Path) -> bool {
    let s = src.to_string_lossy();
    name.starts_with('.')
        || [
            "/propagated-build-inputs",
            "/nix-support",
            "/perllocal.pod",
            "/info/dir",
            "/log",
            "/manifest.nix",
            "/manifest.json",
        ]
        .iter()
        .any(|suffix| s.ends_with(suffix))
}

/// Links everything in `src` into `dst` (the tree being built).
fn create_links(state: &mut State, src: &Path, dst: &Path, priority: i64) -> Result<(), String> {
    let entries = match fs::read_dir(src) {
        Ok(e) => e,
        Err(e) if e.raw_os_error() == Some(libc_enotdir()) => {
            // The build log is the builtin's stderr.
            eprintln!(
                "warning: not including '{}' in the user environment because it's not a directory",
                src.display()
            );
            return Ok(());
        }
        Err(e) => return Err(format!("reading '{}': {e}", src.display())),
    };
    let mut names: Vec<std::ffi::OsString> = entries
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    for name in names {
        let name_s = name.to_string_lossy().into_owned();
        let src_file = src.join(&name);
        let dst_file = dst.join(&name);
        if skipped(&name_s, &src_file) {
            continue;
        }
        // `stat`, following links, as Nix does: a dangling link is skipped.
        let Ok(src_meta) = fs::metadata(&src_file) else {
            eprintln!(
                "warning: skipping dangling symlink '{}'",
                dst_file.display()
            );
            continue;
        };
        let dst_meta = fs::symlink_metadata(&dst_file).ok();
        if src_meta.is_dir() {
            match &dst_meta {
                Some(m) if m.is_dir() => {
                    create_links(state, &src_file, &dst_file, priority)?;
                    continue;
                }
                Some(m) if m.file_type().is_symlink() => {
                    let target = fs::read_link(&dst_file)
                        .map_err(|e| format!("reading '{}': {e}", dst_file.display()))?;
                    if !fs::metadata(&target).is_ok_and(|t| t.is_dir()) {
                        return Err(format!(
                            "collision between '{}' and non-directory '{}'",
                            src_file.display(),
                            target.display()
                        ));
                    }
                    fs::remove_file(&dst_file)
                        .map_err(|e| format!("unlinking '{}': {e}", dst_file.display()))?;
                    fs::DirBuilder::new()
                        .mode(0o755)
                        .create(&dst_file)
                        .map_err(|e| format!("creating directory '{}': {e}", dst_file.display()))?;
                    let prev = state.priorities.get(&dst_file).copied().unwrap_or(0);
                    create_links(state, &target, &dst_file, prev)?;
                    create_links(state, &src_file, &dst_file, priority)?;
                    continue;
                }
                _ => {}
            }
        } else if let Some(m) = &dst_meta {
            if m.file_type().is_symlink() {
                let prev = state.priorities.get(&dst_file).copied().unwrap_or(0);
                if prev == priority {
                    let existing = fs::read_link(&dst_file).unwrap_or_default();
                    return Err(format!(
                        "Unable to build profile. There is a conflict for the following files:\n\n  {}\n  {}",
                        existing.display(),
                        src_file.display()
                    ));
                }
                if prev < priority {
                    continue;
                }
                fs::remove_file(&dst_file)
                    .map_err(|e| format!("unlinking '{}': {e}", dst_file.display()))?;
            } else if m.is_dir() {
                return Err(format!(
                    "collision between non-directory '{}' and directory '{}'",
                    src_file.display(),
                    dst_file.display()
                ));
            }
        }
        state.links += 1;
        if state.links > MAX_LINKS {
            return Err(format!(
                "more than {MAX_LINKS} files in the user environment"
            ));
        }
        symlink(&src_file, &dst_file)
            .map_err(|e| format!("creating '{}': {e}", dst_file.display()))?;
        state.priorities.insert(dst_file, priority);
    }
    Ok(())
}

fn libc_enotdir() -> i32 {
    rustix::io::Errno::NOTDIR.raw_os_error()
}
