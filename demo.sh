#!/usr/bin/env bash
# Ferry end to end, in a throw-away sandbox (nothing touches this machine's real network):
#   sudo ./demo.sh [--store file|etcd] [--dual-stack]
# Builds Ferry, then inside `tests/sandbox.sh` brings up an underlay bridge namespace
# (198.18.0.1/24), three node namespaces (eth0 198.18.0.11-13) each running ferryd (file store
# or a real etcd in the underlay namespace), waits for each node's CNI conflist, adds two pods per
# node with the real `ferry` plugin from that conflist, prints leases and proto-113 routes, pings
# every pod from every other pod, tears everything down and exits non-zero if any ping failed.
# --dual-stack: an IPv4 + IPv6 pod network (IPv6 fd00:10:244::/56 over a ULA underlay
# fd00:198:18::/64), one ping matrix per family. FERRY_DEMO_NO_BUILD=1 skips the build.
set -euo pipefail

STORE=file
DUAL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --dual-stack) DUAL=1; shift ;;
        --store) STORE=${2:-}; shift 2 ;;
        --store=*) STORE=${1#*=}; shift ;;
        -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "demo.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
done
case "$STORE" in file|etcd) ;; *) echo "demo.sh: --store must be file or etcd" >&2; exit 2 ;; esac

ROOT=$(cd "$(dirname "$0")" && pwd)
if [ "${FERRY_DEMO_INNER:-}" != 1 ]; then
    [ "$(id -u)" = 0 ] || { echo "demo.sh: run as root (sudo ./demo.sh): it creates network namespaces" >&2; exit 1; }
    "$ROOT/tests/install-deps.sh"
    if [ "${FERRY_DEMO_NO_BUILD:-}" != 1 ]; then
        echo "== building Ferry (cargo build --release --workspace)"
        (cd "$ROOT" && cargo build --release --workspace)
    fi
    DUAL_FLAG=(); [ "$DUAL" = 1 ] && DUAL_FLAG=(--dual-stack)
    exec env FERRY_DEMO_INNER=1 "$ROOT/tests/sandbox.sh" "$ROOT/demo.sh" --store "$STORE" "${DUAL_FLAG[@]}"
fi

# ---------------------------------------------------------------- inside the sandbox from here on
[ "${FERRY_SANDBOX:-}" = 1 ] || { echo "demo.sh: not inside tests/sandbox.sh; refusing" >&2; exit 1; }
BIN=$("$ROOT/tests/bin-dir.sh")
for b in ferryd ferry; do
    [ -x "$BIN/$b" ] || { echo "demo.sh: $BIN/$b not built" >&2; exit 1; }
done
L=$(mktemp -d /tmp/ferry-demo.XXXXXX)
NODES="1 2 3"
PODS="a b"
declare -A FERRYD_PID POD_IP POD_IP6
ETCD_PID=

log() { printf '\n== %s\n' "$*"; }

# Wait until "$@" succeeds, at most $1 seconds (polling every 20 ms).
wait_until() {
    local limit=$1; shift
    local end=$((SECONDS + limit))
    until "$@" >/dev/null 2>&1; do
        [ $SECONDS -lt $end ] || return 1
        sleep 0.02
    done
}

# Stop a child process by PID: SIGTERM, wait (bounded), SIGKILL as a last resort; prints its status.
stop_pid() {
    local pid=$1 name=$2 i st
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 250); do
        st=$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null || echo gone)
        [ "$st" = Z ] || [ "$st" = gone ] && break
        sleep 0.02
    done
    kill -0 "$pid" 2>/dev/null && [ "$(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null)" != Z ] && kill -KILL "$pid" 2>/dev/null
    st=0; wait "$pid" 2>/dev/null || st=$?
    echo "   $name (pid $pid) exited with status $st"
}

# Invoke the ferry plugin like a container runtime: CNI_* env, and the conflist's first plugin
# entry with the list's name and cniVersion merged in, on stdin.
cni() { # cni <node> <ADD|DEL> <pod>
    local n=$1 cmd=$2 pod=$3 conf
    conf=$(jq -c '.plugins[0] + {name: .name, cniVersion: .cniVersion}' "$L/n$n/net.d/10-ferry.conflist")
    ip netns exec "node$n" env -i PATH="$PATH" CNI_COMMAND="$cmd" CNI_CONTAINERID="demo-$pod" \
        CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH="$BIN" "$BIN/ferry" <<<"$conf"
}

