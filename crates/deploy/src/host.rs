//! The host being installed to or checked, and where unrooted's pieces live on it.
//!
//! Every path in a [`Layout`] is the absolute path *as seen on the running system*
//! (what goes into unit files and `nix.conf`); [`Host::path`] maps it under the host
//! root where files are actually read and written. With the root `/` both are the
//! same; with a temporary directory the same code installs into (or checks) a tree.

use std::path::{Component, Path, PathBuf};

use crate::DeployError;

/// The file system root everything is read from and written to: `/` on a real
/// machine, a directory tree in tests and packaging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    root: PathBuf,
}

impl Host {
    /// A host rooted at `root` (made absolute against the current directory).
    pub fn new(root: &Path) -> Result<Self, DeployError> {
        let root = std::path::absolute(root).map_err(|source| DeployError::Read {
            path: root.to_owned(),
            source,
        })?;
        Ok(Self { root })
    }

    /// The running system itself.
    pub fn system() -> Self {
        Self { root: "/".into() }
    }

    /// Whether this is the running system (users can be created, services started).
    pub fn is_system(&self) -> bool {
        self.root == Path::new("/")
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the absolute path `abs` of the running system lives under this root.
    pub fn path(&self, abs: &Path) -> PathBuf {
        let rel: PathBuf = abs
            .components()
            .filter(|c| matches!(c, Component::Normal(_)))
            .collect();
        self.root.join(rel)
    }
}

/// Where each piece of an installation lives, as absolute paths of the running system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The store (`NIX_STORE_DIR`), default `/nix/store`.
    pub store_dir: PathBuf,
    /// The state directory (`NIX_STATE_DIR`), default `/nix/var/nix`.
    pub state_dir: PathBuf,
    /// Build logs (`NIX_LOG_DIR`), default `/nix/var/log/nix`.
    pub log_dir: PathBuf,
    /// Configuration shared with the clients (`NIX_CONF_DIR`), default `/etc/nix`.
    pub conf_dir: PathBuf,
    /// Where the unit files go.
    pub unit_dir: PathBuf,
    /// Root-owned directory for the binaries root and the daemon run; never the store,
    /// so the store owner cannot replace a program root executes.
    pub libexec_dir: PathBuf,
    /// Root-owned runtime directory holding the real sockets (systemd creates them as
    /// root, so they must not be in a directory the store owner controls).
    pub run_dir: PathBuf,
}

impl Default for Layout {
    fn default() -> Self {
        Self {
            store_dir: "/nix/store".into(),
            state_dir: "/nix/var/nix".into(),
            log_dir: "/nix/var/log/nix".into(),
            conf_dir: "/etc/nix".into(),
            unit_dir: "/etc/systemd/system".into(),
            libexec_dir: "/usr/local/libexec/unrooted".into(),
            run_dir: "/run/unrooted".into(),
        }
    }
}

impl Layout {
    /// Checks that every path is absolute and free of `..`.
    pub fn validate(&self) -> Result<(), DeployError> {
        for p in [
            &self.store_dir,
            &self.state_dir,
            &self.log_dir,
            &self.conf_dir,
            &self.unit_dir,
            &self.libexec_dir,
            &self.run_dir,
        ] {
            if !p.is_absolute()
                || p.components().any(|c| c == Component::ParentDir)
                || p.parent().is_none()
            {
                return Err(DeployError::NotAbsolute { path: p.clone() });
            }
        }
        Ok(())
    }

    /// The daemon socket clients use (Nix's default place): a link to the real one.
    pub fn daemon_socket(&self) -> PathBuf {
        self.state_dir.join("daemon-socket/socket")
    }

    /// The real daemon socket, created by systemd in the root-owned runtime directory.
    pub fn daemon_socket_real(&self) -> PathBuf {
        self.run_dir.join("daemon-socket")
    }

    /// The roots helper's socket where the daemon (and upstream Nix) look for it.
    pub fn roots_socket(&self) -> PathBuf {
        self.state_dir.join("gc-roots-socket/socket")
    }

    /// The real roots helper socket, in the root-owned runtime directory.
    pub fn roots_socket_real(&self) -> PathBuf {
        self.run_dir.join("gc-roots-socket")
    }

    /// The installed copy of `unrooted` the daemon unit runs (mode 0750, group of the
    /// store owner, so an AppArmor profile attached to it grants user namespaces to the
    /// store owner only).
    pub fn daemon_binary(&self) -> PathBuf {
        self.libexec_dir.join("unrooted")
    }

    /// The installed sandbox helper without the builtin builders, which the daemon
    /// starts for builders that execute a program because it starts faster (same
    /// owner and mode as [`Layout::daemon_binary`], and under the same AppArmor
    /// profile).
    pub fn sandbox_binary(&self) -> PathBuf {
        self.libexec_dir.join("unrooted-sandbox")
    }

    /// The administrator's `unrooted` on root's `PATH`: a link to
    /// [`Layout::daemon_binary`] (which only root and the store owner's group may run).
    pub fn admin_command(&self) -> PathBuf {
        "/usr/local/sbin/unrooted".into()
    }

    /// The installed roots helper (root-owned, 0755).
    pub fn roots_binary(&self) -> PathBuf {
        self.libexec_dir.join("unrooted-find-roots")
    }

    /// The root-only directory holding the store's writable view (see [`crate::units`]).
    pub fn private_dir(&self) -> PathBuf {
        self.store_dir
            .parent()
            .unwrap_or(Path::new("/"))
            .join(".unrooted")
    }

    /// The mount point of the store's writable bind mount, reachable only by root,
    /// from which systemd binds the store into the daemon's mount namespace.
    pub fn rw_store(&self) -> PathBuf {
        self.private_dir().join("rw-store")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_path_maps_absolute_paths_under_the_root() {
        let h = Host::new(Path::new("/tmp/r")).unwrap();
        assert_eq!(
            h.path(Path::new("/nix/store")),
            Path::new("/tmp/r/nix/store")
        );
        assert_eq!(h.path(Path::new("/../etc")), Path::new("/tmp/r/etc"));
        assert_eq!(
            Host::system().path(Path::new("/nix/store")),
            Path::new("/nix/store")
        );
    }

    #[test]
    fn relative_layout_is_rejected() {
        let l = Layout {
            store_dir: "nix/store".into(),
            ..Layout::default()
        };
        assert!(l.validate().is_err());
        assert!(Layout::default().validate().is_ok());
    }
}
