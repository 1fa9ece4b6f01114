#!/usr/bin/env bash
# The operator of the previous release, for the upgrade test (tests/e2e/upgrade.rs): the commit
# recorded in upgrade/previous-release, its `cloudkeys` binary and its chart, taken from git and
# built once per machine into the cache (like the control plane).
#
#   scripts/previous-release.sh build   build the recorded commit into the cache (idempotent)
#   scripts/previous-release.sh dir     print its cache directory (binary `cloudkeys`, chart `chart/`)
#
# The build shares the repository's cargo target directory, so that only the crate itself is
# compiled, not its dependencies; it leaves the old binary in target/debug/cloudkeys, which the
# next `cargo build` or `cargo test` of the current code links again (`make test` builds the
# previous release before the current code for that reason).
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${CLOUDKEYS_CACHE:-$HOME/.cache/cloudkeys}"
RECORD=upgrade/previous-release

log() { printf 'previous-release: %s\n' "$*" >&2; }

commit() {
  local hash
  hash="$(grep -v '^#' "$RECORD" | tr -d '[:space:]')"
  if ! [[ "$hash" =~ ^[0-9a-f]{40}$ ]]; then
    log "$RECORD must hold one full commit hash (40 hex digits) besides its comment lines"; exit 1
  fi
  printf '%s\n' "$hash"
}

dir() { printf '%s/previous-release/%s\n' "$CACHE" "$(commit)"; }

cmd_build() {
  local hash out
  hash="$(commit)"
  out="$(dir)"
  if [ -x "$out/cloudkeys" ] && [ -f "$out/chart/Chart.yaml" ]; then log "cached in $out"; return 0; fi
  # A shallow CI checkout lacks the commit; where the clone has a remote, deepen it once.
  if ! git cat-file -e "$hash^{commit}" 2>/dev/null \
    && [ "$(git rev-parse --is-shallow-repository 2>/dev/null)" = true ] && [ -n "$(git remote)" ]; then
    log "commit ${hash:0:12} is not in this shallow clone: fetching the full history"
    git fetch --quiet --unshallow || true
  fi
  if ! git cat-file -e "$hash^{commit}" 2>/dev/null; then
    log "commit $hash ($RECORD) is not in this clone's history."
    log "The upgrade test builds the previous release from it: fetch the full history"
    log "(\`git fetch --unshallow\`, or a CI checkout with fetch-depth: 0), or record another commit in $RECORD."
    exit 1
  fi
  local target="${CARGO_TARGET_DIR:-$PWD/target}"
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/cloudkeys-previous-release.XXXXXX")"
  trap 'rm -rf "$WORK"' EXIT
  local work="$WORK"
  git archive --format=tar "$hash" | tar -x -C "$work"
  log "building cloudkeys of ${hash:0:12} (the crate only; dependencies shared with $target)"
  CARGO_TARGET_DIR="$target" "${CARGO:-cargo}" build --locked --quiet --bin cloudkeys --manifest-path "$work/Cargo.toml"
  rm -rf "$out.tmp" && mkdir -p "$out.tmp"
  cp "$target/debug/cloudkeys" "$out.tmp/cloudkeys"
  cp -r "$work/charts/cloudkeys" "$out.tmp/chart"
  git rev-parse "$hash" >"$out.tmp/commit"
  rm -rf "$out" && mv "$out.tmp" "$out"
  log "cached in $out"
}

case "${1:-}" in
  build) cmd_build ;;
  dir) dir ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
