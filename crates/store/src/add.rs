//! Adding paths: receive into the temporary area, check, canonicalise, move into
//! place, register.
//!
//! The invariant is that a path is valid in the database only when its files are
//! complete at their final name: every byte is written, checked and (with
//! `fsync_paths`) flushed inside the private temporary area, moved into place with
//! one `rename`, and only then registered in one transaction. A crash at any moment
//! leaves either an invalid path on disk (garbage, replaced by the next add) or a
//! temporary entry (swept at the next open), never a valid path with missing bytes.

use std::collections::{BTreeMap, BTreeSet};
use std::error::Error as StdError;
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{renameat_with, RenameFlags, CWD};
use unrooted_db::{Registration, ValidPathInfo};
use unrooted_format::derivation::hash_modulo::DrvHasher;
use unrooted_format::derivation::{name_from_drv_path, Derivation};
use unrooted_format::export::ExportReader;
use unrooted_format::nar;
use unrooted_format::refscan::HashModuloSink;
use unrooted_format::store_path::HASH_PART_LEN;
use unrooted_format::{
    ContentAddress, FileIngestionMethod, Hash, HashAlgo, Hasher, StorePath, StorePathName,
};

use crate::canonicalise::{canonicalise_entry, canonicalise_path_metadata};
use crate::delete::delete_tree;
use crate::error::StoreError;
use crate::store::LocalStore;

/// Whether an added path must carry a trusted signature (or a valid content
/// address) when the store's `require_sigs` is on (Nix's `CheckSigsFlag`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckSigs {
    /// Check (untrusted clients, `nix copy` without `--no-check-sigs`).
    Check,
    /// Do not check (trusted clients that asked for it, locally built paths).
    DontCheck,
}

/// A tree in the temporary area; deleted on drop unless it was moved into place.
struct Received {
    tmp: PathBuf,
    installed: bool,
}

impl Drop for Received {
    fn drop(&mut self) {
        if !self.installed {
            if let Err(e) = delete_tree(&self.tmp) {
                tracing::warn!(error = %e, "could not remove a temporary tree");
            }
        }
    }
}

/// A second digest computed over an incoming NAR besides its SHA-256.
enum Extra {
    None,
    /// The content hash of a recursive path with another algorithm than SHA-256.
    Plain(Box<Hasher>),
    /// The content hash of a recursive path modulo its own hash part.
    Modulo(Box<HashModuloSink>),
}

/// Passes a stream through while hashing it with SHA-256 (the NAR hash), counting
/// its bytes, and feeding the [`Extra`] digest, so a NAR is hashed while it is
/// unpacked instead of being read back.
struct Tee<'r> {
    inner: &'r mut dyn Read,
    nar: Hasher,
    size: u64,
    extra: Extra,
}

impl Tee<'_> {
    fn new(inner: &mut dyn Read, extra: Extra) -> Tee<'_> {
        Tee {
            inner,
            nar: Hasher::new(HashAlgo::Sha256),
            size: 0,
            extra,
        }
    }
}

impl Read for Tee<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.nar.update(&buf[..n]);
        self.size += n as u64;
        match &mut self.extra {
            Extra::None => {}
            Extra::Plain(h) => h.update(&buf[..n]),
            Extra::Modulo(m) => m.update(&buf[..n]),
        }
        Ok(n)
    }
}

/// A `Write` sink that hashes and counts (for NARs produced by `dump_path`).
struct HashingWriter<W> {
    inner: W,
    hasher: Hasher,
    size: u64,
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

fn hash_part_bytes(path: &StorePath) -> [u8; HASH_PART_LEN] {
    let mut out = [0u8; HASH_PART_LEN];
    out.copy_from_slice(path.hash_part().as_bytes());
    out
}

fn validate_name(name: &str) -> Result<StorePathName, StoreError> {
    StorePathName::new(name).map_err(|source| StoreError::InvalidName {
        name: name.chars().take(256).collect(),
        source,
    })
}

impl LocalStore {
    fn received(&self, what: &str) -> Received {
        Received {
            tmp: self.tmp.new_path(what),
            installed: false,
        }
    }

