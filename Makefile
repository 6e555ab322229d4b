# eventbus-sidecar. `make run` runs the sidecar with embedded defaults;
# `make test` runs every test. Fragments under deploy/, clients/*/ and e2e/
# add their own targets and append to TEST_TARGETS so `make test` runs them
# too; this file defines only the targets below.
#
#   make build   bin/eventbus-sidecar
#   make run     the sidecar with embedded defaults (socket /tmp/eventbus-sidecar.sock,
#                admin http://127.0.0.1:9464) and a data dir (DATA_DIR, default
#                .eventbus-data), so that order and signal survive kill -9; Ctrl-C
#                drains and stops it
#   make test    every test: test-go (go test -race), fuzz and each fragment's target
#   make fuzz    every fuzz target of the module for FUZZTIME each (default 100000x)
#   make bench   go benchmarks of bus/ and transport/
#   make load    the load tool against real sidecars: telemetry off vs metrics only,
#                1 and 8 publishing connections, one acking consumer
#   make lint    gofmt, go vet, staticcheck
#   make soak    SOAK_CONNECTIONS (1000) hostile and well-behaved connections against a real
#                sidecar for SOAK_DURATION (10m); fails if RSS, fds or threads grow or pass
#                the memory bound, or good clients stall (not part of `make test`)
SHELL := /bin/bash
GO ?= go
BIN := bin/eventbus-sidecar
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X main.version=$(VERSION)
# urfave_cli_no_docs leaves out urfave/cli's man-page and Markdown
# generators, which nothing calls, and the Markdown library they link:
# 0.3 to 0.5 MiB less resident memory at idle (docs/performance.md, "Idle memory").
BUILD_TAGS := urfave_cli_no_docs
STATICCHECK_VERSION := v0.8.2
STATICCHECK := bin/staticcheck-$(STATICCHECK_VERSION)
# BENCH_PKGS and BENCHTIME tune `make bench`.
BENCH_PKGS ?= ./bus ./transport
BENCHTIME ?= 1s
# LOAD_EVENTS, LOAD_ROUNDS, LOAD_RATE (events/s of the open-loop run, which
# lasts LOAD_OPEN_SECONDS) and LOAD_DURATION (bound on each run) tune `make load`.
LOAD_EVENTS ?= 200000
LOAD_ROUNDS ?= 2
LOAD_RATE ?= 10000
LOAD_OPEN_SECONDS ?= 5
LOAD_DURATION ?= 60s
# SOAK_CONNECTIONS, SOAK_DURATION and SOAK_INTERVAL (time between samples)
# tune `make soak`.
SOAK_CONNECTIONS ?= 1000
SOAK_DURATION ?= 10m
SOAK_INTERVAL ?= 5s
# DATA_DIR is where `make run` keeps the durable queues' write-ahead logs.
DATA_DIR ?= $(CURDIR)/.eventbus-data
# FUZZTIME tunes `make fuzz`: how many inputs each fuzz target runs. A
# count, not a duration: go1.26's fuzz coordinator can report "context
# deadline exceeded" as a failure when a duration runs out while a starved
# worker is mid-input, with nothing found. A count has no deadline to race,
# and on a slow machine it just takes longer. 100000x is 5-35 s per target here.
FUZZTIME ?= 100000x
# FUZZMINIMIZETIME bounds how long the fuzzer shrinks each new input it
# keeps. Its default, 60 s each, stalled a run with a fresh corpus for
# minutes at a time (FuzzInflightSet: 26 to 354 s, against 31 to 34 s at
# 100x); a failing input is still kept and reported, only less shrunk.
FUZZMINIMIZETIME ?= 100x
TEST_TARGETS := test-go fuzz

.PHONY: all build run test test-go fuzz bench load soak lint print-test-targets
all: build

# Static (no cgo): the binary the images ship, and 1.6 MiB less resident
# memory at idle than a dynamically linked one (docs/performance.md).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -tags '$(BUILD_TAGS)' -ldflags '$(LDFLAGS)' -o $(BIN) .

