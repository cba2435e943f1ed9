//! Build results (`docs/spec/worker-protocol.md` §2.5): BuildResult, KeyedBuildResult,
//! DrvOutput ids, Realisations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};

use unrooted_format::hash::{Hash, HashAlgo};
use unrooted_format::StorePath;

use crate::derived_path::DerivedPath;
use crate::error::ProtocolError;
use crate::wire::{self, Decoder, WireContext};

type Result<T> = std::result::Result<T, ProtocolError>;

/// A derivation output's identity: `sha256:<hash modulo, hex>!<output>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DrvOutput {
    /// The derivation's hash modulo (any SHA-256 will do for clients,
    /// see `docs/spec/worker-protocol.md` §2.5).
    pub drv_hash: Hash,
    /// The output name.
    pub output_name: String,
}

impl DrvOutput {
    /// Parses `sha256:<hex>!<name>` (the hash in any encoding Nix accepts).
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |reason| ProtocolError::InvalidRealisation {
            text: text.to_owned(),
            reason,
        };
        let (hash, name) = text.split_once('!').ok_or_else(|| bad("missing '!'"))?;
        if name.is_empty() {
            return Err(bad("empty output name"));
        }
        let drv_hash = Hash::parse_prefixed(hash).map_err(|_| bad("bad derivation hash"))?;
        Ok(Self {
            drv_hash,
            output_name: name.to_owned(),
        })
    }
}

impl fmt::Display for DrvOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}!{}",
            self.drv_hash.to_prefixed_base16(),
            self.output_name
        )
    }
}

/// Where a CA derivation output ended up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realisation {
    /// The output.
    pub id: DrvOutput,
    /// The path it was realised to.
    pub out_path: StorePath,
    /// Signatures.
    pub signatures: BTreeSet<String>,
    /// Realisations it depends on.
    pub dependent_realisations: BTreeMap<DrvOutput, StorePath>,
}

fn json_str(s: &str) -> String {
    // serde_json escapes exactly the characters nlohmann's dump escapes for ASCII text.
    serde_json::Value::String(s.to_owned()).to_string()
}

impl Realisation {
    /// The JSON Nix sends, keys sorted as nlohmann dumps them:
    /// `{"dependentRealisations":{…},"id":"…","outPath":"<base name>","signatures":[…]}`.
    pub fn to_json(&self) -> String {
        let deps: Vec<String> = self
            .dependent_realisations
            .iter()
            .map(|(k, v)| format!("{}:{}", json_str(&k.to_string()), json_str(&v.to_string())))
            .collect();
        let sigs: Vec<String> = self.signatures.iter().map(|s| json_str(s)).collect();
        format!(
            "{{\"dependentRealisations\":{{{}}},\"id\":{},\"outPath\":{},\"signatures\":[{}]}}",
            deps.join(","),
            json_str(&self.id.to_string()),
            json_str(&self.out_path.to_string()),
            sigs.join(",")
        )
    }

    /// What a realisation's signatures sign (Nix's `Realisation::fingerprint`): its
    /// JSON without `signatures`.
    pub fn fingerprint(&self) -> String {
        let mut unsigned = self.clone();
        unsigned.signatures.clear();
        let json = unsigned.to_json();
        json.replacen(",\"signatures\":[]}", "}", 1)
    }

