//! Protocol versions and what each one changed.

use std::fmt;

/// A worker-protocol version, `major << 8 | minor` on the wire (major is always 1).
///
/// Handlers never compare numbers: they ask a predicate named after the change.
/// The versions this crate speaks (`docs/spec/worker-protocol.md` §3.1):
///
/// | minor | hex | added / changed | predicate |
/// |---|---|---|---|
/// | 21 | 115 | AddToStoreNar data pulled with STDERR_READ | [`Self::has_stderr_read_add_to_store_nar`] |
/// | 22 | 116 | QuerySubstitutablePathInfos takes path→CA map; op 41 | [`Self::has_substitutable_infos_with_ca`] |
/// | 23 | 117 | AddToStoreNar data framed | [`Self::has_framed_add_to_store_nar`] |
/// | 24 | 118 | no wire change (untrusted CA BuildDerivation) | – |
/// | 25 | 119 | new AddToStore (method, refs, repair, framed, ValidPathInfo reply) | [`Self::has_framed_add_to_store`] |
/// | 26 | 11a | structured STDERR_ERROR | [`Self::has_structured_errors`] |
/// | 27 | 11b | QueryValidPaths `substitute`; ops 42/43 | [`Self::has_query_valid_paths_substitute`] |
/// | 28 | 11c | BuildResult builtOutputs | [`Self::has_built_outputs`] |
/// | 29 | 11d | BuildResult timesBuilt/isNonDeterministic/start/stop | [`Self::has_build_times`] |
/// | 30 | 11e | new DerivedPath syntax (`drv!*`, opaque `.drv`) | [`Self::has_new_derived_path_syntax`] |
/// | 31 | 11f | realisations as JSON in ops 42/43 | [`Self::has_realisation_json`] |
/// | 32 | 120 | op 44 AddMultipleToStore (op 45 AddBuildLog, no bump) | [`Self::has_add_multiple_to_store`] |
/// | 33 | 121 | handshake sends daemon version string | [`Self::has_daemon_version_string`] |
/// | 34 | 122 | op 46 BuildPathsWithResults (Nix 2.8 client) | [`Self::has_build_paths_with_results`] |
/// | 35 | 123 | handshake sends trust flag | [`Self::has_trust_flag`] |
/// | 36 | 124 | op 47 AddPermRoot | [`Self::has_add_perm_root`] |
/// | 37 | 125 | BuildResult cpuUser/cpuSystem | [`Self::has_cpu_times`] |
/// | 38 | 126 | feature-set exchange in the handshake | [`Self::has_feature_exchange`] |
///
/// Older changes still visible in encoders: ≥ 1.11 reserveSpace, ≥ 1.12 SetOptions
/// overrides, ≥ 1.14 CPU affinity, ≥ 1.15 build mode, ≥ 1.16 ultimate/sigs/ca in path
/// infos, ≥ 1.17 the valid flag of QueryPathInfo, ≥ 1.20 activities.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ProtocolVersion {
    major: u8,
    minor: u8,
}

impl ProtocolVersion {
    /// The oldest version we accept: older ones need inline NARs in AddToStoreNar.
    pub const MIN_SUPPORTED: Self = Self::new(1, 21);
    /// The version a Nix 2.8 client announces.
    pub const NIX_2_8: Self = Self::new(1, 34);
    /// The version a server announces (unrooted's daemon does): the newest, so that
    /// a Nix 2.35 client reaches the feature exchange (1.38) and the features the
    /// server honours; a client announcing less (Lix at 1.35, Nix 2.8 at 1.34,
    /// 2.26 at 1.37) negotiates down to its own.
    pub const RECOMMENDED: Self = Self::new(1, 38);
    /// The newest version this crate knows.
    pub const LATEST: Self = Self::new(1, 38);

    /// A version from its parts.
    pub const fn new(major: u8, minor: u8) -> Self {
        Self { major, minor }
    }

    /// Decodes a version word. Bits above the low 16 are ignored, as Nix does.
    pub const fn from_wire(word: u64) -> Self {
        Self {
            major: ((word >> 8) & 0xff) as u8,
            minor: (word & 0xff) as u8,
        }
    }

    /// The version word.
    pub const fn to_wire(self) -> u64 {
        ((self.major as u64) << 8) | self.minor as u64
    }

    /// The major number.
    pub const fn major(self) -> u8 {
        self.major
    }

    /// The minor number.
    pub const fn minor(self) -> u8 {
        self.minor
    }

    /// Whether this crate can speak this version (major 1, minor ≥ 21).
    pub fn is_supported(self) -> bool {
        self.major == 1 && self >= Self::MIN_SUPPORTED
    }

    const fn at_least(self, minor: u8) -> bool {
        self.minor >= minor
    }

