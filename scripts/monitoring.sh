#!/usr/bin/env bash
# Prometheus' own tools for the chart's alerts and dashboard (tests/e2e/monitoring.rs): Debian
# bookworm's `prometheus` package, i.e. the server and `promtool` (2.42).
#
#   scripts/monitoring.sh deps    install the package (root) unless `prometheus` and `promtool` are
#                                 on PATH; the packaged service is not started, nor left running:
#                                 the tests start their own server on loopback, with their own
#                                 configuration and data directory.
#   scripts/monitoring.sh check   promtool check rules on the chart's rules file
set -euo pipefail
cd "$(dirname "$0")/.."

RULES=charts/cloudkeys/rules/cloudkeys.rules.yaml

log() { printf 'monitoring: %s\n' "$*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

cmd_deps() {
  if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    log "$(promtool --version 2>&1 | head -n1)"
    return 0
  fi
  log "installing: prometheus (Debian package; its service is not started)"
  # invoke-rc.d asks policy-rc.d whether it may start services: 101 means no. Only while the
  # package installs, and only when the machine has no policy of its own.
  local policy=/usr/sbin/policy-rc.d ours=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | as_root tee "$policy" >/dev/null
    as_root chmod 755 "$policy"
    ours=1
  fi
  local rc=0
  as_root apt-get update -qq || rc=$?
  [ "$rc" = 0 ] && { DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends prometheus >/dev/null || rc=$?; }
  [ "$ours" = 1 ] && as_root rm -f "$policy"
  [ "$rc" = 0 ] || return "$rc"
  # Where systemd runs, keep the packaged server (port 9090, /var/lib/prometheus) off.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    as_root systemctl disable --now prometheus.service >/dev/null 2>&1 || true
  fi
  log "$(promtool --version 2>&1 | head -n1)"
}

cmd_check() {
  command -v promtool >/dev/null || { log "promtool missing: run scripts/monitoring.sh deps"; exit 1; }
  promtool check rules "$RULES"
}

case "${1:-}" in
  deps) cmd_deps ;;
  check) cmd_check ;;
  *) sed -n '2,9p' "$0" >&2; exit 2 ;;
esac