    /// Adds a path whose NAR arrives on `nar` with its metadata in `info`
    /// (AddToStoreNar, `nix-store --import`, `nix copy`).
    ///
    /// The NAR must hash to `info.nar_hash` and be `info.nar_size` bytes long, and a
    /// `ca` claim must hold for the contents and give `info.path`; otherwise nothing
    /// is added. With [`CheckSigs::Check`] and `require_sigs`, the path needs a valid
    /// signature by a trusted key or a content address. An already valid path is not
    /// touched unless `repair` is set; its NAR is still read to its end, so the
    /// stream stays in step. On an error the stream may be left in the middle of
    /// the NAR; callers on a framed stream must drain the frame.
    pub fn add_to_store_nar(
        &self,
        info: &ValidPathInfo,
        nar: &mut dyn Read,
        repair: bool,
        check_sigs: CheckSigs,
    ) -> Result<(), StoreError> {
        let dir = self.store_dir();
        let path_text = self.print_path(&info.path);
        if check_sigs == CheckSigs::Check
            && self.config.require_sigs
            && !info.is_trusted(dir, &self.config.trusted_public_keys)
        {
            return Err(StoreError::Untrusted { path: path_text });
        }
        if info.ca.is_some() && !info.ca_matches_path(dir) {
            return Err(StoreError::NotContentAddressed { path: path_text });
        }
        let drain = |nar: &mut dyn Read| {
            nar::copy_nar(nar, &mut io::sink())
                .map(|_| ())
                .map_err(|source| StoreError::Restore {
                    path: path_text.clone(),
                    source: Box::new(source),
                })
        };
        if !repair && self.is_valid_path(&info.path)? {
            return drain(nar);
        }
        let real = self.real_path(&info.path);
        let _lock = self.locks.lock(&real)?;
        if !repair && self.is_valid_path(&info.path)? {
            return drain(nar);
        }

        let extra = match &info.ca {
            Some(ContentAddress::Fixed {
                method: FileIngestionMethod::Recursive,
                hash,
            }) => Extra::Modulo(Box::new(HashModuloSink::new(
                hash.algo(),
                hash_part_bytes(&info.path),
            ))),
            _ => Extra::None,
        };
        let received = self.received("nar");
        let mut tee = Tee::new(nar, extra);
        nar::restore(&mut tee, &received.tmp).map_err(|source| StoreError::Restore {
            path: path_text.clone(),
            source: Box::new(source),
        })?;
        let Tee {
            nar: nar_hasher,
            size,
            extra,
            ..
        } = tee;
        let actual = nar_hasher.finish();
        if actual != info.nar_hash {
            return Err(StoreError::HashMismatch {
                path: path_text,
                expected: Box::new(info.nar_hash),
                actual: Box::new(actual),
            });
        }
        if size != info.nar_size {
            return Err(StoreError::SizeMismatch {
                path: path_text,
                expected: info.nar_size,
                actual: size,
            });
        }
        if let Some(ca) = &info.ca {
            check_received_ca(ca, extra, &received.tmp, &info.path, &path_text)?;
        }
        let info = info.clone();
        if info.path.is_derivation() {
            let bytes = fs::read(&received.tmp).map_err(|source| StoreError::Receive {
                name: path_text.clone(),
                source,
            })?;
            let reg = self.derivation_registration(info, &bytes)?;
            return self.install(received, reg, repair);
        }
        self.install(received, Registration::new(info), repair)
    }

