//! Reference scanning and hash rewriting over byte streams (Nix's `references.cc`).
//!
//! After a build, Nix dumps each output as a NAR and searches it for the 32-character
//! hash part of every candidate path (the input closure and the outputs); each hash
//! part found is a reference. The match is exact on those 32 bytes, with no store
//! directory or name required. Because every hash part is Nix base32, a byte outside
//! the alphabet ends every window containing it, and the scanner jumps past it: on
//! binary data most windows are rejected after looking at one byte. The result is the
//! set of candidates that occur anywhere in the stream, however it is chunked.
//!
//! Two rewriting helpers serve the cases where an output is built at one path and
//! registered at another (`docs/spec/store-formats.md` §5 item 5, §4.7):
//! - [`HashRewriter`] replaces a 32-byte hash part by another in a stream
//!   (`RewritingSink`), recording the offset of each replacement;
//! - [`HashModuloSink`] hashes a stream *modulo* a hash part (`HashModuloSink`): each
//!   occurrence is replaced by 32 NUL bytes, and after the data `|<offset>` is hashed
//!   for every occurrence, in decimal, so zeroed and non-zeroed streams differ.

use std::collections::BTreeSet;
use std::io;

use thiserror::Error;

use crate::base32;
use crate::hash::{Hash, HashAlgo, Hasher};
use crate::store_path::{StorePath, HASH_PART_LEN};

/// A 32-byte hash part, the unit scanned for.
pub type HashPart = [u8; HASH_PART_LEN];

/// Why a scanner could not be set up.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RefScanError {
    /// A candidate holds a byte outside Nix base32, so it could never be found.
    #[error("reference candidate '{candidate}' is not a Nix base32 hash part")]
    NotBase32 {
        /// The candidate, lossily decoded.
        candidate: String,
    },
}

/// 5-bit value of each base32 byte, or 0xff for bytes outside the alphabet.
const VALUE: [u8; 256] = {
    let mut table = [0xffu8; 256];
    let mut i = 0;
    while i < 32 {
        table[base32::ALPHABET[i] as usize] = i as u8;
        i += 1;
    }
    table
};

/// Bits in the prefilter: one per combination of the first three characters.
const PREFILTER_BITS: usize = 1 << 15;

fn prefilter_index(window: &[u8]) -> usize {
    ((VALUE[window[0] as usize] as usize) << 10)
        | ((VALUE[window[1] as usize] as usize) << 5)
        | (VALUE[window[2] as usize] as usize)
}

/// A streaming search for a set of hash parts; also an [`io::Write`] sink, so a NAR
/// dump can be written straight into it.
#[derive(Clone)]
pub struct RefScanner {
    /// Sorted, without duplicates.
    candidates: Vec<HashPart>,
    found: Vec<bool>,
    remaining: usize,
    /// Which first-three-character combinations start some candidate; rejects almost
    /// every base32 window without touching the candidate list.
    prefilter: Vec<u64>,
    /// The last `HASH_PART_LEN - 1` bytes seen, to catch matches spanning chunks.
    tail: Vec<u8>,
}

impl RefScanner {
    /// A scanner for these hash parts.
    pub fn new(candidates: impl IntoIterator<Item = HashPart>) -> Result<Self, RefScanError> {
        let mut list: Vec<HashPart> = candidates.into_iter().collect();
        if let Some(bad) = list
            .iter()
            .find(|c| !c.iter().all(|&b| base32::is_base32_char(b)))
        {
            return Err(RefScanError::NotBase32 {
                candidate: String::from_utf8_lossy(bad).into_owned(),
            });
        }
        list.sort_unstable();
        list.dedup();
        let mut prefilter = vec![0u64; PREFILTER_BITS / 64];
        for c in &list {
            let i = prefilter_index(c);
            prefilter[i / 64] |= 1 << (i % 64);
        }
        Ok(Self {
            found: vec![false; list.len()],
            remaining: list.len(),
            candidates: list,
            prefilter,
            tail: Vec::with_capacity(2 * HASH_PART_LEN),
        })
    }

