//! Path metadata on the wire: ValidPathInfo and substitutable infos
//! (`docs/spec/worker-protocol.md` §2.4, §5.5).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};

use unrooted_format::hash::Hash;
use unrooted_format::{ContentAddress, StorePath};

use crate::error::ProtocolError;
use crate::version::ProtocolVersion;
use crate::wire::{self, Decoder, WireContext, MAX_SHORT_LEN};

type Result<T> = std::result::Result<T, ProtocolError>;

/// What the store knows about a valid path, without the path itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnkeyedValidPathInfo {
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// SHA-256 of its NAR; sent as bare lowercase hex, read leniently
    /// (`docs/spec/worker-protocol.md` §2.2).
    pub nar_hash: Hash,
    /// The paths it references.
    pub references: BTreeSet<StorePath>,
    /// When it was registered (Unix seconds).
    pub registration_time: i64,
    /// Size of its NAR in bytes.
    pub nar_size: u64,
    /// Built locally or otherwise trusted without signatures.
    pub ultimate: bool,
    /// Signatures, `<keyname>:<base64>`.
    pub signatures: BTreeSet<String>,
    /// Its content address, if content-addressed.
    pub ca: Option<ContentAddress>,
}

/// A path and its info.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    /// The path.
    pub path: StorePath,
    /// Its info.
    pub info: UnkeyedValidPathInfo,
}

impl UnkeyedValidPathInfo {
    /// Writes the fields in the layout of `v` (ultimate/sigs/ca from 1.16).
    pub fn write<W: Write + ?Sized>(
        &self,
        w: &mut W,
        cx: &WireContext,
        v: ProtocolVersion,
    ) -> Result<()> {
        let dir = &cx.store_dir;
        wire::write_opt_path(w, dir, self.deriver.as_ref())?;
        wire::write_bytes(w, self.nar_hash.to_base16().as_bytes())?;
        wire::write_paths(w, dir, &self.references)?;
        wire::write_u64(w, self.registration_time as u64)?;
        wire::write_u64(w, self.nar_size)?;
        if v.has_path_info_trust_fields() {
            wire::write_bool(w, self.ultimate)?;
            wire::write_strings(w, &self.signatures)?;
            let ca = self.ca.map(|c| c.to_string()).unwrap_or_default();
            wire::write_bytes(w, ca.as_bytes())?;
        }
        Ok(())
    }

    pub(crate) fn decode<R: Read + ?Sized>(
        d: &mut Decoder<'_, R>,
        v: ProtocolVersion,
    ) -> Result<Self> {
        let deriver = d.opt_path("deriver")?;
        let nar_hash = d.nar_hash()?;
        let references = d.paths("references")?;
        let registration_time = d.u64("registrationTime")? as i64;
        let nar_size = d.u64("narSize")?;
        let (mut ultimate, mut signatures, mut ca) = (false, BTreeSet::new(), None);
        if v.has_path_info_trust_fields() {
            ultimate = d.bool("ultimate")?;
            signatures = d.string_set(MAX_SHORT_LEN, "sigs")?;
            ca = d.opt_ca("ca")?;
        }
        Ok(Self {
            deriver,
            nar_hash,
            references,
            registration_time,
            nar_size,
            ultimate,
            signatures,
            ca,
        })
    }

    /// Reads the fields in the layout of the negotiated version (client side).
    pub fn read<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        Self::decode(&mut Decoder::strict(r, cx), cx.version)
    }
}

impl ValidPathInfo {
    /// Writes the path then its info in the layout of `v`.
    pub fn write<W: Write + ?Sized>(
        &self,
        w: &mut W,
        cx: &WireContext,
        v: ProtocolVersion,
    ) -> Result<()> {
        wire::write_path(w, &cx.store_dir, &self.path)?;
        self.info.write(w, cx, v)
    }

    pub(crate) fn decode<R: Read + ?Sized>(
        d: &mut Decoder<'_, R>,
        v: ProtocolVersion,
    ) -> Result<Self> {
        let path = d.path("path")?;
        Ok(Self {
            path,
            info: UnkeyedValidPathInfo::decode(d, v)?,
        })
    }

    /// Reads a path and its info in the layout of the negotiated version.
    pub fn read<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        Self::decode(&mut Decoder::strict(r, cx), cx.version)
    }

    /// Reads one item header of AddMultipleToStore's stream, which always uses the
    /// ≥ 1.16 layout whatever the negotiated version. Strict: inside the stream an
    /// invalid item cannot be skipped because its NAR length is in the header.
    pub fn read_multiple_item<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        Self::decode(&mut Decoder::strict(r, cx), ProtocolVersion::new(1, 16))
    }

    /// Writes one item header of AddMultipleToStore's stream (≥ 1.16 layout).
    pub fn write_multiple_item<W: Write + ?Sized>(
        &self,
        w: &mut W,
        cx: &WireContext,
    ) -> Result<()> {
        self.write(w, cx, ProtocolVersion::new(1, 16))
    }
}

