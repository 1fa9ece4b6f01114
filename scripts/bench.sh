#!/usr/bin/env bash
# `make bench`: how fast the operator issues keys and how much memory it needs, against the real
# control plane with the local provider. Prints figures; asserts nothing.
#   N=200 scripts/bench.sh
set -euo pipefail
cd "$(dirname "$0")/.."
N="${N:-200}"
state=$(mktemp -d -t cloudkeys-bench.XXXXXX)
scripts/control-plane.sh start "$state" $$ >/dev/null 2>&1
export KUBECONFIG="$state/kubeconfig"
kubectl="$(scripts/control-plane.sh bin-dir)/kubectl --cache-dir $state/kubectl-cache"
target/release/cloudkeys crds | $kubectl create --validate=false -f - >/dev/null
$kubectl wait --for condition=established --timeout=60s crd/accesskeys.cloudkeys.io >/dev/null
$kubectl create namespace bench >/dev/null
$kubectl apply -n bench -f examples/local/keyissuer.yaml >/dev/null
target/release/cloudkeys run --leader-election=false --metrics-address 127.0.0.1:0 --concurrency 8 >"$state/operator.log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null; wait $operator 2>/dev/null; scripts/control-plane.sh stop "$state"; rm -rf "$state"' EXIT
sleep 2

manifests="$state/keys.yaml"
for i in $(seq 1 "$N"); do
  printf -- '---\napiVersion: cloudkeys.io/v1alpha1\nkind: AccessKey\nmetadata: {name: k%s}\nspec: {issuerRef: {name: local}, secretName: k%s-credentials, local: {}}\n' "$i" "$i"
done >"$manifests"

rss() { awk '/VmRSS/ {print $2}' "/proc/$operator/status"; }
idle_rss=$(rss)
start=$(date +%s.%N)
$kubectl apply -n bench -f "$manifests" >/dev/null
until [ "$($kubectl get ak -n bench -o jsonpath='{range .items[*]}{.status.conditions[0].reason}{"\n"}{end}' | grep -c '^Issued$')" -ge "$N" ]; do
  sleep 0.5
done
issued=$(date +%s.%N)
busy_rss=$(rss)
$kubectl delete -n bench accesskeys --all --wait=true >/dev/null
deleted=$(date +%s.%N)
awk -v n="$N" -v s="$start" -v i="$issued" -v d="$deleted" -v r0="$idle_rss" -v r1="$busy_rss" 'BEGIN {
  printf "AccessKeys:               %d (local provider, concurrency 8, 2 cores)\n", n
  printf "all Ready after:          %.1f s  (%.1f keys/s)\n", i - s, n / (i - s)
  printf "all deleted after:        %.1f s\n", d - i
  printf "operator RSS idle / busy: %.1f MiB / %.1f MiB\n", r0 / 1024, r1 / 1024
}'
