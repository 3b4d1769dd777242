#!/usr/bin/env bash
# Worker throughput with 1000 health-checked backends vs none (issue 14).
#
# `dpgw run` on DPDK (`net_pcap` replaying pcaps/demo.pcap forever into
# /dev/null, --no-huge, one worker pinned to core 1), the demo configuration;
# variant "checked" adds a service of 1000 backends with TCP checks at
# interval_ms = 1000 (direct mode to addresses nobody answers: every check
# sends a SYN and times out, the worst case for the slow path's sending
# and the worker-0 inject queue, and every backend goes unhealthy once,
# a snapshot each). Alternates the two variants ROUNDS times, SECS seconds
# of steady state each, and prints the worker's packet rate of each round,
# the medians and their ratio, and the load average.
#
#   cargo build --release -p dataplane --features dpdk
#   scripts/bench-health-load.sh [ROUNDS=3] [SECS=8]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-8}
dpgw=${DPGW:-target/release/dpgw}
dir=$(mktemp -d /tmp/bench-health-load.XXXXXX)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
pid=0
demo_rest=$(python3 - <<'PY'
text = open('pcaps/demo.toml').read()
parts = text.split('\n[')
keep = [p for p in parts[1:] if not p.startswith('dataplane]') and not p.startswith('pcap]')]
print(''.join('\n[' + p for p in keep))
PY
)
checked=$(python3 - <<'PY'
out = ['[[service]]', 'name = "checked"', 'vip = "192.168.99.1"', 'port = 80', 'proto = "tcp"', 'encap = "ipip"',
       'table_size = 65537', '[service.health]', 'kind = "tcp"', 'mode = "direct"', 'interval_ms = 1000', 'timeout_ms = 500']
for i in range(1000):
    out += ['[[service.backend]]', 'ip = "198.19.%d.%d"' % (i // 250, i % 250 + 1)]
print('\n'.join(out))
PY
)
run() { # $1 = variant, prints the worker's Mpps over the steady window
  local variant=$1 cfg="$dir/$1.toml" sock="$dir/$1.sock"
  {
    printf '[dataplane]\nworkers = 1\nio = "dpdk"\ncores = [1]\n\n[dpdk]\n'
    printf 'eal_args = ["--no-huge", "-m", "512", "--no-pci", "--no-telemetry", "-l", "0", "--file-prefix=bhl-%s", ' "$$"
    printf '"--vdev=net_pcap0,rx_pcap=%s/pcaps/demo.pcap,infinite_rx=1,tx_pcap=/dev/null"]\n' "$PWD"
    printf 'rx_desc = 1024\ntx_desc = 1024\nmbufs = 8191\nmbuf_cache = 256\n\n[control]\nsocket = "%s"\n' "$sock"
    echo "$demo_rest"
    [ "$variant" = checked ] && echo "$checked"
  } >"$cfg"
  "$dpgw" run --config "$cfg" 2>"$dir/$variant.log" &
  pid=$!
  for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
  # Steady state: every checked backend has failed its checks once.
  sleep 4
  python3 - "$sock" "$secs" <<'PY'
import json, socket, sys, time
sock, secs = sys.argv[1], float(sys.argv[2])
def stats():
    s = socket.socket(socket.AF_UNIX); s.connect(sock)
    s.sendall(b'{"v":1,"cmd":"stats"}\n')
    buf = b''
    while not buf.endswith(b'\n'):
        buf += s.recv(1 << 20)
    return json.loads(buf)['data']
a, t0 = stats(), time.time()
time.sleep(secs)
b, t1 = stats(), time.time()
rx = b['total']['rx'] - a['total']['rx']
res = b.get('health', {}).get('results', {})
checks = sum(res.values()) if isinstance(res, dict) else 0
print('%.4f' % (rx / (t1 - t0) / 1e6))
# The checker's work, on stderr: checks done so far (all results).
print('checks so far: %d %s' % (checks, res), file=sys.stderr)
PY
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=0
}
none=(); chk=()
for r in $(seq "$rounds"); do
  n=$(run none 2>/dev/null); c=$(run checked 2>"$dir/checks")
  echo "  (checked variant: $(cat "$dir/checks"))"
  none+=("$n"); chk+=("$c")
  echo "round $r: none $n Mpps, 1000 checked backends $c Mpps"
done
python3 - "${none[*]}" "${chk[*]}" <<'PY'
import statistics, sys
n = [float(x) for x in sys.argv[1].split()]; c = [float(x) for x in sys.argv[2].split()]
mn, mc = statistics.median(n), statistics.median(c)
print('median: none %.4f Mpps, checked %.4f Mpps, ratio checked/none %.3f' % (mn, mc, mc / mn))
PY
echo "loadavg: $(cat /proc/loadavg)"
