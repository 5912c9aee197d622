#!/usr/bin/env bash
# The vxlan backend across two underlay segments (issue 12): iperf3 pod to pod direct and over
# VXLAN against the underlay itself, and lease change -> route on a peer, in one run:
#   sudo bench/cross_segment.sh [TRIALS] [IPERF_SECONDS]
# Builds outside the sandbox (needs crates.io once), runs inside tests/sandbox.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
tests/install-deps.sh
cargo build --release --workspace --bins
cargo bench -p ferryd --bench cross_segment --no-run
exec tests/sandbox.sh cargo bench -p ferryd --offline --bench cross_segment -- "${1:-50}" "${2:-4}"