teardown() {
    local rc=$?
    set +e
    log "teardown"
    for n in $NODES; do for p in $PODS; do
        local pod="pod$n$p"
        if [ -e "/run/netns/$pod" ]; then
            [ -f "$L/n$n/net.d/10-ferry.conflist" ] && cni "$n" DEL "$pod" >/dev/null
            ip netns del "$pod"
        fi
    done; done
    for n in $NODES; do stop_pid "${FERRYD_PID[$n]:-}" "ferryd on node$n"; done
    stop_pid "$ETCD_PID" etcd
    for n in $NODES; do ip netns del "node$n" 2>/dev/null; done
    ip netns del underlay 2>/dev/null
    rm -rf "$L"
    exit $rc
}
trap teardown EXIT

log "underlay: bridge br0 198.18.0.1/24; nodes node1-3 with eth0 198.18.0.11-13"
ip netns add underlay
ip -n underlay link set lo up
ip -n underlay link add br0 type bridge
ip -n underlay addr add 198.18.0.1/24 dev br0
[ "$DUAL" = 1 ] && ip -n underlay addr add fd00:198:18::1/64 dev br0 nodad
ip -n underlay link set br0 up
for n in $NODES; do
    ip netns add "node$n"
    ip -n "node$n" link set lo up
    ip -n underlay link add "port$n" type veth peer name eth0 netns "node$n"
    ip -n underlay link set "port$n" master br0 up
    ip -n "node$n" addr add "198.18.0.1$n/24" dev eth0
    [ "$DUAL" = 1 ] && ip -n "node$n" addr add "fd00:198:18::1$n/64" dev eth0 nodad
    ip -n "node$n" link set eth0 up
    mkdir -p "$L/n$n"
done

