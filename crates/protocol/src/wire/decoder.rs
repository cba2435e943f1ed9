//! A field reader that can postpone errors of meaning until a request is fully read.
//!
//! A request whose bytes are well formed but whose arguments are wrong (a path outside
//! the store, a malformed hash) can be answered with one `STDERR_ERROR` while the
//! connection stays usable, but only if every byte of the request was consumed. In
//! deferring mode the decoder records the first such error, substitutes a placeholder
//! and keeps reading; the caller turns the recorded error into
//! [`ProtocolError::InvalidArgument`] at the end. Transport and bound errors are never
//! deferred: after them the stream position is unknown.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

use unrooted_format::hash::{Hash, HashAlgo};
use unrooted_format::{ContentAddress, StorePath};

use crate::error::ProtocolError;
use crate::wire::{self, WireContext, MAX_PATH_LEN, MAX_SHORT_LEN};

type Result<T> = std::result::Result<T, ProtocolError>;

/// Stands in for an invalid path while the rest of a request is read; never returned.
pub(crate) fn placeholder_path() -> StorePath {
    // A constant that satisfies every rule of a base name.
    StorePath::from_base_name("00000000000000000000000000000000-invalid")
        .expect("constant placeholder base name is valid")
}

impl ProtocolError {
    /// Errors about a value's meaning, raised after the value's bytes were consumed.
    fn is_semantic(&self) -> bool {
        matches!(
            self,
            Self::NotUtf8 { .. }
                | Self::NotInStore { .. }
                | Self::InvalidStorePath { .. }
                | Self::InvalidHash { .. }
                | Self::InvalidContentAddress { .. }
                | Self::InvalidDerivedPath { .. }
                | Self::InvalidRealisation { .. }
                | Self::ValueOutOfRange { .. }
        )
    }
}

/// Reads protocol fields from `r` in the context `cx`.
pub(crate) struct Decoder<'a, R: Read + ?Sized> {
    pub(crate) r: &'a mut R,
    pub(crate) cx: &'a WireContext,
    defer: bool,
    deferred: Option<ProtocolError>,
}

impl<'a, R: Read + ?Sized> Decoder<'a, R> {
    /// A decoder that fails at the first error.
    pub(crate) fn strict(r: &'a mut R, cx: &'a WireContext) -> Self {
        Self {
            r,
            cx,
            defer: false,
            deferred: None,
        }
    }

    /// A decoder that postpones errors of meaning.
    pub(crate) fn deferring(r: &'a mut R, cx: &'a WireContext) -> Self {
        Self {
            r,
            cx,
            defer: true,
            deferred: None,
        }
    }

    /// The first postponed error, if any.
    pub(crate) fn take_deferred(&mut self) -> Option<ProtocolError> {
        self.deferred.take()
    }

    /// Passes `res` through, or records a semantic error and yields `placeholder`.
    pub(crate) fn soft<T>(&mut self, res: Result<T>, placeholder: impl FnOnce() -> T) -> Result<T> {
        match res {
            Ok(v) => Ok(v),
            Err(e) if self.defer && e.is_semantic() => {
                self.deferred.get_or_insert(e);
                Ok(placeholder())
            }
            Err(e) => Err(e),
        }
    }

    pub(crate) fn u64(&mut self, field: &'static str) -> Result<u64> {
        wire::read_u64(self.r, field)
    }

    pub(crate) fn bool(&mut self, field: &'static str) -> Result<bool> {
        wire::read_bool(self.r, field)
    }

    /// An "Int" field (< 2³²).
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32> {
        let v = self.u64(field)?;
        let res = u32::try_from(v).map_err(|_| ProtocolError::ValueOutOfRange { field, value: v });
        self.soft(res, || 0)
    }

    pub(crate) fn count(&mut self, field: &'static str) -> Result<usize> {
        wire::read_count(self.r, self.cx.limits.max_count, field)
    }

    pub(crate) fn bytes(&mut self, max: u64, field: &'static str) -> Result<Vec<u8>> {
        wire::read_bytes(self.r, max, field)
    }

    pub(crate) fn string(&mut self, max: u64, field: &'static str) -> Result<String> {
        let b = self.bytes(max, field)?;
        self.soft(wire::utf8(b, field), String::new)
    }

    pub(crate) fn short(&mut self, field: &'static str) -> Result<String> {
        self.string(MAX_SHORT_LEN, field)
    }

    pub(crate) fn text(&mut self, field: &'static str) -> Result<String> {
        self.string(self.cx.limits.max_text, field)
    }

    pub(crate) fn strings(&mut self, max_len: u64, field: &'static str) -> Result<Vec<String>> {
        let n = self.count(field)?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            out.push(self.string(max_len, field)?);
        }
        Ok(out)
    }

    pub(crate) fn string_set(
        &mut self,
        max_len: u64,
        field: &'static str,
    ) -> Result<BTreeSet<String>> {
        Ok(self.strings(max_len, field)?.into_iter().collect())
    }

    pub(crate) fn string_map(
        &mut self,
        max_value: u64,
        field: &'static str,
    ) -> Result<BTreeMap<String, String>> {
        let n = self.count(field)?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let k = self.short(field)?;
            let v = self.string(max_value, field)?;
            out.insert(k, v);
        }
        Ok(out)
    }

    pub(crate) fn path(&mut self, field: &'static str) -> Result<StorePath> {
        let s = self.string(MAX_PATH_LEN, field)?;
        let res = wire::parse_path(&self.cx.store_dir, &s);
        self.soft(res, placeholder_path)
    }

    pub(crate) fn opt_path(&mut self, field: &'static str) -> Result<Option<StorePath>> {
        let s = self.string(MAX_PATH_LEN, field)?;
        let res = wire::parse_opt_path(&self.cx.store_dir, &s);
        self.soft(res, || None)
    }

    pub(crate) fn paths(&mut self, field: &'static str) -> Result<BTreeSet<StorePath>> {
        let n = self.count(field)?;
        let mut out = BTreeSet::new();
        for _ in 0..n {
            out.insert(self.path(field)?);
        }
        Ok(out)
    }

    pub(crate) fn base_name(&mut self, field: &'static str) -> Result<StorePath> {
        let s = self.short(field)?;
        let res = wire::parse_base_name(&s);
        self.soft(res, placeholder_path)
    }

    pub(crate) fn nar_hash(&mut self) -> Result<Hash> {
        let s = self.short("narHash")?;
        let res = wire::parse_nar_hash(&s);
        self.soft(res, || Hash::zero(HashAlgo::Sha256))
    }

    pub(crate) fn opt_ca(&mut self, field: &'static str) -> Result<Option<ContentAddress>> {
        let s = self.short(field)?;
        if s.is_empty() {
            return Ok(None);
        }
        let res =
            ContentAddress::parse(&s)
                .map(Some)
                .map_err(|e| ProtocolError::InvalidContentAddress {
                    text: s.clone(),
                    source: Some(e),
                });
        self.soft(res, || None)
    }
}
