#!/usr/bin/env bash
# The quick start: builds unrooted and shows its verbs agreeing with Nix 2.8 on the same
# input. Installs what it needs first (scripts/setup.sh). Touches nothing outside a
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --locked --quiet -p unrooted-cli -p unrooted-roots -p unrooted-sandbox
U="$PWD/target/release/unrooted"

work=$(mktemp -d)
trap 'chmod -R u+w "$work"; rm -rf "$work"' EXIT
export NIX_STORE_DIR="$work/store" NIX_STATE_DIR="$work/state" NIX_LOG_DIR="$work/log" NIX_CONF_DIR="$work/conf"
mkdir -p "$NIX_CONF_DIR" && echo "sandbox = false" > "$NIX_CONF_DIR/nix.conf"

mkdir -p "$work/src/bin"
printf 'hello\n' > "$work/src/greeting"
printf '#!/bin/sh\necho hi\n' > "$work/src/bin/hi" && chmod +x "$work/src/bin/hi"
ln -s ../greeting "$work/src/bin/link"

step() { printf '\n$ %s\n' "$*"; }
step unrooted nar pack src \| sha256sum "   (vs nix-store --dump)"
"$U" nar pack "$work/src" | sha256sum
nix-store --dump "$work/src" | sha256sum

step unrooted hash path --base32 src "   (vs nix-hash --type sha256 --base32)"
"$U" hash path --base32 "$work/src"
nix-hash --type sha256 --base32 "$work/src"

step unrooted store-path --store-dir "\$NIX_STORE_DIR" src "   (vs nix-store --add)"
"$U" store-path "$work/src"
nix-store --add "$work/src"

step unrooted nar pack src \| unrooted nar unpack copy "&& unrooted nar ls -R -l"
"$U" nar pack "$work/src" | "$U" nar unpack "$work/copy"
"$U" nar pack "$work/copy" | "$U" nar ls -R -l

cat > "$work/demo.nix" <<'NIX'
let simple = derivation { name = "simple"; system = "x86_64-linux"; builder = "/bin/sh";
                          args = [ "-c" "echo hello > $out" ]; };
in derivation { name = "demo"; system = "x86_64-linux"; builder = "/bin/sh";
                args = [ "-c" "read line < ${simple}; echo \"$line from $(id -u) in the sandbox\"; echo \"$line, world\" > $out" ];
                note = "quote\" tab\t"; }
NIX
drv=$(nix-instantiate "$work/demo.nix" 2>/dev/null)
step unrooted drv show "$(basename "$drv")"
"$U" drv show "$drv"
step unrooted drv outputs "$(basename "$drv")" "   (recomputed from its inputs)"
"$U" drv outputs "$drv"
printf '\nEvery pair above printed the same thing: unrooted reads and writes Nix 2.8 formats byte for byte.\n'

# The daemon: one unprivileged user serves the store, another uses it with the
# unchanged Nix client. Root is needed only to create the two users and switch to them.
if [ "$(id -u)" != 0 ]; then
  echo "(skipping the daemon part: it needs root to switch to the demo users; run with sudo)"
  exit 0
fi
D=unrooted-test-daemon C=unrooted-test-client O=unrooted-test-other
store="$work/daemon"
mkdir -p "$store"/{store,state,log,conf,roots} "$store/home"
chmod 755 "$work" "$store"
chown "$D:" "$store"/{store,state,log,conf}
chown "$C:" "$store/home"
chmod 700 "$store/home"   # a private home: the daemon cannot read the client's links
# Builders run in the rootless sandbox; /bin/sh inside is Debian's static busybox.
printf 'sandbox = true\nsandbox-paths = /bin/sh=/bin/busybox\nsubstituters =\n' > "$store/conf/nix.conf"
denv=(env -i PATH=/usr/bin:/bin NIX_STORE_DIR="$store/store" NIX_STATE_DIR="$store/state"
      NIX_LOG_DIR="$store/log" NIX_CONF_DIR="$store/conf")
# The roots helper runs as root (read-only, no network in production) and answers
# the daemon with the roots it cannot read itself, such as ~/result in a private home.
"$PWD/target/release/unrooted-find-roots" --store-dir "$store/store" --state-dir "$store/state" \
  --owner-uid "$(id -u $D)" --listen "$store/roots/socket" 2> "$store/roots.log" &
helper_pid=$!
setpriv --reuid="$D" --regid="$D" --init-groups --inh-caps=-all -- "${denv[@]}" RUST_LOG=info \
  NIX_CONFIG="roots-helper-socket = $store/roots/socket" "$U" daemon 2> "$store/daemon.log" &
daemon_pid=$!
trap 'kill $daemon_pid $helper_pid 2>/dev/null; chmod -R u+w "$work"; rm -rf "$work"' EXIT
for _ in $(seq 100); do [ -S "$store/state/daemon-socket/socket" ] && break; sleep 0.1; done
as_client() {
  setpriv --reuid="$C" --regid="$C" --init-groups --inh-caps=-all -- "${denv[@]}" HOME="$store/home" \
    NIX_REMOTE=daemon "$@"
}
step "unrooted daemon   (running as $D, uid $(id -u $D); capabilities: $(grep CapEff /proc/$daemon_pid/status | cut -f2))"
as_client nix --extra-experimental-features nix-command store ping
cp -r "$work/src" "$store/home/src" && chown -R "$C:" "$store/home/src"
step "as $C: nix-store --add src"
p=$(as_client nix-store --add "$store/home/src")
echo "$p"
step "as $C: nix-instantiate demo.nix   (the .drv files are added through the daemon)"
cp "$work/demo.nix" "$store/home/" && chown "$C:" "$store/home/demo.nix"
d=$(as_client nix-instantiate "$store/home/demo.nix" 2>/dev/null)
echo "$d"
step "as $C: nix-store -q --tree" "$(basename "$d")"
as_client nix-store -q --tree "$d"
step "as $C: nix path-info --json -S" "$(basename "$p")"
as_client nix --extra-experimental-features nix-command path-info --json -S "$p"; echo
step "as $C: nix-build demo.nix -o ~/result   (built by the daemon, in a user-namespace sandbox)"
out=$(cd "$store/home" && as_client nix-build "$store/home/demo.nix" -o "$store/home/result")
echo "$out"
step "as $C: cat ~/result"
as_client cat "$store/home/result"
step "as $C: nix-store -l" "$(basename "$d")" "   (the build log, stored under \$NIX_LOG_DIR/drvs)"
as_client nix-store -l "$d"
find "$store/log/drvs" -type f
as_other() {
  setpriv --reuid="$O" --regid="$O" --init-groups --inh-caps=-all -- "${denv[@]}" HOME=/ NIX_REMOTE=daemon "$@"
}
step "as $O (a third user): nix-store --gc   ($C's ~/result is in a home only $C can read)"
as_other nix-store --gc 2>&1 | tail -3
step "as $C: cat ~/result   (still there: the roots helper resolved the private link)"
as_client cat "$store/home/result"
step "as $C: rm ~/result; then as $O: nix-store --gc"
as_client rm "$store/home/result"
as_other nix-store --gc 2>&1 | grep -E "deleting '.*-demo'|freed"
as_client nix-store -q --hash "$out" 2>&1 | tail -1 || true
step "as $D (the store owner), local mode: nix-store --verify --check-contents"
setpriv --reuid="$D" --regid="$D" --init-groups -- "${denv[@]}" NIX_REMOTE=local nix-store --verify --check-contents
ls -ld "$store/store"
printf '\nThe store belongs to %s and is read-only for everyone else; the client (%s) added and built through the daemon only.\n' "$D" "$C"
