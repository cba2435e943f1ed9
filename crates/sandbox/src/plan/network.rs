//! The network of fixed-output builds: `pasta`'s addresses and arguments, and the
//! host files such a build sees.

use std::ffi::OsString;
use std::path::PathBuf;

use super::SandboxPath;

/// The gateway address of a fixed-output build's user-mode network, as the builder
/// sees it (Lix's choice: an IPv4 link-local address, which no host network routes).
/// `pasta` maps connections to it to the host's loopback (so a service listening on
/// the host's `127.0.0.1` is reached at this address, never at the sandbox's own
/// `127.0.0.1`) and forwards DNS sent to it to the host's first resolver.
pub const PASTA_GATEWAY: &str = "169.254.1.1";
/// The builder's own address in that network.
pub const PASTA_ADDRESS: &str = "169.254.1.2";
/// Its prefix length.
pub const PASTA_PREFIX: &str = "16";
/// The interface `pasta` creates in the build's network namespace.
pub const PASTA_INTERFACE: &str = "eth0";

/// `pasta` (Debian's `passt` package), the user-mode network stack of a fixed-output
/// build: the program and the arguments [`Pasta::new`] gives it. The helper starts it
/// once the build's network namespace exists, as the builder's own ids with only
/// `CAP_NET_ADMIN` and `CAP_SYS_ADMIN` in the builder's nested user namespace (see
/// the crate's documentation), and the namespace's descriptor on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pasta {
    /// The `pasta` executable (an absolute path).
    pub program: PathBuf,
    /// Its arguments (after argv\[0\]).
    pub args: Vec<OsString>,
}

impl Pasta {
    /// `program` with the arguments every build uses: stay in the foreground (the
    /// helper kills it when the build ends), log only errors, configure the interface
    /// with [`PASTA_ADDRESS`] and [`PASTA_GATEWAY`] (where DNS is forwarded to the
    /// host's resolver), forward no port in either direction (`-t`, `-u`, `-T`, `-U`
    /// `none`: the default `auto` would make the host's loopback listeners appear on
    /// the sandbox's own loopback, and the builder's listeners on the host), and write
    /// its pid to stdout once it is ready. The network namespace is its stdin.
    pub fn new(program: PathBuf) -> Self {
        let args = [
            "--foreground",
            "--quiet",
            "--config-net",
            "--netns",
            "/proc/self/fd/0",
            "--netns-only",
            "--no-netns-quit",
            "--ns-ifname",
            PASTA_INTERFACE,
            "--address",
            PASTA_ADDRESS,
            "--netmask",
            PASTA_PREFIX,
            "--gateway",
            PASTA_GATEWAY,
            "--dns-forward",
            PASTA_GATEWAY,
            "-t",
            "none",
            "-u",
            "none",
            "-T",
            "none",
            "-U",
            "none",
            "--pid",
            "/proc/self/fd/1",
        ]
        .into_iter()
        .map(OsString::from)
        .collect();
        Pasta { program, args }
    }
}

/// The `/etc/resolv.conf` of a build on `pasta`'s network: the host's, with its
/// `nameserver` lines replaced by [`PASTA_GATEWAY`], where `pasta` forwards DNS to the
/// host's first resolver (which may be on the host's loopback, out of the builder's
/// reach), as Lix does. `search`, `options` and the rest are kept.
pub fn pasta_resolv_conf(host: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(host.len() + 32);
    for line in host.split_inclusive(|&b| b == b'\n') {
        let word = line
            .split(|b| b.is_ascii_whitespace())
            .find(|w| !w.is_empty());
        if word == Some(b"nameserver".as_slice()) {
            continue;
        }
        out.extend_from_slice(line);
        if !line.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    out.extend_from_slice(format!("nameserver {PASTA_GATEWAY}\n").as_bytes());
    out
}

/// `/etc/nsswitch.conf` of network (fixed-output) builds, Nix 2.8's bytes: names and
/// services come from files and DNS only, whatever the host configures.
pub const ETC_NSSWITCH_NETWORK: &[u8] = b"hosts: files dns\nservices: files\n";

/// The host files a network (fixed-output) build sees, as in Nix 2.8:
/// `/etc/resolv.conf`, `/etc/services` and `/etc/hosts`, each only if it exists. A
/// symlink (`/etc/resolv.conf` → `/run/systemd/resolve/stub-resolv.conf`) is resolved
/// here, on the host, so the file itself is bound: the executor recreates a symlink
/// source as a symlink, which would dangle in the sandbox.
pub fn host_network_files() -> Vec<SandboxPath> {
    ["/etc/resolv.conf", "/etc/services", "/etc/hosts"]
        .into_iter()
        .filter_map(|p| {
            let source = std::fs::canonicalize(p).ok()?;
            Some(SandboxPath {
                target: PathBuf::from(p),
                source,
                optional: true,
            })
        })
        .collect()
}
