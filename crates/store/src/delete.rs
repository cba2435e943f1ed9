//! Deleting a tree the store made: a failed add's temporary copy, an invalid
//! leftover being replaced, an emptied temporary area.

use std::fs;
use std::io;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::error::StoreError;

/// Deletes the tree at `path` (which may be a read-only store tree), making
/// directories writable as needed. A missing `path` is not an error.
pub(crate) fn delete_tree(path: &Path) -> Result<(), StoreError> {
    let err = |p: &Path, source| StoreError::Delete {
        path: p.to_owned(),
        source,
    };
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(err(path, e)),
    };
    if !meta.is_dir() {
        return match fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(path, e)),
            _ => Ok(()),
        };
    }
    if meta.mode() & 0o700 != 0o700 {
        fs::set_permissions(path, fs::Permissions::from_mode(0o700)).map_err(|e| err(path, e))?;
    }
    let children: Vec<PathBuf> = fs::read_dir(path)
        .map_err(|e| err(path, e))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<_, _>>()
        .map_err(|e| err(path, e))?;
    for child in children {
        delete_tree(&child)?;
    }
    match fs::remove_dir(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(err(path, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deletes_a_read_only_tree_and_ignores_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        let top = dir.path().join("t");
        fs::create_dir_all(top.join("sub")).unwrap();
        fs::write(top.join("sub/f"), b"x").unwrap();
        std::os::unix::fs::symlink("f", top.join("sub/l")).unwrap();
        for d in [top.join("sub"), top.clone()] {
            fs::set_permissions(&d, fs::Permissions::from_mode(0o555)).unwrap();
        }
        delete_tree(&top).unwrap();
        assert!(fs::symlink_metadata(&top).is_err());
        delete_tree(&top).unwrap();
        let file = dir.path().join("f");
        fs::write(&file, b"").unwrap();
        delete_tree(&file).unwrap();
        assert!(fs::symlink_metadata(&file).is_err());
    }
}
