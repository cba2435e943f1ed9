//! `builtin:unpack-channel`, what `nix-channel --update` builds, as Nix 2.8's
//! `builtins/unpack-channel.cc`: unpack the tarball `src` (gzip, bzip2, xz or
//! uncompressed, told by its first bytes as libarchive does) into `$out`, which must
//! then hold exactly one entry, and rename that entry to `$out/<channelName>`.
//!
//! The archive is hostile: headers are parsed with the `tar` crate, but the blocks
//! are walked here so that every size is checked before it is used (a GNU long name
//! or a pax header is read only up to [`MAX_NAME`] bytes, never to the length it
//! claims). An entry is refused when its name is absolute or has a `..` component,
//! when it would be written through a symlink or a non-directory, when it is a
//! device, FIFO or other special file, when a symlink's target is absolute or climbs
//! out of the tree, or when a hard link names anything but a regular file unpacked
//! before it. The number of entries, the unpacked bytes and the depth are bounded.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use super::{BuiltinError, Env};
use unrooted_fetch::{is_over_limit, Bounded};
use unrooted_format::narinfo::Compression;

/// The most entries one tarball may have.
const MAX_ENTRIES: u64 = 1_000_000;
/// The most bytes of file contents one tarball may unpack to.
const MAX_UNPACKED: u64 = 16 << 30;
/// The longest name (or link target, or pax header) accepted.
const MAX_NAME: u64 = 64 << 10;
/// The deepest path accepted.
const MAX_DEPTH: usize = 256;

/// The builtin.
pub(crate) fn run(env: &[(OsString, OsString)]) -> Result<(), Box<dyn std::error::Error>> {
    let env = Env(env);
    let out = PathBuf::from(env.require("out")?);
    let channel = env.require("channelName")?;
    let src = PathBuf::from(env.require("src")?);
    unpack_channel(&src, &out, channel.as_bytes()).map_err(Into::into)
}

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> BuiltinError {
    let path = path.to_path_buf();
    move |source| BuiltinError::Io {
        action,
        path,
        source,
    }
}

fn unpack_channel(src: &Path, out: &Path, channel: &[u8]) -> Result<(), BuiltinError> {
    let name = Path::new(std::ffi::OsStr::from_bytes(channel));
    let mut components = name.components();
    if !matches!(
        (components.next(), components.next()),
        (Some(Component::Normal(_)), None)
    ) || channel.contains(&b'/')
    {
        return Err(BuiltinError::ChannelName {
            name: String::from_utf8_lossy(channel).into_owned(),
        });
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(out)
        .map_err(io_err("creating", out))?;
    let file = fs::File::open(src).map_err(io_err("opening", src))?;
    unpack_tarball(decompressed(file, src)?, src, out)?;

    let mut entries = Vec::new();
    for e in fs::read_dir(out).map_err(io_err("reading", out))? {
        entries.push(e.map_err(io_err("reading", out))?.file_name());
        if entries.len() > 1 {
            break;
        }
    }
    if entries.len() != 1 {
        return Err(BuiltinError::ChannelEntries {
            tarball: src.to_path_buf(),
        });
    }
    let from = out.join(&entries[0]);
    let to = out.join(name);
    fs::rename(&from, &to).map_err(io_err("renaming the channel directory", &from))
}

/// The tarball's bytes, decompressed by what its first bytes say it is.
fn decompressed(mut file: fs::File, src: &Path) -> Result<Box<dyn Read>, BuiltinError> {
    let mut magic = [0u8; 6];
    let mut have = 0;
    while have < magic.len() {
        match file.read(&mut magic[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io_err("reading", src)(e)),
        }
    }
    let head = &magic[..have];
    let whole: Box<dyn Read + Send> = Box::new(io::Cursor::new(head.to_vec()).chain(file));
    // gzip is a tarball's compression but never a NAR's, so it is not among the
    // shared dispatch's methods.
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(Box::new(flate2::read::MultiGzDecoder::new(whole)));
    }
    let compression = if head.starts_with(b"BZh") {
        Compression::Bzip2
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Compression::Xz
    } else {
        Compression::None
    };
    Ok(unrooted_fetch::decompressor(compression, whole)
        .expect("none, bzip2 and xz are always supported"))
}

