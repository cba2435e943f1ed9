//! The systemd units, AppArmor profile and client configuration `install` writes.
//!
//! # The store: read-only for everyone, writable in the daemon's namespace
//! `unrooted-store.service` (root, oneshot) makes two bind mounts at boot:
//! 1. `<parent>/.unrooted/rw-store`, in a root-only 0700 directory: a *private* bind
//!    mount of the store directory, made before anything covers it;
//! 2. the store bind-mounted read-only over itself, for every process of the system,
//!    root included.
//!
//! The daemon runs with `PrivateMounts=yes`, `MountFlags=private` and
//! `BindPaths=<rw-store>:<store>`: systemd, still root while it sets up the
//! namespace, binds the writable view over the read-only one.
//!
//! Guix's units (`guix-daemon.service` with `PrivateMounts`, `BindPaths=/gnu/store`,
//! ordered `Before=gnu-store.mount`, which binds the store read-only over itself) get
//! their writable view by starting the daemon *before* the read-only mount exists.
//! Restart the daemon while the read-only mount is up (a crash with `Restart=always`,
//! an upgrade) and the new namespace binds the read-only mount onto itself: a bind
//! mount copies `MNT_READONLY`, so the daemon finds its store read-only (the work-around
//! stops `gnu-store.mount` around each start, leaving the store unprotected meanwhile).
//! Binding from the separate, private `rw-store` mount has no ordering to lose: every
//! start of the daemon, first or hundredth, gets the same writable view, and because
//! that mount is private the read-only mount made after it does not propagate onto it.
//! The two mounts are one service, not two `.mount` units, because systemd orders a
//! bind mount unit after the mount unit of its source path: the writable view (source
//! `/nix/store`) would be ordered after the read-only `nix-store.mount`, a cycle.
//!
//! # Capabilities, `NoNewPrivileges` and `newuidmap`
//! The daemon holds no capabilities (`AmbientCapabilities=` empty, or `CAP_CHOWN` when
//! the admin asks for kept build directories to be handed to their users). With
//! subordinate ids, builds get their own id range through `newuidmap`/`newgidmap`,
//! which are setuid root (Debian) or carry file capabilities (Fedora). Both are
//! disabled by `NoNewPrivileges=yes`, and the capability bounding set caps what even a
//! setuid-root program gains at exec, so with subordinate ids the unit keeps
//! `CAP_SETUID CAP_SETGID` in the *bounding* set (the daemon itself still holds none)
//! and leaves `NoNewPrivileges` off. Within that set Debian's setuid-root programs
//! still fail (they would also need `CAP_SYS_ADMIN` and `CAP_DAC_OVERRIDE`, see
//! [`crate::filecaps`]), so `install` puts copies with file capabilities beside the
//! daemon's binary, which the daemon uses first; options that imply it for a non-root service
//! (`SystemCallFilter`, `RestrictSUIDSGID`, `ProtectKernel*`, ...) are left out too.
//! Without subordinate ids the bounding set is empty and `NoNewPrivileges=yes`.
//! Options that cover parts of `/proc` or `/sys` (`ProtectKernelTunables`,
//! `ProtectKernelLogs`, `ProtectProc`, `ProtectControlGroups`) are avoided in the
//! daemon: a fresh procfs can be mounted in a user namespace only when the parent's
//! procfs is fully visible, and every sandbox mounts one. No cgroups are used yet, so
//! there is no `Delegate=`.
//!
//! # The sockets
//! systemd creates sockets as root, following the path; in a directory the store owner
//! controls it could be redirected. The real sockets therefore live in the root-owned
//! runtime directory (`/run/unrooted`), and Nix's well-known paths under the state
//! directory are symbolic links to them (a client connecting follows the link; the
//! store owner who could change the link is the daemon the clients trust anyway).

use std::fmt::Write as _;
use std::path::Path;

use crate::host::Layout;

/// What the units depend on besides the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitParams {
    /// The layout.
    pub layout: Layout,
    /// The store owner's name (`User=` of the daemon).
    pub owner: String,
    /// The store owner's primary group.
    pub group: String,
    /// The store owner's uid (the roots helper answers only it).
    pub owner_uid: u32,
    /// Give the daemon `CAP_CHOWN` (for `--keep-failed` build directories).
    pub chown_kept_build_dirs: bool,
    /// Builds use subordinate ids via `newuidmap`.
    pub subids: bool,
}

/// A file to install: its name in its directory and its contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitFile {
    /// The unit's file name (e.g. `unrooted-daemon.service`).
    pub name: String,
    /// The text.
    pub text: String,
}

