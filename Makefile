# cloudkeys — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

# Helm's Go library for the chart tests (tests/helm/helm.py); PyYAML for values files.
HELM_SDKPY_VERSION := 0.1.32
PYTHON ?= python3

.PHONY: test unit reconcile-tier demo lint crds control-plane crd-server build bench helm-deps lua monitoring-deps install previous-release

## Everything CI runs: formatting, clippy, unit and integration tests against a real apiserver.
# The end-to-end tests mostly wait (on rollouts, grace periods, the apiserver): more of them at
# once than there are cores, each in a namespace of its own (scripts/test.sh).
TEST_THREADS ?= 8
# previous-release comes before the current code is built: its build leaves the old binary in
# target/debug/cloudkeys, which `cargo test --no-run` links again.
test: control-plane crd-server helm-deps lua monitoring-deps lint previous-release
	$(CARGO) test --all-targets --locked --no-run
	CARGO="$(CARGO)" scripts/test.sh $(TEST_THREADS)

## The tier that needs no cluster: the library's unit tests (decisions, schema, providers against
## their wire formats), the provider fakes' own tests, and the repository checks (layers, docs,
## committed CRDs). Seconds once built; `make test` runs them too.
unit:
	$(CARGO) test --locked --lib --test unit

## The reconcile tier: the issuer and AccessKey reconciles called in the test's own process
## against a real apiserver (a control plane of its own), with the local provider.
reconcile-tier: control-plane
	$(CARGO) test --locked --test reconcile_tier

## Build the operator, start a real control plane, issue a key with the local provider, clean up.
demo: control-plane build
	scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

build:
	$(CARGO) build --locked

## Install `cloudkeys` and the kubectl plugin `kubectl-cloudkeys` (the same commands, as
## `kubectl cloudkeys …`) into ~/.cargo/bin, or PREFIX/bin with PREFIX=….
install:
	$(CARGO) install --locked --path . $(if $(PREFIX),--root $(PREFIX))

## Regenerate crds/ from the Rust types, and the chart's copy (charts/cloudkeys/files/, which
## templates/crds.yaml renders as it is, so that `helm upgrade` upgrades the CRDs too).
crds:
	$(CARGO) run --quiet --locked --bin cloudkeys -- crds > crds/cloudkeys.io_crds.yaml
	cp crds/cloudkeys.io_crds.yaml charts/cloudkeys/files/cloudkeys.io_crds.yaml

## Build the operator of the previous release (the commit in upgrade/previous-release) once per
## machine, cached in $${CLOUDKEYS_CACHE:-~/.cache/cloudkeys}, for the upgrade test
## (tests/e2e/upgrade.rs). Needs that commit in the clone's history (no shallow clone).
previous-release:
	CARGO="$(CARGO)" scripts/previous-release.sh build

## Install helm-sdkpy (Helm's Go library for Python) and PyYAML for the chart tests; skipped when
## the right version is already importable. helm-sdkpy declares Python >= 3.12 but works on 3.11.
## PIP_BREAK_SYSTEM_PACKAGES lets a Debian-managed python3 install them too (ignored elsewhere).
helm-deps:
	@if $(PYTHON) -c 'import importlib.metadata as m, yaml, helm_sdkpy; assert m.version("helm-sdkpy") == "$(HELM_SDKPY_VERSION)"' 2>/dev/null; then \
	  echo "helm-deps: helm-sdkpy $(HELM_SDKPY_VERSION) and PyYAML present"; \
	else \
	  PIP_BREAK_SYSTEM_PACKAGES=1 $(PYTHON) -m pip install --quiet --disable-pip-version-check \
	    --ignore-requires-python "helm-sdkpy==$(HELM_SDKPY_VERSION)" "PyYAML>=6" && \
	  $(PYTHON) -c 'import helm_sdkpy, yaml; print("helm-deps: helm-sdkpy", helm_sdkpy.__version__, "installed")'; \
	fi

## Install Lua 5.1 (Debian's lua5.1), which runs the Argo CD health checks and actions of
## gitops/argocd/ in their tests (tests/e2e/gitops_health.rs); skipped when `lua5.1` is on PATH.
lua:
	scripts/lua.sh deps

## Install the Debian packages and build kube-apiserver/kube-controller-manager/kubectl once per
## machine (cached in $${CLOUDKEYS_CACHE:-~/.cache/cloudkeys}).
control-plane:
	scripts/control-plane.sh deps
	scripts/control-plane.sh build

## Build a Kubernetes 1.36 CRD server (apiextensions-apiserver) once per machine, cached in
## $${CLOUDKEYS_CACHE:-~/.cache/cloudkeys}: the CRDs' CEL rules, formats and bounds are tested on it
## (tests/e2e/crd_server.rs). Built from Debian sid's Go packages, downloaded and unpacked, never installed.
crd-server:
	scripts/crd-server.sh deps
	scripts/crd-server.sh build

## The operator at scale (tests/bench.rs): 10,000 local and 1,000 Exoscale AccessKeys against the
## real control plane; prints figures, asserts nothing. BENCH_LOCAL, BENCH_EXOSCALE, ... resize it.
bench: control-plane
	$(CARGO) test --release --locked --test bench -- --ignored --nocapture

## Install Prometheus' server and promtool (Debian's `prometheus` package, its service not started)
## for the tests of the chart's alerts and dashboard (tests/e2e/monitoring.rs); skipped when both are
## on PATH.
monitoring-deps:
	scripts/monitoring.sh deps