/// What a run of extension headers said about the entry after them.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
}

/// Unpacks a tar stream into the existing directory `dest` (see the module docs).
pub(crate) fn unpack_tarball(
    reader: impl Read,
    src: &Path,
    dest: &Path,
) -> Result<(), BuiltinError> {
    let mut tar = TarStream {
        // Headers and padding count too, so the stream as a whole is bounded.
        reader: Bounded::new(reader, MAX_UNPACKED + MAX_ENTRIES * 2048, "the tarball"),
        src,
        unpacked: 0,
        pending: Pending::default(),
    };
    let mut entries: u64 = 0;
    let mut block = [0u8; 512];
    loop {
        if !read_block(&mut tar.reader, &mut block).map_err(|e| tar.read_err(e))? {
            // Missing end-of-archive blocks: GNU tar accepts this too.
            break;
        }
        if block.iter().all(|&b| b == 0) {
            break;
        }
        entries += 1;
        if entries > MAX_ENTRIES {
            return Err(BuiltinError::TooLarge {
                what: format!("the number of entries of '{}'", src.display()),
                max: MAX_ENTRIES,
                builtin: "unpack-channel",
            });
        }
        tar.entry(&block, dest)?;
    }
    Ok(())
}

/// A tar stream being unpacked.
struct TarStream<'a, R> {
    reader: Bounded<R>,
    /// The tarball, for errors.
    src: &'a Path,
    /// File contents unpacked so far.
    unpacked: u64,
    /// What extension headers said about the next entry.
    pending: Pending,
}

/// An entry of the stream, once its name is known to stay inside.
struct Entry {
    /// Its name as written, for errors.
    shown: String,
    /// Its path relative to the destination.
    rel: PathBuf,
    /// Where it goes.
    target: PathBuf,
    /// Its data's size, and the padding after the data.
    size: u64,
    padding: u64,
}

impl Entry {
    fn hostile(&self, src: &Path, reason: &'static str) -> BuiltinError {
        BuiltinError::HostileEntry {
            tarball: src.to_path_buf(),
            entry: self.shown.clone(),
            reason,
        }
    }
}

