# snapback — the two commands of the README are `make demo` and `make test`.

SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
CLUSTER_DIR ?= $(HOME)/.cache/snapback/cluster
export CARGO_TERM_COLOR ?= never

.PHONY: all build demo test unit lint fmt cluster-up cluster-down control-plane bench bench-smoke ci install tools fuzz

all: build

build:
	cargo build --locked

## The local demo: control plane, snapback, a change captured (and rolled back).
demo: build
	hack/demo.sh

## Every test: unit tests and integration tests on a real kube-apiserver.
FIGURES ?= $(or $(CARGO_TARGET_DIR),target)/snapback-figures.txt
test: control-plane tools
	@mkdir -p $(dir $(FIGURES)) && rm -f $(FIGURES)
	SNAPBACK_FIGURES=$(abspath $(FIGURES)) cargo test --locked --all-targets
	@echo; echo "Figures of this run (faults, restarts, hostile input):"; cat $(FIGURES) 2>/dev/null || echo "  (none recorded)"

unit:
	cargo test --locked --lib

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --all-targets -- -D warnings

fmt:
	cargo fmt --all

## The API fuzzer (schemathesis, PyPI) in a virtualenv outside the checkout.
VENV ?= $(HOME)/.cache/snapback/venv
SCHEMATHESIS_VERSION ?= 4.32.5
OPENAPI_VALIDATOR_VERSION ?= 0.9.0
tools:
	@test -x $(VENV)/bin/schemathesis && $(VENV)/bin/schemathesis --version | grep -q $(SCHEMATHESIS_VERSION) && \
	  $(VENV)/bin/pip show openapi-spec-validator 2>/dev/null | grep -q "^Version: $(OPENAPI_VALIDATOR_VERSION)$$" || \
	  { (python3 -m venv $(VENV) || { apt-get update -qq && apt-get install -y -qq python3-venv >/dev/null && python3 -m venv $(VENV); }) && \
	    $(VENV)/bin/pip install -q schemathesis==$(SCHEMATHESIS_VERSION) openapi-spec-validator==$(OPENAPI_VALIDATOR_VERSION); }

## A short run of every cargo-fuzz target (stable toolchain: RUSTC_BOOTSTRAP).
## A long run: make fuzz FUZZ_SECONDS=3600
FUZZ_SECONDS ?= 20
FUZZ_TARGET_DIR ?= $(HOME)/.cache/snapback/fuzz-target
fuzz:
	@command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
	@mkdir -p $(dir $(FIGURES))
	for t in admission_review snapshot_payload stored_snapshot; do \
	  mkdir -p $(FUZZ_TARGET_DIR)/corpus/$$t fuzz/seeds/$$t; \
	  RUSTC_BOOTSTRAP=1 CARGO_TARGET_DIR=$(FUZZ_TARGET_DIR) cargo fuzz run -O --fuzz-dir fuzz $$t \
	    $(FUZZ_TARGET_DIR)/corpus/$$t fuzz/seeds/$$t -- \
	    -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 2>&1 | tee $(FUZZ_TARGET_DIR)/$$t.log | tail -3 || exit 1; \
	  echo "fuzz $$t: $$(grep -o 'Done [0-9]* runs in [0-9]* second(s)' $(FUZZ_TARGET_DIR)/$$t.log), no crash" >> $(FIGURES); \
	done
	@cat $(FIGURES)

## Install etcd/kubectl and build kube-apiserver once (cached in ~/.cache/snapback).
control-plane:
	hack/install-control-plane.sh

## A long-lived local control plane for manual use; prints where its kubeconfig is.
# CONTROLLERS=0 for etcd + kube-apiserver only.
CONTROLLERS ?= 1
cluster-up:
	CONTROLLERS=$(CONTROLLERS) hack/cluster.sh up $(CLUSTER_DIR)
	@echo "export KUBECONFIG=$(CLUSTER_DIR)/kubeconfig"

cluster-down:
	hack/cluster.sh down $(CLUSTER_DIR)

## What CI runs.
ci: lint test fuzz demo bench-smoke

## Benchmarks (results: target/bench-results.md, summarised in BENCHMARKS.md).
bench: control-plane
	hack/bench.sh

## The same suite with tiny sizes (CI), so that it cannot rot.
bench-smoke: control-plane
	hack/bench.sh --smoke

## Install the binary as the kubectl plugin `kubectl-snapback` (and `snapback`).
PREFIX ?= $(HOME)/.local
install: build
	install -d $(PREFIX)/bin
	install -m 0755 $${CARGO_TARGET_DIR:-target}/debug/snapback $(PREFIX)/bin/snapback
	ln -sf snapback $(PREFIX)/bin/kubectl-snapback
