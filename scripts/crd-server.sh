#!/usr/bin/env bash
# A current Kubernetes CRD server (apiextensions-apiserver 1.36, the part of kube-apiserver that
# serves CustomResourceDefinitions and custom resources) for the schema tests (tests/e2e/crd_server.rs):
# CEL rules enforced and cost-checked by the server, format warnings, every bound. Built from
# Debian sid's Go source packages without installing anything: the packages are downloaded with a
# temporary, low-pinned sid source and unpacked into a scratch tree, which is removed afterwards.
#
#   scripts/crd-server.sh deps            install what the build and run need from bookworm (root)
#   scripts/crd-server.sh build           build the binary once into the cache (idempotent)
#   scripts/crd-server.sh bin-dir         print where the binary is
#   scripts/crd-server.sh start DIR [PID] start etcd + the CRD server with state in DIR; writes
#                                         DIR/kubeconfig (client certificate in system:masters).
#                                         With PID, it stops by itself and removes DIR once PID exits.
#   scripts/crd-server.sh stop DIR        stop the server started in DIR
set -euo pipefail
# shellcheck source=loopback.sh
. "$(dirname "$0")/loopback.sh"

K8S_VERSION="1.36"
CACHE="${CLOUDKEYS_CACHE:-$HOME/.cache/cloudkeys}"
BIN_DIR="$CACHE/apiextensions-apiserver-$K8S_VERSION"
BINARY="$BIN_DIR/apiextensions-apiserver"
GO="1.26"
SID_SOURCES=/etc/apt/sources.list.d/cloudkeys-sid.sources
SID_PREFS=/etc/apt/preferences.d/cloudkeys-sid

log() { printf 'crd-server: %s\n' "$*" >&2; }

