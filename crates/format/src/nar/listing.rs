//! Listing an archive's contents: `nix nar ls [-l] [-R] [--json] NAR /`, byte for byte.
//!
//! The listing is produced in one streaming pass: Nix 2.8 prints nodes in the same
//! depth-first, name-sorted order the archive stores them in. Like Nix, which parses
//! the whole archive before printing, we return the listing only once the archive has
//! been read to its end, so a damaged archive prints nothing.
//!
//! Output quirks kept from Nix 2.8 (`src/nix/ls.cc`, `src/libutil/json.cc`):
//! - text lines are `./name`, and a root that is not a directory is listed by the
//!   empty name;
//! - `--long` prints `-r--r--r--`, `-r-xr-xr-x`, `lrwxrwxrwx` or `dr-xr-xr-x`, the
//!   size right-aligned in 20 columns (0 for directories and symlinks), and
//!   ` -> target` for symlinks;
//! - `--json` without `--recursive` shows the root's entries as `{}`; JSON is written
//!   without a trailing newline; strings escape only `"`, `\`, and bytes below
//!   0x20, and other bytes (including invalid UTF-8) are copied as they are.

use std::io::{Read, Write};

use super::error::NarError;
use super::path::NarPath;
use super::reader::{read_nar, Contents, NarVisitor};

/// How to list, mirroring `nix nar ls`'s flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListOptions {
    /// `--long`: file type, permissions and size.
    pub long: bool,
    /// `--recursive`: descend into subdirectories.
    pub recursive: bool,
    /// `--json`: one JSON object instead of lines.
    pub json: bool,
}

/// Lists the archive read from `reader` as `nix nar ls` lists its root `/`; returns the
/// exact bytes that command prints.
pub fn list<R: Read>(reader: R, options: ListOptions) -> Result<Vec<u8>, NarError> {
    let mut lister = Lister {
        options,
        out: Vec::new(),
        first: Vec::new(),
    };
    read_nar(reader, &mut lister)?;
    Ok(lister.out)
}

struct Lister {
    options: ListOptions,
    out: Vec<u8>,
    /// For each open JSON directory object: whether no entry was written yet.
    first: Vec<bool>,
}

/// What `--long` shows for a node.
enum Kind<'a> {
    Regular { executable: bool, size: u64 },
    Symlink { target: &'a [u8] },
    Directory,
}

/// Depth of a node: 0 for the root.
fn depth(path: &NarPath) -> usize {
    path.as_bytes().iter().filter(|&&b| b == b'/').count()
}

impl Lister {
    /// Whether a text line is printed for the node at `path`.
    fn shown(&self, path: &NarPath, kind: &Kind<'_>) -> bool {
        match depth(path) {
            0 => !matches!(kind, Kind::Directory),
            1 => true,
            _ => self.options.recursive,
        }
    }

    fn text_line(&mut self, path: &NarPath, kind: Kind<'_>) {
        if !self.shown(path, &kind) {
            return;
        }
        let out = &mut self.out;
        if self.options.long {
            let (mode, size) = match kind {
                Kind::Regular {
                    executable: true,
                    size,
                } => ("-r-xr-xr-x", size),
                Kind::Regular { size, .. } => ("-r--r--r--", size),
                Kind::Symlink { .. } => ("lrwxrwxrwx", 0),
                Kind::Directory => ("dr-xr-xr-x", 0),
            };
            // Writing to a Vec cannot fail.
            let _ = write!(out, "{mode} {size:20} ");
        }
        if !path.is_root() {
            out.push(b'.');
            out.extend_from_slice(path.as_bytes());
        }
        if let (true, Kind::Symlink { target }) = (self.options.long, kind) {
            out.extend_from_slice(b" -> ");
            out.extend_from_slice(target);
        }
        out.push(b'\n');
    }

    /// Starts the JSON value of the node at `path`: its key inside the parent's
    /// `entries`, if it has one. Returns whether the node's own value is written.
    fn json_key(&mut self, path: &NarPath) -> bool {
        let d = depth(path);
        if d == 0 {
            return true;
        }
        if d > 1 && !self.options.recursive {
            return false;
        }
        if let Some(first) = self.first.last_mut() {
            if !std::mem::replace(first, false) {
                self.out.push(b',');
            }
        }
        json_string(&mut self.out, path.name().unwrap_or_default());
        self.out.push(b':');
        if self.options.recursive {
            true
        } else {
            self.out.extend_from_slice(b"{}");
            false
        }
    }
}

impl NarVisitor for Lister {
    fn regular(
        &mut self,
        path: &NarPath,
        executable: bool,
        contents: &mut Contents<'_>,
    ) -> Result<(), NarError> {
        let size = contents.size();
        if !self.options.json {
            self.text_line(path, Kind::Regular { executable, size });
        } else if self.json_key(path) {
            let _ = write!(self.out, "{{\"type\":\"regular\",\"size\":{size}");
            if executable {
                self.out.extend_from_slice(b",\"executable\":true");
            }
            let _ = write!(self.out, ",\"narOffset\":{}}}", contents.nar_offset());
        }
        Ok(())
    }

    fn symlink(&mut self, path: &NarPath, target: &[u8]) -> Result<(), NarError> {
        if !self.options.json {
            self.text_line(path, Kind::Symlink { target });
        } else if self.json_key(path) {
            self.out
                .extend_from_slice(b"{\"type\":\"symlink\",\"target\":");
            json_string(&mut self.out, target);
            self.out.push(b'}');
        }
        Ok(())
    }

    fn directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        if !self.options.json {
            self.text_line(path, Kind::Directory);
        } else if self.json_key(path) {
            self.out
                .extend_from_slice(b"{\"type\":\"directory\",\"entries\":{");
            self.first.push(true);
        }
        Ok(())
    }

    fn end_directory(&mut self, path: &NarPath) -> Result<(), NarError> {
        if self.options.json && (depth(path) == 0 || self.options.recursive) {
            self.out.extend_from_slice(b"}}");
            self.first.pop();
        }
        Ok(())
    }
}

/// Appends `s` as a JSON string the way Nix 2.8's `toJSON` writes it.
fn json_string(out: &mut Vec<u8>, s: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push(b'"');
    for &b in s {
        match b {
            b'"' | b'\\' => out.extend_from_slice(&[b'\\', b]),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0..=31 => out.extend_from_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]),
            _ => out.push(b),
        }
    }
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_like_nix() {
        let mut out = Vec::new();
        json_string(&mut out, b"a\"\\\n\r\t\x01\x1f\x7f\xc3\xa9\xff");
        assert_eq!(out, b"\"a\\\"\\\\\\n\\r\\t\\u0001\\u001f\x7f\xc3\xa9\xff\"");
    }
}
