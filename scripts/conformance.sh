#!/usr/bin/env bash
# Runs Nix 2.8's own functional test suite (the `tests/` of Debian's source package of
# the client we test against) in daemon mode against a daemon, one line per test.
# See docs/conformance.md.
#
#   scripts/conformance.sh [--daemon unrooted|nix] [--only a.sh,b.sh] [--expected FILE]
#                          [--timeout SECONDS] [--keep-logs DIR]
#
# --daemon unrooted (default): `unrooted daemon` as the unprivileged user
#   unrooted-conf-daemon (no capabilities), with the roots helper unrooted-find-roots
#   as root beside it, socket-activated per connection as `unrooted install` deploys it.
# --daemon nix: Debian's nix-daemon 2.8 as root, the reference.
# --expected FILE: the tests that must pass (one name per line, `#` comments); the
#   exit status is non-zero when one of them does not. Without it, non-zero when any
#   test fails.
# Test scripts and clients run as root (the suite's `init.sh` writes the store's
# configuration), the daemon as its own user.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

daemon=unrooted only="" expected="" timeout=300
logs=""
while [ $# -gt 0 ]; do
  case "$1" in
    --daemon) daemon=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --expected) expected=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --keep-logs) logs=$2; shift 2 ;;
    -h|--help) sed -n 2,17p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$daemon" in unrooted|nix) ;; *) echo "--daemon unrooted|nix" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "conformance.sh: run as root (it makes the daemon's user)" >&2; exit 2; }

work=${UNROOTED_CONFORMANCE_DIR:-/var/tmp/unrooted-conformance}
logs=${logs:-$work/logs-$daemon}
daemon_user=unrooted-conf-daemon

# --- set-up: packages, the daemon's user, the binaries -------------------------------
need=()
command -v nix-daemon >/dev/null || need+=(nix-bin)
command -v setfacl >/dev/null || need+=(acl)
command -v systemd-socket-activate >/dev/null || need+=(systemd)
command -v dpkg-source >/dev/null || need+=(dpkg-dev)
command -v git >/dev/null || need+=(git)
command -v xz >/dev/null || need+=(xz-utils)
if [ ${#need[@]} -gt 0 ]; then
  apt-get -o DPkg::Lock::Timeout=600 install -y -qq "${need[@]}" >/dev/null
fi
command -v inotifywait >/dev/null || apt-get -o DPkg::Lock::Timeout=600 install -y -qq inotify-tools >/dev/null
# Each test's daemon wrapper watches its store with inotify; a booted container of
# another test (scripts/systemd-test.sh) can use up root's default 128 instances.
[ "$(cat /proc/sys/fs/inotify/max_user_instances)" -ge 1024 ] ||
  sysctl -q -w fs.inotify.max_user_instances=1024
id "$daemon_user" >/dev/null 2>&1 ||
  useradd --system --no-create-home --shell /usr/sbin/nologin "$daemon_user"
if [ "$daemon" = unrooted ]; then
  cargo build --release --locked -q -p unrooted-cli -p unrooted-roots
  bin_dir=$work/bin
  mkdir -p "$bin_dir"
  # Root-owned copies outside the repository (whose parents the daemon's user may not
  # be able to enter), as `unrooted install` puts them.
  release=${CARGO_TARGET_DIR:-target}/release
  install -m 0755 "$release/unrooted" "$release/unrooted-find-roots" "$bin_dir/"
  [ -x "$release/unrooted-sandbox" ] && install -m 0755 "$release/unrooted-sandbox" "$bin_dir/"
fi

# --- the suite, from Debian's source package of the client ---------------------------
version=$(dpkg-query -W -f '${source:Upstream-Version}' nix-bin)
src=$work/nix-$version
if [ ! -f "$src/.prepared" ]; then
  sources=/etc/apt/sources.list.d/unrooted-conformance-src.sources
  if ! apt-get source --print-uris nix >/dev/null 2>&1; then
    suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
    printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' "$suite" >"$sources"
    apt-get -o DPkg::Lock::Timeout=600 update -qq
  fi
  rm -rf "$src" "$work/dl"
  mkdir -p "$work/dl"
  (cd "$work/dl" && apt-get source --download-only "nix=$(dpkg-query -W -f '${source:Version}' nix-bin)" >/dev/null 2>&1)
  tar -C "$work" -xf "$work"/dl/nix_"$version".orig.tar.*
  # The substitutions Nix's build makes (configure's @…@ values for this machine).
  coreutils=$(dirname "$(command -v cat)")
  for f in common.sh config.nix; do
    sed -e "s|@bash@|/bin/bash|g" -e "s|@coreutils@|$coreutils|g" \
        -e "s|@system@|$(uname -m)-linux|g" -e "s|@bindir@|/usr/bin|g" \
        -e "s|@sandbox_shell@|/bin/busybox|g" -e "s|@PACKAGE_VERSION@|$version|g" \
        -e "s|@dot@||g" <"$src/tests/$f.in" >"$src/tests/$f"
  done
  touch "$src/.prepared"
fi
tests_dir=$src/tests
mapfile -t all < <(sed -n '/^nix_tests = /,/^$/p' "$tests_dir/local.mk" | tr -d '\\' | tr ' ' '\n' | grep '\.sh$')

# --- the daemon the suite starts (`startDaemon` runs $NIX_DAEMON_PACKAGE/bin/nix-daemon) --
pkg=$work/daemon-$daemon
mkdir -p "$pkg/bin"
if [ "$daemon" = nix ]; then
  ln -sf /usr/bin/nix-daemon "$pkg/bin/nix-daemon"
else
  sed -e "s|@bin_dir@|$bin_dir|g" -e "s|@daemon_user@|$daemon_user|g" \
    "$repo/conformance/unrooted-daemon.sh" >"$pkg/bin/nix-daemon"
  chmod 0755 "$pkg/bin/nix-daemon"
fi

# --- the run -----------------------------------------------------------------------
declare -A want=()
if [ -n "$expected" ]; then
  while read -r name; do want[$name]=1; done < <(sed -e 's/#.*//' -e '/^ *$/d' "$expected")
fi
selected=("${all[@]}")
[ -n "$only" ] && IFS=, read -r -a selected <<<"$only"
rm -rf "$logs"
mkdir -p "$logs"
tmp=$work/tmp
mkdir -p "$tmp"
chmod 0755 "$work" "$tmp"
passed=0 failed=0 skipped=0 unexpected=()
for t in "${selected[@]}"; do
  name=${t%.sh}
  log=$logs/${name//\//_}.log
  start=$(date +%s%N)
  env_args=(TMPDIR="$tmp" NIX_DAEMON_PACKAGE="$pkg" NIX_REMOTE= TEST_NAME="${name//\//-}")
  set +e
  # As mk/run_test.sh: init.sh first, its status not looked at.
  (cd "$tests_dir" && env "${env_args[@]}" bash -e init.sh) >"$log" 2>&1
  echo "--- the test" >>"$log"
  (cd "$tests_dir/$(dirname "$t")" && env "${env_args[@]}" \
      timeout -k 10 "$timeout" bash -e "$(basename "$t")") >>"$log" 2>&1
  status=$?
  set -e
  tenths=$((($(date +%s%N) - start) / 100000000))
  took=$((tenths / 10)).$((tenths % 10))
  case $status in
    0) verdict=PASS; passed=$((passed + 1)); rm -f "$log" ;;
    99) verdict=SKIP; skipped=$((skipped + 1)); rm -f "$log" ;;
    *) verdict=FAIL; failed=$((failed + 1))
       [ $status = 124 ] && echo "(timed out after ${timeout}s)" >>"$log"
       for f in daemon.log roots-helper.log; do
         p=$tmp/nix-test/${name//\//-}/$f
         [ -f "$p" ] && { echo "--- $f"; cat "$p"; } >>"$log"
       done ;;
  esac
  echo "$verdict $name (${took}s)"
  if [ -n "${want[$name]:-}" ] && [ $verdict != PASS ]; then unexpected+=("$name"); fi
  # The daemon (and the roots helper) of a test never outlive it.
  pkill -u "$daemon_user" >/dev/null 2>&1 || true
  rm -rf "$tmp/nix-test"
done
echo "$passed passed, $failed failed, $skipped skipped"
if [ -n "$expected" ]; then
  for name in "${!want[@]}"; do
    printf '%s\n' "${all[@]}" | grep -qx "$name.sh" || unexpected+=("$name (not in the suite)")
  done
  if [ ${#unexpected[@]} -gt 0 ]; then
    echo "expected to pass but did not: ${unexpected[*]} (logs in $logs)"
    exit 1
  fi
  exit 0
fi
[ "$failed" = 0 ]