    /// ≥ 1.11: the client sends an obsolete reserveSpace word in the handshake.
    pub const fn has_reserve_space(self) -> bool {
        self.at_least(11)
    }
    /// ≥ 1.12: SetOptions carries an overrides map.
    pub const fn has_settings_overrides(self) -> bool {
        self.at_least(12)
    }
    /// ≥ 1.14: the client sends an obsolete CPU-affinity field in the handshake.
    pub const fn has_cpu_affinity(self) -> bool {
        self.at_least(14)
    }
    /// ≥ 1.15: BuildPaths carries a build mode.
    pub const fn has_build_mode(self) -> bool {
        self.at_least(15)
    }
    /// ≥ 1.16: path infos carry ultimate, sigs and ca.
    pub const fn has_path_info_trust_fields(self) -> bool {
        self.at_least(16)
    }
    /// ≥ 1.17: QueryPathInfo replies start with a valid flag.
    pub const fn has_query_path_info_valid_flag(self) -> bool {
        self.at_least(17)
    }
    /// ≥ 1.20: activities and results are sent as such, not as plain text.
    pub const fn has_activities(self) -> bool {
        self.at_least(20)
    }
    /// 1.21–1.22: AddToStoreNar data is pulled by the server with STDERR_READ.
    pub const fn has_stderr_read_add_to_store_nar(self) -> bool {
        self.at_least(21) && !self.at_least(23)
    }
    /// < 1.21: AddToStoreNar data follows the fields inline, unframed.
    pub const fn has_inline_add_to_store_nar(self) -> bool {
        !self.at_least(21)
    }
    /// ≥ 1.22: QuerySubstitutablePathInfos takes a path → CA map.
    pub const fn has_substitutable_infos_with_ca(self) -> bool {
        self.at_least(22)
    }
    /// ≥ 1.23: AddToStoreNar data is framed.
    pub const fn has_framed_add_to_store_nar(self) -> bool {
        self.at_least(23)
    }
    /// ≥ 1.25: AddToStore takes a method string, references and repair, its data is
    /// framed and its reply is a ValidPathInfo.
    pub const fn has_framed_add_to_store(self) -> bool {
        self.at_least(25)
    }
    /// ≥ 1.26: STDERR_ERROR is structured (level, message, traces).
    pub const fn has_structured_errors(self) -> bool {
        self.at_least(26)
    }
    /// ≥ 1.27: QueryValidPaths carries a substitute flag.
    pub const fn has_query_valid_paths_substitute(self) -> bool {
        self.at_least(27)
    }
    /// ≥ 1.28: BuildResult carries builtOutputs.
    pub const fn has_built_outputs(self) -> bool {
        self.at_least(28)
    }
    /// ≥ 1.29: BuildResult carries timesBuilt, isNonDeterministic, start and stop.
    pub const fn has_build_times(self) -> bool {
        self.at_least(29)
    }
    /// ≥ 1.30: DerivedPath uses `drv!*` and a bare `.drv` is opaque.
    pub const fn has_new_derived_path_syntax(self) -> bool {
        self.at_least(30)
    }
    /// ≥ 1.31: RegisterDrvOutput and QueryRealisation use Realisation JSON.
    pub const fn has_realisation_json(self) -> bool {
        self.at_least(31)
    }
    /// ≥ 1.32: AddMultipleToStore (and AddBuildLog) exist.
    pub const fn has_add_multiple_to_store(self) -> bool {
        self.at_least(32)
    }
    /// ≥ 1.33: the handshake ends with the daemon's version string.
    pub const fn has_daemon_version_string(self) -> bool {
        self.at_least(33)
    }
    /// ≥ 1.34: BuildPathsWithResults exists.
    pub const fn has_build_paths_with_results(self) -> bool {
        self.at_least(34)
    }
    /// ≥ 1.35: the handshake ends with the trust flag.
    pub const fn has_trust_flag(self) -> bool {
        self.at_least(35)
    }
    /// ≥ 1.36: AddPermRoot exists.
    pub const fn has_add_perm_root(self) -> bool {
        self.at_least(36)
    }
    /// ≥ 1.37: BuildResult carries cpuUser/cpuSystem.
    pub const fn has_cpu_times(self) -> bool {
        self.at_least(37)
    }
    /// ≥ 1.38: client and server exchange feature sets in the handshake.
    pub const fn has_feature_exchange(self) -> bool {
        self.at_least(38)
    }
}

impl fmt::Display for ProtocolVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_words() {
        assert_eq!(ProtocolVersion::NIX_2_8.to_wire(), 0x122);
        assert_eq!(
            ProtocolVersion::from_wire(0x126),
            ProtocolVersion::RECOMMENDED
        );
        assert!(ProtocolVersion::from_wire(0x115).is_supported());
        assert!(!ProtocolVersion::from_wire(0x114).is_supported());
        assert!(!ProtocolVersion::from_wire(0x222).is_supported());
    }

    #[test]
    fn predicates_flip_at_their_version() {
        let v = |m| ProtocolVersion::new(1, m);
        assert!(v(21).has_stderr_read_add_to_store_nar());
        assert!(v(22).has_stderr_read_add_to_store_nar());
        assert!(!v(23).has_stderr_read_add_to_store_nar());
        assert!(!v(24).has_framed_add_to_store());
        assert!(v(25).has_framed_add_to_store());
        assert!(!v(34).has_trust_flag() && v(35).has_trust_flag());
        assert!(!v(37).has_feature_exchange() && v(38).has_feature_exchange());
    }
}
