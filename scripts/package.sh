#!/usr/bin/env bash
# Builds the Debian package of unrooted: release binaries, then target/debian/unrooted_*.deb
# with cargo-deb (configured in crates/cli/Cargo.toml [package.metadata.deb]; maintainer
# scripts in crates/cli/debian/). Installs cargo-deb first when it is missing.
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
target=${CARGO_TARGET_DIR:-$PWD/target}

if ! command -v cargo-deb >/dev/null && [ -x "$HOME/.cargo/bin/cargo-deb" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! command -v cargo-deb >/dev/null; then
  # Its own target directory, so the workspace's is not disturbed.
  env -u CARGO_TARGET_DIR cargo install cargo-deb --locked --quiet
fi
# dpkg-shlibdeps computes the libc dependency ($auto).
command -v dpkg-shlibdeps >/dev/null || {
  as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
  DEBIAN_FRONTEND=noninteractive as_root apt-get -o DPkg::Lock::Timeout=600 install -y -qq dpkg-dev >&2
}

# The three binaries of the package, from three crates.
cargo build --release --locked -p unrooted-cli -p unrooted-roots -p unrooted-sandbox >&2
rm -f "$target"/debian/unrooted_*.deb
cargo deb -p unrooted-cli --no-build --output "$target/debian/" >&2
deb=$(ls "$target"/debian/unrooted_*.deb)
dpkg-deb --info "$deb" >&2
echo "$deb"
