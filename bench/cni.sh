#!/usr/bin/env bash
# CNI ADD/DEL benchmark: ferry vs the reference ptp + host-local (/usr/lib/cni), plus the kernel
# floor for DEL. Builds the workspace in release mode, then runs cni-bench (from tests/bin-dir.sh) inside a
# throw-away network sandbox (tests/sandbox.sh). Prints a markdown table ready for the README.
#
#   bench/cni.sh [-n N] [--warmup W] [--ptp-as-ferry] [--dual-stack] [--out FILE] [--ferry PATH] [--ref-dir DIR]
#
# --dual-stack: one IPv4 and one IPv6 address per pod on both sides (ferry on a dual-stack node
# subnet file, host-local with two ranges).
#
# Environment: CNI_BENCH_SKIP_BUILD=1 to skip the cargo build; CNI_BENCH_TIMEOUT (seconds, default
# 1800) bounds the whole run.
set -euo pipefail
ws="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ws"
if [ "${CNI_BENCH_SKIP_BUILD:-}" != 1 ]; then
    if ! cargo build --release --workspace; then
        echo "bench/cni.sh: 'cargo build --release --workspace' failed; fix the build (or set" \
             "CNI_BENCH_SKIP_BUILD=1 to bench what is already in target/release)" >&2
        exit 1
    fi
fi
bench=$(tests/bin-dir.sh)/cni-bench
if [ ! -x "$bench" ]; then
    echo "bench/cni.sh: $bench missing (cargo build --release -p ferry-tests --bin cni-bench)" >&2
    exit 1
fi
exec timeout --kill-after=10 "${CNI_BENCH_TIMEOUT:-1800}" tests/sandbox.sh "$bench" "$@"