run: build
	./$(BIN) serve --data-dir '$(DATA_DIR)'

test-go:
	$(GO) test -race -count=1 ./...

# The targets are listed by `go test -list`, not named here, so a fuzz
# target added to any package (or moved to another) runs without a change to
# this file. go test -fuzz takes one target at a time. Each starts from its
# seed corpus and the inputs saved under its package's testdata/fuzz; a
# failing input is saved there and fails the run, and once committed it is
# a regression test that test-go runs every time.
fuzz:
	@set -euo pipefail; \
	targets=$$($(GO) test -list '^Fuzz' ./... | awk '/^Fuzz/ { names = names " " $$1; next } /^ok / { if (names != "") print $$2 names; names = "" }'); \
	if [ -z "$$targets" ]; then echo "fuzz: go test -list found no fuzz targets"; exit 1; fi; \
	while read -r pkg names; do \
	  for name in $$names; do \
	    echo "### $$pkg $$name for $(FUZZTIME)"; \
	    $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZETIME) "$$pkg"; \
	  done; \
	done <<< "$$targets"

bench:
	$(GO) test -run='^$$' -bench=. -benchmem -benchtime=$(BENCHTIME) $(BENCH_PKGS)

# Each round starts a fresh sidecar per telemetry mode on its own socket, so
# the modes alternate within one run and can be compared as ratios: closed
# loop with 1 and 8 publishing connections, then open loop at LOAD_RATE
# against the framing ceiling (--ceiling) as well.
load: build
	@set -euo pipefail; dir=$$(mktemp -d); trap 'rm -rf "$$dir"' EXIT; \
	for round in $$(seq $(LOAD_ROUNDS)); do \
	  for mode in off metrics; do \
	    flags=; [ $$mode = off ] && flags=--telemetry-disabled; \
	    sock=$$dir/$$mode.sock; \
	    ./$(BIN) serve --socket $$sock --admin-addr off --log-level warn $$flags & pid=$$!; \
	    for i in $$(seq 100); do [ -S $$sock ] && break; sleep 0.1; done; \
	    for conns in 1 8; do \
	      echo "### round $$round, telemetry $$mode, $$conns publishing connection(s)"; \
	      ./$(BIN) load --socket $$sock --events $(LOAD_EVENTS) --connections $$conns --concurrency 64 --consumers 1 --queue data --duration $(LOAD_DURATION); \
	    done; \
	    echo "### round $$round, telemetry $$mode, open loop at $(LOAD_RATE) events/s, against the ceiling too"; \
	    ./$(BIN) load --socket $$sock --events $$(( $(LOAD_RATE) * $(LOAD_OPEN_SECONDS) )) --rate $(LOAD_RATE) --consumers 1 --queue data --duration $(LOAD_DURATION) --ceiling; \
	    kill -TERM $$pid; wait $$pid; \
	  done; \
	done

# The soak starts its own sidecar (this binary's serve) on a temporary
# socket, data dir and free admin port, so it runs beside anything else.
soak: build
	@echo "### soak: ulimit -n $$(ulimit -n) (hard $$(ulimit -Hn)), load average $$(cut -d' ' -f1-3 /proc/loadavg)"
	./$(BIN) soak --connections $(SOAK_CONNECTIONS) --duration $(SOAK_DURATION) --interval $(SOAK_INTERVAL)
	@echo "### soak done, load average $$(cut -d' ' -f1-3 /proc/loadavg)"

$(STATICCHECK):
	GOBIN=$(CURDIR)/bin $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv bin/staticcheck $@

lint: $(STATICCHECK)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt -l: not formatted:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	./$(STATICCHECK) ./...

include $(sort $(wildcard deploy/*.mk clients/*/*.mk e2e/*.mk))

test: $(TEST_TARGETS)

# .ci/run runs the targets of `make test` one by one to report each.
print-test-targets:
	@echo $(TEST_TARGETS)
