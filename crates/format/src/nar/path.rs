//! The path of a node inside an archive, used to say where an error happened.

use std::fmt;

/// Where a node sits inside a NAR: empty for the root, `/a/b` for entry `b` of
/// directory `a`. Names are raw bytes (NAR names need not be UTF-8); display is lossy
/// and escapes control characters so an error message stays on one line.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct NarPath(Vec<u8>);

impl NarPath {
    /// The root node.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// The raw bytes: empty for the root, otherwise `/`-separated names with a leading
    /// `/`.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Whether this is the root node.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The last name, or `None` for the root.
    pub fn name(&self) -> Option<&[u8]> {
        let i = self.0.iter().rposition(|&b| b == b'/')?;
        Some(&self.0[i + 1..])
    }

    /// The child `name` of this path.
    pub fn join(&self, name: &[u8]) -> Self {
        let mut child = self.clone();
        child.push(name);
        child
    }

    /// The path whose raw bytes are `bytes` (as [`NarPath::as_bytes`] gives them).
    pub(crate) fn from_raw(bytes: Vec<u8>) -> Self {
        Self(bytes)
    }

    pub(crate) fn push(&mut self, name: &[u8]) {
        self.0.push(b'/');
        self.0.extend_from_slice(name);
    }

    pub(crate) fn pop(&mut self) {
        let i = self.0.iter().rposition(|&b| b == b'/').unwrap_or(0);
        self.0.truncate(i);
    }
}

/// Writes `bytes` lossily as UTF-8 with control characters escaped.
pub(crate) fn fmt_lossy(bytes: &[u8], f: &mut fmt::Formatter<'_>) -> fmt::Result {
    for c in String::from_utf8_lossy(bytes).chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
}

/// Bytes shown lossily (see [`NarPath`]); for names and tags inside error messages.
#[derive(Clone, PartialEq, Eq)]
pub struct DisplayBytes(pub Vec<u8>);

impl fmt::Display for DisplayBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt_lossy(&self.0, f)
    }
}

impl fmt::Debug for DisplayBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{self}\"")
    }
}

impl fmt::Display for NarPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("/")
        } else {
            fmt_lossy(&self.0, f)
        }
    }
}

impl fmt::Debug for NarPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NarPath(\"{self}\")")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_pop_name() {
        let mut p = NarPath::root();
        assert_eq!(p.to_string(), "/");
        assert_eq!(p.name(), None);
        p.push(b"a");
        p.push(b"b\nc");
        assert_eq!(p.to_string(), "/a/b\\nc");
        assert_eq!(p.name(), Some(&b"b\nc"[..]));
        p.pop();
        assert_eq!(p.as_bytes(), b"/a");
        p.pop();
        assert!(p.is_root());
    }
}
