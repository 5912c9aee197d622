#!/usr/bin/env bash
# Print the directory holding Ferry's release binaries: $FERRY_BIN_DIR if set, else
# <target dir>/<host triple>/release (.cargo/config.toml builds for the host tuple explicitly, so
# the static-link flags reach Ferry's binaries and not build scripts or proc macros).
#   BIN=$(tests/bin-dir.sh)
set -euo pipefail
if [ -n "${FERRY_BIN_DIR:-}" ]; then
    echo "$FERRY_BIN_DIR"
    exit 0
fi
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
triple=$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')
[ -n "$triple" ] || { echo "tests/bin-dir.sh: cannot ask rustc for the host triple" >&2; exit 1; }
echo "${CARGO_TARGET_DIR:-$root/target}/$triple/release"
