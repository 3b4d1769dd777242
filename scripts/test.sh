#!/usr/bin/env bash
# Sets up the machine and runs every test dpgw has (this is what CI runs).
#   fmt, clippy (also with the DPDK feature), the whole workspace's tests
#   (unit, golden captures, replay end-to-end, control socket, AF_PACKET and
#   network-namespace end-to-end when root), the DPDK backend tests, a short
#   fuzzing run of every fuzz target (needs nightly; skipped with a message
#   otherwise), the benchmark suite's --quick smoke run and the DPDK
#   benchmark's (dpgw next to testpmd on vdevs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TERM_COLOR=never
log=$(mktemp)
trap 'rm -f "$log"' EXIT

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p dataplane --features dpdk --all-targets -- -D warnings

echo "== tests"
cargo test --workspace 2>&1 | tee -a "$log"
echo "== tests (DPDK backend, no NIC: vdevs, --no-huge)"
cargo test -p dataplane --features dpdk --test 'dpdk*' 2>&1 | tee -a "$log"

if [ -x scripts/fuzz-smoke.sh ]; then
  echo "== fuzz smoke"
  ./scripts/fuzz-smoke.sh
fi
if [ -x scripts/bench-suite.sh ]; then
  echo "== benchmark suite smoke (--quick; figures not asserted)"
  out=target/bench-smoke
  ./scripts/bench-suite.sh --quick --out "$out"
  python3 -c "import json,sys; json.load(open(sys.argv[1])); print('results.json is well formed')" "$out/results.json"
fi

if [ -x scripts/bench-dpdk.sh ]; then
  echo "== DPDK benchmark smoke (--quick: dpgw vs testpmd on net_pcap and net_null; figures not asserted)"
  ./scripts/bench-dpdk.sh --quick --out target/bench-dpdk-smoke
  python3 -c "import json,sys; r=json.load(open(sys.argv[1])); assert all(x['mpps']['n'] > 0 for x in r['rows']), 'a forwarder failed'; print('dpdk results.json: every forwarder measured')" target/bench-dpdk-smoke/results.json
fi

counts=$(awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } } END { print p + 0, f + 0 }' "$log")
echo "== done"
echo "tests: ${counts% *} passed, ${counts#* } failed"