    /// Adds content-addressed content (AddToStore ≥ 1.25: `fixed:r:<algo>` sends a
    /// NAR, `fixed:<algo>` the file's bytes) named `name` with `references`, and
    /// returns the path's record. Adding what is already valid just returns it.
    /// References are allowed only for recursive SHA-256 (Nix's `source` paths).
    pub fn add_ca(
        &self,
        name: &str,
        method: FileIngestionMethod,
        algo: HashAlgo,
        content: &mut dyn Read,
        references: &BTreeSet<StorePath>,
        repair: bool,
    ) -> Result<ValidPathInfo, StoreError> {
        let name = validate_name(name)?;
        let received = self.received("ca");
        let (nar_hash, nar_size, ca_hash) = match method {
            FileIngestionMethod::Recursive => {
                let extra = if algo == HashAlgo::Sha256 {
                    Extra::None
                } else {
                    Extra::Plain(Box::new(Hasher::new(algo)))
                };
                let mut tee = Tee::new(content, extra);
                nar::restore(&mut tee, &received.tmp).map_err(|source| StoreError::Restore {
                    path: name.to_string(),
                    source: Box::new(source),
                })?;
                let nar_hash = tee.nar.finish();
                let ca_hash = match tee.extra {
                    Extra::Plain(h) => (*h).finish(),
                    _ => nar_hash,
                };
                (nar_hash, tee.size, ca_hash)
            }
            FileIngestionMethod::Flat => {
                let err = |source| StoreError::Receive {
                    name: name.to_string(),
                    source,
                };
                let file = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o644)
                    .open(&received.tmp)
                    .map_err(err)?;
                let mut sink = HashingWriter {
                    inner: BufWriter::new(file),
                    hasher: Hasher::new(algo),
                    size: 0,
                };
                io::copy(content, &mut sink).map_err(err)?;
                sink.flush().map_err(err)?;
                let ca_hash = sink.hasher.finish();
                let (nar_hash, nar_size) = self.nar_hash_of(&received.tmp)?;
                (nar_hash, nar_size, ca_hash)
            }
        };
        let ca = ContentAddress::Fixed {
            method,
            hash: ca_hash,
        };
        let path = ca
            .store_path(self.store_dir(), &name, references, false)
            .map_err(|source| StoreError::ComputePath {
                name: name.to_string(),
                source,
            })?;
        let mut info = ValidPathInfo::new(path, nar_hash);
        info.nar_size = nar_size;
        info.references = references.clone();
        info.ca = Some(ca);
        self.finish_computed(received, info, repair)
    }

