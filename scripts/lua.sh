#!/usr/bin/env bash
# Lua 5.1, the language of Argo CD's resource customizations, for the tests of the health checks
# and actions in gitops/argocd/ (tests/e2e/gitops_health.rs runs them with `lua5.1`).
#
#   scripts/lua.sh deps     install Debian's lua5.1 unless `lua5.1` is on PATH (root, or sudo)
set -euo pipefail

log() { printf 'lua: %s\n' "$*" >&2; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

cmd_deps() {
  if command -v lua5.1 >/dev/null; then return 0; fi
  log "installing: lua5.1"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends lua5.1 >/dev/null
  command -v lua5.1 >/dev/null || { log "lua5.1 still not on PATH after the install"; exit 1; }
}

case "${1:-}" in
  deps) cmd_deps ;;
  *) printf 'usage: %s deps\n' "$0" >&2; exit 2 ;;
esac
