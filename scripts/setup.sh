#!/usr/bin/env bash
# Installs what dpgw's tests and benchmarks need, idempotently: Debian packages
# (only when one is missing) and Python packages for the test helpers.
set -euo pipefail
pkgs=(tshark tcpdump libdpdk-dev dpdk-dev pkg-config libclang-dev iproute2 socat curl nftables python3-pip bird2 frr ethtool netsniff-ng)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  echo "wireshark-common wireshark-common/install-setuid boolean false" | $SUDO debconf-set-selections || true
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 - <<'PY' 2>/dev/null || python3 -m pip install -q --disable-pip-version-check scapy prometheus_client
import scapy, prometheus_client
PY
echo "setup: ok"
