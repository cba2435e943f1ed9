//! Shared pieces of the fuzz targets: the store directory every target parses
//! against, and a tiny byte cursor for targets that carve structure out of the input.

use unrooted_format::StoreDir;

/// The store directory the inputs are parsed against (Nix's default, so corpus
/// entries taken from real files parse as they would on a real system).
pub fn store_dir() -> StoreDir {
    StoreDir::new("/nix/store").expect("a valid store directory")
}

/// Reads the input front to back; every read past the end yields zeros, so a target
/// never has to reject short inputs.
pub struct Bytes<'a> {
    data: &'a [u8],
}

impl<'a> Bytes<'a> {
    /// A cursor at the start of `data`.
    pub fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    /// The next byte, or 0 at the end.
    pub fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    /// The next `n` bytes (fewer at the end).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// Everything not read yet.
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    /// Whether everything was read.
    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}
