# cloudkeys — the two commands a newcomer needs are `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(HOME)/.cargo/bin:$(PATH)

.PHONY: test demo lint crds control-plane build

## Everything CI runs: formatting, clippy, unit and integration tests against a real apiserver.
test: control-plane lint
	$(CARGO) test --all-targets --locked

## Build the operator, start a real control plane, issue a key with the local provider, clean up.
demo: control-plane build
	scripts/demo.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets --locked -- -D warnings

build:
	$(CARGO) build --locked

## Regenerate crds/ from the Rust types.
crds:
	$(CARGO) run --quiet --locked -- crds > crds/cloudkeys.io_crds.yaml

## Install the Debian packages and build kube-apiserver/kube-controller-manager/kubectl once per
## machine (cached in $${CLOUDKEYS_CACHE:-~/.cache/cloudkeys}).
control-plane:
	scripts/control-plane.sh deps
	scripts/control-plane.sh build
