#!/usr/bin/env bash
# Runs Nix 2.8's own functional test suite (the `tests/` of Debian's source package of
# the client we test against) in daemon mode against a daemon, one line per test.
# See docs/conformance.md.
#
#   scripts/conformance.sh [--daemon unrooted|nix] [--only a.sh,b.sh] [--expected FILE]
#                          [--timeout SECONDS] [--keep-logs DIR] [--clients-as USER]
#                          [--force-daemon]
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
# --clients-as USER (the second mode): test scripts and clients run as USER, another
#   unprivileged user (made if missing); the daemon the suite starts is started for it
#   by a root launcher of this runner (the wrapper needs root to set up). See
#   docs/conformance.md for what fails there and why.
# --force-daemon: the tests that skip themselves in daemon mode (`needLocalStore` or
#   `buggyNeedLocalStore` as their first statement: timeout, check, referrers, repair,
#   gc-auto, gc-non-blocking, dump-db, binary-cache, fetchClosure, eval-store,
#   ca/concurrent-builds, ca/substitute, linux-sandbox) run through the daemon anyway,
#   from a copy of the suite in which that one line is a no-op (`:`); nothing else of
#   the test changes. See docs/conformance.md for which of them mean something there.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

daemon=unrooted only="" expected="" timeout=300
logs="" clients="" force=""
while [ $# -gt 0 ]; do
  case "$1" in
    --daemon) daemon=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --expected) expected=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --keep-logs) logs=$2; shift 2 ;;
    --clients-as) clients=$2; shift 2 ;;
    --force-daemon) force=1; shift ;;
    -h|--help) sed -n 2,28p "$0"; exit 0 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$daemon" in unrooted|nix) ;; *) echo "--daemon unrooted|nix" >&2; exit 2 ;; esac
[ "$(id -u)" = 0 ] || { echo "conformance.sh: run as root (it makes the daemon's user)" >&2; exit 2; }

work=${UNROOTED_CONFORMANCE_DIR:-/var/tmp/unrooted-conformance}
logs=${logs:-$work/logs-$daemon${clients:+-as-$clients}${force:+-forced}}
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
# (Another run may make the same user at the same moment: then it exists.)
id "$daemon_user" >/dev/null 2>&1 ||
  useradd --system --no-create-home --shell /usr/sbin/nologin "$daemon_user" ||
  id "$daemon_user" >/dev/null
if [ "$daemon" = unrooted ]; then
  cargo build --release --locked -q -p unrooted-cli -p unrooted-roots
  bin_dir=$work/bin
  mkdir -p "$bin_dir"
  # Root-owned copies outside the repository (whose parents the daemon's user may not
  # be able to enter), as `unrooted install` puts them.
  rel=${CARGO_TARGET_DIR:-target}/release
  install -m 0755 "$rel/unrooted" "$rel/unrooted-find-roots" "$bin_dir/"
  [ -x "$rel/unrooted-sandbox" ] && install -m 0755 "$rel/unrooted-sandbox" "$bin_dir/"
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
  touch "$src/.prepared"
fi
# The substitutions Nix's build makes (configure's @…@ values for this machine), for
# the files `test-deps` of tests/local.mk names (tests/ca/config.nix.in is a link to
# ../config.nix.in, made into a file of its own as Nix's build does).
coreutils=$(dirname "$(command -v cat)")
for f in common.sh config.nix ca/config.nix; do
  sed -e "s|@bash@|/bin/bash|g" -e "s|@coreutils@|$coreutils|g" \
      -e "s|@system@|$(uname -m)-linux|g" -e "s|@bindir@|/usr/bin|g" \
      -e "s|@sandbox_shell@|/bin/busybox|g" -e "s|@PACKAGE_VERSION@|$version|g" \
      -e "s|@dot@||g" <"$src/tests/$f.in" >"$src/tests/$f.tmp"
  mv "$src/tests/$f.tmp" "$src/tests/$f"
done
tests_dir=$src/tests
if [ -n "$clients" ] || [ -n "$force" ]; then
  # A copy of the suite: the client's own (tests write into their directory,
  # ./result), and/or one whose daemon-mode skips are no-ops.
  copy=$work/suite${clients:+-as-$clients}${force:+-forced}
  rm -rf "$copy"
  mkdir -p "$copy"
  cp -a "$tests_dir" "$copy/tests"
  # What tests read beside the suite: ../scripts (bash-profile), ../src (restricted:
  # `-I src=../src`, which restricted evaluation resolves, so a copy, not a link).
  cp -a "$src/scripts" "$src/src" "$copy/"
  tests_dir=$copy/tests
fi
if [ -n "$force" ]; then
  # Only the skip statement itself becomes `:` (its argument, the reason, stays
  # visible in the log); what the test checks is unchanged.
  find "$tests_dir" -name '*.sh' ! -name common.sh -exec sed -i -E \
    's/^([[:space:]]*)(buggyNeedLocalStore|needLocalStore)([[:space:]]|$)/\1: forced through the daemon by conformance.sh --force-daemon: \2\3/' {} +
