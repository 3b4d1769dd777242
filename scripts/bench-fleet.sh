#!/usr/bin/env bash
# Worker cost of flow-state sharing ([fleet]), same binary, same run: the pcap
# replay of a new-flow flood (every packet a new flow: 1M flows through a
# 64k-entry flow table, so every packet misses) and of a flow-hit capture
# (1000 flows), each with and without a [fleet] section (peers on loopback,
# nobody listening: the sync thread still batches, MACs and sends). Rounds
# alternate; prints on-CPU cycles/packet per round and the median ratio.
# Usage: scripts/bench-fleet.sh [--rounds N]   (builds the release binary)
set -euo pipefail
rounds=3
[ "${1:-}" = "--rounds" ] && rounds=$2
cd "$(dirname "$0")/.."
cargo build -q --release -p dataplane --bin dpgw
bin=$PWD/target/release/dpgw
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
cd "$d"
"$bin" gen --packets 1000000 --flows 1000000 --tcp-pct 100 --dst 10.96.0.10 --dport 80 --vtep 10.0.0.1 --out flood.pcap >/dev/null 2>&1
"$bin" gen --packets 1000000 --flows 1000 --tcp-pct 100 --dst 10.96.0.10 --dport 80 --vtep 10.0.0.1 --out hits.pcap >/dev/null 2>&1
head -c 32 /dev/urandom | base64 > fleet.key
chmod 600 fleet.key
for cap in flood hits; do
  cat > "$cap-base.toml" <<EOT
[dataplane]
workers = 1
io = "pcap"
flow_capacity = 65536
[pcap]
input = ["$cap.pcap"]
loops = 5
[gateway]
vtep_ips = ["10.0.0.1"]
underlay_ips = ["10.0.0.1"]
[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
proto = "tcp"
encap = "ipip"
[[service.backend]]
ip = "10.9.0.1"
[[service.backend]]
ip = "10.9.0.2"
[[service.backend]]
ip = "10.9.0.3"
EOT
  cp "$cap-base.toml" "$cap-fleet.toml"
  printf '[fleet]\nlisten = "127.0.0.1:17801"\npeers = ["127.0.0.1:17802", "127.0.0.1:17803"]\nkey_file = "fleet.key"\n' >> "$cap-fleet.toml"
done
cyc() { "$bin" run --config "$1" 2>&1 | sed -n 's/^on-CPU: .* ns\/packet, \([0-9.]*\) cycles.*/\1/p'; }
echo "load average: $(cat /proc/loadavg)"
for cap in flood hits; do
  ratios=()
  for r in $(seq "$rounds"); do
    b=$(cyc "$cap-base.toml"); f=$(cyc "$cap-fleet.toml")
    ratio=$(python3 -c "print(f'{$f/$b:.3f}')")
    ratios+=("$ratio")
    echo "$cap round $r: without [fleet] $b, with $f on-CPU cycles/packet (ratio $ratio)"
  done
  echo "$cap: median ratio $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n "$(( (rounds + 1) / 2 ))p")"
done
echo "load average: $(cat /proc/loadavg)"
