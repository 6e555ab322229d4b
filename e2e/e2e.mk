# End-to-end tests against the real local stack. `make test-e2e` starts the
# stack with `make stack-up` (deploy/stack.mk), runs the e2e-tagged Go tests,
# which build and start a real sidecar, and always stops the stack again,
# keeping the tests' exit status: the stack holds fixed ports, so it must not
# outlive the run.
#   make test-e2e          the three stack tests (about a minute)
#   make telemetry-cost    telemetry off, metrics only, default telemetry and
#                          every span, against the local collector: closed-loop
#                          throughput and the sidecar's CPU per event and per
#                          span at 10,000 events/s (docs/telemetry.md, Cost;
#                          about 7 minutes)
#   make targets           every data-path target of docs/performance.md on
#                          this build, met or not (e2e/targets.sh; no stack;
#                          7 to 10 minutes)
.PHONY: test-e2e telemetry-cost targets

E2E_TIMEOUT ?= 10m

test-e2e:
	@status=0; \
	$(MAKE) --no-print-directory stack-up || status=$$?; \
	if [ $$status -eq 0 ]; then \
		$(GO) test -tags e2e -count=1 -v -timeout $(E2E_TIMEOUT) ./e2e/ || status=$$?; \
	fi; \
	$(MAKE) --no-print-directory stack-down || true; \
	exit $$status

telemetry-cost: build
	@status=0; \
	$(MAKE) --no-print-directory stack-up || status=$$?; \
	if [ $$status -eq 0 ]; then e2e/telemetry_cost.sh || status=$$?; fi; \
	$(MAKE) --no-print-directory stack-down || true; \
	exit $$status

targets: build
	SIDECAR_BIN=$(BIN) e2e/targets.sh

TEST_TARGETS += test-e2e
