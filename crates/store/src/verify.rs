//! `nix-store --verify`: checking that valid paths exist and still hash as recorded.

use std::fmt;
use std::fs;
use std::os::unix::ffi::OsStrExt;

use unrooted_format::{base32, Hash};

use crate::error::StoreError;
use crate::store::LocalStore;

/// What verification reports, one message per event, worded as Nix words them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyMessage {
    /// Start of the walk over the store directory.
    ReadingStore,
    /// Start of the existence check.
    CheckingPathExistence,
    /// Start of the `.links` check (contents only).
    CheckingLinkHashes,
    /// Start of the NAR hash check (contents only).
    CheckingStoreHashes,
    /// A valid path is missing on disk and nothing refers to it, so it was made
    /// invalid (Nix does the same).
    DisappearedRemoved {
        /// The path.
        path: String,
    },
    /// A valid path is missing on disk but valid paths refer to it.
    DisappearedWithReferrers {
        /// The path.
        path: String,
    },
    /// A valid path's NAR hash differs from the recorded one.
    Modified {
        /// The path.
        path: String,
        /// The recorded hash.
        expected: Hash,
        /// The hash on disk.
        actual: Hash,
    },
    /// A file in `.links` does not hash to its name.
    LinkModified {
        /// The link file.
        link: String,
        /// The hash its name says.
        expected: String,
        /// What it hashes to.
        actual: Hash,
    },
    /// A path whose size was unknown got it recorded.
    FixedNarSize {
        /// The path.
        path: String,
    },
    /// Repair was asked for but this store has no source for the path's contents
    /// (no substituters, and contents cannot be derived from a hash).
    CannotRepair {
        /// The path.
        path: String,
    },
}

impl fmt::Display for VerifyMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::ReadingStore => f.write_str("reading the Nix store..."),
            Self::CheckingPathExistence => f.write_str("checking path existence..."),
            Self::CheckingLinkHashes => f.write_str("checking link hashes..."),
            Self::CheckingStoreHashes => f.write_str("checking store hashes..."),
            Self::DisappearedRemoved { path } => {
                write!(f, "path '{path}' disappeared, removing from database...")
            }
            Self::DisappearedWithReferrers { path } => {
                write!(f, "path '{path}' disappeared, but it still has valid referrers!")
            }
            Self::Modified {
                path,
                expected,
                actual,
            } => write!(
                f,
                "path '{path}' was modified! expected hash '{}', got '{}'",
                expected.to_prefixed_base32(),
                actual.to_prefixed_base32()
            ),
            Self::LinkModified {
                link,
                expected,
                actual,
            } => write!(
                f,
                "link '{link}' was modified! expected hash '{expected}', got '{}'",
                actual.to_base32()
            ),
            Self::FixedNarSize { path } => write!(f, "updated the NAR size of '{path}'"),
            Self::CannotRepair { path } => write!(
                f,
                "cannot repair path '{path}': no substituter has it and its contents cannot be regenerated"
            ),
        }
    }
}

impl LocalStore {
    /// Verifies the store (VerifyStore, `nix-store --verify [--check-contents]
    /// [--repair]`); returns whether errors remain. Progress and findings go to
    /// `report`.
    ///
    /// Repair is honest and minimal: this store has no substituters, and a path's
    /// contents cannot be recovered from its hash, so a damaged path is reported as
    /// [`VerifyMessage::CannotRepair`] and still counts as an error.
    pub fn verify(
        &self,
        check_contents: bool,
        repair: bool,
        report: &mut dyn FnMut(VerifyMessage),
    ) -> Result<bool, StoreError> {
        let mut errors = false;
        report(VerifyMessage::ReadingStore);
        let on_disk: std::collections::BTreeSet<Vec<u8>> =
            fs::read_dir(&self.config.real_store_dir)
                .map_err(|source| StoreError::Read {
                    path: self.config.real_store_dir.clone(),
                    source,
                })?
                .filter_map(|e| e.ok().map(|e| e.file_name().as_bytes().to_vec()))
                .collect();
        report(VerifyMessage::CheckingPathExistence);
        let valid = self.query_all_valid_paths()?;
        let mut present = Vec::new();
        for path in &valid {
            if on_disk.contains(path.to_base_name().as_bytes()) {
                present.push(path.clone());
                continue;
            }
            let text = self.print_path(path);
            let referrers = self.query_referrers(path)?;
            if referrers.iter().all(|r| r == path) {
                self.db().invalidate_paths(std::slice::from_ref(path))?;
                report(VerifyMessage::DisappearedRemoved { path: text });
            } else {
                report(VerifyMessage::DisappearedWithReferrers { path: text.clone() });
                if repair {
                    report(VerifyMessage::CannotRepair { path: text });
                }
                errors = true;
            }
        }
        if check_contents {
            report(VerifyMessage::CheckingLinkHashes);
            errors |= self.verify_links(report)?;
            report(VerifyMessage::CheckingStoreHashes);
            for path in present {
                let Some(mut info) = self.query_path_info(&path)? else {
                    continue;
                };
                let (actual, size) = self.nar_hash_of(&self.real_path(&path))?;
                let text = self.print_path(&path);
                if actual != info.nar_hash {
                    report(VerifyMessage::Modified {
                        path: text.clone(),
                        expected: info.nar_hash,
                        actual,
                    });
                    if repair {
                        report(VerifyMessage::CannotRepair { path: text });
                    }
                    errors = true;
                } else if info.nar_size == 0 {
                    info.nar_size = size;
                    self.db().update_path_info(&info)?;
                    report(VerifyMessage::FixedNarSize { path: text });
                }
            }
        }
        Ok(errors)
    }

    fn verify_links(&self, report: &mut dyn FnMut(VerifyMessage)) -> Result<bool, StoreError> {
        let links = self.config.real_store_dir.join(".links");
        let read = match fs::read_dir(&links) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(source) => {
                return Err(StoreError::Read {
                    path: links,
                    source,
                })
            }
        };
        let mut errors = false;
        for entry in read {
            let entry = entry.map_err(|source| StoreError::Read {
                path: links.clone(),
                source,
            })?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            // Only names the optimiser makes; anything else is not ours to judge.
            if name.len() != base32::encoded_len(32) {
                continue;
            }
            let (actual, _) = self.nar_hash_of(&entry.path())?;
            if actual.to_base32() != name {
                report(VerifyMessage::LinkModified {
                    link: entry.path().display().to_string(),
                    expected: name.to_owned(),
                    actual,
                });
                errors = true;
            }
        }
        Ok(errors)
    }
}
