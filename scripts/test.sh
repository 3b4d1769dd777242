#!/usr/bin/env bash
# Sets up the machine and runs every test dpgw has (this is what CI runs).
#   fmt, clippy (also with the DPDK feature), the whole workspace's tests
#   (unit, golden captures, replay end-to-end, control socket), as root the
#   AF_PACKET and network-namespace end-to-end tests (`#[ignore]`d in the
#   workspace run, run here by name; as non-root the summary says they were
#   not run), the DPDK backend tests, a short
#   fuzzing run of every fuzz target (needs nightly; skipped with a message
#   otherwise), the benchmark suite's --quick smoke run and the DPDK
#   benchmark's (dpgw next to testpmd on vdevs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
export CARGO_TERM_COLOR=never
log=$(mktemp)
rootlog=$(mktemp)
trap 'rm -f "$log" "$rootlog"' EXIT

# Test targets whose every test needs root and `ip netns` (AF_PACKET on veth,
# end to end between network namespaces). They are `#[ignore]`d, so the
# workspace run lists them as ignored; as root they run below by name and the
# script fails unless every one of them ran and passed. (AF_PACKET against the
# kernel on veth is a benchmark, `veth-bench`, run by the suite below.)
root_targets=(afpacket afpacket_exception afxdp e2e_netns health_netns fleet_netns overlay_netns dpdk_health)

echo "== fmt"
cargo fmt --all -- --check
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p dataplane --features dpdk --all-targets -- -D warnings

echo "== tests"
cargo test --workspace 2>&1 | tee -a "$log"
echo "== tests (DPDK backend, no NIC: vdevs, --no-huge)"
cargo test -p dataplane --features dpdk --test 'dpdk*' 2>&1 | tee -a "$log"

root_args=()
for t in "${root_targets[@]}"; do root_args+=(--test "$t"); done
root_summary=""
if [ "$(id -u)" -eq 0 ]; then
  echo "== tests needing root and ip netns (AF_PACKET, network namespaces): ${root_targets[*]}"
  # What must run: every ignored test of these targets, as the harness lists them.
  expected=()
  for t in "${root_targets[@]}"; do
    names=$(cargo test -q -p dataplane --features dpdk --test "$t" -- --ignored --list 2>/dev/null | sed -n 's/: test$//p')
    [ -n "$names" ] || { echo "test.sh: no root-only tests listed in target $t" >&2; exit 1; }
    while read -r n; do expected+=("$n"); done <<<"$names"
  done
  # (With the DPDK feature: dpdk_health runs dpgw on DPDK; the others do
  # not use it.)
  cargo test -p dataplane --features dpdk "${root_args[@]}" -- --ignored 2>&1 | tee "$rootlog"
  cat "$rootlog" >>"$log"
  missing=()
  for n in "${expected[@]}"; do
    grep -qxF "test $n ... ok" "$rootlog" || missing+=("$n")
  done
  passed=$(awk '/^test result:/ { for (i = 2; i <= NF; i++) if ($i ~ /^passed/) p += $(i-1) } END { print p + 0 }' "$rootlog")
  if [ "${#missing[@]}" -gt 0 ] || [ "$passed" -ne "${#expected[@]}" ] ||
     grep '^test result:' "$rootlog" | grep -vq ' 0 ignored'; then
    echo "test.sh: root-only tests not all run and passed: expected ${#expected[@]}, passed $passed; not ok: ${missing[*]:-none}" >&2
    exit 1
  fi
  echo "root-only tests: all ${#expected[@]} ran and passed"
else
  root_summary="; root-only tests NOT run (not root): ${root_targets[*]}"
  echo "== tests needing root and ip netns: NOT RUN (not root): ${root_targets[*]}"
  echo "   run ./scripts/test.sh as root, or: sudo cargo test -p dataplane --features dpdk ${root_args[*]} -- --ignored"
fi

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
  # A row is measured only if its status is ok and it has figures: at least one
  # of its runs passed the checks of benches::sanity (packets counted, the
  # interval as asked, testpmd above its device's floor); failed runs are left
  # out of the figures, and a row with none is `failed` with a reason.
  python3 - target/bench-dpdk-smoke/results.json <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
bad = [f"{x['device']} {x['forwarder']}: {x.get('reason')}" for x in rows
       if x["status"] != "ok" or not x["mpps"] or x["mpps"]["n"] <= 0]
assert rows and not bad, "forwarders failed: " + "; ".join(bad)
print("dpdk results.json: every forwarder measured")
PY
fi

counts=$(awk '/^test result:/ { for (i = 2; i <= NF; i++) { if ($i ~ /^passed/) p += $(i-1); if ($i ~ /^failed/) f += $(i-1) } } END { print p + 0, f + 0 }' "$log")
echo "== done"
echo "tests: ${counts% *} passed, ${counts#* } failed${root_summary}"