/// Writes the reply of QueryPathInfo: ≥ 1.17 the valid flag then the info.
///
/// Below 1.17 an invalid path must be reported as an error instead ("path '…' is not
/// valid"); this function refuses to encode `None` there.
pub fn write_query_path_info_reply<W: Write + ?Sized>(
    w: &mut W,
    cx: &WireContext,
    info: Option<&UnkeyedValidPathInfo>,
) -> Result<()> {
    if cx.version.has_query_path_info_valid_flag() {
        wire::write_bool(w, info.is_some())?;
    }
    match info {
        Some(i) => i.write(w, cx, cx.version),
        None if cx.version.has_query_path_info_valid_flag() => Ok(()),
        None => Err(ProtocolError::Unrepresentable {
            what: "an invalid path in QueryPathInfo",
            version: cx.version,
        }),
    }
}

/// Reads the reply of QueryPathInfo (client side).
pub fn read_query_path_info_reply<R: Read + ?Sized>(
    r: &mut R,
    cx: &WireContext,
) -> Result<Option<UnkeyedValidPathInfo>> {
    if cx.version.has_query_path_info_valid_flag() && !wire::read_bool(r, "valid")? {
        return Ok(None);
    }
    UnkeyedValidPathInfo::read(r, cx).map(Some)
}

/// What a substituter offers for a path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubstitutablePathInfo {
    /// The deriver, if known.
    pub deriver: Option<StorePath>,
    /// The references.
    pub references: BTreeSet<StorePath>,
    /// Bytes to download.
    pub download_size: u64,
    /// Size of the NAR.
    pub nar_size: u64,
}

impl SubstitutablePathInfo {
    fn write<W: Write + ?Sized>(&self, w: &mut W, cx: &WireContext) -> Result<()> {
        wire::write_opt_path(w, &cx.store_dir, self.deriver.as_ref())?;
        wire::write_paths(w, &cx.store_dir, &self.references)?;
        wire::write_u64(w, self.download_size)?;
        wire::write_u64(w, self.nar_size)?;
        Ok(())
    }

    fn decode<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Self> {
        Ok(Self {
            deriver: d.opt_path("deriver")?,
            references: d.paths("references")?,
            download_size: d.u64("downloadSize")?,
            nar_size: d.u64("narSize")?,
        })
    }

    /// Writes the reply of QuerySubstitutablePathInfo (op 21): 0, or 1 + the info.
    pub fn write_single_reply<W: Write + ?Sized>(
        w: &mut W,
        cx: &WireContext,
        info: Option<&Self>,
    ) -> Result<()> {
        wire::write_bool(w, info.is_some())?;
        if let Some(i) = info {
            i.write(w, cx)?;
        }
        Ok(())
    }

    /// Reads the reply of QuerySubstitutablePathInfo (client side).
    pub fn read_single_reply<R: Read + ?Sized>(
        r: &mut R,
        cx: &WireContext,
    ) -> Result<Option<Self>> {
        let mut d = Decoder::strict(r, cx);
        if !d.bool("found")? {
            return Ok(None);
        }
        Self::decode(&mut d).map(Some)
    }

    /// Writes the reply of QuerySubstitutablePathInfos (op 30).
    pub fn write_map_reply<W: Write + ?Sized>(
        w: &mut W,
        cx: &WireContext,
        infos: &BTreeMap<StorePath, Self>,
    ) -> Result<()> {
        wire::write_u64(w, infos.len() as u64)?;
        for (p, i) in infos {
            wire::write_path(w, &cx.store_dir, p)?;
            i.write(w, cx)?;
        }
        Ok(())
    }

    /// Reads the reply of QuerySubstitutablePathInfos (client side).
    pub fn read_map_reply<R: Read + ?Sized>(
        r: &mut R,
        cx: &WireContext,
    ) -> Result<BTreeMap<StorePath, Self>> {
        let mut d = Decoder::strict(r, cx);
        let n = d.count("substitutable infos")?;
        let mut out = BTreeMap::new();
        for _ in 0..n {
            let p = d.path("path")?;
            out.insert(p, Self::decode(&mut d)?);
        }
        Ok(out)
    }
}
