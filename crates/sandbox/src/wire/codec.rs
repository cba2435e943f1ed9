//! The encoding's primitives: little-endian integers, length-prefixed bytes with
//! checked lengths, and id maps.

use std::ffi::OsString;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::PathBuf;

use super::MAX_ITEMS;
use crate::plan::{IdMapEntry, IdMapMethod, IdMaps};

/// Encodes values into a buffer.
#[derive(Default)]
pub(super) struct Enc(pub(super) Vec<u8>);

impl Enc {
    pub(super) fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    pub(super) fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    pub(super) fn bool(&mut self, v: bool) {
        self.u8(u8::from(v));
    }
    pub(super) fn bytes(&mut self, b: &[u8]) {
        // Plans are built by the daemon from bounded inputs; a 4 GiB field is a bug.
        self.u32(u32::try_from(b.len()).expect("sandbox plan field under 4 GiB"));
        self.0.extend_from_slice(b);
    }
    pub(super) fn os(&mut self, s: &std::ffi::OsStr) {
        self.bytes(s.as_bytes());
    }
    pub(super) fn len(&mut self, n: usize) {
        self.u32(u32::try_from(n).expect("sandbox plan list under 4G entries"));
    }
}

/// Decodes values from a buffer, refusing anything malformed.
pub(super) struct Dec<'a>(pub(super) &'a [u8]);

pub(super) type DecResult<T> = Result<T, &'static str>;

impl Dec<'_> {
    pub(super) fn take(&mut self, n: usize) -> DecResult<&[u8]> {
        if self.0.len() < n {
            return Err("truncated");
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Ok(head)
    }
    pub(super) fn u8(&mut self) -> DecResult<u8> {
        Ok(self.take(1)?[0])
    }
    pub(super) fn u32(&mut self) -> DecResult<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    pub(super) fn i32(&mut self) -> DecResult<i32> {
        Ok(self.u32()? as i32)
    }
    pub(super) fn bool(&mut self) -> DecResult<bool> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err("bad boolean"),
        }
    }
    pub(super) fn bytes(&mut self) -> DecResult<Vec<u8>> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    pub(super) fn os(&mut self) -> DecResult<OsString> {
        Ok(OsString::from_vec(self.bytes()?))
    }
    pub(super) fn path(&mut self) -> DecResult<PathBuf> {
        Ok(PathBuf::from(self.os()?))
    }
    pub(super) fn len(&mut self) -> DecResult<usize> {
        let n = self.u32()?;
        if n > MAX_ITEMS {
            return Err("list too long");
        }
        Ok(n as usize)
    }
    pub(super) fn end(&self) -> DecResult<()> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err("trailing bytes")
        }
    }
}

fn enc_map(e: &mut Enc, map: &[IdMapEntry]) {
    e.len(map.len());
    for m in map {
        e.u32(m.inner);
        e.u32(m.outer);
        e.u32(m.count);
    }
}

fn dec_map(d: &mut Dec) -> DecResult<Vec<IdMapEntry>> {
    let n = d.len()?;
    let mut v = Vec::with_capacity(n.min(340));
    for _ in 0..n {
        v.push(IdMapEntry {
            inner: d.u32()?,
            outer: d.u32()?,
            count: d.u32()?,
        });
    }
    Ok(v)
}

pub(super) fn enc_id_maps(e: &mut Enc, ids: &IdMaps) {
    enc_id_maps_with(e, ids, &ids.method)
}

pub(super) fn enc_id_maps_with(e: &mut Enc, ids: &IdMaps, method: &IdMapMethod) {
    enc_map(e, &ids.uid_map);
    enc_map(e, &ids.gid_map);
    match method {
        IdMapMethod::Direct => e.u8(0),
        IdMapMethod::NewIdMap {
            newuidmap,
            newgidmap,
        } => {
            e.u8(1);
            e.os(newuidmap.as_os_str());
            e.os(newgidmap.as_os_str());
        }
        IdMapMethod::Enter => e.u8(2),
    }
    e.u32(ids.builder_uid);
    e.u32(ids.builder_gid);
    e.bool(ids.switch_ids);
    e.bool(ids.nested_range);
}

pub(super) fn dec_id_maps(d: &mut Dec) -> DecResult<IdMaps> {
    let uid_map = dec_map(d)?;
    let gid_map = dec_map(d)?;
    let method = match d.u8()? {
        0 => IdMapMethod::Direct,
        1 => IdMapMethod::NewIdMap {
            newuidmap: d.path()?,
            newgidmap: d.path()?,
        },
        2 => IdMapMethod::Enter,
        _ => return Err("bad id map method"),
    };
    Ok(IdMaps {
        uid_map,
        gid_map,
        method,
        builder_uid: d.u32()?,
        builder_gid: d.u32()?,
        switch_ids: d.bool()?,
        nested_range: d.bool()?,
    })
}
