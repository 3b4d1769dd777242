#!/usr/bin/env bash
# What watching the gateway costs (issue 18), on the target pipeline (decap +
# ACL of 942 ClassBench rules + Maglev, 10 backends, flow hits + IPIP, 64 B
# inner frames, 1000 flows, one worker):
#
#  1. tracing compiled in and disarmed vs the same pipeline without the code:
#     `dpgw replay` of this tree against `dpgw replay` of BASE (default
#     074b8ad, the commit before trace/capture), alternated, median of ROUNDS;
#  2. a running daemon's rate with nothing armed, with a trace armed whose
#     filter matches nothing, and with a capture of every packet (where=all,
#     read by dpgwctl into /dev/null), alternated;
#  3. `dpgwctl flows list` latency on a worker holding ~1M flows.
#
# Usage: scripts/bench-observe.sh [--rounds N] [--base COMMIT] [--this COMMIT] [--replay-only] [--quick]
#   --this COMMIT: measure that commit instead of the working tree (e.g. the
#   commit that added tracing, to compare it with its parent alone).
# Prints a table and writes target/bench-observe/results.json. Builds with
# the release profile (thin LTO); run on a quiet machine (it prints the load).
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=5
base=074b8ad
quick=0
this=""
replay_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds=$2; shift 2 ;;
    --base) base=$2; shift 2 ;;
    --quick) quick=1; rounds=1; shift ;;
    --this) this=$2; shift 2 ;;
    --replay-only) replay_only=1; shift ;;
    *) echo "bench-observe.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
out=target/bench-observe
mkdir -p "$out"
echo "== building (release): this tree"
cargo build -q --release -p dataplane -p ctl
new=target/release/dpgw
ctl=target/release/dpgwctl
# build_commit COMMIT NAME: a release dpgw of COMMIT at $out/dpgw-NAME (cached).
build_commit() {
  local bin=$out/dpgw-$2
  if [ ! -x "$bin" ] || [ "$(cat "$out/$2-commit" 2>/dev/null)" != "$1" ]; then
    echo "== building (release): $1 ($2)"
    rm -rf "$out/wt"
    git worktree add -q --detach "$out/wt" "$1"
    (cd "$out/wt" && CARGO_TARGET_DIR="$PWD/../target-base" cargo build -q --release -p dataplane)
    cp "$out/target-base/release/dpgw" "$bin"
    echo "$1" >"$out/$2-commit"
    git worktree remove --force "$out/wt"
  fi
}
trap 'git worktree remove --force "$out/wt" 2>/dev/null || true' EXIT
build_commit "$base" base
old=$out/dpgw-base
if [ -n "$this" ]; then
  build_commit "$this" this
  new=$out/dpgw-this
fi
acl=../shared/testdata/classbench/neurocuts/acl1_1k
[ -f "$acl" ] || { echo "bench-observe.sh: $acl missing" >&2; exit 1; }
acl=$(realpath "$acl")
packets=$((quick ? 1 << 14 : 1 << 18))
$new gen --out "$out/target.pcap" --packets $packets --flows 1000 --frame-size 64 --tcp-pct 100 \
  --dst 10.96.0.10 --dport 80 --seed 3 2>/dev/null
backends=""
for i in $(seq 1 10); do backends+=$'\n[[service.backend]]\nip = "10.9.0.'$i$'"\n'; done
cfg() { # $1 = loops, $2 = extra
  cat <<EOF
[dataplane]
workers = 1
burst = 32
io = "pcap"
flow_capacity = 65536
[pcap]
input = ["$(realpath "$out/target.pcap")"]
loops = $1
[gateway]
vtep_ips = ["10.0.0.1"]
underlay_ips = ["10.0.0.1"]
local_mac = "02:00:00:00:00:01"
next_hop_mac = "02:00:00:00:00:fe"
[acl]
default = "allow"
[[acl.file]]
path = "$acl"
format = "classbench"
action = "allow"
[[service]]
name = "web"
vip = "10.96.0.10"
port = 80
proto = "tcp"
encap = "ipip"
$backends
$2
EOF
}
loops=$((quick ? 20 : 200))
cfg $loops "" >"$out/replay.toml"
echo "== load average: $(cat /proc/loadavg)"
echo "== 1. replay, disarmed vs without the code ($rounds rounds, $((packets * loops)) packets each)"
cyc() { "$1" replay --config "$out/replay.toml" --json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["cpu_cycles_per_packet"], d["mpps"])'; }
: >"$out/replay.txt"
for r in $(seq 1 "$rounds"); do
  echo "base $(cyc "$old")" >>"$out/replay.txt"
  echo "this $(cyc "$new")" >>"$out/replay.txt"
done
if [ "$replay_only" = 1 ]; then
  python3 - "$out" <<'EOF'
import statistics, sys
d = {}
for line in open(f"{sys.argv[1]}/replay.txt"):
    k, c, m = line.split()
    d.setdefault(k, []).append(float(c))
b, t = statistics.median(d["base"]), statistics.median(d["this"])
print(f"target pipeline, replay on-CPU cycles/packet (median of {len(d['this'])}): base {b:.1f}, this {t:.1f}, ratio {t / b:.3f}")
print("rounds base:", d["base"], "this:", d["this"])
EOF
  echo "== load average: $(cat /proc/loadavg)"
  exit 0