    /// A scanner for the hash parts of `paths`.
    pub fn for_paths<'a>(paths: impl IntoIterator<Item = &'a StorePath>) -> Self {
        let parts = paths.into_iter().map(|p| {
            let mut part = [0u8; HASH_PART_LEN];
            part.copy_from_slice(p.hash_part().as_bytes());
            part
        });
        // Store path hash parts are validated base32, so this cannot fail; an empty
        // scanner is the harmless fallback.
        Self::new(parts).unwrap_or_else(|_| Self::empty())
    }

    fn empty() -> Self {
        Self {
            candidates: Vec::new(),
            found: Vec::new(),
            remaining: 0,
            prefilter: vec![0u64; PREFILTER_BITS / 64],
            tail: Vec::new(),
        }
    }

    /// Feeds the next chunk of the stream.
    pub fn update(&mut self, data: &[u8]) {
        if self.remaining == 0 || data.is_empty() {
            return;
        }
        // Windows that start in the previous chunk and end in this one.
        if !self.tail.is_empty() {
            let mut junction = std::mem::take(&mut self.tail);
            let tail_len = junction.len();
            junction.extend_from_slice(&data[..data.len().min(HASH_PART_LEN - 1)]);
            self.search(&junction);
            junction.truncate(tail_len);
            self.tail = junction;
        }
        self.search(data);
        let keep = HASH_PART_LEN - 1;
        if data.len() >= keep {
            self.tail.clear();
            self.tail.extend_from_slice(&data[data.len() - keep..]);
        } else {
            self.tail.extend_from_slice(data);
            let excess = self.tail.len().saturating_sub(keep);
            self.tail.drain(..excess);
        }
    }

    /// Searches `s` for candidates, skipping past bytes that cannot be in a hash part.
    fn search(&mut self, s: &[u8]) {
        let mut i = 0;
        // s[i..checked] is known to be all base32 (when checked > i).
        let mut checked = 0;
        while i + HASH_PART_LEN <= s.len() && self.remaining > 0 {
            let end = i + HASH_PART_LEN;
            let mut j = end;
            let low = checked.max(i);
            let mut bad = None;
            // Backwards, so one bad byte skips the whole window before it.
            while j > low {
                j -= 1;
                if VALUE[s[j] as usize] == 0xff {
                    bad = Some(j);
                    break;
                }
            }
            if let Some(j) = bad {
                i = j + 1;
                checked = i;
                continue;
            }
            checked = end;
            let window = &s[i..end];
            let p = prefilter_index(window);
            if self.prefilter[p / 64] & (1 << (p % 64)) != 0 {
                self.lookup(window);
            }
            i += 1;
        }
    }

    fn lookup(&mut self, window: &[u8]) {
        if let Ok(k) = self
            .candidates
            .binary_search_by(|c| c.as_slice().cmp(window))
        {
            if !self.found[k] {
                self.found[k] = true;
                self.remaining -= 1;
            }
        }
    }

    /// The candidates seen so far, sorted.
    pub fn found(&self) -> impl Iterator<Item = &HashPart> {
        self.candidates
            .iter()
            .zip(&self.found)
            .filter(|(_, &f)| f)
            .map(|(c, _)| c)
    }

    /// Whether `hash_part` has been seen.
    pub fn is_found(&self, hash_part: &HashPart) -> bool {
        self.candidates
            .binary_search(hash_part)
            .is_ok_and(|k| self.found[k])
    }

    /// The paths among `paths` whose hash part has been seen (Nix's
    /// `scanForReferences` result when `paths` are the candidates).
    pub fn found_paths<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a StorePath>,
    ) -> BTreeSet<StorePath> {
        paths
            .into_iter()
            .filter(|p| {
                let mut part = [0u8; HASH_PART_LEN];
                part.copy_from_slice(p.hash_part().as_bytes());
                self.is_found(&part)
            })
            .cloned()
            .collect()
    }
}

impl io::Write for RefScanner {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The search-and-replace state shared by [`HashRewriter`] and [`HashModuloSink`].
#[derive(Clone)]
struct Rewriting {
    from: HashPart,
    to: HashPart,
    /// Horspool shift for the byte under the window's last position.
    shift: [u8; 256],
    buffer: Vec<u8>,
    /// Stream offset of `buffer[0]`.
    pos: u64,
    matches: Vec<u64>,
}

impl Rewriting {
    fn new(from: HashPart, to: HashPart) -> Self {
        let mut shift = [HASH_PART_LEN as u8; 256];
        for (k, &b) in from[..HASH_PART_LEN - 1].iter().enumerate() {
            shift[b as usize] = (HASH_PART_LEN - 1 - k) as u8;
        }
        Self {
            from,
            to,
            shift,
            buffer: Vec::new(),
            pos: 0,
            matches: Vec::new(),
        }
    }

