#!/usr/bin/env bash
# Short run of every cargo-fuzz target of dpgw (fuzz/), for CI.
#
#   scripts/fuzz-smoke.sh                 # ~8 s per target
#   FUZZ_SECONDS=600 scripts/fuzz-smoke.sh decap pipeline   # longer, chosen targets
#
# Needs a nightly toolchain and cargo-fuzz. Without nightly it prints
# "skipped: nightly/cargo-fuzz missing" and exits 0. cargo-fuzz is installed
# (`cargo install cargo-fuzz --locked`, 1-2 min of compile) when missing,
# unless FUZZ_INSTALL=0; if that fails it also skips with exit 0.
# Exit status 1 if any target finds a crash, a leak or a timeout; the input
# is kept in fuzz/artifacts/<target>/ and printed as a hex dump.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECS=${FUZZ_SECONDS:-8}
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/fuzz/target}

skip() {
    echo "fuzz-smoke: skipped: nightly/cargo-fuzz missing ($1)"
    exit 0
}

cargo +nightly --version >/dev/null 2>&1 || skip "no nightly toolchain; rustup toolchain install nightly"
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    [ "${FUZZ_INSTALL:-1}" = 1 ] || skip "cargo-fuzz not installed and FUZZ_INSTALL=0"
    echo "fuzz-smoke: installing cargo-fuzz"
    cargo install cargo-fuzz --locked || skip "cargo install cargo-fuzz failed"
fi

# Seed corpora from the captures, ClassBench sets and configs.
if command -v python3 >/dev/null 2>&1; then
    python3 fuzz/seed-corpus.py
else
    echo "fuzz-smoke: python3 missing: starting from empty corpora"
fi

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
ALL=$(cargo +nightly fuzz list)
TARGETS=${*:-$ALL}
t0=$(date +%s)
# No sanitizer: the targets are safe Rust (the unsafe I/O code has its own
# AddressSanitizer run, scripts/sanitize.sh); debug assertions stay on.
if ! cargo +nightly fuzz build -s none --target-dir "$TARGET_DIR" >"$WORK/build.log" 2>&1; then
    echo "fuzz-smoke: building the fuzz targets failed:"
    cat "$WORK/build.log"
    exit 1
fi
t1=$(date +%s)
echo "fuzz-smoke: built in $((t1 - t0)) s; running each target for ${SECS} s"
fail=0
printf '%-12s %12s %10s %8s  %s\n' target execs exec/s corpus result
for t in $TARGETS; do
    mkdir -p "$WORK/$t" "fuzz/corpus/$t" "fuzz/artifacts/$t"
    log="$WORK/$t.log"
    set +e
    cargo +nightly fuzz run -s none --target-dir "$TARGET_DIR" "$t" \
        "$WORK/$t" "fuzz/corpus/$t" -- \
        -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -max_len=16384 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
    corpus=$(find "$WORK/$t" "fuzz/corpus/$t" -type f 2>/dev/null | wc -l)
    if [ $rc -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        fail=1
    fi
    printf '%-12s %12s %10s %8s  %s\n' "$t" "${runs:-0}" "${rate:-0}" "$corpus" "$result"
    if [ $rc -ne 0 ]; then
        grep -E 'panicked|ERROR|SUMMARY|Test unit written|Base64' "$log" | head -n 20 || true
        for a in $(grep -o 'fuzz/artifacts/[^ ]*' "$log" | sort -u); do
            [ -f "$a" ] && { echo "  input $a:"; od -An -tx1 -v "$a" | head -n 20; }
        done
    fi
done
echo "fuzz-smoke: total $(( $(date +%s) - t0 )) s"
exit $fail
