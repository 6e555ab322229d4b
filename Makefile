# eventbus-sidecar. `make run` runs the sidecar with embedded defaults;
# `make test` runs every test. Fragments under deploy/ and clients/ add their
# own targets and append to TEST_TARGETS so `make test` runs them too.
SHELL := /bin/bash
GO ?= go
BIN := bin/eventbus-sidecar
TEST_TARGETS := test-go

.PHONY: all build run test test-go bench lint
all: build

build:
	$(GO) build -trimpath -o $(BIN) .

run: build
	./$(BIN) serve

test-go:
	$(GO) test -race -count=1 ./...

include $(sort $(wildcard deploy/*.mk clients/*/*.mk e2e/*.mk))

test: $(TEST_TARGETS)