fi
sock=$out/dpgw.sock
cfg 0 "[control]
socket = \"$(realpath "$out")/dpgw.sock\"" >"$out/run.toml"
echo "== 2. daemon rate: nothing armed / trace armed, matching nothing / capture of all"
$new run --config "$out/run.toml" 2>"$out/run.stderr" &
pid=$!
trap 'kill $pid 2>/dev/null || true; git worktree remove --force "$out/wt" 2>/dev/null || true' EXIT
for i in $(seq 100); do $ctl --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
secs=$((quick ? 1 : 3))
rate() { # packets per second over $secs seconds, from the stats counters
  local a b
  a=$($ctl --socket "$sock" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["total"]["rx"])')
  sleep "$secs"
  b=$($ctl --socket "$sock" --json stats | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"]["total"]["rx"])')
  echo $(((b - a) / secs))
}
: >"$out/daemon.txt"
for r in $(seq 1 "$rounds"); do
  echo "off $(rate)" >>"$out/daemon.txt"
  $ctl --socket "$sock" --timeout $((secs + 2)) trace --filter "vni 16000000" --count 1 >/dev/null 2>&1 &
  tp=$!
  sleep 0.3
  echo "trace_nomatch $(rate)" >>"$out/daemon.txt"
  kill $tp 2>/dev/null || true; wait $tp 2>/dev/null || true
  sleep 0.5
  $ctl --socket "$sock" --timeout $((secs + 2)) capture --where all --count 100000000 -w /dev/null >/dev/null 2>"$out/capture.stderr" &
  cp_=$!
  sleep 0.3
  echo "capture_all $(rate)" >>"$out/daemon.txt"
  wait $cp_ 2>/dev/null || true
  sleep 11 # an abandoned trace stops itself after 10 s unread
done
kill $pid; wait $pid 2>/dev/null || true
echo "== 3. flows list with ~1M flows"
fl=$((quick ? 1 << 16 : 1 << 20))
$new gen --out "$out/flows.pcap" --packets $fl --flows $fl --frame-size 64 --tcp-pct 100 \
  --dst 10.96.0.10 --dport 80 --seed 5 2>/dev/null
cfg 0 "[control]
socket = \"$(realpath "$out")/dpgw.sock\"" | sed -e "s#target.pcap#flows.pcap#" -e "s/flow_capacity = 65536/flow_capacity = $((fl * 2))\ntcp_timeout_s = 3600/" >"$out/flows.toml"
$new run --config "$out/flows.toml" 2>"$out/flows.stderr" &
pid=$!
for i in $(seq 300); do $ctl --socket "$sock" ping >/dev/null 2>&1 && break; sleep 0.1; done
sleep $((quick ? 2 : 6))
: >"$out/flows.txt"
for r in $(seq 1 "$rounds"); do
  t0=$(date +%s%N)
  n=$($ctl --socket "$sock" --json --timeout 60 flows list --limit 2000000 | python3 -c 'import json,sys; d=json.load(sys.stdin)["data"]; print(len(d["entries"]), d["collect_ms"])')
  t1=$(date +%s%N)
  echo "list_all $(((t1 - t0) / 1000000)) $n" >>"$out/flows.txt"
done
kill $pid; wait $pid 2>/dev/null || true
python3 - "$out" <<'EOF'
import json, statistics, sys
out = sys.argv[1]
def col(path):
    d = {}
    for line in open(f"{out}/{path}"):
        k, *v = line.split()
        d.setdefault(k, []).append([float(x) for x in v])
    return d
rep = col("replay.txt")
med = {k: statistics.median(x[0] for x in v) for k, v in rep.items()}
dae = col("daemon.txt")
dmed = {k: statistics.median(x[0] for x in v) for k, v in dae.items()}
fl = col("flows.txt")["list_all"]
res = {
    "replay_cpu_cycles_per_packet": med,
    "replay_ratio_this_over_base": med["this"] / med["base"],
    "daemon_pps": dmed,
    "trace_armed_ratio": dmed["trace_nomatch"] / dmed["off"],
    "capture_all_ratio": dmed["capture_all"] / dmed["off"],
    "flows_list_ms_median": statistics.median(x[0] for x in fl),
    "flows_listed": int(fl[0][1]),
    "flows_collect_ms_median": statistics.median(x[2] for x in fl),
    "rounds": len(rep["this"]),
}
print(f"target pipeline, replay on-CPU cycles/packet (median of {res['rounds']}): "
      f"base {med['base']:.1f}, this tree (disarmed) {med['this']:.1f}, ratio {res['replay_ratio_this_over_base']:.3f}")
print(f"daemon rx rate: off {dmed['off']/1e6:.3f} Mpps, trace armed (no match) {dmed['trace_nomatch']/1e6:.3f} Mpps "
      f"({res['trace_armed_ratio']:.3f}), capture of all {dmed['capture_all']/1e6:.3f} Mpps ({res['capture_all_ratio']:.3f})")
print(f"flows list: {res['flows_listed']} entries in {res['flows_list_ms_median']:.0f} ms end to end, "
      f"{res['flows_collect_ms_median']:.0f} ms collecting them from the workers (medians)")
json.dump(res, open(f"{out}/results.json", "w"), indent=2)
EOF
echo "== load average: $(cat /proc/loadavg)"
