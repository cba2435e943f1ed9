#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ (cargo-fuzz, libFuzzer, AddressSanitizer) for a
# bounded time each; exits non-zero on the first crash, leaving the input in
# fuzz/artifacts/<target>/. See docs/reliability.md.
#
#   scripts/fuzz.sh [--short]          FUZZ_SHORT_SECONDS (default 10) per target
#   scripts/fuzz.sh --long SECONDS     SECONDS per target (the documented long run)
#   scripts/fuzz.sh ... TARGET...      only these targets
#
# The machine has only a stable toolchain. cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, sanitizer-coverage passes); RUSTC_BOOTSTRAP=1 makes stable rustc
# accept them, and the ASan runtime ships with the stable standard library.
# libFuzzer itself is compiled from source by the libfuzzer-sys crate (needs c++).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SHORT_SECONDS:-10}
case "${1:-}" in
--short) shift ;;
--long)
    seconds=${2:?"--long needs SECONDS"}
    shift 2
    ;;
esac
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(nar derivation narinfo worker_request handshake stderr_reply roots_answer roots_walk)
fi

export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR=never
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked --version 0.13.2
fi

# Seed corpora: the repository's own vectors (real Nix output) and fuzz/seeds/. Run
# corpora live in fuzz/corpus/ (not committed) and grow across runs on one machine.
seed() { # seed TARGET FILE...
    mkdir -p "fuzz/corpus/$1"
    local t=$1 f
    shift
    for f in "$@"; do [ -f "$f" ] && cp -f "$f" "fuzz/corpus/$t/seed-$(basename "$f")"; done
    return 0
}
# A protocol vector as bytes, prefixed with the byte that picks its version (V=1.NN
# in its comment; 1.37 otherwise) as the protocol targets read it.
hex_seed() { # hex_seed TARGET PREFIX-BYTES FILE...
    local t=$1 prefix=$2 f minor
    shift 2
    mkdir -p "fuzz/corpus/$t"
    for f in "$@"; do
        minor=$(grep -o 'V=1\.[0-9]*' "$f" | head -1 | cut -d. -f2 || true)
        minor=${minor:-37}
        {
            printf "\\x$(printf %02x $((minor - 21)))"
            printf "$prefix"
            perl -ne 'next if /^#/; s/\s+//g; print pack("H*", $_)' "$f"
        } >"fuzz/corpus/$t/seed-$(basename "$f" .hex)"
    done
}
v=crates/format/tests/vectors
p=crates/protocol/tests/vectors
seed nar $v/nar/*.nar
seed derivation $v/drv/*.drv $v/drv/invalid/*.drv
seed narinfo $v/narinfo/*.narinfo $v/narinfo/negative/*.narinfo
hex_seed worker_request "" $p/*-request.hex
hex_seed handshake "" $p/*handshake-client*.hex
# stderr_reply reads log messages up to STDERR_LAST, then the reply picked by byte 2.
hex_seed stderr_reply '\x00' $p/*-reply.hex
seed roots_answer fuzz/seeds/roots_answer/*
seed roots_walk fuzz/seeds/roots_walk/*

# Release build with debug assertions and ASan (cargo-fuzz's defaults).
(cd fuzz && cargo fuzz build)

# Properties: no panic (libFuzzer reports it as a crash), no single allocation over
# 256 MiB and no more than 512 MiB resident (a length prefix must never size an
# allocation), no input taking more than 5 s (a hang).
for t in "${targets[@]}"; do
    dict=()
    [ -f "fuzz/dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
    echo "fuzz: $t for ${seconds}s"
    log=$(mktemp)
    if ! (cd fuzz && cargo fuzz run "$t" "corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=512 -malloc_limit_mb=256 -timeout=5 \
        -print_final_stats=1 "${dict[@]}") >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "fuzz: $t FAILED; the input is in fuzz/artifacts/$t/" >&2
        rm -f "$log"
        exit 1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || true)
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz: $t ok: ${runs:-?} runs, $cov, corpus $(ls "fuzz/corpus/$t" | wc -l) inputs"
    rm -f "$log"
done
echo "fuzz: ${#targets[@]} targets passed"