    /// Appends `data` and replaces occurrences in the buffer, from its start (its
    /// first 31 bytes never held a whole window before).
    fn push(&mut self, data: &[u8]) {
        self.buffer.extend_from_slice(data);
        let n = self.buffer.len();
        let mut i = 0;
        while i + HASH_PART_LEN <= n {
            let last = self.buffer[i + HASH_PART_LEN - 1];
            if last == self.from[HASH_PART_LEN - 1]
                && self.buffer[i..i + HASH_PART_LEN] == self.from[..]
            {
                self.matches.push(self.pos + i as u64);
                self.buffer[i..i + HASH_PART_LEN].copy_from_slice(&self.to);
                // Nix searches again from the same position (the replacement may
                // combine with later bytes into a new occurrence).
                continue;
            }
            i += self.shift[last as usize] as usize;
        }
    }

    /// How many leading buffer bytes can no longer be part of an occurrence, keeping
    /// `keep` bytes back.
    fn ready(&self, keep: usize) -> usize {
        self.buffer.len().saturating_sub(keep)
    }

    fn consume(&mut self, n: usize) {
        self.buffer.drain(..n);
        self.pos += n as u64;
    }
}

/// Replaces every occurrence of one hash part by another in a stream written through
/// it, passing the result to `inner` (Nix's `RewritingSink`).
///
/// Occurrences spanning chunks are found: the last 31 bytes are held back until more
/// data or [`HashRewriter::finish`] arrives. Like Nix, after a replacement the search
/// resumes at the replaced position, and offsets are those of the stream as written.
pub struct HashRewriter<W: io::Write> {
    state: Rewriting,
    inner: W,
}

impl<W: io::Write> HashRewriter<W> {
    /// Rewrites `from` to `to` into `inner`.
    pub fn new(from: HashPart, to: HashPart, inner: W) -> Self {
        Self {
            state: Rewriting::new(from, to),
            inner,
        }
    }

    /// Stream offsets of the occurrences replaced so far.
    pub fn matches(&self) -> &[u64] {
        &self.state.matches
    }

    /// Bytes passed on to `inner` so far.
    pub fn position(&self) -> u64 {
        self.state.pos
    }

    fn emit(&mut self, keep: usize) -> io::Result<()> {
        let n = self.state.ready(keep);
        if n > 0 {
            self.inner.write_all(&self.state.buffer[..n])?;
            self.state.consume(n);
        }
        Ok(())
    }

    /// Passes on the held-back bytes and returns the sink and the replacement offsets.
    pub fn finish(mut self) -> io::Result<(W, Vec<u64>)> {
        self.emit(0)?;
        self.inner.flush()?;
        Ok((self.inner, self.state.matches))
    }
}

impl<W: io::Write> io::Write for HashRewriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.state.push(buf);
        self.emit(HASH_PART_LEN - 1)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        // Held-back bytes stay until finish: passing them on early could split an
        // occurrence that the next write completes.
        self.inner.flush()
    }
}

/// The result of hashing a stream modulo a hash part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuloHash {
    /// The hash of the rewritten stream followed by the `|<offset>` suffixes.
    pub hash: Hash,
    /// Bytes in the stream.
    pub size: u64,
    /// Offsets of the occurrences of the hash part (self-references).
    pub occurrences: Vec<u64>,
}

/// Hashes a stream modulo a hash part, as a floating content-addressed output's NAR is
/// hashed modulo its scratch path (Nix's `HashModuloSink`).
pub struct HashModuloSink {
    state: Rewriting,
    hasher: Hasher,
}

impl HashModuloSink {
    /// Hashes with `algo`, replacing `modulus` by 32 NUL bytes.
    pub fn new(algo: HashAlgo, modulus: HashPart) -> Self {
        Self {
            state: Rewriting::new(modulus, [0u8; HASH_PART_LEN]),
            hasher: Hasher::new(algo),
        }
    }

    /// Feeds the next chunk of the stream.
    pub fn update(&mut self, data: &[u8]) {
        self.state.push(data);
        let n = self.state.ready(HASH_PART_LEN - 1);
        self.hasher.update(&self.state.buffer[..n]);
        self.state.consume(n);
    }

    /// The hash, size and occurrence offsets.
    pub fn finish(mut self) -> ModuloHash {
        let n = self.state.buffer.len();
        self.hasher.update(&self.state.buffer);
        self.state.consume(n);
        for offset in &self.state.matches {
            self.hasher.update(format!("|{offset}").as_bytes());
        }
        ModuloHash {
            hash: self.hasher.finish(),
            size: self.state.pos,
            occurrences: self.state.matches,
        }
    }
}

impl io::Write for HashModuloSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
