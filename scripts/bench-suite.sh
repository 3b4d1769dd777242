#!/usr/bin/env bash
# dpgw's line-rate benchmark suite: builds the benches with the production
# profile (fat LTO, the one deployments use), runs the
# matrix (engine replay, per-stage costs, latency, peers) and checks the JSON.
#
#   scripts/bench-suite.sh [--quick] [--out DIR] [other `suite` options]
#
# Writes DIR/report.md, DIR/results.json, DIR/plots/*.svg, DIR/configs/*.toml
# (default DIR: bench-out, gitignored). --quick takes a minute or two (CI smoke test);
# the full run about 6 minutes on a 2-core machine (plus the build). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."

target="${CARGO_TARGET_DIR:-target}"
out="bench-out"
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case "${args[$i]}" in
        --out) out="${args[$((i + 1))]:-$out}" ;;
        --out=*) out="${args[$i]#--out=}" ;;
    esac
done

cargo build --profile production -p benches --bins
# veth-bench runs dpgw (AF_PACKET); the same build as scripts/bench-dpdk.sh.
cargo build --profile production -p dataplane --features dpdk --bin dpgw
"$target/production/suite" "$@"
# The suite checks its own output too; this is the independent check CI relies on.
"$target/production/suite" --check "$out/results.json"
if command -v python3 >/dev/null; then
    python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$out/results.json"
fi
for f in report.md plots/mpps_vs_frame.svg plots/scaling_workers.svg; do
    test -s "$out/$f" || { echo "bench-suite: $out/$f missing" >&2; exit 1; }
done
echo "bench-suite: report in $out/report.md"
