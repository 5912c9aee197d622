#!/usr/bin/env bash
# Install the system packages Ferry's build, tests, demo and benchmarks need (Debian/Ubuntu).
# Idempotent: does nothing when everything is present.
set -euo pipefail
PKGS=(
    iproute2 iputils-ping util-linux procps nftables iptables
    containernetworking-plugins   # reference ptp/bridge/host-local/portmap/tuning in /usr/lib/cni
    etcd-server etcd-client       # etcd 3.4 for the etcd lease store
    golang-go golang-github-appc-cni-dev   # the reference libcni, for the conformance driver
    protobuf-compiler libprotobuf-dev  # protoc + its well-known .proto files (descriptor.proto), for the etcd-client crate's build script
    iperf3 jq time curl           # curl: the metrics-endpoint tests scrape /metrics
    podman buildah runc conmon    # build and run Ferry's image (conf-examples/Containerfile) in the lab
    systemd                       # systemd-analyze verify of conf-examples/ferryd.service
    openssl                       # TLS certificates for the etcd-cluster tests
    python3                       # benchmark report rendering
)
missing=()
for p in "${PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-deps: missing packages: ${missing[*]} (run as root to install them)" >&2
    exit 1
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine's first apt run can meet a transient mirror or lock error: try a few times.
for attempt in 1 2 3; do
    if apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; then
        exit 0
    fi
    echo "install-deps: apt failed (attempt $attempt), retrying in 5 s" >&2
    sleep 5
done
echo "install-deps: could not install ${missing[*]}" >&2
exit 1
