#!/usr/bin/env bash
# dpgw on DPDK with the whole pipeline, next to dpdk-testpmd (io, macswap) on
# the same virtual devices in the same run (net_pcap replaying a generated
# 64-byte VXLAN capture from memory, and net_null for the I/O ceiling).
#
#   scripts/bench-dpdk.sh [--quick] [--seconds S] [--runs N] [--out DIR] [--no-huge]
#
# Needs root for hugepages (512 × 2 MiB are reserved and hugetlbfs mounted if
# missing; without them every process runs with --no-huge and the report says
# so) and the packages of scripts/setup.sh. Prints a table and writes
# DIR/results.json (default bench-out/dpdk). See docs/benchmarks.md.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
# The production profile (fat LTO), as deployed.
cargo build --profile production -p dataplane --features dpdk --bin dpgw
cargo build --profile production -p benches --bin dpdk-bench
"$target/production/dpdk-bench" --dpgw "$target/production/dpgw" "$@"