    /// Adds a text file (`builtins.toFile`, a `.drv`; AddTextToStore and AddToStore
    /// `text:sha256`) and returns its record. A `.drv` is parsed, its output paths
    /// are checked, and its outputs are recorded with it.
    pub fn add_text(
        &self,
        name: &str,
        text: &[u8],
        references: &BTreeSet<StorePath>,
        repair: bool,
    ) -> Result<ValidPathInfo, StoreError> {
        let name = validate_name(name)?;
        let hash = Hash::sha256(unrooted_format::hash::sha256(text));
        let ca = ContentAddress::Text(hash);
        let path = ca
            .store_path(self.store_dir(), &name, references, false)
            .map_err(|source| StoreError::ComputePath {
                name: name.to_string(),
                source,
            })?;
        if references.contains(&path) {
            return Err(StoreError::TextSelfReference {
                name: name.to_string(),
            });
        }
        if !repair {
            if let Some(info) = self.query_path_info(&path)? {
                return Ok(info);
            }
        }
        let received = self.received("text");
        let err = |source| StoreError::Receive {
            name: self.print_path(&path),
            source,
        };
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&received.tmp)
            .map_err(err)?;
        file.write_all(text).map_err(err)?;
        drop(file);
        let (nar_hash, nar_size) = self.nar_hash_of(&received.tmp)?;
        let mut info = ValidPathInfo::new(path, nar_hash);
        info.nar_size = nar_size;
        info.references = references.clone();
        info.ca = Some(ca);
        self.finish_computed(received, info, repair)
    }

    /// Imports a `nix-store --export` stream; returns the paths in stream order.
    /// Each NAR is spooled to the temporary area (its path comes after it in the
    /// stream), then added like [`LocalStore::add_to_store_nar`] with the NAR hash
    /// and size computed here, as Nix does.
    pub fn import_paths(
        &self,
        stream: &mut dyn Read,
        check_sigs: CheckSigs,
    ) -> Result<Vec<StorePath>, StoreError> {
        let mut reader = ExportReader::new(stream, self.store_dir().clone());
        let mut imported = Vec::new();
        loop {
            let spool = self.received("import");
            let err = |source| StoreError::Receive {
                name: spool.tmp.display().to_string(),
                source,
            };
            let file = fs::OpenOptions::new()
                .write(true)
                .read(true)
                .create_new(true)
                .mode(0o600)
                .open(&spool.tmp)
                .map_err(err)?;
            let mut sink = HashingWriter {
                inner: BufWriter::new(file),
                hasher: Hasher::new(HashAlgo::Sha256),
                size: 0,
            };
            let Some(record) =
                reader
                    .next_record(&mut sink)
                    .map_err(|source| StoreError::Import {
                        source: Box::new(source),
                    })?
            else {
                break;
            };
            sink.flush().map_err(err)?;
            let HashingWriter { hasher, size, .. } = sink;
            let mut info = ValidPathInfo::new(record.path, hasher.finish());
            info.nar_size = size;
            info.deriver = record.deriver;
            info.references = record.references.into_iter().collect();
            let mut nar = BufReader::new(File::open(&spool.tmp).map_err(err)?);
            self.add_to_store_nar(&info, &mut nar, false, check_sigs)?;
            imported.push(info.path);
        }
        Ok(imported)
    }

    /// The NAR hash and size of a file tree.
    pub(crate) fn nar_hash_of(&self, path: &Path) -> Result<(Hash, u64), StoreError> {
        let mut sink = HashingWriter {
            inner: io::sink(),
            hasher: Hasher::new(HashAlgo::Sha256),
            size: 0,
        };
        nar::dump_path(path, &mut sink).map_err(|source| StoreError::Dump {
            path: path.to_owned(),
            source: Box::new(source),
        })?;
        Ok((sink.hasher.finish(), sink.size))
    }

    /// Finishes an add whose path was computed from the contents: lock, and either
    /// return the existing valid path or move this one into place.
    fn finish_computed(
        &self,
        received: Received,
        info: ValidPathInfo,
        repair: bool,
    ) -> Result<ValidPathInfo, StoreError> {
        let path = info.path.clone();
        let real = self.real_path(&path);
        let _lock = self.locks.lock(&real)?;
        if repair || !self.is_valid_path(&path)? {
            let reg = if path.is_derivation() {
                let bytes = fs::read(&received.tmp).map_err(|source| StoreError::Receive {
                    name: self.print_path(&path),
                    source,
                })?;
                self.derivation_registration(info, &bytes)?
            } else {
                Registration::new(info)
            };
            self.install(received, reg, repair)?;
        }
        self.query_path_info(&path)?
            .ok_or_else(|| StoreError::NotValid {
                path: self.print_path(&path),
            })
    }

    /// Parses a `.drv` being added, checks that its input-addressed and fixed output
    /// paths are what its contents give (Nix's `checkDerivationOutputs`), and returns
    /// its registration with the output rows.
    fn derivation_registration(
        &self,
        info: ValidPathInfo,
        bytes: &[u8],
    ) -> Result<Registration, StoreError> {
        let dir = self.store_dir();
        let path_text = self.print_path(&info.path);
        let name = name_from_drv_path(&info.path).unwrap_or_default();
        let drv =
            Derivation::parse(dir, bytes, name).map_err(|source| StoreError::ParseDerivation {
                path: path_text.clone(),
                source: Box::new(source),
            })?;
        let real_store = self.config.real_store_dir.clone();
        let load = |p: &StorePath| -> Result<Derivation, Box<dyn StdError + Send + Sync>> {
            let bytes = fs::read(real_store.join(p.to_base_name()))?;
            let name = name_from_drv_path(p).unwrap_or_default();
            Ok(Derivation::parse(dir, &bytes, name)?)
        };
        let mut hasher = DrvHasher::new(dir.clone(), load);
        let mismatches =
            hasher
                .check_outputs(&drv)
                .map_err(|source| StoreError::HashDerivation {
                    path: path_text.clone(),
                    source: Box::new(source),
                })?;
        if let Some(mismatch) = mismatches.into_iter().next() {
            return Err(StoreError::IncorrectDerivationOutputs {
                path: path_text,
                mismatch: Box::new(mismatch),
            });
        }
        let derivation_outputs: BTreeMap<String, StorePath> = drv
            .outputs
            .iter()
            .filter_map(|(name, out)| out.path().map(|p| (name.clone(), p.clone())))
            .collect();
        Ok(Registration {
            info,
            derivation_outputs,
        })
    }

    /// Canonicalises a received tree, moves it to its final name and registers it.
    /// The caller holds the path's lock.
    fn install(
        &self,
        received: Received,
        reg: Registration,
        repair: bool,
    ) -> Result<(), StoreError> {
        let tmp = received.tmp.clone();
        let real = self.real_path(&reg.info.path);
        canonicalise_path_metadata(&tmp)?;
        let exists = fs::symlink_metadata(&real).is_ok();
        // A valid path must never be missing, even for an instant: a repair swaps
        // the new copy in atomically (and the old one is deleted).
        let swap = exists && repair && self.is_valid_path(&reg.info.path)?;
        self.move_into_place(received, &real, swap)?;
        if self.config.fsync_paths {
            self.sync_store()?;
        }
        self.db().register_paths(&[reg])?;
        Ok(())
    }
}

