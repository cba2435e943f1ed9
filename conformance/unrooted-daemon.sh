#!/bin/bash
# The `nix-daemon` Nix's functional tests start (`startDaemon` in their common.sh runs
# `$NIX_DAEMON_PACKAGE/bin/nix-daemon` as root, in the background, and later sends it
# SIGTERM): here it starts `unrooted daemon` as the unprivileged @daemon_user@ with no
# capabilities, and the roots helper as root beside it, socket-activated per
# connection as `unrooted install` deploys it. scripts/conformance.sh fills in @…@.
set -euo pipefail
bin=@bin_dir@
user=@daemon_user@

if [ "${1:-}" = --version ]; then
  # What the suite's isDaemonNewer reads (the third word): the protocol we serve.
  echo "nix-daemon (Nix) 2.8.0"
  exit 0
fi

uid=$(id -u "$user")
gid=$(id -g "$user")
test_root=$(dirname "$NIX_STORE_DIR")

# What the suite made of the store and state (as root, or as the clients' user in
# the second mode: init.sh's `nix-store --init`) stays its maker's, and the daemon's
# user gets access to it (an ACL entry on each, not inherited), as a root nix-daemon
# reaches whatever it finds without owning it; what the daemon makes is its own. So
# the suite's clients may change (`chmod -R +w`) and remove (`rm -rf`) what they
# made, as with nix-daemon, and no more. The suite also removes and re-makes the
# store and state directories while the daemon runs (clearStore): a watcher gives
# the daemon's user the same access to each re-made one at once. (A default ACL,
# inherited by what is made inside, would show as group write permission on every
# new file, which output checks rightly reject.)
grant() {
  find "$@" ! -user "$uid" ! -type l -exec setfacl -m "u:$uid:rwX" {} + 2>/dev/null || true
}
for d in "$NIX_STORE_DIR" "$NIX_LOCALSTATE_DIR"; do
  mkdir -p "$d"
done
grant "$NIX_STORE_DIR" "$NIX_LOCALSTATE_DIR"
# The daemon makes its socket in the test's root.
setfacl -m "u:$uid:rwx" "$test_root"
# A post-build hook runs as the daemon's user (root with nix-daemon): the suite's
# hooks write where the test runs, its home (flake-local-settings' post-hook-ran).
if [ -d "${TEST_HOME:-}" ]; then setfacl -m "u:$uid:rwx" "$TEST_HOME"; fi
# Two kinds of files the suite makes as root in the test's root are for the daemon,
# which a root nix-daemon (and the unsandboxed builders it runs as root) reaches
# whatever their modes: secret keys (`nix-store --generate-binary-cache-key … sk1`,
# 0600, named in `--secret-key-files`: the daemon signs what it builds with them) and
# FIFOs a builder reads or writes (gc-concurrent's test1.fifo, gc-auto's fifoLock).
# The daemon's user gets read access to the one and read-write access to the other,
# as an administrator gives the store owner the keys it signs with.
inotifywait -q -m -e create -e moved_to --format '%w%f' "$test_root" "$NIX_LOCALSTATE_DIR" |
  while read -r made; do
    case "$made" in
      # The directory itself first, with one command: the suite's next client
      # may connect at once, and the daemon then re-makes its layout inside.
      "$NIX_STORE_DIR" | "$NIX_STATE_DIR" | "$NIX_LOG_DIR")
        setfacl -m "u:$uid:rwx" "$made" 2>/dev/null || true
        grant "$made" ;;
      "$test_root"/sk[0-9]*) [ -f "$made" ] && setfacl -m "u:$uid:r" "$made" ;;
      # impure-derivations' counter, which its impure builders (whose impureEnvVars
      # name TEST_ROOT) rewrite: root's file, written by root nix-daemon's builders.
      "$test_root"/counter) [ -f "$made" ] && setfacl -m "u:$uid:rw" "$made" ;;
      *) [ -p "$made" ] && setfacl -m "u:$uid:rw" "$made" ;;
    esac
  done &
watcher=$!

# The roots helper: root, one instance per connection (systemd's Accept=yes).
run=$(mktemp -d /run/unrooted-conformance.XXXXXX)
chmod 0755 "$run"
socket=$run/gc-roots-socket
systemd-socket-activate --accept --inetd --listen "$socket" \
  "$bin/unrooted-find-roots" --inetd --store-dir "$NIX_STORE_DIR" \
  --state-dir "$NIX_STATE_DIR" --owner-uid "$uid" 2>>"$test_root/roots-helper.log" &
helper=$!
for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.05; done
chown "$uid:$gid" "$socket"
chmod 0600 "$socket"

# Its own temporary directory (builds are made there); the suite's TMPDIR is root's.
export TMPDIR=$run/tmp
install -d -m 0700 -o "$uid" -g "$gid" "$TMPDIR"
export NIX_CONFIG="${NIX_CONFIG:+$NIX_CONFIG
}roots-helper-socket = $socket"
setpriv --reuid="$uid" --regid="$gid" --init-groups --inh-caps=-all -- \
  "$bin/unrooted" daemon 2>>"$test_root/daemon.log" &
daemon=$!
stop() {
  kill "$daemon" "$helper" 2>/dev/null || true
  pkill -P "$watcher" 2>/dev/null || true
  kill "$watcher" 2>/dev/null || true
  # inotifywait is this shell's child (the pipeline's first part), not the loop's.
  pkill -P $$ -x inotifywait 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  rm -rf "$run"
}
trap 'stop; exit 0' TERM INT
trap stop EXIT
wait "$daemon"
