#!/usr/bin/env bash
# The whole benchmark in one command: builds, then runs inside a throw-away sandbox
# (tests/sandbox.sh) and writes REPORT.md with its SVG charts and the raw JSON samples.
#
#   sudo bench/report.sh [--quick] [--out DIR]
#
# Full (default out bench/report/, under 15 minutes on 2 cores once built): pod density (250) and
# storms (200 at once) for ferry and ptp + host-local; ferryd cold start against 500 .. 50,000
# leases (etcd and file store) with the kernel's own route-insert floor; churn at 100 lease
# changes/s for 60 s (5,000 leases: etcd and file; 50,000: etcd); 3 real nodes among 5,000 leases
# (ping, iperf3 vs the underlay and vs ptp + static routes); 100 ferryd on one etcd; a perf
# profile of a 50,000-lease cold start. --quick (default out target/bench-quick/, under 2
# minutes): the same pieces at small sizes, no profile; bench_quick.rs checks its sanity.
# Environment: FERRY_BENCH_SKIP_BUILD=1 skips the builds; FERRY_BENCH_TIMEOUT (s) bounds the run;
# FERRY_BENCH_PROF_BIN (an unstripped ferryd to profile) and FERRY_BENCH_COMMIT (the commit the
# binaries were built from, for the report) when building separately.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
[ "$(id -u)" = 0 ] || { echo "bench/report.sh: run as root (network namespaces)" >&2; exit 1; }
QUICK=; OUT=
while [ $# -gt 0 ]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --out) OUT=$2; shift ;;
        -h|--help) sed -n 2,15p "$0"; exit 0 ;;
        *) echo "bench/report.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
OUT=${OUT:-$([ -n "$QUICK" ] && echo target/bench-quick || echo bench/report)}
mkdir -p "$OUT"; OUT=$(cd "$OUT" && pwd)
BIN=$(tests/bin-dir.sh)
PROF=$ROOT/target/bench-prof
if [ "${FERRY_BENCH_SKIP_BUILD:-}" != 1 ]; then
    cargo build --release --workspace
    if [ -z "$QUICK" ]; then
        # The profiled ferryd: same code and profile, but symbols kept and frame pointers on.
        CARGO_PROFILE_RELEASE_STRIP=false CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
        RUSTFLAGS="-C target-feature=+crt-static -C relocation-model=static -C force-frame-pointers=yes" \
            cargo build --release -p ferryd --bin ferryd --target-dir "$PROF"
    fi
fi
# Run a private copy: the shared target/ may be rebuilt by someone else while the bench runs.
SNAP=$(mktemp -d /tmp/ferry-bench-bin.XXXXXX)
trap 'rm -rf "$SNAP"' EXIT
for b in ferry ferry-ipam ferryd cni-scale; do cp -p "$BIN/$b" "$SNAP/"; done
(cd "$SNAP" && for b in ferry ferry-ipam ferryd cni-scale; do
    printf '%s %s built %s\n' "$b" "$(sha256sum "$b" | cut -c1-16)" "$(date -u -r "$b" +%Y-%m-%dT%H:%M:%SZ)"
done) >"$OUT/binaries.txt"
BIN=$SNAP
export FERRY_BIN_DIR=$SNAP
PROF_BIN=${FERRY_BENCH_PROF_BIN:-$(find "$PROF" -path '*/release/ferryd' -type f 2>/dev/null | head -1 || true)}
if [ -n "$QUICK" ]; then
    CNI_ARGS=(--density 30 --storm 50 --storm-rounds 1); SCALE_ARGS=(--quick); LIMIT=${FERRY_BENCH_TIMEOUT:-300}
else
    CNI_ARGS=(--density 250 --storm 200 --storm-rounds 2); SCALE_ARGS=()
    [ -n "$PROF_BIN" ] && SCALE_ARGS=(--prof-bin "$PROF_BIN")
    LIMIT=${FERRY_BENCH_TIMEOUT:-1500}
fi
START=$(date +%s)
timeout --kill-after=20 "$LIMIT" tests/sandbox.sh bash -c '
    set -e
    "$1"/cni-scale "${@:5:$2}" --json "$3"/cni.json
    shift $(( 4 + $2 ))
    exec python3 bench/scale.py "$@"
' inner "$BIN" "${#CNI_ARGS[@]}" "$OUT" x "${CNI_ARGS[@]}" --bin "$BIN" "${SCALE_ARGS[@]}" --json "$OUT/scale.json"
WALL=$(( $(date +%s) - START ))
CMD="sudo bench/report.sh${QUICK:+ --quick}"
python3 bench/render.py "$OUT" --command "$CMD" --wall "$WALL" --date "$(date -u +%Y-%m-%dT%H:%MZ)" \
    --commit "${FERRY_BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo '?')}"
echo "bench/report.sh: $OUT/REPORT.md (${WALL} s)" >&2
