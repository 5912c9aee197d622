#!/usr/bin/env bash
# ferryd route convergence + idle footprint in the 3-node lab, for both stores:
#   sudo bench/route_latency.sh [TRIALS] [file|etcd|both] [ipv6]
# (`ipv6`: the IPv6 routes of a dual-stack lab)
# Builds outside the sandbox (needs crates.io once), runs inside tests/sandbox.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
cargo build --release -p ferryd
cargo bench -p ferryd --bench route_latency --no-run
exec tests/sandbox.sh cargo bench -p ferryd --offline --bench route_latency -- "${1:-100}" ${2:-both} ${3:-}