cmd_deps() {
  local need=()
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v openssl >/dev/null || need+=(openssl)
  command -v curl >/dev/null || need+=(curl ca-certificates)
  command -v python3 >/dev/null || need+=(python3)
  command -v dpkg-deb >/dev/null || need+=(dpkg)
  if [ ${#need[@]} -eq 0 ]; then return 0; fi
  log "installing: ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
}

# The sid source exists only while the packages are downloaded: removed again (and the lists
# refreshed, so that apt sees what it saw before) however the build ends.
remove_sid() {
  if [ -e "$SID_SOURCES" ] || [ -e "$SID_PREFS" ]; then
    as_root rm -f "$SID_SOURCES" "$SID_PREFS"
    as_root apt-get update -qq || log "apt-get update after removing sid failed"
  fi
}

add_sid() {
  local uri
  uri=$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
  [ -n "$uri" ] || uri=http://deb.debian.org/debian
  as_root tee "$SID_SOURCES" >/dev/null <<SRC
Types: deb
URIs: $uri
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  # Never a candidate for an upgrade or an install: only `-t sid` below looks at it.
  as_root tee "$SID_PREFS" >/dev/null <<'PREF'
Package: *
Pin: release n=sid
Pin-Priority: 50
PREF
  as_root apt-get update -qq
}

cmd_build() {
  if [ -x "$BINARY" ]; then log "binary cached in $BIN_DIR"; return 0; fi
  cmd_deps
  local work="$CACHE/apiextensions-apiserver-build"
  rm -rf "$work" && mkdir -p "$work/debs" "$work/root"
  trap 'remove_sid; rm -rf "$work"' EXIT
  log "downloading Kubernetes $K8S_VERSION's apiextensions-apiserver and Go $GO sources from Debian sid (nothing is installed)"
  add_sid
  # What installing them would take, as name=version: exactly those versions are downloaded.
  local pkgs=() p
  mapfile -t pkgs < <(as_root apt-get -s install --no-upgrade --no-install-recommends -t sid \
      golang-k8s-apiextensions-apiserver-dev "golang-$GO-go" \
    | awk '$1 == "Inst" && $2 ~ /^golang-/ { v = $3; if (v ~ /^\[/) v = $4; gsub(/[()]/, "", v); print $2 "=" v }')
  [ ${#pkgs[@]} -gt 0 ] || { log "no packages to download: is golang-k8s-apiextensions-apiserver-dev in sid?"; exit 1; }
  local have
  have=$(printf '%s\n' "${pkgs[@]}" | sed -n 's/^golang-k8s-apiextensions-apiserver-dev=//p')
  case "$have" in
    "0.${K8S_VERSION#1.}."*) log "golang-k8s-apiextensions-apiserver-dev $have (Kubernetes $K8S_VERSION)" ;;
    *) log "sid has golang-k8s-apiextensions-apiserver-dev '$have', not Kubernetes $K8S_VERSION: update K8S_VERSION (and the test's expected version)"; exit 1 ;;
  esac
  # Go libraries already installed here (bookworm's reflect2, from control-plane.sh deps) are
  # left out of the simulation; the GOPATH build needs sid's copies in the tree.
  for p in $(dpkg-query -W -f '${db:Status-Abbrev} ${Package}\n' 'golang-*-dev' 2>/dev/null | awk '$1 == "ii" { print $2 }'); do
    pkgs+=("$p/sid")
  done
  (cd "$work/debs" && apt-get download -q=2 -o APT::Sandbox::User=root "${pkgs[@]}") || { log "download failed"; exit 1; }
  remove_sid
  log "downloaded ${#pkgs[@]} packages ($(du -sh "$work/debs" | cut -f1)); unpacking"
  local deb
  for deb in "$work"/debs/*.deb; do dpkg-deb -x "$deb" "$work/root"; done
  rm -rf "$work/debs"
  local root="$work/root"
  log "building apiextensions-apiserver (a few minutes, once per machine)"
  (cd "$work" && GOROOT="$root/usr/lib/go-$GO" GOPATH="$root/usr/share/gocode" GO111MODULE=off CGO_ENABLED=0 \
    GOPROXY=off GOTOOLCHAIN=local GOFLAGS= GOCACHE="$work/gocache" HOME="$work" \
    "$root/usr/lib/go-$GO/bin/go" build -o "$work/apiextensions-apiserver" k8s.io/apiextensions-apiserver \
    >"$work/build.log" 2>&1) || { tail -n 40 "$work/build.log" >&2; log "build failed"; exit 1; }
  mkdir -p "$BIN_DIR"
  mv "$work/apiextensions-apiserver" "$BINARY"
  rm -rf "$work"
  trap - EXIT
  log "binary in $BIN_DIR"
}


# The CRD server's API answers (its /readyz never turns ready: it watches core kinds it does not
# serve), or it exited.
server_up_or_gone() { # server_up_or_gone DIR PORT
  curl -sf --cacert "$1/pki/ca.crt" --cert "$1/pki/client.crt" --key "$1/pki/client.key" \
      "https://127.0.0.1:$2/apis/apiextensions.k8s.io/v1" >/dev/null 2>&1 \
    || ! kill -0 "$(cat "$1/apiextensions-apiserver.pid")" 2>/dev/null
}


make_pki() { # make_pki DIR: a CA, the server's certificate, and a client certificate in system:masters
  local pki="$1/pki"
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=cloudkeys-crd-server-ca \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$pki/server.key" -out "$pki/server.csr" 2>/dev/null
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >"$pki/server.ext"
  openssl x509 -req -in "$pki/server.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/server.ext" -out "$pki/server.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=cloudkeys-admin" \
    -keyout "$pki/client.key" -out "$pki/client.csr" 2>/dev/null
  printf 'extendedKeyUsage=clientAuth\n' >"$pki/client.ext"
  openssl x509 -req -in "$pki/client.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial -days 2 \
    -extfile "$pki/client.ext" -out "$pki/client.crt" 2>/dev/null
  chmod 600 "$pki"/*.key
}

write_kubeconfig() { # write_kubeconfig DIR PORT
  cat >"$1/kubeconfig" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: cloudkeys-crd-server
  cluster:
    server: https://127.0.0.1:$2
    certificate-authority: $1/pki/ca.crt
users:
- name: cloudkeys-admin
  user:
    client-certificate: $1/pki/client.crt
    client-key: $1/pki/client.key
contexts:
- name: cloudkeys-crd-server
  context: {cluster: cloudkeys-crd-server, user: cloudkeys-admin}
current-context: cloudkeys-crd-server
KCFG
  chmod 600 "$1/kubeconfig"
}

cmd_start() {
  local dir="${1:?usage: start DIR [OWNER_PID]}"
  [ -x "$BINARY" ] || { log "binary missing: run 'scripts/crd-server.sh build' (or 'make crd-server')"; exit 1; }
  command -v etcd >/dev/null || { log "etcd missing: run 'scripts/crd-server.sh deps'"; exit 1; }
  mkdir -p "$dir" && dir="$(cd "$dir" && pwd)"
  local etcd_port api_port
  api_port=$(free_port)
  mkdir -p "$dir/etcd" "$dir/certs"
  make_pki "$dir"

  start_etcd "$dir" || { log "etcd did not start; see $dir/etcd.log"; cmd_stop "$dir"; exit 1; }
  etcd_port=$ETCD_PORT

  # The kubeconfig points at the server itself: it only needs one for the delegated authn/authz
  # options (system:masters is always allowed; client certificates are checked locally).
  local attempt
  for attempt in 1 2 3; do
    write_kubeconfig "$dir" "$api_port"
    : >"$dir/apiextensions-apiserver.log"
    "$BINARY" --etcd-servers "http://127.0.0.1:$etcd_port" \
      --bind-address 127.0.0.1 --secure-port "$api_port" --cert-dir "$dir/certs" \
      --tls-cert-file "$dir/pki/server.crt" --tls-private-key-file "$dir/pki/server.key" \
      --client-ca-file "$dir/pki/ca.crt" --authentication-skip-lookup \
      --kubeconfig "$dir/kubeconfig" --authentication-kubeconfig "$dir/kubeconfig" \
      --authorization-kubeconfig "$dir/kubeconfig" \
      --disable-admission-plugins NamespaceLifecycle,MutatingAdmissionPolicy,MutatingAdmissionWebhook,ValidatingAdmissionPolicy,ValidatingAdmissionWebhook \
      >>"$dir/apiextensions-apiserver.log" 2>&1 &
    echo $! >"$dir/apiextensions-apiserver.pid"
    if wait_for 90 server_up_or_gone "$dir" "$api_port" \
        && kill -0 "$(cat "$dir/apiextensions-apiserver.pid")" 2>/dev/null; then
      break
    fi
    if grep -q 'address already in use' "$dir/apiextensions-apiserver.log" && [ "$attempt" -lt 3 ]; then
      log "port $api_port was taken; trying another"
      api_port=$(free_port); continue
    fi
    log "apiextensions-apiserver did not answer; see $dir/apiextensions-apiserver.log"
    grep -v 'Failed to watch\|failed to list' "$dir/apiextensions-apiserver.log" | tail -n 20 >&2 || true
    cmd_stop "$dir"; exit 1
  done
  if [ -n "${2:-}" ]; then stop_after "$2" "$0" "$dir"; fi
  log "ready: KUBECONFIG=$dir/kubeconfig"
}

cmd_stop() {
  stop_processes "${1:?usage: stop DIR}" apiextensions-apiserver etcd
}

case "${1:-}" in
  deps) cmd_deps ;;
  build) cmd_build ;;
  bin-dir) echo "$BIN_DIR" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  *) sed -n '2,15p' "$0" >&2; exit 2 ;;
esac
