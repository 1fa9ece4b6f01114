#!/usr/bin/env bash
# `make demo`: the operator doing its job against a real (throw-away) Kubernetes control plane.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }

state=$(mktemp -d -t cloudkeys-demo.XXXXXX)
step "Starting etcd, kube-apiserver and kube-controller-manager (state in $state)"
scripts/control-plane.sh start "$state" $$ 2>&1 | sed 's/^/    /'
export KUBECONFIG="$state/kubeconfig"
kubectl="$(scripts/control-plane.sh bin-dir)/kubectl --cache-dir $state/kubectl-cache"
trap 'scripts/control-plane.sh stop "$state"; rm -rf "$state"' EXIT

step "Installing the CRDs (cloudkeys crds | kubectl create -f -)"
# kubectl 1.20 validates client-side against a schema that predates CEL rules
# (x-kubernetes-validations); the apiserver itself accepts and ignores them.
target/debug/cloudkeys crds | $kubectl create --validate=false -f -
$kubectl wait --for condition=established --timeout=60s crd/accesskeys.cloudkeys.io crd/keyissuers.cloudkeys.io crd/clusterkeyissuers.cloudkeys.io

step "Starting the operator: cloudkeys run (logs in $state/operator.log)"
# Its namespace holds the leader-election Lease (and a ClusterKeyIssuer's credentials).
$kubectl create namespace cloudkeys
target/debug/cloudkeys run --metrics-address 127.0.0.1:0 >"$state/operator.log" 2>&1 &
operator=$!
trap 'kill $operator 2>/dev/null; wait $operator 2>/dev/null; scripts/control-plane.sh stop "$state"; rm -rf "$state"' EXIT

step "Creating namespace team-a with a local KeyIssuer and an AccessKey"
$kubectl create namespace team-a
$kubectl apply -n team-a -f examples/local/keyissuer.yaml -f examples/local/accesskey.yaml

step "Waiting for the AccessKey to be Ready"
$kubectl wait -n team-a --for condition=Ready --timeout=60s accesskey/demo
$kubectl get cloudkeys -n team-a

step "The Secret demo-credentials: its keys (values stay secret)"
$kubectl get secret -n team-a demo-credentials -o go-template='{{range $k, $v := .data}}{{printf "  %s\n" $k}}{{end}}'
$kubectl get secret -n team-a demo-credentials -o jsonpath='{.metadata.annotations.cloudkeys\.io/access-key-id}{"\n"}' | sed 's/^/  annotation cloudkeys.io\/access-key-id: /'

step "The CLI: cloudkeys status, inspect, rotate, check (also kubectl cloudkeys, once on PATH)"
target/debug/cloudkeys status -n team-a
target/debug/cloudkeys inspect demo -n team-a
old_key=$($kubectl get accesskey -n team-a demo -o jsonpath='{.status.accessKeyId}')
target/debug/cloudkeys rotate demo -n team-a
for _ in $(seq 1 100); do
  [ "$($kubectl get accesskey -n team-a demo -o jsonpath='{.status.accessKeyId}')" != "$old_key" ] && break
  sleep 0.2
done
target/debug/cloudkeys status -n team-a -o wide
target/debug/cloudkeys check

step "The schema refuses a bad AccessKey at admission"
$kubectl apply -n team-a -f - <<'YAML' || true
apiVersion: cloudkeys.io/v1alpha1
kind: AccessKey
metadata: {name: broken}
spec:
  issuerRef: {name: local, kind: Issuer}
  secretName: Not_A_Valid_Name
  local: {}
YAML

step "Deleting the AccessKey: the key is revoked, then the finalizer released"
$kubectl get accesskey -n team-a demo -o jsonpath='finalizers: {.metadata.finalizers}{"\n"}'
$kubectl delete -n team-a accesskey/demo --wait=true --timeout=60s
$kubectl get accesskey -n team-a demo 2>&1 | sed 's/^/  /' || true
$kubectl get events -n team-a --field-selector involvedObject.name=demo -o custom-columns=REASON:.reason,MESSAGE:.message 2>/dev/null || true

step "Deleting the whole namespace: its keys are revoked before the issuer may go"
$kubectl apply -n team-a -f examples/local/accesskey.yaml
$kubectl wait -n team-a --for condition=Ready --timeout=60s accesskey/demo
$kubectl get keyissuer -n team-a local -o jsonpath='KeyIssuer finalizers while in use: {.metadata.finalizers}{"\n"}'
$kubectl delete namespace team-a --timeout=90s
sed 's/\x1b\[[0-9;]*m//g' "$state/operator.log" | grep -E 'Revoking|in-use finalizer updated' | sed 's/.*}: /  /' | tail -n 4 || true

step "Done; the operator and the control plane are stopped and their state removed."