impl<R: Read> TarStream<'_, R> {
    fn bad(&self, reason: String) -> BuiltinError {
        BuiltinError::BadTar {
            tarball: self.src.to_path_buf(),
            reason,
        }
    }

    fn read_err(&self, e: io::Error) -> BuiltinError {
        if is_over_limit(&e) {
            BuiltinError::TooLarge {
                what: format!("the tarball '{}'", self.src.display()),
                max: MAX_UNPACKED,
                builtin: "unpack-channel",
            }
        } else {
            self.bad(format!("reading it: {e}"))
        }
    }

    fn skip(&mut self, n: u64) -> Result<(), BuiltinError> {
        skip(&mut self.reader, n).map_err(|e| self.read_err(e))
    }

    /// One entry, its header in `block`.
    fn entry(&mut self, block: &[u8; 512], dest: &Path) -> Result<(), BuiltinError> {
        let header = tar::Header::from_byte_slice(block);
        check_checksum(block).map_err(|r| self.bad(r))?;
        let kind = header.entry_type();
        let size = match self.pending.size.take() {
            Some(s) => s,
            None => header
                .entry_size()
                .map_err(|e| self.bad(format!("an entry size: {e}")))?,
        };
        let padding = (512 - size % 512) % 512;
        if kind.is_gnu_longname() || kind.is_gnu_longlink() || kind.is_pax_local_extensions() {
            return self.extension(kind, size, padding);
        }
        if kind.is_pax_global_extensions() {
            return self.skip(size + padding);
        }
        let name = self
            .pending
            .path
            .take()
            .unwrap_or_else(|| header.path_bytes().into_owned());
        let link = self
            .pending
            .link
            .take()
            .or_else(|| header.link_name_bytes().map(|l| l.into_owned()));
        let shown = String::from_utf8_lossy(&name).into_owned();
        let rel = match relative(&name) {
            Ok(Some(rel)) => rel,
            // `./` itself.
            Ok(None) => return self.skip(size + padding),
            Err(reason) => {
                return Err(BuiltinError::HostileEntry {
                    tarball: self.src.to_path_buf(),
                    entry: shown,
                    reason,
                })
            }
        };
        let entry = Entry {
            shown,
            target: dest.join(&rel),
            rel,
            size,
            padding,
        };
        let hostile = |reason| entry.hostile(self.src, reason);
        // Old (v7) archives mark a directory by a trailing `/` on a file entry.
        if kind.is_dir() || (kind.is_file() && name.ends_with(b"/")) {
            make_parents(dest, &entry.rel, true).map_err(hostile)?;
            return self.skip(size + padding);
        }
        if kind.is_file() || kind.is_contiguous() {
            return self.file(&entry, dest, header.mode().unwrap_or(0o644));
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let link = link.ok_or_else(|| hostile("a link without a target"))?;
            return self.link(&entry, dest, kind.is_symlink(), link);
        }
        Err(hostile("a device, FIFO or other special file"))
    }

    /// A GNU long name or link, or a pax header: remembered for the next entry.
    fn extension(
        &mut self,
        kind: tar::EntryType,
        size: u64,
        padding: u64,
    ) -> Result<(), BuiltinError> {
        if size > MAX_NAME {
            return Err(self.bad(format!(
                "an extension header of {size} bytes (at most {MAX_NAME})"
            )));
        }
        let mut data = vec![0u8; size as usize];
        self.reader
            .read_exact(&mut data)
            .map_err(|e| self.read_err(e))?;
        self.skip(padding)?;
        if !kind.is_pax_local_extensions() {
            // GNU names are NUL-terminated.
            let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
            data.truncate(end);
            if kind.is_gnu_longname() {
                self.pending.path = Some(data);
            } else {
                self.pending.link = Some(data);
            }
            return Ok(());
        }
        for ext in tar::PaxExtensions::new(&data) {
            let ext = ext.map_err(|e| self.bad(format!("a pax header: {e}")))?;
            match ext.key_bytes() {
                b"path" => self.pending.path = Some(ext.value_bytes().to_vec()),
                b"linkpath" => self.pending.link = Some(ext.value_bytes().to_vec()),
                b"size" => {
                    let s = ext
                        .value()
                        .ok()
                        .and_then(|v| v.parse().ok())
                        .ok_or_else(|| self.bad("a pax size that is not a number".into()))?;
                    self.pending.size = Some(s);
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A regular file, executable or not as its mode says.
    fn file(&mut self, entry: &Entry, dest: &Path, mode: u32) -> Result<(), BuiltinError> {
        let hostile = |reason| entry.hostile(self.src, reason);
        let target = &entry.target;
        make_parents(dest, &entry.rel, false).map_err(hostile)?;
        replace_non_dir(target).map_err(hostile)?;
        self.unpacked += entry.size;
        if self.unpacked > MAX_UNPACKED {
            return Err(BuiltinError::TooLarge {
                what: format!("the contents of '{}'", self.src.display()),
                max: MAX_UNPACKED,
                builtin: "unpack-channel",
            });
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if mode & 0o111 != 0 { 0o755 } else { 0o644 })
            .custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32)
            .open(target)
            .map_err(io_err("creating", target))?;
        let mut left = entry.size;
        let mut buf = vec![0u8; (64u64 << 10).min(entry.size.max(1)) as usize];
        while left > 0 {
            let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
            let n = self
                .reader
                .read(&mut buf[..want])
                .map_err(|e| self.read_err(e))?;
            if n == 0 {
                return Err(self.bad(format!("it ends inside '{}'", entry.shown)));
            }
            file.write_all(&buf[..n])
                .map_err(io_err("writing", target))?;
            left -= n as u64;
        }
        self.skip(entry.padding)
    }

    /// A symlink that stays inside the tree, or a hard link to a regular file
    /// unpacked before.
    fn link(
        &mut self,
        entry: &Entry,
        dest: &Path,
        symbolic: bool,
        link: Vec<u8>,
    ) -> Result<(), BuiltinError> {
        let hostile = |reason| entry.hostile(self.src, reason);
        let target = &entry.target;
        if link.len() as u64 > MAX_NAME {
            return Err(hostile("a link target that is too long"));
        }
        make_parents(dest, &entry.rel, false).map_err(hostile)?;
        replace_non_dir(target).map_err(hostile)?;
        if symbolic {
            if !symlink_stays_inside(&entry.rel, &link) {
                return Err(hostile("a symlink pointing out of the tree"));
            }
            std::os::unix::fs::symlink(OsString::from_vec(link), target)
                .map_err(io_err("creating", target))?;
        } else {
            let from = relative(&link)
                .map_err(hostile)?
                .ok_or_else(|| hostile("a hard link to the top directory"))?;
            let existing = dest.join(&from);
            // Only to a regular file unpacked before, reached without a symlink.
            make_parents(dest, &from, false).map_err(hostile)?;
            match fs::symlink_metadata(&existing) {
                Ok(m) if m.file_type().is_file() => {}
                _ => return Err(hostile("a hard link to something not unpacked before")),
            }
            fs::hard_link(&existing, target).map_err(io_err("linking", target))?;
        }
        self.skip(entry.size + entry.padding)
    }
}

/// Reads one 512-byte block; `false` at a clean end of the stream.
fn read_block(r: &mut impl Read, block: &mut [u8; 512]) -> io::Result<bool> {
    let mut have = 0;
    while have < block.len() {
        match r.read(&mut block[have..]) {
            Ok(0) if have == 0 => return Ok(false),
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => have += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    Ok(())
}

/// The header checksum: the byte sum with the checksum field read as spaces.
fn check_checksum(block: &[u8; 512]) -> Result<(), String> {
    let header = tar::Header::from_byte_slice(block);
    let want = header
        .cksum()
        .map_err(|e| format!("a header checksum: {e}"))?;
    let got: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    if got == want {
        Ok(())
    } else {
        Err(format!(
            "a header with checksum {want} where the bytes sum to {got}"
        ))
    }
}

/// An entry name as a relative path of normal components (`./` prefixes dropped);
/// `None` for the top directory itself.
fn relative(name: &[u8]) -> Result<Option<PathBuf>, &'static str> {
    if name.is_empty() {
        return Err("an empty name");
    }
    if name.len() as u64 > MAX_NAME {
        return Err("a name that is too long");
    }
    let mut out = PathBuf::new();
    let mut depth = 0;
    for c in Path::new(std::ffi::OsStr::from_bytes(name)).components() {
        match c {
            Component::Normal(n) => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err("a path that is too deep");
                }
                out.push(n);
            }
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => return Err("an absolute path"),
            Component::ParentDir => return Err("a '..' component"),
        }
    }
    Ok((depth > 0).then_some(out))
}

/// Whether a symlink at `rel` (relative to the top) with `target` stays inside the
/// tree: a relative target made of `..` components that climb no higher than the
/// top, then names only. Every directory above a link is a real one (nothing is
/// unpacked through a symlink), so the climb stays inside; and a name that is itself
/// such a link resolves inside too, so no chain of links can leave the tree (a `..`
/// after a name could: `a -> .` then `b -> a/..`).
fn symlink_stays_inside(rel: &Path, target: &[u8]) -> bool {
    if target.is_empty() || target.starts_with(b"/") {
        return false;
    }
    let mut depth = rel.components().count().saturating_sub(1);
    let mut named = false;
    for c in Path::new(std::ffi::OsStr::from_bytes(target)).components() {
        match c {
            Component::Normal(_) => named = true,
            Component::CurDir => {}
            Component::ParentDir if !named => match depth.checked_sub(1) {
                Some(d) => depth = d,
                None => return false,
            },
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return false,
        }
    }
    true
}

/// Creates the missing directories on the way to `rel` under `dest` (and `rel`
/// itself when `whole`), refusing to pass through anything but a real directory:
/// nothing is ever written through a symlink.
fn make_parents(dest: &Path, rel: &Path, whole: bool) -> Result<(), &'static str> {
    let comps: Vec<Component<'_>> = rel.components().collect();
    let upto = if whole {
        comps.len()
    } else {
        comps.len().saturating_sub(1)
    };
    let mut at = dest.to_path_buf();
    for c in &comps[..upto] {
        at.push(c);
        match fs::symlink_metadata(&at) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) => return Err("a path through a symlink or a non-directory"),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::DirBuilder::new()
                    .mode(0o755)
                    .create(&at)
                    .map_err(|_| "a directory that cannot be created")?;
            }
            Err(_) => return Err("a path that cannot be inspected"),
        }
    }
    Ok(())
}