/// systemd's path escaping (`systemd-escape --path`): `/` becomes `-`, every byte
/// outside `[A-Za-z0-9:_.]` (and a leading `.`) becomes `\xNN`.
pub fn escape_path(path: &Path) -> String {
    let s = path.to_string_lossy();
    let trimmed = s.trim_matches('/');
    if trimmed.is_empty() {
        return "-".into();
    }
    let mut out = String::new();
    for (i, b) in trimmed.bytes().enumerate() {
        match b {
            b'/' => out.push('-'),
            b'.' if i == 0 => out.push_str("\\x2e"),
            b if b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.' => {
                out.push(b as char)
            }
            b => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
    out
}

/// The name of the mount unit for `path`.
pub fn mount_unit_name(path: &Path) -> String {
    format!("{}.mount", escape_path(path))
}

/// Every unit file, in the order they are written.
pub fn unit_files(p: &UnitParams) -> Vec<UnitFile> {
    let l = &p.layout;
    vec![
        UnitFile {
            name: STORE_UNIT.into(),
            text: store_unit(l),
        },
        UnitFile {
            name: "unrooted-daemon.socket".into(),
            text: daemon_socket_unit(l),
        },
        UnitFile {
            name: "unrooted-daemon.service".into(),
            text: daemon_service_unit(p),
        },
        UnitFile {
            name: "unrooted-find-roots.socket".into(),
            text: roots_socket_unit(p),
        },
        UnitFile {
            name: "unrooted-find-roots@.service".into(),
            text: roots_service_unit(p),
        },
    ]
}

/// [`STORE_UNIT`]: the store read-only for everyone but the daemon.
fn store_unit(l: &Layout) -> String {
    let store = l.store_dir.display();
    let rw = l.rw_store();
    let rw = rw.display();
    format!(
        "# Installed by `unrooted install`. The store, read-only for every process of the
# system (root included) except the unrooted daemon. First a private bind of the store
# at {rw}, in a directory only root can enter (the daemon's writable view), then a
# read-only bind of the store over itself. One service rather than two mount units:
# a bind mount unit depends on the mount of its source path, which would order the
# writable view after the read-only mount that must come second. ($$ is systemd's $.)
[Unit]
Description=Read-only Nix store (writable only in the unrooted daemon's namespace)
RequiresMountsFor={store} {private}

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh -euc 'mountpoint -q \"$$1\" || mount -o bind,private \"$$0\" \"$$1\"; mount -o bind,ro \"$$0\" \"$$0\"' {store} {rw}
ExecStop=/bin/sh -euc 'umount \"$$0\"; umount \"$$1\"' {store} {rw}

[Install]
WantedBy=multi-user.target
",
        private = l.private_dir().display(),
    )
}

/// The daemon's socket.
fn daemon_socket_unit(l: &Layout) -> String {
    format!(
        "# Installed by `unrooted install`. Clients use {link}, a link to this socket.
[Unit]
Description=unrooted Nix store daemon socket

[Socket]
ListenStream={sock}
SocketMode=0666
DirectoryMode=0755

[Install]
WantedBy=sockets.target
",
        link = l.daemon_socket().display(),
        sock = l.daemon_socket_real().display(),
    )
}

/// The daemon service's capability lines: what `newuidmap`/`newgidmap` need with
/// subordinate ids, and `CAP_CHOWN` for kept build directories.
fn daemon_privileges(p: &UnitParams) -> String {
    let mut caps = Vec::new();
    if p.subids {
        caps.extend(["CAP_SETUID", "CAP_SETGID"]);
    }
    if p.chown_kept_build_dirs {
        caps.push("CAP_CHOWN");
    }
    let mut privs = String::new();
    if p.subids {
        privs.push_str(
            "# newuidmap/newgidmap are setuid (or file-capability) programs: they need these
# in the bounding set and NoNewPrivileges off. The daemon itself holds no capability.
",
        );
    }
    let _ = writeln!(privs, "CapabilityBoundingSet={}", caps.join(" "));
    let _ = writeln!(
        privs,
        "AmbientCapabilities={}",
        if p.chown_kept_build_dirs {
            "CAP_CHOWN"
        } else {
            ""
        }
    );
    let _ = writeln!(
        privs,
        "NoNewPrivileges={}",
        if p.subids { "no" } else { "yes" }
    );
    if !p.subids {
        privs.push_str("RestrictSUIDSGID=yes\nLockPersonality=yes\n");
    }
    privs
}

/// The daemon's service.
fn daemon_service_unit(p: &UnitParams) -> String {
    let l = &p.layout;
    let store = l.store_dir.display();
    let rw = l.rw_store();
    let rw = rw.display();
    let exe = l.daemon_binary();
    let exe = exe.display();
    let privs = daemon_privileges(p);
    format!(
        "# Installed by `unrooted install`. See docs/install.md for why each line is here.
[Unit]
Description=unrooted Nix store daemon (unprivileged)
Requires=unrooted-daemon.socket {STORE_UNIT}
After=unrooted-daemon.socket {STORE_UNIT}

[Service]
Type=exec
User={owner}
Group={group}
ExecStart={exe} daemon
Environment=NIX_STORE_DIR={store} NIX_STATE_DIR={state} NIX_LOG_DIR={log} NIX_CONF_DIR={conf}
# The store is read-only for the rest of the system; here the writable view is bound
# over it. MountFlags=private keeps later host mounts (the read-only bind) out.
PrivateMounts=yes
MountFlags=private
BindPaths={rw}:{store}
ProtectSystem=strict
ReadWritePaths={state} {log}
ProtectHome=yes
PrivateTmp=yes
{privs}UMask=0022
OOMPolicy=continue
Restart=on-failure
RestartSec=2

[Install]
Also=unrooted-daemon.socket
",
        owner = p.owner,
        group = p.group,
        state = l.state_dir.display(),
        log = l.log_dir.display(),
        conf = l.conf_dir.display(),
    )
}

/// The roots helper's socket, the store owner's alone.
fn roots_socket_unit(p: &UnitParams) -> String {
    let l = &p.layout;
    format!(
        "# Installed by `unrooted install`. Only the store owner may connect (mode 0600);
# the daemon finds it through the link {link}.
[Unit]
Description=unrooted garbage collector roots helper socket

[Socket]
ListenStream={sock}
Accept=yes
SocketUser={owner}
SocketGroup={group}
SocketMode=0600
DirectoryMode=0755
MaxConnections=8

[Install]
WantedBy=sockets.target
",
        link = l.roots_socket().display(),
        sock = l.roots_socket_real().display(),
        owner = p.owner,
        group = p.group,
    )
}

/// The roots helper's service, run as root once per connection.
fn roots_service_unit(p: &UnitParams) -> String {
    let l = &p.layout;
    let store = l.store_dir.display();
    let roots_exe = l.roots_binary();
    let roots_exe = roots_exe.display();
    format!(
        "# Installed by `unrooted install`. Runs as root, once per connection, reads roots
# the store owner cannot, writes only to its connection. The binary lives outside the
# store, owned by root, so the store owner cannot replace what root runs.
[Unit]
Description=unrooted garbage collector roots helper
CollectMode=inactive-or-failed

[Service]
Type=exec
ExecStart={roots_exe} --inetd --peer-instance %i --store-dir {store} --state-dir {state} --owner-uid {uid}
StandardInput=socket
StandardOutput=socket
StandardError=journal
CapabilityBoundingSet=CAP_DAC_READ_SEARCH CAP_SYS_PTRACE
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
PrivateDevices=yes
PrivateNetwork=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictAddressFamilies=AF_UNIX
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallFilter=~@privileged @resources
UMask=0077
RuntimeMaxSec=60
",
        state = l.state_dir.display(),
        uid = p.owner_uid,
    )
}

/// The service that makes the store read-only outside the daemon.
pub const STORE_UNIT: &str = "unrooted-store.service";

/// The units to enable, in order, after the files are installed.
pub fn units_to_enable() -> Vec<String> {
    vec![
        STORE_UNIT.into(),
        "unrooted-find-roots.socket".into(),
        "unrooted-daemon.socket".into(),
    ]
}

/// The AppArmor profile name (also its file name under `/etc/apparmor.d`).
pub const APPARMOR_PROFILE: &str = "unrooted-daemon";

/// An AppArmor profile that lets the daemon's binary and its sandbox helper create
/// user namespaces when the kernel restricts them to profiles that allow it (Ubuntu
/// 23.10+). It attaches to the installed copies, which only the store owner's group
/// may execute, so user namespaces are not opened to every user through `unrooted`.
pub fn apparmor_profile(layout: &Layout) -> String {
    format!(
        "# Installed by `unrooted install`: the kernel restricts unprivileged user namespaces
# (kernel.apparmor_restrict_unprivileged_userns=1); this profile allows them for the
# unrooted daemon's binary only, which nobody but the store owner may execute.
abi <abi/4.0>,
include <tunables/global>

profile {APPARMOR_PROFILE} {libexec}/{{unrooted,unrooted-sandbox}} flags=(unconfined) {{
  userns,

  include if exists <local/{APPARMOR_PROFILE}>
}}
",
        libexec = layout.libexec_dir.display()
    )
}

/// First and last line of the block `install` manages inside `nix.conf`.
pub const CONF_BEGIN: &str = "# BEGIN unrooted (managed by `unrooted install`)";
/// See [`CONF_BEGIN`].
pub const CONF_END: &str = "# END unrooted";

/// The managed `nix.conf` block: every client, root included, talks to the daemon.
/// (Nix 2.8 reads the `store` setting; `daemon` is its name for the Unix socket
/// store. Without it root's `auto` store would write the store directly.) The store
/// owner's own maintenance commands pass `--store local`.
pub fn nix_conf_block() -> String {
    format!(
        "{CONF_BEGIN}\n# Clients, root included, use the unprivileged daemon.\nstore = daemon\n{CONF_END}\n"
    )
}

/// Replaces (or appends) the managed block in `existing`.
pub fn with_conf_block(existing: &str, block: Option<&str>) -> String {
    let mut out = String::new();
    let mut inside = false;
    for line in existing.lines() {
        if line == CONF_BEGIN {
            inside = true;
            continue;
        }
        if inside {
            if line == CONF_END {
                inside = false;
            }
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    if let Some(b) = block {
        if !out.is_empty() && !out.ends_with("\n\n") {
            out.push('\n');
        }
        out.push_str(b);
    }
    out
}

/// `/etc/profile.d/unrooted.sh`: login shells talk to the daemon, and find the store
/// where it is when it is not Nix's default.
pub fn profile_script(layout: &Layout) -> String {
    let mut s = String::from(
        "# Installed by `unrooted install`: Nix clients talk to the unprivileged daemon.\nexport NIX_REMOTE=daemon\n",
    );
    let d = Layout::default();
    for (var, value, default) in [
        ("NIX_STORE_DIR", &layout.store_dir, &d.store_dir),
        ("NIX_STATE_DIR", &layout.state_dir, &d.state_dir),
        ("NIX_LOG_DIR", &layout.log_dir, &d.log_dir),
        ("NIX_CONF_DIR", &layout.conf_dir, &d.conf_dir),
    ] {
        if value != default {
            let _ = writeln!(s, "export {var}={}", value.display());
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_systemd_escape() {
        // Values printed by `systemd-escape -p --suffix=mount` (systemd 252).
        assert_eq!(mount_unit_name(Path::new("/nix/store")), "nix-store.mount");
        assert_eq!(
            mount_unit_name(Path::new("/nix/.unrooted/rw-store")),
            "nix-.unrooted-rw\\x2dstore.mount"
        );
        assert_eq!(escape_path(Path::new("/.a b/")), "\\x2ea\\x20b");
        assert_eq!(escape_path(Path::new("/")), "-");
    }

    #[test]
    fn conf_block_is_replaced_not_duplicated() {
        let block = nix_conf_block();
        let once = with_conf_block("build-users-group = nixbld\n", Some(&block));
        let twice = with_conf_block(&once, Some(&block));
        assert_eq!(once, twice);
        assert_eq!(once.matches(CONF_BEGIN).count(), 1);
        assert_eq!(
            with_conf_block(&once, None),
            "build-users-group = nixbld\n\n"
        );
    }

    #[test]
    fn subids_keep_setuid_caps_in_the_bounding_set_only() {
        let mut p = UnitParams {
            layout: Layout::default(),
            owner: "unrooted".into(),
            group: "unrooted".into(),
            owner_uid: 990,
            chown_kept_build_dirs: false,
            subids: false,
        };
        let daemon = |p: &UnitParams| {
            unit_files(p)
                .into_iter()
                .find(|u| u.name == "unrooted-daemon.service")
                .unwrap()
                .text
        };
        let plain = daemon(&p);
        assert!(plain.contains("CapabilityBoundingSet=\n"));
        assert!(plain.contains("AmbientCapabilities=\n"));
        assert!(plain.contains("NoNewPrivileges=yes\n"));
        p.subids = true;
        p.chown_kept_build_dirs = true;
        let sub = daemon(&p);
        assert!(sub.contains("CapabilityBoundingSet=CAP_SETUID CAP_SETGID CAP_CHOWN\n"));
        assert!(sub.contains("AmbientCapabilities=CAP_CHOWN\n"));
        assert!(sub.contains("NoNewPrivileges=no\n"));
        assert!(!sub.contains("RestrictSUIDSGID"));
    }
}
