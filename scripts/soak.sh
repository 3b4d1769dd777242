#!/usr/bin/env bash
# Soak: `dpgw run` replaying a generated capture forever, one dpgwctl mutation
# per second (backend weight / drain / activate / down / add / del, rule
# add / del), RSS of the daemon and its counters sampled every second.
# Not part of CI.
#
#   scripts/soak.sh [MINUTES]          # default 10
#   DPGW=target/production/dpgw DPGWCTL=target/production/dpgwctl scripts/soak.sh 10
#
# Prints one line per second (t, RSS, rx, tx, drops, mutation) and a summary;
# exit status 1 if a counter went backwards, a mutation failed, the daemon
# died, or RSS grew by more than SOAK_RSS_SLACK_KIB (default 16384) after the
# first minute. The per-second log is kept in $SOAK_LOG (default soak.log in
# a temp dir, path printed).
set -euo pipefail
cd "$(dirname "$0")/.."
MINUTES=${1:-10}
SLACK=${SOAK_RSS_SLACK_KIB:-16384}
if [ -z "${DPGW:-}" ] || [ -z "${DPGWCTL:-}" ]; then
    cargo build --profile production -p dataplane --bin dpgw -p ctl --bin dpgwctl
    DPGW=${DPGW:-${CARGO_TARGET_DIR:-target}/production/dpgw}
    DPGWCTL=${DPGWCTL:-${CARGO_TARGET_DIR:-target}/production/dpgwctl}
fi
tmp=$(mktemp -d)
LOG=${SOAK_LOG:-$tmp/soak.log}
"$DPGW" gen --out "$tmp/in.pcap" --packets 200000 --flows 50000 --vnis 4 --frame-size 128 \
    --dst 192.168.0.1 --dst 192.168.0.2 --dport 80 --seed 5 2>/dev/null
cat >"$tmp/c.toml" <<TOML
[dataplane]
workers = 1
no_pin = true
flow_capacity = 16384
[pcap]
input = ["$tmp/in.pcap"]
loops = 0
[gateway]
vtep_ips = ["10.0.0.1"]
underlay_ips = ["10.0.0.1"]
[control]
socket = "$tmp/dpgw.sock"
[acl]
default = "allow"
[[service]]
name = "web"
vip = "192.168.0.1"
port = 80
proto = "tcp"
table_size = 65537
[[service.backend]]
ip = "10.9.0.1"
[[service.backend]]
ip = "10.9.0.2"
[[service.backend]]
ip = "10.9.0.3"
TOML
"$DPGW" run --config "$tmp/c.toml" 2>"$tmp/dpgw.err" &
pid=$!
cleanup() {
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
trap cleanup EXIT
ctl() { "$DPGWCTL" --socket "$tmp/dpgw.sock" --timeout 5 "$@"; }
for _ in $(seq 1 100); do
    ctl ping >/dev/null 2>&1 && break
    sleep 0.1
done
ctl ping >/dev/null

# One mutation per second, cycling.
mutate() {
    case $(( $1 % 10 )) in
    0) ctl backend weight web 10.9.0.1 $(( ($1 / 10) % 5 + 1 )) ;;
    1) ctl backend drain web 10.9.0.2 ;;
    2) ctl backend activate web 10.9.0.2 ;;
    3) ctl backend add web 10.9.0.9 ;;
    4) ctl backend down web 10.9.0.3 ;;
    5) ctl backend activate web 10.9.0.3 ;;
    6) ctl backend del web 10.9.0.9 ;;
    7) ctl rule add --src 10.0.0.0/8 --proto udp --dport 9 --action deny --priority 5 ;;
    8) for id in $(ctl --json rule list | python3 -c 'import json,sys; d=json.load(sys.stdin); print(" ".join(str(r["id"]) for r in d.get("data",{}).get("rules",[]) if r.get("id") is not None))' 2>/dev/null); do ctl rule del "$id"; done ;;
    9) ctl service list ;;
    esac
}

stats() {
    ctl --json stats | python3 -c '
import json, sys
d = json.load(sys.stdin)
def find(o):
    if isinstance(o, dict):
        if "total" in o and isinstance(o["total"], dict):
            return o["total"]
        for v in o.values():
            r = find(v)
            if r: return r
    return None
t = find(d) or {}
print(t.get("rx", 0), t.get("tx", 0), sum(t.get("drops", {}).values()))'
}

end=$(( $(date +%s) + ${SOAK_SECONDS:-$((MINUTES * 60))} ))
i=0
prev_rx=0; prev_tx=0; prev_dr=0
fail=0; failed_mut=0
rss0=0; rss_max=0; rss_min=0
echo "t_s rss_kib rx tx drops mutation_rc" | tee "$LOG"
tick=$(date +%s.%N)
while [ "$(date +%s)" -lt "$end" ]; do
    # One tick per second of wall time, however long the last one took.
    tick=$(awk -v t="$tick" 'BEGIN { printf "%.3f", t + 1 }')
    wait_s=$(awk -v t="$tick" -v n="$(date +%s.%N)" 'BEGIN { d = t - n; printf "%.3f", (d > 0 ? d : 0) }')
    sleep "$wait_s"
    i=$((i + 1))
    kill -0 "$pid" 2>/dev/null || { echo "soak: dpgw died"; cat "$tmp/dpgw.err"; exit 1; }
    set +e
    mutate "$i" >/dev/null 2>&1
    mrc=$?
    set -e
    [ $mrc -eq 0 ] || failed_mut=$((failed_mut + 1))
    rss=$(awk '/^VmRSS:/ {print $2}' /proc/$pid/status)
    read -r rx tx dr < <(stats)
    echo "$i $rss $rx $tx $dr $mrc" | tee -a "$LOG"
    if [ "$rx" -lt "$prev_rx" ] || [ "$tx" -lt "$prev_tx" ] || [ "$dr" -lt "$prev_dr" ]; then
        echo "soak: counters went backwards at t=$i s"; fail=1
    fi
    prev_rx=$rx; prev_tx=$tx; prev_dr=$dr
    if [ "$i" -eq 60 ]; then rss0=$rss; rss_min=$rss; rss_max=$rss; fi
    if [ "$i" -gt 60 ]; then
        [ "$rss" -gt "$rss_max" ] && rss_max=$rss
        [ "$rss" -lt "$rss_min" ] && rss_min=$rss
    fi
done
echo "soak: $i s, $failed_mut failed mutations, final rx $prev_rx tx $prev_tx drops $prev_dr"
if [ "$rss0" -gt 0 ]; then
    echo "soak: RSS after the first minute: ${rss0} KiB, min ${rss_min}, max ${rss_max} (growth $((rss_max - rss0)) KiB)"
    [ $((rss_max - rss0)) -le "$SLACK" ] || { echo "soak: RSS grew by more than $SLACK KiB"; fail=1; }
fi
[ "$failed_mut" -eq 0 ] || fail=1
echo "soak: log $LOG"
exit $fail
