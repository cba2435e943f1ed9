#!/usr/bin/env bash
# Runs every check and test of unrooted. Installs what it needs first (scripts/setup.sh).
# Under CI=true (set by .ci/run) a missing Nix tool fails a comparison test instead of
# skipping it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh

export CARGO_TERM_COLOR=never
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps --locked --quiet
cargo test --workspace --locked

# Bounded fuzzing of every parser of hostile input (docs/reliability.md).
scripts/fuzz.sh --short
