#!/usr/bin/env bash
# Runs dpgw's unsafe I/O code under AddressSanitizer (nightly, -Zbuild-std so
# the standard library is instrumented too), falling back to valgrind on a
# debug build when nightly or its rust-src component is missing.
#
#   scripts/sanitize.sh            # ASan if possible, else valgrind
#   SANITIZE_MODE=valgrind scripts/sanitize.sh
#
# What runs: the dataplane unit tests (io::pcap buffers and queues, io::afpacket
# ring code, the engine), the golden and hostile replays through the real
# `dpgw replay` binary (the pcap replay path, built with the same flags), and,
# when present and permitted (root, veth), the AF_PACKET integration tests.
# Exit status non-zero on any sanitizer report or test failure.
set -euo pipefail
cd "$(dirname "$0")/.."
HOST=$(rustc -vV | sed -n 's/^host: //p')
TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-sanitize}
MODE=${SANITIZE_MODE:-auto}

# Integration tests that exist in this checkout (other work adds some).
TESTS=()
for t in golden hostile afpacket afpacket_exception; do
    [ -f "dataplane/tests/$t.rs" ] && TESTS+=(--test "$t")
done
# The AF_PACKET tests are `#[ignore]`d (they need root and `ip netns`): as root
# they are included (and fail if they cannot run); otherwise they are listed as ignored.
INCLUDE_IGNORED=()
[ "$(id -u)" -eq 0 ] && INCLUDE_IGNORED=(--include-ignored)

asan_ready() {
    cargo +nightly --version >/dev/null 2>&1 || { echo "sanitize: no nightly toolchain"; return 1; }
    rustup +nightly component list --installed 2>/dev/null | grep -q '^rust-src' || {
        echo "sanitize: nightly has no rust-src (rustup component add rust-src --toolchain nightly)"
        return 1
    }
}

if [ "$MODE" = auto ]; then
    if asan_ready; then MODE=asan; else MODE=valgrind; fi
fi

case "$MODE" in
asan)
    echo "sanitize: AddressSanitizer, nightly, -Zbuild-std, target $HOST"
    export RUSTFLAGS="-Zsanitizer=address -Cforce-frame-pointers=yes ${RUSTFLAGS:-}"
    export RUSTDOCFLAGS="-Zsanitizer=address"
    # Leaks are reported too; abort on the first error with a full report.
    export ASAN_OPTIONS="detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:${ASAN_OPTIONS:-}"
    cargo +nightly test -Zbuild-std --target "$HOST" --target-dir "$TARGET_DIR" \
        -p dataplane --lib --bins "${TESTS[@]}" -- --test-threads=2 "${INCLUDE_IGNORED[@]}"
    echo "sanitize: ASan clean"
    ;;
valgrind)
    command -v valgrind >/dev/null || { echo "sanitize: skipped: neither nightly+rust-src nor valgrind"; exit 0; }
    echo "sanitize: valgrind memcheck on a debug build"
    cargo test --target-dir "$TARGET_DIR" -p dataplane --lib --no-run
    bin=$(ls -t "$TARGET_DIR"/debug/deps/dataplane-* | grep -v '\.d$' | head -n 1)
    valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        "$bin" --test-threads=1
    cargo build --target-dir "$TARGET_DIR" -p dataplane --bin dpgw
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cat >"$tmp/c.toml" <<TOML
[dataplane]
no_pin = true
[pcap]
input = ["$PWD/pcaps/demo.pcap"]
output = "$tmp/out.pcap"
loops = 3
[gateway]
vtep_ips = ["10.0.0.1"]
TOML
    valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite \
        "$TARGET_DIR/debug/dpgw" replay --config "$tmp/c.toml"
    echo "sanitize: valgrind clean"
    ;;
*)
    echo "sanitize: SANITIZE_MODE must be auto, asan or valgrind" >&2
    exit 2
    ;;
esac
