#!/usr/bin/env bash
# Run a command inside a throw-away network + mount namespace sandbox:
#   tests/sandbox.sh <command> [args...]
# The sandbox has only `lo`, private tmpfs mounts on /run, /var/lib/cni, /etc/cni and /opt/cni,
# and FERRY_SANDBOX=1 set. Everything made inside vanishes when the command exits.
set -euo pipefail
if [ "$(id -u)" != 0 ]; then
    echo "sandbox.sh: must run as root (network namespaces need CAP_SYS_ADMIN)" >&2
    exit 1
fi
if [ "${FERRY_SANDBOX_INNER:-}" != 1 ]; then
    exec env FERRY_SANDBOX_INNER=1 unshare --net --mount --propagation private -- "$0" "$@"
fi
unset FERRY_SANDBOX_INNER
for d in /run /var/lib/cni /etc/cni /opt/cni; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755 "ferry-sandbox" "$d"
done
mkdir -p /run/netns /etc/cni/net.d /opt/cni/bin
ip link set lo up
export FERRY_SANDBOX=1
exec "$@"