fi
if [ -n "$clients" ]; then
  id "$clients" >/dev/null 2>&1 ||
    useradd --system --no-create-home --shell /usr/sbin/nologin "$clients" ||
    id "$clients" >/dev/null
  chown -R "$clients:" "$tests_dir"
fi
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

# --- the second mode: a root launcher starts the daemon for the client's scripts ------
tmp=$work/tmp${clients:+-as-$clients}
as_client=()
if [ -n "$clients" ]; then
  as_client=(setpriv --reuid="$clients" --regid="$(id -g "$clients")" --init-groups)
  mkdir -p "$pkg/libexec" "$tmp"
  mv "$pkg/bin/nix-daemon" "$pkg/libexec/nix-daemon"
  req=$work/launch-$clients.fifo
  rm -f "$req"
  mkfifo -m 0600 "$req"
  chown "$clients" "$req"
  # The suite's startDaemon runs this as the client: it hands its environment to the
  # launcher and stays until killDaemon's SIGTERM, which it passes on.
  {
    echo '#!/bin/bash'
    echo 'set -eu'
    echo "[ \"\${1:-}\" = --version ] && exec $pkg/libexec/nix-daemon --version"
    echo "d=\$(mktemp -d $tmp/launch.XXXXXX)"
    echo 'env -0 >"$d/env"'
    echo "echo \"start \$d\" >$req"
    echo "trap 'echo \"stop \$d\" >$req; exit 0' TERM INT"
    echo 'while :; do sleep 1 & wait $! || true; done'
  } >"$pkg/bin/nix-daemon"
  chmod 0755 "$pkg/bin/nix-daemon"
  (
    declare -A pids=()
    while :; do
      read -r verb dir <"$req" || continue
      [ "$verb" = quit ] && break
      case "$dir" in "$tmp"/launch.*) ;; *) continue ;; esac
      case "$verb" in
        start)
          mapfile -d '' vars <"$dir/env"
          env -i "${vars[@]}" "$pkg/libexec/nix-daemon" </dev/null >/dev/null 2>&1 &
          pids[$dir]=$! ;;
        stop)
          if [ -n "${pids[$dir]:-}" ]; then
            kill -TERM "${pids[$dir]}" 2>/dev/null || true
            wait "${pids[$dir]}" 2>/dev/null || true
            unset "pids[$dir]"
          fi
          rm -rf "$dir" ;;
      esac
    done
  ) &
  launcher=$!
  trap 'echo "quit -" >"$req"; wait "$launcher" 2>/dev/null || true' EXIT
fi

# --- the run -----------------------------------------------------------------------
# What is left of a test's daemon when the test is over: the processes of the daemon's
# user that belong to this run, not all of that user's (another run, in another work
# directory, may use the same user at the same time, as scripts/test.sh's does). The
# daemon has the test's NIX_STORE_DIR in its environment and every builder has it as
# NIX_STORE (Nix's builder environment; builders make sessions of their own, so no
# process group or session covers them), both below this run's $tmp/nix-test.
reap_daemon_user() {
  local p mine
  mine="=$(realpath -m "$tmp/nix-test")/"
  for p in $(pgrep -u "$daemon_user" || true); do
    if grep -qzF -- "$mine" "/proc/$p/environ" 2>/dev/null; then
      kill -KILL "$p" 2>/dev/null || true
    fi
  done
}
declare -A want=()
if [ -n "$expected" ]; then
  while read -r name; do want[$name]=1; done < <(sed -e 's/#.*//' -e '/^ *$/d' "$expected")
fi
selected=("${all[@]}")
[ -n "$only" ] && IFS=, read -r -a selected <<<"$only"
rm -rf "$logs"
mkdir -p "$logs"
mkdir -p "$tmp"
chmod 0755 "$work" "$tmp"
if [ -n "$clients" ]; then chown "$clients:" "$tmp"; fi
passed=0 failed=0 skipped=0 unexpected=()
for t in "${selected[@]}"; do
  name=${t%.sh}
  log=$logs/${name//\//_}.log
  start=$(date +%s%N)
  env_args=(TMPDIR="$tmp" NIX_DAEMON_PACKAGE="$pkg" NIX_REMOTE= TEST_NAME="${name//\//-}")
  set +e
  # As mk/run_test.sh: init.sh first, its status not looked at. In the second mode
  # without a daemon: init.sh's common.sh would start one whose socket (the daemon's)
  # its own `chmod -R u+w $TEST_ROOT` then cannot change, and it would stop before
  # writing nix.conf; the set-up talks to no daemon but for `nix-store --init`, which
  # then makes the database locally, as the daemon does at its first connection.
  init_args=("${env_args[@]}")
  [ -n "$clients" ] && init_args+=(NIX_DAEMON_PACKAGE=)
  (cd "$tests_dir" && "${as_client[@]}" env "${init_args[@]}" bash -e init.sh) >"$log" 2>&1
  echo "--- the test" >>"$log"
  (cd "$tests_dir/$(dirname "$t")" && env "${env_args[@]}" \
      timeout -k 10 "$timeout" "${as_client[@]}" bash -e "$(basename "$t")") >>"$log" 2>&1
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
  # The daemon (and its builders) of a test never outlive it.
  if [ "$daemon" = unrooted ]; then reap_daemon_user; fi
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
