#!/usr/bin/env bash
# The test suite as `make test` runs it: one control plane shared by every test process of the
# run (each test works in a namespace of its own; the few that disturb the whole cluster start
# their own, see tests/support/mod.rs), and the tests of all binaries at once with cargo-nextest,
# since they mostly wait. Without cargo-nextest, `cargo test` runs the binaries one by one.
#
#   scripts/test.sh [THREADS]
set -euo pipefail
cd "$(dirname "$0")/.."
threads="${1:-8}"
cargo="${CARGO:-cargo}"

dir="$(mktemp -d "${TMPDIR:-/tmp}/cloudkeys-test-cp.XXXXXX")"
# The control plane stops by itself when this script ends, however it ends.
scripts/control-plane.sh start "$dir" $$
export CLOUDKEYS_TEST_CONTROL_PLANE="$dir"

if "$cargo" nextest --version >/dev/null 2>&1; then
  "$cargo" nextest run --all-targets --locked --test-threads "$threads"
else
  echo "test: cargo-nextest not found; running the test binaries one after another" >&2
  "$cargo" test --all-targets --locked -- --test-threads="$threads"
fi