if [ "$STORE" = etcd ]; then
    log "store: etcd on 198.18.0.1:2379 (in the underlay namespace)"
    ip netns exec underlay etcd --name demo --data-dir "$L/etcd" \
        --listen-client-urls http://198.18.0.1:2379 --advertise-client-urls http://198.18.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
        --initial-cluster demo=http://127.0.0.1:2380 --election-timeout 100 --heartbeat-interval 10 \
        >"$L/etcd.log" 2>&1 &
    ETCD_PID=$!
    port_open() { [ -n "$(ip netns exec underlay ss -Hltn 'sport = :2379')" ]; }
    wait_until 10 port_open || { echo "etcd did not listen within 10 s:"; cat "$L/etcd.log"; exit 1; }
    etcd_ok() { ip netns exec underlay env ETCDCTL_API=3 etcdctl --endpoints=http://198.18.0.1:2379 --dial-timeout=1s endpoint health; }
    wait_until 10 etcd_ok || { echo "etcd not healthy within 10 s:"; cat "$L/etcd.log"; exit 1; }
    STORE_URL=etcd://198.18.0.1:2379
else
    log "store: shared directory $L/store"
    mkdir -p "$L/store"
    STORE_URL=file://$L/store
fi

NET_FLAGS=()
if [ "$DUAL" = 1 ]; then
    NET_FLAGS=(--ipv6-network fd00:10:244::/56)
    log "dual-stack: IPv4 10.244.0.0/16 and IPv6 fd00:10:244::/56; node IPv6 fd00:198:18::11-13"
fi
log "starting ferryd on each node"
for n in $NODES; do
    ip netns exec "node$n" "$BIN/ferryd" --store "$STORE_URL" --iface eth0 "${NET_FLAGS[@]}" \
        --subnet-file "$L/n$n/subnet.env" --cni-conf-dir "$L/n$n/net.d" --cni-data-dir "$L/n$n/ipam" \
        >"$L/n$n/ferryd.log" 2>&1 &
    FERRYD_PID[$n]=$!
    echo "   node$n: ferryd pid ${FERRYD_PID[$n]}"
done
for n in $NODES; do
    if ! wait_until 15 test -f "$L/n$n/net.d/10-ferry.conflist"; then
        echo "node$n: no conflist after 15 s; ferryd log:"; cat "$L/n$n/ferryd.log"; exit 1
    fi
done

log "leases"
for n in $NODES; do
    subnet=$(sed -n 's/^FLANNEL_SUBNET=//p' "$L/n$n/subnet.env")
    [ "$DUAL" = 1 ] && subnet="$subnet FLANNEL_IPV6_SUBNET=$(sed -n 's/^FLANNEL_IPV6_SUBNET=//p' "$L/n$n/subnet.env")"
    if [ "$STORE" = etcd ]; then
        key=$(ip netns exec underlay env ETCDCTL_API=3 etcdctl --endpoints=http://198.18.0.1:2379 get --prefix --keys-only /coreos.com/network/subnets/ | grep . | while read -r k; do
            v=$(ip netns exec underlay env ETCDCTL_API=3 etcdctl --endpoints=http://198.18.0.1:2379 get --print-value-only "$k")
            case "$v" in *"\"198.18.0.1$n\""*) echo "$k $v";; esac; done)
        echo "   node$n: FLANNEL_SUBNET=$subnet  $key"
    else
        for f in "$L"/store/*-*; do
            grep -q "\"198.18.0.1$n\"" "$f" && echo "   node$n: FLANNEL_SUBNET=$subnet  $(basename "$f") $(cat "$f")"
        done
    fi
done

log "Ferry's routes (proto 113) on each node"
routes_ready() { [ "$(ip -n "node$1" route show proto 113 | wc -l)" -ge 2 ]; }
for n in $NODES; do
    wait_until 5 routes_ready "$n" || true
    echo "   node$n:"; ip -n "node$n" route show proto 113 | sed 's/^/      /'
    [ "$DUAL" = 1 ] && ip -n "node$n" -6 route show proto 113 | sed 's/^/      /'
done

log "pods: two per node, added with the ferry plugin and the conflist ferryd installed"
for n in $NODES; do for p in $PODS; do
    pod="pod$n$p"
    ip netns add "$pod"
    out=$(cni "$n" ADD "$pod") || { echo "ADD $pod failed: $out"; exit 1; }
    POD_IP[$pod]=$(jq -r '[.ips[].address | select(contains(":") | not)][0] // empty' <<<"$out" | cut -d/ -f1)
    POD_IP6[$pod]=$(jq -r '[.ips[].address | select(contains(":"))][0] // empty' <<<"$out" | cut -d/ -f1)
    if [ "$DUAL" = 1 ] && [ -z "${POD_IP6[$pod]}" ]; then
        echo "ADD $pod gave no IPv6 address: $out"; exit 1
    fi
    echo "   $pod on node$n: ${POD_IP[$pod]} ${POD_IP6[$pod]}"
done; done

fails=0; total=0
# One ping, tried up to three times: a pair's first IPv6 packet waits for neighbour discovery on
# three links, which a loaded machine can push past ping's 1 s timeout.
reach() {
    local i
    for i in 1 2 3; do
        ip netns exec "$1" ping -c1 -W1 -q "$2" >/dev/null 2>&1 && return 0
    done
    return 1
}
matrix() { # matrix <IPv4|IPv6> <name of the address array>
    local -n addr=$2
    log "$1 ping matrix (row = from, column = to; . = same pod)"
    local f=0 t=0
    printf '%-8s' ""; for n in $NODES; do for p in $PODS; do printf '%-8s' "pod$n$p"; done; done; echo
    for sn in $NODES; do for sp in $PODS; do
        src="pod$sn$sp"; printf '%-8s' "$src"
        for dn in $NODES; do for dp in $PODS; do
            dst="pod$dn$dp"
            if [ "$src" = "$dst" ]; then printf '%-8s' "."; continue; fi
            t=$((t + 1))
            if [ -n "${addr[$dst]:-}" ] && reach "$src" "${addr[$dst]}"; then
                printf '%-8s' ok
            else
                printf '%-8s' FAIL; f=$((f + 1))
            fi
        done; done; echo
    done; done
    echo "   $1: $((t - f))/$t pings answered"
    fails=$((fails + f)); total=$((total + t))
}
matrix IPv4 POD_IP
[ "$DUAL" = 1 ] && matrix IPv6 POD_IP6
echo "   $((total - fails))/$total pings answered"

if [ "$fails" -ne 0 ]; then
    for n in $NODES; do echo "--- ferryd log node$n"; cat "$L/n$n/ferryd.log"; done
    exit 1
fi
echo "   all pods reach each other across nodes"