fn make_top_writable(path: &Path) -> Result<(), StoreError> {
    let meta = fs::symlink_metadata(path).map_err(|source| StoreError::Canonicalise {
        path: path.to_owned(),
        source,
    })?;
    if meta.is_dir() {
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).map_err(|source| {
            StoreError::Canonicalise {
                path: path.to_owned(),
                source,
            }
        })?;
    }
    Ok(())
}

/// Nix's `hashCAPath` for flat content: the file's bytes hashed modulo the path's own
/// hash part.
fn hash_file_modulo(file: &Path, algo: HashAlgo, path: &StorePath) -> Result<Hash, StoreError> {
    let err = |source| StoreError::Read {
        path: file.to_owned(),
        source,
    };
    let meta = fs::symlink_metadata(file).map_err(err)?;
    if !meta.is_file() {
        return Err(err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "flat content address on something that is not a regular file",
        )));
    }
    let mut sink = HashModuloSink::new(algo, hash_part_bytes(path));
    io::copy(&mut File::open(file).map_err(err)?, &mut sink).map_err(err)?;
    Ok(sink.finish().hash)
}

impl LocalStore {
    /// A fresh name inside the store's private temporary area: a directory of mode
    /// 0700 on the store's own file system, so whatever is made there (a build's
    /// sandbox root and the outputs built in it) reaches the store with one `rename`.
    /// Nothing exists at the returned path yet; the caller removes what it creates.
    pub fn new_temp_path(&self, what: &str) -> PathBuf {
        self.tmp.new_path(what)
    }

    /// Installs the outputs of one build: each `(source, info)` tree is canonicalised,
    /// renamed from `source` (on the store's file system, e.g. under
    /// [`LocalStore::new_temp_path`]) to its final name, given its canonical mode back,
    /// and then all of them are registered in one transaction, so a dependent never
    /// sees some outputs of a derivation valid and others not. A `source` that already
    /// is the final path (an unsandboxed builder writes there) is only canonicalised.
    /// With `repair`, valid outputs are swapped for the new trees atomically.
    pub fn install_built_outputs(
        &self,
        outputs: &[(PathBuf, ValidPathInfo)],
        repair: bool,
    ) -> Result<(), StoreError> {
        self.install_built_outputs_held(outputs, repair, None)
    }

    /// [`LocalStore::install_built_outputs`] by a build that holds the locks of its
    /// outputs (`held`, from [`LocalStore::lock_outputs`]); paths not among them are
    /// locked here.
    pub fn install_built_outputs_held(
        &self,
        outputs: &[(PathBuf, ValidPathInfo)],
        repair: bool,
        held: Option<&crate::OutputLocks<'_>>,
    ) -> Result<(), StoreError> {
        let mut order: Vec<&(PathBuf, ValidPathInfo)> = outputs.iter().collect();
        // One global lock order, so two installers of overlapping sets cannot deadlock.
        order.sort_by(|a, b| a.1.path.cmp(&b.1.path));
        let mut locks = Vec::with_capacity(order.len());
        for (_, info) in &order {
            if held.is_some_and(|h| h.holds(&info.path)) {
                continue;
            }
            locks.push(self.locks.lock(&self.real_path(&info.path))?);
        }
        let mut regs = Vec::with_capacity(order.len());
        for (source, info) in order {
            let real = self.real_path(&info.path);
            canonicalise_path_metadata(source)?;
            if *source != real {
                let valid = self.is_valid_path(&info.path)?;
                if valid && !repair {
                    // Someone else (another store process) finished it meanwhile; the
                    // contents are equivalent by construction, keep the valid one.
                    delete_tree(source)?;
                    continue;
                }
                let received = Received {
                    tmp: source.clone(),
                    installed: false,
                };
                self.move_into_place(received, &real, valid && repair)?;
            }
            regs.push(Registration::new(info.clone()));
        }
        if self.config.fsync_paths && !regs.is_empty() {
            self.sync_store()?;
        }
        self.db().register_paths(&regs)?;
        drop(locks);
        Ok(())
    }

