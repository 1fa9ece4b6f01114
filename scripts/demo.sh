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

step "Creating namespace team-a with a local KeyIssuer and an AccessKey"
$kubectl create namespace team-a
$kubectl apply -n team-a -f examples/local/keyissuer.yaml -f examples/local/accesskey.yaml

step "kubectl get cloudkeys -n team-a"
$kubectl get cloudkeys -n team-a

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

step "Done; the control plane is stopped and its state removed."
