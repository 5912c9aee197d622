#!/usr/bin/env bash
# ferryd with 5,000 peers (file store): start-up convergence, lease→route latency, RSS, idle CPU.
#   sudo bench/route_scale.sh [PEERS]
# Two namespaces joined by a veth (node 172.16.0.1/16), PEERS hand-written flannel leases in a
# 10.0.0.0/8 network. Runs inside tests/sandbox.sh; builds ferryd first.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PEERS=${1:-5000}
if [ "${FERRY_SANDBOX:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
    (cd "$ROOT" && cargo build --release -p ferryd)
    exec "$ROOT/tests/sandbox.sh" "$0" "$PEERS"
fi
B=$("$ROOT/tests/bin-dir.sh")/ferryd
L=$(mktemp -d /tmp/ferry-scale.XXXXXX); mkdir -p "$L/store"
P=
cleanup() { set +e; [ -n "$P" ] && kill "$P" 2>/dev/null && wait "$P"; ip netns del s1; ip netns del s2; rm -rf "$L"; }
trap cleanup EXIT
ip netns add s1; ip netns add s2
ip -n s1 link set lo up   # ferryd serves its metrics on 127.0.0.1
ip -n s1 link add eth0 type veth peer name eth0 netns s2
ip -n s1 addr add 172.16.0.1/16 dev eth0; ip -n s1 link set eth0 up; ip -n s2 link set eth0 up
echo '{"Network":"10.0.0.0/8","SubnetLen":24,"Backend":{"Type":"host-gw"}}' >"$L/store/config"
python3 - "$L/store" "$PEERS" <<'PY'
import sys, json
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    a = i + 2
    ip = "172.16.%d.%d" % (a // 250, a % 250 + 2)
    open("%s/10.%d.%d.0-24" % (d, a // 256, a % 256), "w").write(json.dumps({"PublicIP": ip, "BackendType": "host-gw", "BackendData": None}))
PY
t0=$(date +%s%N)
ip netns exec s1 "$B" --store "file://$L/store" --iface eth0 --subnet-file "$L/subnet.env" \
    --cni-conf-dir "$L/net.d" --network 10.0.0.0/8 >"$L/log" 2>&1 &
P=$!
n=0
for _ in $(seq 3000); do n=$(ip -n s1 route show proto 113 | wc -l); [ "$n" -ge "$PEERS" ] && break; sleep 0.01; done
t1=$(date +%s%N)
echo "start-up: $n/$PEERS routes in $(( (t1 - t0) / 1000000 )) ms (process start, listing, claim, routes)"
sleep 1
echo "RSS after start-up: $(awk '/VmRSS/{print $2, $3}' /proc/$P/status)"
python3 - "$L/store" <<'PY'
import sys, os, time, json, subprocess
d = sys.argv[1]
def has():
    return subprocess.run(["ip", "-n", "s1", "route", "show", "10.250.250.0/24", "proto", "113"], capture_output=True).stdout != b""
lat = []
for _ in range(30):
    tmp = d + "/.bench.tmp"
    open(tmp, "w").write(json.dumps({"PublicIP": "172.16.200.200", "BackendType": "host-gw"}))
    t0 = time.time(); os.rename(tmp, d + "/10.250.250.0-24")
    end = t0 + 3
    while not has() and time.time() < end: pass
    lat.append((time.time() - t0) * 1000)
    os.remove(d + "/10.250.250.0-24")
    end = time.time() + 3
    while has() and time.time() < end: pass
lat.sort()
print("lease written -> route (polled with `ip`, ~2-3 ms of that is the poll): p50 %.1f ms, max %.1f ms" % (lat[len(lat) // 2], lat[-1]))
PY
hz=$(getconf CLK_TCK)
a=$(awk '{print $14+$15}' /proc/$P/stat); sleep 10; b=$(awk '{print $14+$15}' /proc/$P/stat)
echo "idle CPU over 10 s (one 10 s sweep of $PEERS routes): $((b - a)) ticks of 1/$hz s"
echo "RSS idle: $(awk '/VmRSS/{print $2, $3}' /proc/$P/status)"