    /// Parses Realisation JSON; `dependentRealisations` and `signatures` may be absent.
    pub fn from_json(text: &str) -> Result<Self> {
        let bad = |reason| ProtocolError::InvalidRealisation {
            text: text.to_owned(),
            reason,
        };
        let v: serde_json::Value = serde_json::from_str(text).map_err(|_| bad("not JSON"))?;
        let id = v
            .get("id")
            .and_then(|x| x.as_str())
            .ok_or_else(|| bad("no id"))?;
        let out = v
            .get("outPath")
            .and_then(|x| x.as_str())
            .ok_or_else(|| bad("no outPath"))?;
        let mut signatures = BTreeSet::new();
        if let Some(sigs) = v.get("signatures") {
            for s in sigs
                .as_array()
                .ok_or_else(|| bad("signatures is not a list"))?
            {
                signatures.insert(
                    s.as_str()
                        .ok_or_else(|| bad("signature is not a string"))?
                        .to_owned(),
                );
            }
        }
        let mut dependent_realisations = BTreeMap::new();
        if let Some(deps) = v.get("dependentRealisations") {
            for (k, p) in deps
                .as_object()
                .ok_or_else(|| bad("dependentRealisations is not a map"))?
            {
                let p = p
                    .as_str()
                    .ok_or_else(|| bad("dependent path is not a string"))?;
                dependent_realisations.insert(DrvOutput::parse(k)?, wire::parse_base_name(p)?);
            }
        }
        Ok(Self {
            id: DrvOutput::parse(id)?,
            out_path: wire::parse_base_name(out)?,
            signatures,
            dependent_realisations,
        })
    }
}

/// The outcome of building or substituting one thing (Nix's `BuildResult::Status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)]
pub enum BuildStatus {
    Built = 0,
    Substituted = 1,
    AlreadyValid = 2,
    PermanentFailure = 3,
    InputRejected = 4,
    OutputRejected = 5,
    TransientFailure = 6,
    CachedFailure = 7,
    TimedOut = 8,
    MiscFailure = 9,
    DependencyFailed = 10,
    LogLimitExceeded = 11,
    NotDeterministic = 12,
    ResolvesToAlreadyValid = 13,
    NoSubstituters = 14,
}

impl BuildStatus {
    const ALL: [Self; 15] = [
        Self::Built,
        Self::Substituted,
        Self::AlreadyValid,
        Self::PermanentFailure,
        Self::InputRejected,
        Self::OutputRejected,
        Self::TransientFailure,
        Self::CachedFailure,
        Self::TimedOut,
        Self::MiscFailure,
        Self::DependencyFailed,
        Self::LogLimitExceeded,
        Self::NotDeterministic,
        Self::ResolvesToAlreadyValid,
        Self::NoSubstituters,
    ];

    /// From the wire value.
    pub fn from_wire(v: u64) -> Option<Self> {
        Self::ALL.get(usize::try_from(v).ok()?).copied()
    }

    /// Whether this status means success.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Self::Built | Self::Substituted | Self::AlreadyValid | Self::ResolvesToAlreadyValid
        )
    }
}

/// The result of BuildDerivation, and of each path of BuildPathsWithResults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildResult {
    /// What happened.
    pub status: BuildStatus,
    /// The error message ("" on success).
    pub error_msg: String,
    /// How many times it was built (≥ 1.29).
    pub times_built: u32,
    /// Whether rebuilds differed (≥ 1.29).
    pub is_non_deterministic: bool,
    /// Build start, Unix seconds, 0 if not built (≥ 1.29).
    pub start_time: i64,
    /// Build stop, Unix seconds, 0 if not built (≥ 1.29).
    pub stop_time: i64,
    /// User CPU time in µs (≥ 1.37).
    pub cpu_user: Option<i64>,
    /// System CPU time in µs (≥ 1.37).
    pub cpu_system: Option<i64>,
    /// The outputs built, by DrvOutput id (≥ 1.28); empty for opaque paths and failures.
    pub built_outputs: BTreeMap<DrvOutput, Realisation>,
}

impl BuildResult {
    /// A result with only a status and message; everything else empty.
    pub fn new(status: BuildStatus, error_msg: impl Into<String>) -> Self {
        Self {
            status,
            error_msg: error_msg.into(),
            times_built: 0,
            is_non_deterministic: false,
            start_time: 0,
            stop_time: 0,
            cpu_user: None,
            cpu_system: None,
            built_outputs: BTreeMap::new(),
        }
    }

