#!/usr/bin/env bash
# Runs unrooted's benchmark against the real Nix 2.8 tools in one run on this machine.
# Extra arguments go to unrooted-bench (see --help), e.g. --only daemon, or
# --size-mib 256 --runs 5. The daemon workload runs nix-daemon as root and unrooted as
# the unprivileged user unrooted-test-daemon, so run this as root for real figures.
# --only build|gc|subst run the builds, GC and substitution workloads; gc needs the
# roots helper next to unrooted (cargo build --release -p unrooted-roots).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
# The substitution workload serves its binary cache with nginx (a static server as
# real caches use; python3 -m http.server is the fallback and dominates the figure).
if ! [ -x /usr/sbin/nginx ]; then
    DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 install -y -qq nginx-light >/dev/null || true
fi
cargo build --release --locked --quiet -p unrooted-cli -p unrooted-bench -p unrooted-roots -p unrooted-sandbox
# Cargo builds into CARGO_TARGET_DIR when it is set; run what it built.
target="${CARGO_TARGET_DIR:-target}"
exec "$target/release/unrooted-bench" --unrooted "$target/release/unrooted" "$@"