    /// The rename half of [`LocalStore::install`] for a canonicalised tree: swap
    /// (repairing a valid path) or replace an invalid leftover, then restore the top's
    /// canonical mode. The caller holds the path's lock.
    fn move_into_place(
        &self,
        mut received: Received,
        real: &Path,
        swap: bool,
    ) -> Result<(), StoreError> {
        let tmp = received.tmp.clone();
        // Moving a directory to another parent rewrites its `..`, which needs write
        // permission on the directory itself; it is made read-only again at its final
        // name below (`canonicalise_entry`).
        make_top_writable(&tmp)?;
        if swap {
            make_top_writable(real)?;
            renameat_with(CWD, &tmp, CWD, real, RenameFlags::EXCHANGE).map_err(|e| {
                StoreError::Move {
                    from: tmp.clone(),
                    to: real.to_owned(),
                    source: e.into(),
                }
            })?;
            canonicalise_entry(real)?;
            // `tmp` now holds the old copy, which `received`'s drop deletes.
            return Ok(());
        }
        loop {
            match renameat_with(CWD, &tmp, CWD, real, RenameFlags::NOREPLACE) {
                Ok(()) => break,
                Err(e) if e == rustix::io::Errno::EXIST || e == rustix::io::Errno::NOTEMPTY => {
                    self.remove_invalid_leftover(real)?;
                }
                Err(e) => {
                    return Err(StoreError::Move {
                        from: tmp.clone(),
                        to: real.to_owned(),
                        source: e.into(),
                    })
                }
            }
        }
        received.installed = true;
        canonicalise_entry(real)?;
        Ok(())
    }

    /// Removes what is at `real`, which is not a valid path (an add interrupted after
    /// its rename, or garbage): moves it into our temporary area and deletes it from
    /// there. The caller holds the path's lock.
    fn remove_invalid_leftover(&self, real: &Path) -> Result<(), StoreError> {
        tracing::info!(path = %real.display(), "replacing invalid path on disk");
        let garbage = self.tmp.new_path("garbage");
        make_top_writable(real)?;
        fs::rename(real, &garbage).map_err(|source| StoreError::Move {
            from: real.to_owned(),
            to: garbage.clone(),
            source,
        })?;
        delete_tree(&garbage)
    }

    /// Flushes the store's file system (`fsync-store-paths`), before what was added
    /// to it is registered.
    fn sync_store(&self) -> Result<(), StoreError> {
        let dir = &self.config.real_store_dir;
        let err = |source| StoreError::Sync {
            path: dir.clone(),
            source,
        };
        let store = File::open(dir).map_err(err)?;
        rustix::fs::syncfs(&store).map_err(|e| err(e.into()))
    }
}

/// Checks that a received path's content gives the content address `ca` claims for
/// `path` (`extra` holds the modulo hash computed while the NAR streamed in, for
/// recursive fixed-output addresses; other forms hash the restored file at `tmp`).
fn check_received_ca(
    ca: &ContentAddress,
    extra: Extra,
    tmp: &Path,
    path: &StorePath,
    path_text: &str,
) -> Result<(), StoreError> {
    let (expected, actual) = match ca {
        ContentAddress::Fixed {
            method: FileIngestionMethod::Recursive,
            hash,
        } => match extra {
            Extra::Modulo(m) => (*hash, Some((*m).finish().hash)),
            _ => (*hash, None),
        },
        ContentAddress::Fixed { hash, .. } | ContentAddress::Text(hash) => {
            (*hash, Some(hash_file_modulo(tmp, hash.algo(), path)?))
        }
    };
    if actual != Some(expected) {
        return Err(StoreError::CaHashMismatch {
            path: path_text.to_owned(),
            expected: Box::new(expected),
            actual: Box::new(actual.unwrap_or(Hash::zero(expected.algo()))),
        });
    }
    Ok(())
}