    /// Writes the fields the negotiated version has.
    pub fn write<W: Write + ?Sized>(&self, w: &mut W, cx: &WireContext) -> Result<()> {
        let v = cx.version;
        wire::write_u64(w, self.status as u64)?;
        wire::write_bytes(w, self.error_msg.as_bytes())?;
        if v.has_build_times() {
            wire::write_u64(w, u64::from(self.times_built))?;
            wire::write_bool(w, self.is_non_deterministic)?;
            wire::write_u64(w, self.start_time as u64)?;
            wire::write_u64(w, self.stop_time as u64)?;
        }
        if v.has_cpu_times() {
            for t in [self.cpu_user, self.cpu_system] {
                match t {
                    None => wire::write_u64(w, 0)?,
                    Some(us) => {
                        wire::write_u64(w, 1)?;
                        wire::write_u64(w, us as u64)?;
                    }
                }
            }
        }
        if v.has_built_outputs() {
            wire::write_u64(w, self.built_outputs.len() as u64)?;
            for (id, r) in &self.built_outputs {
                wire::write_bytes(w, id.to_string().as_bytes())?;
                wire::write_bytes(w, r.to_json().as_bytes())?;
            }
        }
        Ok(())
    }

    pub(crate) fn decode<R: Read + ?Sized>(d: &mut Decoder<'_, R>) -> Result<Self> {
        let v = d.cx.version;
        let raw = d.u64("build status")?;
        let status = BuildStatus::from_wire(raw).ok_or(ProtocolError::ValueOutOfRange {
            field: "build status",
            value: raw,
        })?;
        let mut r = Self::new(status, d.text("build error message")?);
        if v.has_build_times() {
            r.times_built = d.u32("timesBuilt")?;
            r.is_non_deterministic = d.bool("isNonDeterministic")?;
            r.start_time = d.u64("startTime")? as i64;
            r.stop_time = d.u64("stopTime")? as i64;
        }
        if v.has_cpu_times() {
            r.cpu_user = read_opt_time(d, "cpuUser")?;
            r.cpu_system = read_opt_time(d, "cpuSystem")?;
        }
        if v.has_built_outputs() {
            let n = d.count("builtOutputs")?;
            for _ in 0..n {
                let id = DrvOutput::parse(&d.short("DrvOutput id")?)?;
                let real = Realisation::from_json(&d.text("realisation")?)?;
                r.built_outputs.insert(id, real);
            }
        }
        Ok(r)
    }

    /// Reads a BuildResult (client side).
    pub fn read<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Self> {
        Self::decode(&mut Decoder::strict(r, cx))
    }
}

fn read_opt_time<R: Read + ?Sized>(
    d: &mut Decoder<'_, R>,
    field: &'static str,
) -> Result<Option<i64>> {
    match d.u64(field)? {
        0 => Ok(None),
        1 => Ok(Some(d.u64(field)? as i64)),
        value => Err(ProtocolError::ValueOutOfRange { field, value }),
    }
}

/// A BuildResult with the DerivedPath it answers (BuildPathsWithResults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyedBuildResult {
    /// The requested path.
    pub path: DerivedPath,
    /// Its result.
    pub result: BuildResult,
}

impl KeyedBuildResult {
    /// Writes the reply of BuildPathsWithResults.
    pub fn write_list<W: Write + ?Sized>(
        w: &mut W,
        cx: &WireContext,
        results: &[Self],
    ) -> Result<()> {
        wire::write_u64(w, results.len() as u64)?;
        for k in results {
            k.path.write(w, cx)?;
            k.result.write(w, cx)?;
        }
        Ok(())
    }

    /// Reads the reply of BuildPathsWithResults (client side).
    pub fn read_list<R: Read + ?Sized>(r: &mut R, cx: &WireContext) -> Result<Vec<Self>> {
        let mut d = Decoder::strict(r, cx);
        let n = d.count("build results")?;
        let mut out = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            let path = DerivedPath::decode(&mut d)?;
            out.push(Self {
                path,
                result: BuildResult::decode(&mut d)?,
            });
        }
        Ok(out)
    }
}

/// A placeholder hash for DrvOutput ids when the hash modulo is not at hand; clients
/// only use the output name and the path (`docs/spec/worker-protocol.md` §2.5).
pub fn dummy_drv_hash() -> Hash {
    Hash::zero(HashAlgo::Sha256)
}
