//! What the database records about a valid path.

use std::collections::BTreeSet;

use unrooted_format::signature::{self, Signature, SignatureError, TrustedKeys};
use unrooted_format::{ContentAddress, Hash, StoreDir, StorePath};

/// Everything Nix records about a valid store path (Nix's `ValidPathInfo`): one
/// `ValidPaths` row plus its `Refs` rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidPathInfo {
    /// The path.
    pub path: StorePath,
    /// The derivation that built it, if known.
    pub deriver: Option<StorePath>,
    /// SHA-256 of the path's NAR serialisation.
    pub nar_hash: Hash,
    /// Paths whose hash parts occur in the NAR, possibly including the path itself.
    pub references: BTreeSet<StorePath>,
    /// Unix seconds of registration; 0 when registering means "now".
    pub registration_time: u64,
    /// Length of the NAR in bytes; 0 means unknown (stored as NULL).
    pub nar_size: u64,
    /// Whether this store built the path itself (and so trusts it without signatures).
    pub ultimate: bool,
    /// Signatures, `<key name>:<base64>`, in Nix's set order.
    pub sigs: BTreeSet<String>,
    /// The content address the path claims, if any.
    pub ca: Option<ContentAddress>,
}

impl ValidPathInfo {
    /// A record with only the mandatory fields set.
    pub fn new(path: StorePath, nar_hash: Hash) -> Self {
        Self {
            path,
            deriver: None,
            nar_hash,
            references: BTreeSet::new(),
            registration_time: 0,
            nar_size: 0,
            ultimate: false,
            sigs: BTreeSet::new(),
            ca: None,
        }
    }

    /// The references other than the path itself, and whether it refers to itself.
    pub fn references_without_self(&self) -> (BTreeSet<StorePath>, bool) {
        let mut refs = self.references.clone();
        let self_ref = refs.remove(&self.path);
        (refs, self_ref)
    }

    /// Whether the `ca` claim really gives this path (Nix's `isContentAddressed`):
    /// the path recomputed from the content address, name and references must be
    /// this one. False when there is no claim.
    pub fn ca_matches_path(&self, dir: &StoreDir) -> bool {
        let Some(ca) = &self.ca else {
            return false;
        };
        let (refs, self_ref) = self.references_without_self();
        ca.store_path(dir, self.path.name(), &refs, self_ref)
            .is_ok_and(|p| p == self.path)
    }

    /// The text Nix signs for this path (`1;<path>;<narHash>;<narSize>;<refs>`).
    pub fn fingerprint(&self, dir: &StoreDir) -> Result<String, SignatureError> {
        signature::fingerprint(
            dir,
            &self.path,
            &self.nar_hash,
            self.nar_size,
            &self.references,
        )
    }

    /// How many of the signatures are valid signatures by `keys` (Nix's
    /// `checkSignatures`). Signatures that do not parse count as invalid rather
    /// than as an error, as in Nix: a stranger's malformed signature must not make a
    /// path with another good one unusable.
    pub fn count_valid_signatures(&self, dir: &StoreDir, keys: &TrustedKeys) -> usize {
        let Ok(fingerprint) = self.fingerprint(dir) else {
            return 0;
        };
        let parsed: Vec<Signature> = self
            .sigs
            .iter()
            .filter_map(|s| Signature::parse(s).ok())
            .collect();
        keys.count_valid(&fingerprint, &parsed)
    }

    /// Whether the path may be trusted without a signature or with the ones it has
    /// (Nix's `checkSignatures(…) >= 1 || isContentAddressed`): content-addressed
    /// paths prove themselves; everything else needs one valid trusted signature.
    pub fn is_trusted(&self, dir: &StoreDir, keys: &TrustedKeys) -> bool {
        self.ca_matches_path(dir) || self.count_valid_signatures(dir, keys) >= 1
    }
}
