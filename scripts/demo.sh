#!/usr/bin/env bash
# The quick start: builds unrooted and shows its verbs agreeing with Nix 2.8 on the same
# input. Installs what it needs first (scripts/setup.sh). Touches nothing outside a
# temporary directory.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
cargo build --release --locked --quiet -p unrooted-cli
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
                args = [ "-c" "cat ${simple} > $out" ]; note = "quote\" tab\t"; }
NIX
drv=$(nix-instantiate "$work/demo.nix" 2>/dev/null)
step unrooted drv show "$(basename "$drv")"
"$U" drv show "$drv"
step unrooted drv outputs "$(basename "$drv")" "   (recomputed from its inputs)"
"$U" drv outputs "$drv"
printf '\nEvery pair above printed the same thing: unrooted reads and writes Nix 2.8 formats byte for byte.\n'
