#!/usr/bin/env bash
# Build the libcni conformance driver (tests/go/libcni-driver) OFFLINE, in GOPATH mode, against
# Debian's reference libcni (apt package golang-github-appc-cni-dev, /usr/share/gocode).
#
#   tests/go/build.sh [OUTDIR]        # default OUTDIR: <workspace>/target/go
#
# Produces OUTDIR/libcni-driver. Idempotent: does nothing when the binary is newer than its sources.
# Nothing is downloaded (GO111MODULE=off, GOPROXY=off, GOFLAGS cleared).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ws="$(cd "$here/../.." && pwd)"
outdir="${1:-$ws/target/go}"
mkdir -p "$outdir"
outdir="$(cd "$outdir" && pwd)"
out="$outdir/libcni-driver"
src="$here/libcni-driver"
sys_gopath=/usr/share/gocode

if ! command -v go >/dev/null 2>&1; then
    echo "build.sh: 'go' not found (apt-get install golang-go)" >&2
    exit 1
fi
if [ ! -d "$sys_gopath/src/github.com/containernetworking/cni/libcni" ]; then
    echo "build.sh: libcni source missing under $sys_gopath (apt-get install golang-github-appc-cni-dev)" >&2
    exit 1
fi

# Up to date? (binary newer than every source file and this script)
if [ -x "$out" ] && [ -z "$(find "$src" "$0" -newer "$out" -print -quit)" ]; then
    exit 0
fi

# GOPATH mode needs the package inside a GOPATH: a private GOPATH whose src/ferrylibcni/libcni-driver
# is a symlink to our source, followed by the system one for github.com/containernetworking/cni.
gp="$ws/target/go-gopath"
mkdir -p "$gp/src/ferrylibcni"
ln -sfn "$src" "$gp/src/ferrylibcni/libcni-driver"
mkdir -p "$ws/target/go-cache"

tmp="$out.tmp.$$"
(
    cd "$gp/src/ferrylibcni/libcni-driver"
    env GO111MODULE=off GOFLAGS= GOPROXY=off GOTOOLCHAIN=local CGO_ENABLED=0 \
        GOPATH="$gp:$sys_gopath" GOCACHE="$ws/target/go-cache" \
        go build -trimpath -o "$tmp" ferrylibcni/libcni-driver
)
mv -f "$tmp" "$out"
echo "built $out" >&2
