#!/usr/bin/env bash
# ferryd on a 3-member etcd cluster (realistic etcd timings: --election-timeout 1000
# --heartbeat-interval 100) in the lab: after the leader is killed, a follower is killed, or the
# member most nodes use is partitioned from the nodes, a node joins at once; how long until its
# lease is claimed and it is routed on every peer (counted from the fault), and whether a lease
# written 30 s after the fault still arrives within 100 ms. Prints one BENCH line per measurement
# with its target.
#   sudo bench/etcd_failover.sh [TRIALS]        (default 5 per fault; about 4 minutes)
# Builds outside the sandbox, runs inside tests/sandbox.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run as root (network namespaces)" >&2; exit 1; }
cargo build --release -p ferryd
cargo test -p ferryd --test etcd_cluster --no-run
export FERRY_BENCH_TRIALS="${1:-5}"
tests/sandbox.sh cargo test -p ferryd --offline --test etcd_cluster -- --ignored --nocapture \
    --test-threads 1 ${FERRY_BENCH_ONLY:-bench_} 2>&1 | tee target/etcd-failover-bench.log | grep -E '^BENCH|^test |panicked'