/// Removes what a later entry of the same name replaces (as tar does); a directory
/// is never replaced by a file.
fn replace_non_dir(target: &Path) -> Result<(), &'static str> {
    match fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_dir() => Err("a file where a directory was unpacked"),
        Ok(_) => fs::remove_file(target).map_err(|_| "an entry that cannot be replaced"),
        Err(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tar archive built with the `tar` crate's builder, entries given raw so
    /// that hostile names reach the archive as written.
    /// Name, kind, contents and link target of one test entry.
    type Entry<'a> = (&'a [u8], tar::EntryType, &'a [u8], Option<&'a [u8]>);

    fn archive(entries: &[Entry<'_>]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            // Written raw: `set_path` itself refuses `..` and absolute names.
            h.as_old_mut().name[..name.len()].copy_from_slice(name);
            if let Some(l) = link {
                h.as_old_mut().linkname[..l.len()].copy_from_slice(l);
            }
            h.set_cksum();
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    fn unpack(bytes: &[u8]) -> (tempfile::TempDir, Result<(), BuiltinError>) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out");
        fs::create_dir(&dest).unwrap();
        let r = unpack_tarball(bytes, Path::new("/t.tar"), &dest);
        (dir, r)
    }

    use tar::EntryType as T;

    #[test]
    fn unpacks_files_dirs_and_links() {
        let bytes = archive(&[
            (b"./", T::Directory, b"", None),
            (b"nixpkgs/", T::Directory, b"", None),
            (b"nixpkgs/default.nix", T::Regular, b"{ }: 1\n", None),
            (b"nixpkgs/lib/x", T::Regular, b"x", None),
            (
                b"nixpkgs/l",
                T::Symlink,
                b"",
                Some(b"../nixpkgs/default.nix"),
            ),
            (b"nixpkgs/h", T::Link, b"", Some(b"nixpkgs/lib/x")),
            (b"nixpkgs/v7dir/", T::Regular, b"", None),
            (b"nixpkgs/v7dir/y", T::Regular, b"y", None),
        ]);
        let (dir, r) = unpack(&bytes);
        r.unwrap();
        let out = dir.path().join("out/nixpkgs");
        assert_eq!(fs::read(out.join("default.nix")).unwrap(), b"{ }: 1\n");
        assert_eq!(fs::read(out.join("h")).unwrap(), b"x");
        assert_eq!(fs::read(out.join("v7dir/y")).unwrap(), b"y");
        assert_eq!(
            fs::read_link(out.join("l")).unwrap(),
            Path::new("../nixpkgs/default.nix")
        );
    }

    #[test]
    fn refuses_hostile_entries() {
        for (entries, why) in [
            (
                vec![(&b"/etc/x"[..], T::Regular, &b"x"[..], None)],
                "an absolute path",
            ),
            (
                vec![(&b"a/../../x"[..], T::Regular, &b"x"[..], None)],
                "a '..' component",
            ),
            (
                vec![(&b"dev"[..], T::Char, &b""[..], None)],
                "a device, FIFO or other special file",
            ),
            (
                vec![(&b"fifo"[..], T::Fifo, &b""[..], None)],
                "a device, FIFO or other special file",
            ),
            (
                vec![(&b"a/l"[..], T::Symlink, &b""[..], Some(&b"../../etc"[..]))],
                "a symlink pointing out of the tree",
            ),
            (
                vec![(&b"l"[..], T::Symlink, &b""[..], Some(&b"/etc"[..]))],
                "a symlink pointing out of the tree",
            ),
            (
                vec![
                    (&b"a"[..], T::Symlink, &b""[..], Some(&b"."[..])),
                    (&b"b"[..], T::Symlink, &b""[..], Some(&b"a/.."[..])),
                ],
                "a symlink pointing out of the tree",
            ),
            (
                vec![
                    (&b"l"[..], T::Symlink, &b""[..], Some(&b"d"[..])),
                    (&b"d/"[..], T::Directory, &b""[..], None),
                    (&b"l/x"[..], T::Regular, &b"x"[..], None),
                ],
                "a path through a symlink or a non-directory",
            ),
            (
                vec![(&b"h"[..], T::Link, &b""[..], Some(&b"/etc/passwd"[..]))],
                "an absolute path",
            ),
            (
                vec![(&b"h"[..], T::Link, &b""[..], Some(&b"missing"[..]))],
                "a hard link to something not unpacked before",
            ),
        ] {
            let (_dir, r) = unpack(&archive(&entries));
            match r {
                Err(BuiltinError::HostileEntry { reason, .. }) => assert_eq!(reason, why),
                other => panic!("{why}: {other:?}"),
            }
        }
    }

    #[test]
    fn bounds_extension_headers_and_checks_checksums() {
        // A GNU long name claiming a gigabyte is refused before anything is read.
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(T::GNULongName);
        h.set_size(1 << 30);
        h.set_cksum();
        let mut bytes = h.as_bytes().to_vec();
        bytes.extend_from_slice(&[0u8; 1024]);
        let (_dir, r) = unpack(&bytes);
        assert!(matches!(r, Err(BuiltinError::BadTar { .. })), "{r:?}");

        let mut bytes = archive(&[(b"f", T::Regular, b"x", None)]);
        bytes[0] = b'g';
        let (_dir, r) = unpack(&bytes);
        match r {
            Err(BuiltinError::BadTar { reason, .. }) => {
                assert!(reason.contains("checksum"), "{reason}")
            }
            other => panic!("{other:?}"),
        }

        // Long names through the tar crate's own GNU and pax writers.
        let long = format!("top/{}/file", "d".repeat(200));
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_size(2);
        h.set_mode(0o755);
        b.append_data(&mut h, &long, &b"hi"[..]).unwrap();
        let bytes = b.into_inner().unwrap();
        let (dir, r) = unpack(&bytes);
        r.unwrap();
        assert_eq!(fs::read(dir.path().join("out").join(&long)).unwrap(), b"hi");
    }

    #[test]
    fn channel_is_renamed_and_must_be_one_entry() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("c.tar.gz");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&archive(&[(
            b"nixexprs-1/default.nix",
            T::Regular,
            b"1",
            None,
        )]))
        .unwrap();
        fs::write(&src, gz.finish().unwrap()).unwrap();
        let out = dir.path().join("out");
        unpack_channel(&src, &out, b"nixpkgs").unwrap();
        assert_eq!(fs::read(out.join("nixpkgs/default.nix")).unwrap(), b"1");

        let two = dir.path().join("two.tar");
        fs::write(
            &two,
            archive(&[
                (b"a", T::Regular, b"1", None),
                (b"b", T::Regular, b"2", None),
            ]),
        )
        .unwrap();
        let r = unpack_channel(&two, &dir.path().join("out2"), b"nixpkgs");
        assert!(
            matches!(r, Err(BuiltinError::ChannelEntries { .. })),
            "{r:?}"
        );
        for bad in [&b"a/b"[..], b"..", b".", b""] {
            let r = unpack_channel(&two, &dir.path().join("out3"), bad);
            assert!(matches!(r, Err(BuiltinError::ChannelName { .. })), "{r:?}");
        }
    }
}
