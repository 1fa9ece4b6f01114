#!/usr/bin/env bash
# A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager 1.20.2) for
# cloudkeys' tests and demo, built from Debian's source package and cached outside the repo.
#
#   scripts/control-plane.sh deps            install the Debian packages the build and run need (root)
#   scripts/control-plane.sh build           build the binaries once into the cache (idempotent)
#   scripts/control-plane.sh bin-dir         print where the binaries are
#   scripts/control-plane.sh start DIR [PID] start a control plane with state in DIR; writes DIR/kubeconfig
#                                            (cluster admin) and DIR/operator.kubeconfig (user cloudkeys-operator,
#                                            whose requests alone are audited to DIR/audit.log).
#                                            With PID, it stops by itself and removes DIR once PID exits.
#   scripts/control-plane.sh stop DIR        stop the control plane started in DIR
#   scripts/control-plane.sh restart-apiserver DIR [DOWN_SECONDS]
#                                            kill -9 kube-apiserver, start it again with the same flags
set -euo pipefail
# shellcheck source=loopback.sh
. "$(dirname "$0")/loopback.sh"

K8S_DEB_VERSION="1.20.5+really1.20.2-1.1+deb12u1"
K8S_ORIG="kubernetes_1.20.5+really1.20.2.orig.tar.gz"
CACHE="${CLOUDKEYS_CACHE:-$HOME/.cache/cloudkeys}"
BIN_DIR="$CACHE/kubernetes-1.20.2/bin"
BINARIES=(kube-apiserver kube-controller-manager kubectl)

log() { printf 'control-plane: %s\n' "$*" >&2; }

have_binaries() {
  local b
  for b in "${BINARIES[@]}"; do [ -x "$BIN_DIR/$b" ] || return 1; done
}

