#!/usr/bin/env bash
# Installs what unrooted's demo, tests and benchmark need on a fresh Debian machine:
# a Rust toolchain (if none), Debian's Nix 2.8 client (nix-bin) to compare against, and
# the unprivileged users the integration tests run the daemon and clients as.
# Idempotent; needs root (or sudo) only for apt-get and useradd.
set -euo pipefail

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_apt=()
command -v nix-store >/dev/null || need_apt+=(nix-bin)
command -v gcc >/dev/null || need_apt+=(build-essential)
command -v setpriv >/dev/null || need_apt+=(util-linux)
command -v curl >/dev/null || need_apt+=(curl ca-certificates)
# The deploy tests check the installed units with `systemd-analyze verify`.
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# The booted-systemd test (scripts/systemd-test.sh) makes a Debian 12 root and boots it.
command -v debootstrap >/dev/null || need_apt+=(debootstrap)
command -v systemd-nspawn >/dev/null || need_apt+=(systemd-container)
# The package's libc dependency (scripts/package.sh, cargo-deb).
command -v dpkg-shlibdeps >/dev/null || need_apt+=(dpkg-dev)
# Builds get their own id range through newuidmap/newgidmap (the build_idrange tests).
command -v newuidmap >/dev/null || need_apt+=(uidmap)
# Fixed-output builds get their network through pasta (the build_fod_network tests).
command -v pasta >/dev/null || need_apt+=(passt)
# The ssh-ng:// tests (crates/cli/tests/cli/remote_ssh.rs) start a private sshd.
[ -x /usr/sbin/sshd ] || need_apt+=(openssh-server)
# The s3:// tests (crates/cli/tests/cli/subst_s3.rs) run moto's S3 server from a venv.
command -v python3 >/dev/null && python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# `nix develop` with the Nix 2.26 client (trixie_vs_nix_daemon.rs) builds its
# environment with bash in the sandbox: a static one, bound at /bin/bash.
[ -x /bin/bash-static ] || need_apt+=(bash-static)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && ldd /bin/busybox 2>&1 | grep -q 'not a dynamic' || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  # Wait for another apt or dpkg run (unattended upgrades) instead of failing.
  as_root apt-get -o DPkg::Lock::Timeout=600 update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need_apt[@]}"
fi

if ! command -v cargo >/dev/null; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    # Debian 12's rustc is too old for the dependencies; rustup gives a current one.
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi
for comp in rustfmt clippy; do
  cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1 || rustup component add "$comp"
done

# pasta runs as a build's ids and opens /dev/net/tun: 0666, as Debian's udev rule
# makes it (containers without udev leave it 0600).
if [ -c /dev/net/tun ] && [ "$(stat -c %a /dev/net/tun)" != 666 ]; then
  as_root chmod 0666 /dev/net/tun
fi

# The integration tests run the daemon as one unprivileged user and clients as two others.
for user in unrooted-test-daemon unrooted-test-client unrooted-test-other; do
  id "$user" >/dev/null 2>&1 || as_root useradd --system --create-home --shell /usr/sbin/nologin "$user"
done

# The second client of the tests, Debian 13's Nix 2.26, in a Debian 13 root made once per
# machine (scripts/trixie-root.sh, cached in /var/cache/unrooted-ci/trixie).
"$(dirname "${BASH_SOURCE[0]}")/trixie-root.sh" >/dev/null
# A local S3 server for the s3:// tests: moto from PyPI, in its own venv (Debian's
# Python refuses system-wide pip installs). The tests look for it here, or at
# $UNROOTED_MOTO_SERVER.
if [ ! -x /opt/unrooted-moto/bin/moto_server ]; then
  as_root python3 -m venv /opt/unrooted-moto
  as_root /opt/unrooted-moto/bin/pip install -q 'moto[server]'
fi
