#!/usr/bin/env bash
# Build Ferry's container image (conf-examples/Containerfile) from the release binaries, offline:
#   conf-examples/build-image.sh [TAG] [-- extra podman/buildah build args]
# Stages rootfs/ = {ferryd, ferryctl, ferry, ferry-ipam} in /usr/local/bin + /usr/sbin/nft with the shared
# libraries it links (ldd), then `podman build` (or `buildah bud`). Prints the image id.
# Environment: FERRY_BIN_DIR (default: tests/bin-dir.sh); PODMAN, the podman command with any
# global options (default: podman, else buildah).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
tag=${1:-localhost/ferry:0.1.0}
shift || true
[ "${1:-}" = -- ] && shift
bin=${FERRY_BIN_DIR:-$("$here/../tests/bin-dir.sh")}
for b in ferryd ferryctl ferry ferry-ipam; do
    [ -x "$bin/$b" ] || { echo "build-image.sh: $bin/$b not built (cargo build --release --workspace)" >&2; exit 1; }
done
ctx=$(mktemp -d /tmp/ferry-image.XXXXXX)
trap 'rm -rf "$ctx"' EXIT
install -D -m 0755 "$bin/ferryd" "$ctx/rootfs/usr/local/bin/ferryd"
install -D -m 0755 "$bin/ferryctl" "$ctx/rootfs/usr/local/bin/ferryctl"
install -D -m 0755 "$bin/ferry" "$ctx/rootfs/usr/local/bin/ferry"
install -D -m 0755 "$bin/ferry-ipam" "$ctx/rootfs/usr/local/bin/ferry-ipam"
nft=$(command -v nft || true)
if [ -n "$nft" ]; then
    install -D -m 0755 "$nft" "$ctx/rootfs/usr/sbin/nft"
    # Every library nft loads, at the path the dynamic loader looks for it.
    ldd "$nft" | awk '/=> \// {print $3} /^\t\/.*ld-linux/ {print $1}' | while read -r lib; do
        install -D -m 0755 "$(readlink -f "$lib")" "$ctx/rootfs$lib"
    done
else
    echo "build-image.sh: nft not found: the image cannot masquerade (run ferryd with ip-masq = false)" >&2
fi
cp "$here/Containerfile" "$ctx/Containerfile"
read -ra podman <<< "${PODMAN:-podman}"
if command -v "${podman[0]}" >/dev/null; then
    "${podman[@]}" build --network=none --pull=never -q -t "$tag" -f "$ctx/Containerfile" "$@" "$ctx"
elif command -v buildah >/dev/null; then
    buildah bud --network=none --pull=never -q -t "$tag" -f "$ctx/Containerfile" "$@" "$ctx"
else
    echo "build-image.sh: neither podman nor buildah is installed" >&2
    exit 1
fi
