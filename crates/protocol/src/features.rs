//! Protocol 1.38's feature exchange (§3): after the versions, each side sends the
//! names of the features it supports and both use the intersection. Features change
//! the encoding of some requests; a client that sends none (Nix 2.24–2.34, which
//! support none of these) gets the forms of plain 1.38.
//!
//! The names are Nix 2.35's (`worker-protocol.hh`).

use std::collections::BTreeSet;

/// A feature Nix 2.35 knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// `realisation-with-path-not-hash`: realisations and their keys by derivation
    /// path. Not advertised: content-addressed derivations have not landed.
    RealisationWithPathNotHash,
    /// `delete-dead-specific-referrers`: CollectGarbage's paths tagged (whole store
    /// or specific paths with a delete-referrers flag), for Nix 2.35's
    /// `nix store delete --skip-alive` and `--also-referrers`.
    DeleteDeadSpecificReferrers,
}

impl Feature {
    /// Every feature.
    pub const ALL: [Feature; 2] = [
        Feature::RealisationWithPathNotHash,
        Feature::DeleteDeadSpecificReferrers,
    ];

    /// The name on the wire.
    pub const fn name(self) -> &'static str {
        match self {
            Self::RealisationWithPathNotHash => "realisation-with-path-not-hash",
            Self::DeleteDeadSpecificReferrers => "delete-dead-specific-referrers",
        }
    }

    /// The feature a wire name means, if any (unknown names are ignored, as Nix does).
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }
}

/// A set of features, typed: what one side supports, or what a connection negotiated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Features {
    /// See [`Feature::RealisationWithPathNotHash`].
    pub realisation_with_path_not_hash: bool,
    /// See [`Feature::DeleteDeadSpecificReferrers`].
    pub delete_dead_specific_referrers: bool,
}

impl Features {
    /// What unrooted's daemon supports and advertises.
    pub const SERVED: Features = Features {
        realisation_with_path_not_hash: false,
        delete_dead_specific_referrers: true,
    };

    /// Whether `f` is in the set.
    pub fn contains(&self, f: Feature) -> bool {
        match f {
            Feature::RealisationWithPathNotHash => self.realisation_with_path_not_hash,
            Feature::DeleteDeadSpecificReferrers => self.delete_dead_specific_referrers,
        }
    }

    /// The known features among `names`.
    pub fn from_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Self {
        let mut out = Self::default();
        for f in names.into_iter().filter_map(|n| Feature::from_name(n)) {
            match f {
                Feature::RealisationWithPathNotHash => out.realisation_with_path_not_hash = true,
                Feature::DeleteDeadSpecificReferrers => out.delete_dead_specific_referrers = true,
            }
        }
        out
    }

    /// The wire names of the set.
    pub fn names(&self) -> BTreeSet<String> {
        Feature::ALL
            .into_iter()
            .filter(|f| self.contains(*f))
            .map(|f| f.name().to_owned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_ignored() {
        let names: BTreeSet<String> = ["delete-dead-specific-referrers", "some-future-feature"]
            .into_iter()
            .map(str::to_owned)
            .collect();
        let f = Features::from_names(&names);
        assert!(f.delete_dead_specific_referrers && !f.realisation_with_path_not_hash);
        assert_eq!(
            f.names(),
            ["delete-dead-specific-referrers".to_owned()].into()
        );
        assert_eq!(Features::SERVED.names(), f.names());
        for feature in Feature::ALL {
            assert_eq!(Feature::from_name(feature.name()), Some(feature));
        }
    }
}
