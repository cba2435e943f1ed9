#!/usr/bin/env bash
# Makes the Debian 13 (trixie) root whose Nix 2.26 client (nix-bin, no nix-setup-systemd,
# no root daemon) the trixie_client tests run with chroot against `unrooted daemon`
# (issue 19), with the OpenSSH client its ssh-ng:// store needs. Made once per machine
# with `debootstrap --variant=minbase trixie` from Debian's mirror and cached in
# $UNROOTED_CI_CACHE/trixie (default /var/cache/unrooted-ci/trixie); prints the root's
# path. A changed base recipe below rebuilds it; packages added to `extras` are only
# installed into the cached root (seconds, not a rebuild). Needs root; without root
# (or debootstrap) it says why and exits 0 outside CI, 1 under CI=true.
set -euo pipefail

cache=${UNROOTED_CI_CACHE:-}
cache=${cache:-/var/cache/unrooted-ci}
root=$cache/trixie
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
# What is in the root; a change here makes the next run rebuild it.
recipe="v1 trixie minbase; apt --no-install-recommends: nix-bin"
# Debian 13 packages installed on top (--no-install-recommends), recorded in
# .unrooted-extras: adding one installs it into the cached root. ssh for the
# ssh-ng:// tests (trixie_client.rs).
extras="openssh-client"

skip_or_fail() {
  if [ "${CI:-}" = true ]; then echo "trixie-root: FAIL: $*" >&2; exit 1; fi
  echo "trixie-root: skipped ($*)" >&2
  exit 0
}

current() {
  [ "$(cat "$root/.unrooted-root" 2>/dev/null)" = "$recipe" ] &&
    [ "$(cat "$root/.unrooted-extras" 2>/dev/null)" = "$extras" ]
}

# apt-get in the root, in a private mount namespace that gives it /proc without
# leaving a mount behind; its output goes to $2.
apt_in() {
  unshare --mount --propagation private sh -ec '
    mount -t proc proc "$1/proc"
    chroot "$1" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin DEBIAN_FRONTEND=noninteractive \
      sh -ec "apt-get update -qq && apt-get install -y -qq --no-install-recommends $2 && apt-get clean"
    chroot "$1" nix --version >&2
  ' sh "$1" "$3" > "$2" 2>&1 || { tail -20 "$2" >&2; exit 1; }
}

if current; then
  echo "$root"; exit 0
fi
[ "$(id -u)" = 0 ] || skip_or_fail "needs root to debootstrap $root"
command -v debootstrap >/dev/null || skip_or_fail "debootstrap missing"

mkdir -p "$cache"
exec 9> "$cache/lock.trixie"
flock 9
started=$(date +%s)
if [ "$(cat "$root/.unrooted-root" 2>/dev/null)" != "$recipe" ]; then
  new=$cache/trixie.new
  rm -rf "$new"
  echo "trixie-root: making $root (debootstrap trixie, once)" >&2
  debootstrap --variant=minbase trixie "$new" "$mirror" > "$cache/trixie-debootstrap.log" 2>&1 ||
    { tail -20 "$cache/trixie-debootstrap.log" >&2; exit 1; }
  # apt resolves what debootstrap does not (virtual packages such as perl's ABI).
  apt_in "$new" "$cache/trixie-apt.log" "nix-bin $extras"
  tail -1 "$cache/trixie-apt.log" >&2
  echo "$recipe" > "$new/.unrooted-root"
  echo "$extras" > "$new/.unrooted-extras"
  rm -rf "$root" && mv "$new" "$root"
  echo "trixie-root: made in $(($(date +%s) - started)) s" >&2
elif [ "$(cat "$root/.unrooted-extras" 2>/dev/null)" != "$extras" ]; then
  echo "trixie-root: adding $extras to $root" >&2
  apt_in "$root" "$cache/trixie-apt-extras.log" "$extras"
  echo "$extras" > "$root/.unrooted-extras"
  echo "trixie-root: added in $(($(date +%s) - started)) s" >&2
fi
echo "$root"