cmd_deps() {
  local need=()
  [ -x /usr/lib/go-1.19/bin/go ] || need+=(golang-1.19-go)
  command -v etcd >/dev/null || need+=(etcd-server)
  command -v rsync >/dev/null || need+=(rsync)
  command -v jq >/dev/null || need+=(jq)
  command -v openssl >/dev/null || need+=(openssl)
  [ -d /usr/share/gocode/src/github.com/modern-go/reflect2 ] || need+=(golang-github-modern-go-reflect2-dev)
  if [ ! -f /etc/apt/sources.list.d/debian-src.sources ]; then
    sed 's/^Types: deb$/Types: deb-src/' /etc/apt/sources.list.d/debian.sources \
      | as_root tee /etc/apt/sources.list.d/debian-src.sources >/dev/null
    need+=(--refresh-lists)
  fi
  if [ ${#need[@]} -eq 0 ]; then return 0; fi
  log "installing: ${need[*]/--refresh-lists/}"
  as_root apt-get update -qq
  local pkgs=()
  local p
  for p in "${need[@]}"; do [ "$p" = --refresh-lists ] || pkgs+=("$p"); done
  if [ ${#pkgs[@]} -gt 0 ]; then
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
  fi
}

cmd_build() {
  if have_binaries; then log "binaries cached in $BIN_DIR"; return 0; fi
  cmd_deps
  local work="$CACHE/kubernetes-build"
  rm -rf "$work" && mkdir -p "$work"
  log "fetching Debian source kubernetes=$K8S_DEB_VERSION"
  (cd "$work" && apt-get source --download-only "kubernetes=$K8S_DEB_VERSION" >/dev/null)
  mkdir -p "$work/src"
  tar -xzf "$work/$K8S_ORIG" -C "$work/src" --strip-components=1
  local src="$work/src"
  # reflect2 1.0.1 (vendored) crashes on Go >= 1.18; Debian's packaged copy is fixed.
  rm -rf "$src/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$src/vendor/github.com/modern-go/reflect2"
  rm -f "$src/vendor/github.com/modern-go/reflect2/go.mod"
  mkdir -p "$src/.go/src/k8s.io"
  ln -sfn ../../.. "$src/.go/src/k8s.io/kubernetes"
  log "building ${BINARIES[*]} (several minutes, once per machine)"
  (cd "$src/.go/src/k8s.io/kubernetes" && \
    PATH=/usr/lib/go-1.19/bin:$PATH GOPATH="$src/.go" CGO_ENABLED=0 \
      make WHAT="cmd/kube-apiserver cmd/kube-controller-manager cmd/kubectl" >"$work/build.log" 2>&1) || {
    tail -n 40 "$work/build.log" >&2; log "build failed; full log in $work/build.log"; exit 1; }
  mkdir -p "$BIN_DIR"
  local b
  for b in "${BINARIES[@]}"; do cp "$src/_output/local/bin/linux/amd64/$b" "$BIN_DIR/$b"; done
  rm -rf "$work"
  log "binaries in $BIN_DIR"
}

# The flags are kept so that `restart-apiserver` starts it again exactly as before, as a
# control-plane upgrade or crash would.
write_apiserver_args() { # write_apiserver_args DIR ETCD_PORT API_PORT
  local dir="$1"
  printf '%s\n' --etcd-servers "http://127.0.0.1:$2" \
    --bind-address 127.0.0.1 --secure-port "$3" --cert-dir "$dir/certs" \
    --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-cluster-ip-range 10.96.0.0/12 --advertise-address 127.0.0.1 \
    --endpoint-reconciler-type none \
    --audit-policy-file "$dir/audit-policy.yaml" --audit-log-path "$dir/audit.log" \
    --v 1 >"$dir/kube-apiserver.args"
}

# Ready, or exited (so that a lost port is retried at once, not after the whole timeout).
apiserver_ready_or_gone() { # apiserver_ready_or_gone DIR
  "$BIN_DIR/kubectl" --kubeconfig "$1/kubeconfig" get --raw /readyz >/dev/null 2>&1 \
    || ! kill -0 "$(cat "$1/kube-apiserver.pid")" 2>/dev/null
}

start_apiserver() { # start_apiserver DIR: with the flags kept in DIR/kube-apiserver.args
  local dir="$1" args=()
  mapfile -t args <"$dir/kube-apiserver.args"
  "$BIN_DIR/kube-apiserver" "${args[@]}" >>"$dir/kube-apiserver.log" 2>&1 &
  echo $! >"$dir/kube-apiserver.pid"
}

# kill -9, then the same command line on the same data: what a crash or an upgrade of the
# control plane looks like to a client. Returns once the new apiserver is ready.
cmd_restart_apiserver() {
  local dir="${1:?usage: restart-apiserver DIR [DOWN_SECONDS]}" down="${2:-0}" pid
  pid=$(cat "$dir/kube-apiserver.pid")
  kill -9 "$pid" 2>/dev/null || true
  while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
  sleep "$down"
  start_apiserver "$dir"
  if ! wait_for 90 "$BIN_DIR/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz; then
    log "kube-apiserver did not come back; see $dir/kube-apiserver.log"; exit 1
  fi
}

write_kubeconfig() { # write_kubeconfig FILE PORT DIR USER TOKEN
  cat >"$1" <<KCFG
apiVersion: v1
kind: Config
clusters:
- name: cloudkeys-test
  cluster:
    server: https://127.0.0.1:$2
    certificate-authority: $3/certs/apiserver.crt
users:
- name: $4
  user:
    token: $5
contexts:
- name: cloudkeys-test
  context: {cluster: cloudkeys-test, user: $4}
current-context: cloudkeys-test
KCFG
  chmod 600 "$1"
}

cmd_start() {
  local dir="${1:?usage: start DIR [OWNER_PID]}"
  have_binaries || { log "binaries missing: run 'scripts/control-plane.sh build' (or 'make control-plane')"; exit 1; }
  command -v etcd >/dev/null || { log "etcd missing: run 'scripts/control-plane.sh deps'"; exit 1; }
  mkdir -p "$dir" && dir="$(cd "$dir" && pwd)"
  local etcd_port api_port token operator_token
  api_port=$(free_port)
  token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  operator_token=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
  mkdir -p "$dir/certs" "$dir/etcd"
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null
  printf '%s,cloudkeys-admin,cloudkeys-admin,system:masters\n' "$token" >"$dir/tokens.csv"
  # An identity of its own for an operator under measurement (make bench): its requests, and no
  # one else's, are written to the audit log.
  printf '%s,cloudkeys-operator,cloudkeys-operator,system:masters\n' "$operator_token" >>"$dir/tokens.csv"
  cat >"$dir/audit-policy.yaml" <<'POLICY'
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: [cloudkeys-operator]
- level: None
POLICY

  start_etcd "$dir" || { log "etcd did not start; see $dir/etcd.log"; cmd_stop "$dir"; exit 1; }
  etcd_port=$ETCD_PORT

  # Another process can still take the port between the probe and the bind: a start that lost
  # its port is tried again on another one.
  local attempt
  for attempt in 1 2 3; do
    write_apiserver_args "$dir" "$etcd_port" "$api_port"
    : >"$dir/kube-apiserver.log"
    start_apiserver "$dir"
    write_kubeconfig "$dir/kubeconfig" "$api_port" "$dir" cloudkeys-admin "$token"
    write_kubeconfig "$dir/operator.kubeconfig" "$api_port" "$dir" cloudkeys-operator "$operator_token"
    if wait_for 90 apiserver_ready_or_gone "$dir"; then
      "$BIN_DIR/kubectl" --kubeconfig "$dir/kubeconfig" get --raw /readyz >/dev/null 2>&1 && break
      if grep -q 'address already in use' "$dir/kube-apiserver.log" && [ "$attempt" -lt 3 ]; then
        log "port $api_port was taken; trying another"
        api_port=$(free_port); continue
      fi
    fi
    log "kube-apiserver did not become ready; see $dir/kube-apiserver.log"
    tail -n 20 "$dir/kube-apiserver.log" >&2 || true
    cmd_stop "$dir"; exit 1
  done

  "$BIN_DIR/kube-controller-manager" --kubeconfig "$dir/kubeconfig" \
    --controllers garbagecollector,namespace,serviceaccount-token,serviceaccount,deployment,replicaset,statefulset,daemonset,clusterrole-aggregation \
    --service-account-private-key-file "$dir/sa.key" --root-ca-file "$dir/certs/apiserver.crt" \
    --secure-port 0 --port 0 --leader-elect=false --v 1 \
    >"$dir/kube-controller-manager.log" 2>&1 &
  echo $! >"$dir/kube-controller-manager.pid"

  # The default namespace's ServiceAccount shows the controller manager is working.
  if ! wait_for 60 "$BIN_DIR/kubectl" --kubeconfig "$dir/kubeconfig" -n default get serviceaccount default; then
    log "kube-controller-manager did not start; see $dir/kube-controller-manager.log"
    cmd_stop "$dir"; exit 1
  fi
  if [ -n "${2:-}" ]; then stop_after "$2" "$0" "$dir"; fi
  log "ready: KUBECONFIG=$dir/kubeconfig"
}

cmd_stop() {
  stop_processes "${1:?usage: stop DIR}" kube-controller-manager kube-apiserver etcd
}

case "${1:-}" in
  deps) cmd_deps ;;
  build) cmd_build ;;
  bin-dir) echo "$BIN_DIR" ;;
  start) shift; cmd_start "$@" ;;
  stop) shift; cmd_stop "$@" ;;
  restart-apiserver) shift; cmd_restart_apiserver "$@" ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
