# snapback — the two commands of the README are `make demo` and `make test`.

SHELL := /bin/bash
CLUSTER_DIR ?= $(HOME)/.cache/snapback/cluster
export CARGO_TERM_COLOR ?= never

.PHONY: all build demo test unit lint fmt cluster-up cluster-down control-plane bench ci install

all: build

build:
	cargo build --locked

## The local demo: control plane, snapback, a change captured (and rolled back).
demo: build
	hack/demo.sh

## Every test: unit tests and integration tests on a real kube-apiserver.
FIGURES ?= $(or $(CARGO_TARGET_DIR),target)/snapback-figures.txt
test: control-plane
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

## Install etcd/kubectl and build kube-apiserver once (cached in ~/.cache/snapback).
control-plane:
	hack/install-control-plane.sh

## A long-lived local control plane for manual use; prints where its kubeconfig is.
cluster-up:
	hack/cluster.sh up $(CLUSTER_DIR)
	@echo "export KUBECONFIG=$(CLUSTER_DIR)/kubeconfig"

cluster-down:
	hack/cluster.sh down $(CLUSTER_DIR)

## What CI runs.
ci: lint test demo

## Install the binary as the kubectl plugin `kubectl-snapback` (and `snapback`).
PREFIX ?= $(HOME)/.local
install: build
	install -d $(PREFIX)/bin
	install -m 0755 $${CARGO_TARGET_DIR:-target}/debug/snapback $(PREFIX)/bin/snapback
	ln -sf snapback $(PREFIX)/bin/kubectl-snapback
