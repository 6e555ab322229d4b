# Local telemetry stack without Docker: collector + Jaeger built from Go
# modules, Prometheus from Debian's packages, all on 127.0.0.1, state under
# .state/stack/.
#   make stack-build   install/build what is missing (idempotent, cached)
#   make stack-up      start collector, Jaeger, Prometheus; wait until ready
#   make stack-down    stop what stack-up started
#   make stack-test    pipeline smoke test against the real stack
#   make demo          stack + sidecar + simulated trading app
.PHONY: stack-build stack-up stack-down stack-test demo

stack-build:
	deploy/stack/install.sh

stack-up: stack-build
	deploy/stack/up.sh

stack-down:
	deploy/stack/down.sh

stack-test: stack-build
	deploy/stack/test.sh

# DEMO_DURATION bounds the trading app's run (Go duration).
DEMO_DURATION ?= 60s
demo: stack-up build
	deploy/stack/demo.sh $(DEMO_DURATION)

TEST_TARGETS += stack-test
