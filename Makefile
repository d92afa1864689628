# kubectl nettrace: build, lab, tests and benchmarks. Run as root on Debian 12.
# See README.md.

SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
CONTROLPLANE_DIR ?= $(CURDIR)/.cache/controlplane
export NETTRACE_CONTROLPLANE_DIR := $(CONTROLPLANE_DIR)

COMMANDS := kubectl-nettrace nettrace-lab nettrace-cni nettrace-node nettrace-dns nettrace-agent

.PHONY: all build controlplane lab down demo test unit e2e bench fmt vet clean

all: build

## build: every project binary into bin/
build:
	@mkdir -p $(BIN)
	@for c in $(COMMANDS); do \
		if [ -d cmd/$$c ]; then $(GO) build -o $(BIN)/$$c ./cmd/$$c || exit 1; fi; \
	done

## controlplane: etcd and Kubernetes v1.37.2 from source, once, into .cache/ (about 7 minutes cold)
controlplane:
	scripts/controlplane/build.sh $(CONTROLPLANE_DIR)

## lab: the three-node lab with the seed's examples
lab: build controlplane
	$(BIN)/nettrace-lab up --with-examples

## down: remove the lab
down:
	@if [ -x $(BIN)/nettrace-lab ]; then $(BIN)/nettrace-lab down; fi

## demo: the README's main command: lab up, then traces of the seed's scenarios
demo: build controlplane
	scripts/demo.sh

## test: the whole suite: unit tests, then the end-to-end tests on one shared lab
test: build controlplane unit e2e

## unit: tests that need no lab (throwaway netns and a throwaway API server at most)
unit:
	$(GO) test -count=1 ./...

## e2e: tests against one lab, brought up once and removed at the end
e2e: build controlplane
	$(GO) test -count=1 -tags e2e -timeout 45m -v ./lab/e2e/...

## bench: the benchmark scripts, each printing ratios against a baseline from the same run
bench: build controlplane
	@for s in scripts/bench/*.sh; do echo "== $$s"; $$s || exit 1; done

fmt:
	gofmt -w $$(git ls-files '*.go')

vet:
	$(GO) vet ./...

clean:
	rm -rf $(BIN)
