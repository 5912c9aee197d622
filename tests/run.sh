#!/usr/bin/env bash
# The whole Ferry test suite, from a fresh clone on a fresh machine:
#   sudo ./tests/run.sh [--soak] [extra cargo test args]
# --soak runs the generated-input and fault tests ten times longer (FERRY_SOAK=1).
# 1. installs the Debian packages it needs, 2. builds everything (release binaries + test
# binaries) with network access, 3. runs every test inside a throw-away network+mount namespace
# sandbox (tests/sandbox.sh), where nothing can touch the machine's real network.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [ "$(id -u)" != 0 ]; then
    echo "tests/run.sh: run as root (tests create network namespaces)" >&2
    exit 1
fi
# cargo and go need a home directory; CI may run with a minimal environment.
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
if ! command -v cargo >/dev/null && [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ "${1:-}" = --soak ]; then
    export FERRY_SOAK=1
    shift
fi
tests/install-deps.sh
export CARGO_TERM_COLOR=never
echo "== gates: rustfmt, clippy -D warnings" >&2
cargo fmt --all --check || { echo "tests/run.sh: the tree is not rustfmt-clean (run cargo fmt --all)" >&2; exit 1; }
cargo clippy --workspace --all-targets -- -D warnings
echo "== build (release binaries)" >&2
cargo build --release --workspace --bins
echo "== build (tests)" >&2
cargo test --workspace --lib --bins --tests --no-run
echo "== build (reference libcni driver, Go, offline)" >&2
tests/go/build.sh "$ROOT/target/go"
FERRY_BIN_DIR=$(tests/bin-dir.sh)
export FERRY_BIN_DIR
echo "== test (inside the sandbox)" >&2
LOG="$ROOT/target/test-run.log"
set +e
# --show-output: the fault, crash and generated-input tests print their figures.
args=("$@")
[[ " ${args[*]} " == *" -- "* ]] || args+=(--)
args+=(--show-output)
tests/sandbox.sh cargo test --workspace --offline --no-fail-fast --lib --bins --tests "${args[@]}" 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
set -e
# One closing line with the totals over every test binary.
awk '/^test result: / { p += $4; f += $6 } END { printf "%d passed, %d failed\n", p, f }' "$LOG"
exit "$rc"
